"""Graph hypernetworks and metanetworks for PyTorch.

``hypernets.graph`` converts any module into an op graph or a neuron graph; :class:`LoGAH` predicts
every parameter of a target network from its op graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypernets.logah import LoGAH, LoGAHConfig

__all__ = ["LoGAH", "LoGAHConfig"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import the model lazily: the command line starts without loading torch and PyG for ``--help``."""
    if name in __all__:
        from hypernets import logah

        return getattr(logah, name)
    raise AttributeError(f"module 'hypernets' has no attribute {name!r}")
