"""The model-stage contract: what every stage that runs a network has in common.

``WeightsStage``: its config names weights (``model``: a local file or folder, or a Hugging Face id) and the
device they run on. Every sample's meta records those weights (``mtcc.pipeline.build.model_ids``) and
``mtcc models check`` runs ``check_model`` on them before a long run.

``ModelStage``: a weights stage whose real network class `mtcc models make-tiny` can build with random
weights in the released layout (``make_tiny``), for plumbing runs and tests. Such weights carry a marker
file; ``admit`` refuses them unless the config says ``allow_random_weights``, and remembers whether the
weights loaded are random (``is_random``), which every output of the stage records.

Both load in ``load()``, which ``Stage.setup`` runs once per actor before the first batch.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from mtcc.nets import loading
from mtcc.nets.weights import Weights

from .base import DEVICE as DEVICE_HELP
from .base import Stage

DEVICE = r"^(cpu|cuda(:[0-9]+)?)$"


class WeightsStage(Stage):
    """A stage that runs the weights its config names. Subclasses redeclare ``model`` with their default and
    a description of what the weights are."""

    # the downloads `mtcc models fetch` can place for it (see :mod:`mtcc.nets.weights`)
    weights: ClassVar[tuple[Weights, ...]] = ()

    model: loading.OptionalModelSpec = Field(None, description="the stage's weights: a local file or folder, or a "
                                                              "Hugging Face id")
    device: str = Field("cpu", pattern=DEVICE, description=DEVICE_HELP)

    def check_model(self) -> str:
        """Validate the configured weights before a long run (``mtcc models check``): every file present and
        loadable into the real class, without running it. Raises ``WeightsError`` naming what is wrong and
        how to fix it; returns a one-line description of what was checked. Stages with large weights
        override this with a cheap check (headers, key sets on a meta-device model); the default loads."""
        self.setup()
        return "loaded"


class ModelStage(WeightsStage):
    """A weights stage that `mtcc models make-tiny` can give random weights of its real class."""

    allow_random_weights: bool = Field(False, description="accept a model made by `mtcc models make-tiny`")

    _random: bool = PrivateAttr(False)

    def admit(self, path: Path) -> bool:
        """The random-weights policy for the weights at ``path``: weights `make-tiny` wrote are refused
        (``WeightsError``) unless ``allow_random_weights``. Returns, and remembers, whether they are random."""
        self._random = loading.check_random(path, stage=self.name, allow=self.allow_random_weights)
        return self._random

    @property
    def is_random(self) -> bool:
        """The weights loaded are random (``admit``): the stage's outputs say so and its decisions may not
        count."""
        return bool(self._random)

    @classmethod
    @abstractmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """Write a random-initialised model of the real class under ``root / cls.name``, in the layout the
        real weights use, with the random marker (``loading.write_marker``); return the stage settings that
        load it (absolute paths, ``allow_random_weights: true``)."""
