"""Meta-training of hypernetworks on sampled architecture families (``hypernets train``)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig, lr_at
    from .loop import HYPERNET_DIR, train
    from .tasks import ImageTask, TextTask, task_for

_HOMES = {
    "TrainConfig": "config",
    "lr_at": "config",
    "HYPERNET_DIR": "loop",
    "train": "loop",
    "ImageTask": "tasks",
    "TextTask": "tasks",
    "task_for": "tasks",
}
__all__ = ["HYPERNET_DIR", "ImageTask", "TextTask", "TrainConfig", "lr_at", "task_for", "train"]


def __getattr__(name: str) -> Any:
    """Import lazily: the command line reads the settings from ``config`` without loading torch."""
    if name in _HOMES:
        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
