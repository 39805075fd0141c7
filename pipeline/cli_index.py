"""`mtcc index` and `mtcc select`: the whole-build layers over committed shards (pipeline/index.py,
pipeline/selection.py). A URL OUT is read through a local view of its commits and manifests; what the
command writes (the index files, a selection) is published back, the index's state file last."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mtcc.manifests.paths import OutPaths

from .errors import RemoteError
from .remote import RemoteOut, is_remote_out, local_root

OK, REFUSED = 0, 2
OUT_HELP = "the build's output folder (the --output of `mtcc run`), or an fsspec URL such as s3://bucket/prefix"


@contextmanager
def _local(out: str, also: Callable[[OutPaths], list[Path]] = lambda lay: []) -> Iterator[Path]:
    """OUT as a local folder for the block; for a URL OUT, a view of it (its commits, manifests, index and
    selections: pipeline/remote.py) whose index files (and ``also``'s) that the block changed are published
    back after it."""
    if not is_remote_out(out):
        yield local_root(out)
        return
    remote = RemoteOut(out)
    with remote.view() as layout:
        files = layout.index_files() + also(layout)
        before = {p: p.read_bytes() if p.exists() else None for p in files}
        yield layout.root
        for path in files:
            if path.exists() and path.read_bytes() != before[path]:
                remote.write(path.relative_to(layout.root).as_posix(), path.read_bytes())


def cmd_index(args: argparse.Namespace) -> int:
    from .index import IndexSettings, NotIndexable, index_out

    try:
        settings = IndexSettings(same_person=args.same_person, max_ber=args.max_ber,
                                 max_frame_distance=args.max_frame_distance, min_overlap=args.min_overlap)
        with _local(args.output) as root:
            index_out(root, settings)
    except (NotIndexable, RemoteError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED
    return OK


def cmd_select(args: argparse.Namespace) -> int:
    from .index import NotIndexable
    from .selection import SelectionError, select
    from .where import WhereError

    try:
        with _local(args.output, lambda lay: [lay.selection(args.name)]) as root:
            select(root, args.name, where=args.where, max_per_identity=args.max_per_identity, split=args.split,
                   by=args.by, keep_duplicates=args.keep_duplicates)
    except (SelectionError, WhereError, NotIndexable, RemoteError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED
    return OK


def add_index(sub: Any) -> None:
    from .index import IndexSettings

    d = IndexSettings()
    x = sub.add_parser("index", help="who is in the build and what is in it twice: OUT/index/identities.parquet, "
                                     "duplicates.parquet",
                       description="Indexes the committed shards not indexed yet, from their manifests (the "
                                   "identity and fingerprint stages' columns): clusters the characters' face "
                                   "descriptors into identities (ids never change as the build grows) and groups "
                                   "near-duplicate clips (re-encoded, rescaled or trimmed copies), one kept per "
                                   "group. Shards stay as they are. Exit codes: 0 indexed, 2 OUT is not a build.",
                       epilog="example: mtcc index demo/out && mtcc select demo/out --name hq --where "
                              "'sync.sync_c_mean >= 3'")
    x.add_argument("output", metavar="OUT", help=OUT_HELP)
    x.add_argument("--same-person", type=float, default=d.same_person,
                   help="descriptor distance under which two faces are one person (dlib's operating point)")
    x.add_argument("--max-ber", type=float, default=d.max_ber,
                   help="largest bit error rate between two clips' audio fingerprints for a duplicate (unrelated "
                        "speech: ~0.5)")
    x.add_argument("--max-frame-distance", type=float, default=d.max_frame_distance,
                   help="largest median perceptual-hash distance (of 64 bits) between aligned frames")
    x.add_argument("--min-overlap", type=float, default=d.min_overlap,
                   help="share of the shorter clip the two must share")
    x.set_defaults(fn=cmd_index)


def add_select(sub: Any) -> None:
    s = sub.add_parser("select", help="a named subset of the kept clips, from the manifests and the index, without "
                                      "recomputing anything",
                       description="Writes OUT/selections/NAME.parquet (shard, key, part). In order: the kept "
                                   "clips of every committed shard; those for which --where holds; all but one of "
                                   "each near-duplicate group (unless --keep-duplicates); at most "
                                   "--max-per-identity clips per person; then --split assigns whole groups "
                                   "(--by identity: people who share a clip) to parts. `mtcc train --set "
                                   "data.selection=NAME` and `mtcc export bya --selection NAME` read it. Exit "
                                   "codes: 0 written, 2 refused (bad expression, OUT not indexed, ...).",
                       epilog="example: mtcc select out/ --name hq --where 'sound.ovrl_mix >= 3 and not "
                              "sync.swapped' --max-per-identity 50 --split val=0.05 --by identity")
    s.add_argument("output", metavar="OUT", help=OUT_HELP)
    s.add_argument("--name", required=True, help="the selection's name (letters, digits, _ . -)")
    s.add_argument("--where", default=None, metavar="EXPR",
                   help="a condition over manifest columns: comparisons, and/or/not, in [...], is None, + - * /, "
                        "abs/min/max, e.g. \"picture.sharpness >= 120 and text.static_text < 0.02\"")
    s.add_argument("--max-per-identity", type=int, default=None, metavar="N",
                   help="at most N clips per person (needs `mtcc index`)")
    s.add_argument("--split", default=None, metavar="PART=SHARE[,...]",
                   help="parts besides train, e.g. val=0.05 or val=0.05,test=0.05")
    s.add_argument("--by", choices=("identity", "video", "clip"), default="identity",
                   help="what a split never divides: a group of people (identity), a source video, or nothing")
    s.add_argument("--keep-duplicates", action="store_true",
                   help="keep every member of a near-duplicate group (default: only the one the index keeps)")
    s.set_defaults(fn=cmd_select)
