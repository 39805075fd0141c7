"""Model weights as one portable folder: ``mtcc models fetch | check | make-tiny``.

A models folder DIR holds every model in the on-disk layout its stage loads, plus ``DIR/models.yaml``::

    random_weights: false          # true only for folders written by `mtcc models make-tiny`
    stages:                        # per stage, weight settings only; local paths relative to DIR
      sync: {model: ./syncnet/syncnet_v2.model}
      faces: {detector: insightface, model: ./insightface/antelopev2}
    files:                         # every file fetch / make-tiny placed, as it was verified then
      syncnet/syncnet_v2.model: {bytes: 1234, sha256: ..., pinned: false}
    sources:                       # provenance: where each stage's weights came from
      sync: {kind: url, url: http://..., revision: null}

A profile includes it with a top-level ``models: PATH`` (see :func:`mtcc.pipeline.config.load_config`):
its stage settings are laid over the profile's before ``--set`` overrides. Paths inside resolve against
the folder of models.yaml, so the folder can be copied to a cluster as it is.

``fetch`` downloads the paper-grade checkpoints the stage classes declare (their ``weights``: Hugging
Face repos at pinned revisions, and public URLs), verifying bytes and sha256 where a declaration pins
them; files it does not pin are recorded as downloaded (trust on first use) and verified by ``check``
from then on. Files already in place (copied by hand) are verified and adopted without the network, so
an offline machine gets a models.yaml by placing the files and running ``fetch`` again. ``check``
verifies every recorded file and runs each stage's cheap ``check_model()`` before a long run starts.

The rooms: :mod:`.pins` (the stages' declared weights as one table), :mod:`.modelsfile` (models.yaml:
read, validate, resolve, write), :mod:`.download` (probe, HTTP and hub downloads, verification),
:mod:`.archive` (zip members, refusing unsafe ones), :mod:`.fetch` (the ``fetch`` command), :mod:`.check`
(the ``check`` command), :mod:`.tiny` (``make-tiny``).
"""
