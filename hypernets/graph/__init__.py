"""Turn any ``nn.Module`` into graphs: one traced IR, an op graph view and a neuron graph view."""

from .errors import GraphConversionError, InvalidInputError, UnsupportedModuleError
from .inputs import default_inputs
from .ir import ModelIR, Op, ParamInfo
from .neuron_graph import EDGE_TYPES, NODE_SLOTS, NODE_TYPES, from_neuron_graph, to_neuron_graph
from .op_graph import to_op_graph
from .tracer import register_module, trace
from .vocab import OP_INDEX, OP_KINDS

__all__ = [
    "EDGE_TYPES",
    "NODE_SLOTS",
    "NODE_TYPES",
    "OP_INDEX",
    "OP_KINDS",
    "GraphConversionError",
    "InvalidInputError",
    "ModelIR",
    "Op",
    "ParamInfo",
    "UnsupportedModuleError",
    "default_inputs",
    "from_neuron_graph",
    "register_module",
    "to_neuron_graph",
    "to_op_graph",
    "trace",
]
