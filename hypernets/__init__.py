"""Graph hypernetworks and metanetworks for PyTorch.

``hypernets.graph`` converts any module into an op graph or a neuron graph; :class:`LoGAH` predicts
every parameter of a target network from its op graph.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

# torch_geometric scripts a few classes with torch.jit.script on import, which torch >= 2.10 deprecates with a
# FutureWarning that users can do nothing about. Every module of this library and of metaprune imports this
# package first (metaprune's __init__ does so explicitly), so this one filter, narrowed to that message from
# that module, keeps commands and recipes quiet without hiding any other warning.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning, module=r"torch\.jit\._script"
)

if TYPE_CHECKING:
    from hypernets.conditional import HypernetizeConfig, Hypernetized, hypernetize
    from hypernets.logah import LoGAH, LoGAHConfig
    from hypernets.writers import load_predicted, save_prediction

_HOMES = {
    "LoGAH": "logah",
    "LoGAHConfig": "logah",
    "save_prediction": "writers",
    "load_predicted": "writers",
    "hypernetize": "conditional",
    "Hypernetized": "conditional",
    "HypernetizeConfig": "conditional",
}
__all__ = [
    "HypernetizeConfig",
    "Hypernetized",
    "LoGAH",
    "LoGAHConfig",
    "hypernetize",
    "load_predicted",
    "save_prediction",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the model lazily: the command line starts without loading torch and PyG for ``--help``."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"hypernets.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'hypernets' has no attribute {name!r}")
