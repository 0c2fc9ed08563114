"""Turn any ``nn.Module`` into graphs: one traced IR, an op graph view and a neuron graph view."""

from .errors import GraphConversionError, InvalidInputError, UnsupportedModuleError
from .inputs import default_inputs
from .ir import ModelIR, Op, ParamInfo
from .tracer import register_module, trace
from .vocab import OP_INDEX, OP_KINDS

__all__ = [
    "OP_INDEX",
    "OP_KINDS",
    "GraphConversionError",
    "InvalidInputError",
    "ModelIR",
    "Op",
    "ParamInfo",
    "UnsupportedModuleError",
    "default_inputs",
    "register_module",
    "trace",
]
