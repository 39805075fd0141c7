"""Training on MTCC shards: a streaming loader in Bind-Your-Avatar's geometry and an embedding-router trainer.

    from mtcc.training import loader
    for batch in loader("out/", batch_size=2, num_workers=4):
        ...

Names are imported on first use, so ``import mtcc.training`` (and the ``mtcc`` CLI) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "loader": "data", "Loader": "data", "STATS": "stream",
    "DataConfig": "config", "TrainConfig": "config", "ModelConfig": "config", "load_train_config": "config",
    "EmbeddingRouter": "model", "RouterOutput": "model",
    "router_loss": "losses", "iou_counts": "losses",
    "train": "trainer", "launch_ray": "trainer", "Trainer": "trainer",
}

__all__ = [
    "STATS",
    "DataConfig",
    "EmbeddingRouter",
    "Loader",
    "ModelConfig",
    "RouterOutput",
    "TrainConfig",
    "Trainer",
    "iou_counts",
    "launch_ray",
    "load_train_config",
    "loader",
    "router_loss",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
