"""Graph hypernetworks and metanetworks for PyTorch.

``hypernets.graph`` converts any module into an op graph or a neuron graph; :class:`LoGAH` predicts
every parameter of a target network from its op graph.
"""

from hypernets.logah import LoGAH, LoGAHConfig

__all__ = ["LoGAH", "LoGAHConfig"]
__version__ = "0.1.0"
