"""Hostile-input corpus: files a crawl of real footage throws at the pipeline, each with the outcome the
documented behaviour promises for it.

``corpus.generate_bad(dir, seed=0)`` renders one short two-person talking scene and derives every variant from
it with ffmpeg (argument lists only; hostile names are given to files by ``os.rename`` after encoding
under a plain name, so the generator never hands one to a tool either). OutPaths::

    DIR/videos/<case files>            the cases named in inputs.txt (+ a folder, links, a FIFO)
    DIR/odd_names/<case files>         names a one-path-per-line list cannot carry (a newline, bytes that
                                       are not UTF-8): fed to a run as a folder input
    DIR/store/linked_target.mp4        reached only through a symlink in videos/
    DIR/inputs.txt                     the list input: every listed case, plus a missing file, a
                                       directory, the same file twice and a symlink to a listed file
    DIR/<file>.expect.json             beside each case (a missing file's expectation sits where it
                                       would be)
    DIR/expected.json                  index: inputs to pass, run overrides, every case

Run it with ``mtcc run offline --input DIR/inputs.txt --input DIR/odd_names --output OUT`` plus the
``overrides`` of expected.json; ``check.check(corpus.load_corpus(DIR), rows)`` then compares the
manifest rows.

An expectation is ``{"status": [...], "stage": [...], "reason": [...], "never": ["error"]}`` against
the outcome of the input (see :func:`mtcc.sampledata.bad.check.observe`); a missing key accepts
anything, ``null`` in ``reason`` stands for "no reason" (kept). A case whose outcome depends on who
runs it (permissions: root reads a chmod-000 file) has ``{"if_root": {...}, "if_not_root": {...}}``
instead; :func:`mtcc.sampledata.bad.check.expectation` picks. ``row`` is ``own`` (exactly one
video-level row whose source is the case's path) or ``merged`` (the path is the same file as
``same_as`` and is planned once, under that path: no row of its own).

Where to look: ``case`` (a case, its expectation, the corpus), the cases by kind of bad input in
``shapes`` (valid videos in unusual shapes), ``paths`` (names, links, permissions, duplicates) and
``unusable`` (damaged or refused files), ``encode`` (the ffmpeg calls and byte patches that make
them), ``base`` (the scene they derive from), ``corpus`` (writing and reading a corpus) and ``check``
(comparing a build's manifest rows with it).
"""
