"""The neuron graph: neurons as nodes and weights as edges, the view metanetworks read and rewrite.

Nodes are input features, hidden neurons or channels, normalization and sum neurons, attention heads
and outputs. Every weight entry is one edge (a conv kernel's k x k values, or the spatial positions a
flatten feeds into a linear layer, form one edge's feature vector). A patch embedding (a conv on the
model input whose stride is its kernel and that pads nothing, as in ViT) is a linear map on patches:
its input nodes are (channel, kernel position) pairs and each of its edges carries one value, so that
a 16 x 16 patch does not widen every edge of the graph to 256 columns. Biases and normalization
parameters are node features; residual additions, normalizations and attention wiring are identity
edges that carry no parameter; a gated MLP's product joins gate neuron i and up neuron i in one
"scale" node, a grouped-query k/v head feeds every query head of its group, and rotary embeddings bind
q/k features i and i + d/2 of a head. The map is a bijection: :func:`from_neuron_graph` returns every
parameter (and batch-norm running statistics) exactly, and permuting the hidden neurons of a network
(a symmetry that leaves its function unchanged) permutes the graph's nodes and nothing else.

Structure (edge indices) is built on the parameters' device, so a ``meta`` model gives node and edge
counts of even the largest GPT-2 without allocating anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from .errors import GraphConversionError, UnsupportedModuleError, describe_module
from .inputs import Inputs
from .ir import ModelIR, Op
from .tracer import ROTARY, trace

NODE_TYPES: tuple[str, ...] = (
    "input",  # a model input feature, or one token of a vocabulary
    "neuron",  # output neuron or channel of a linear, conv or embedding
    "norm",  # output of a layer/group/RMS norm (or a batch norm that has no neuron of its own)
    "sum",  # a residual addition, or adding a parameter (positional embedding)
    "scale",  # elementwise product (layer scale, gating)
    "token",  # a learned token or position concatenated or added to the sequence
    "head",  # one attention head
    "attention",  # attention output feature (per head, per value dimension)
    "output",  # a feature of the model output
)
EDGE_TYPES: tuple[str, ...] = (
    "weight",  # carries parameter values
    "identity",  # residual / norm / attention-value wiring, feature i -> feature i
    "head",  # q or k feature -> its head, head -> its output features
    "qk_pair",  # features permuted together: q i <-> k i of a head; rotary pairs i <-> i + d/2 of a q or k head
    "tied",  # a second reader of a tied weight: same values, written back through the first reader
)
NODE_SLOTS: tuple[str, ...] = ("bias", "weight", "norm_bias", "running_mean", "running_var")
_BIAS, _WEIGHT, _NORM_BIAS, _MEAN, _VAR = range(len(NODE_SLOTS))
_NODE_TYPE = {name: i for i, name in enumerate(NODE_TYPES)}
_EDGE_TYPE = {name: i for i, name in enumerate(EDGE_TYPES)}
_PASS_THROUGH = frozenset(
    {"relu", "gelu", "silu", "tanh", "sigmoid", "activation", "max_pool", "avg_pool", "mean", "softmax"}
)


@dataclass(frozen=True)
class EdgePlacement:
    """A weight stored as ``rows * cols`` consecutive edges from ``start``, ``width`` values each.

    The weight is viewed as a ``rows x (cols * width)`` matrix (output neurons first); ``transposed``
    weights (HF Conv1D, embeddings, positional tables) are stored as ``(cols * width) x rows``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int
    rows: int
    cols: int
    width: int
    transposed: bool

    def read(self, edge_attr: Tensor) -> Tensor:
        block = edge_attr[self.start : self.start + self.rows * self.cols, : self.width]
        matrix = block.reshape(self.rows, self.cols * self.width)
        return (matrix.T if self.transposed else matrix).reshape(self.shape).to(self.dtype)


@dataclass(frozen=True)
class NodePlacement:
    """A per-neuron vector (bias, norm weight, running mean, ...) stored in one column of ``x``."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nodes: Tensor
    slot: int

    def read(self, x: Tensor) -> Tensor:
        return x[self.nodes, self.slot].reshape(self.shape).to(self.dtype)


Placement = EdgePlacement | NodePlacement


def to_neuron_graph(model: nn.Module, inputs: Inputs = None, ir: ModelIR | None = None) -> Data:
    """Convert ``model`` into a PyG ``Data`` neuron graph (see the module docstring).

    Fields: ``x`` ``[N, 5]`` node values in the columns of ``NODE_SLOTS``; ``node_type`` ``[N]``;
    ``edge_index`` ``[2, E]``; ``edge_attr`` ``[E, K]`` (K = the widest kernel outside patch embeddings, at
    least 1; identity edges carry 1 in column 0); ``edge_type`` ``[E]``; ``placements``, where each tensor
    lives, used by :func:`from_neuron_graph`; ``aliases``, state-dict names of tied tensors; ``unused``,
    parameters the forward pass never reads (not in the graph).
    """
    ir = ir or trace(model, inputs)
    if not set(ir.parameters) - set(ir.unused):
        unused = f" (its parameters {', '.join(ir.unused[:3])} are never read by forward)" if ir.unused else ""
        raise GraphConversionError(
            f"{describe_module('', type(model).__name__)}: no parameter takes part in the forward pass{unused}; "
            "a neuron graph is made of the layers' weights, so there is nothing to convert"
        )
    builder = _Builder(model, ir)
    for op in ir.ops:
        builder.add(op)
    return builder.finish()


def from_neuron_graph(graph: Data) -> dict[str, Tensor]:
    """The exact inverse: every placed tensor, by state-dict name, read back from ``x``/``edge_attr``."""
    tensors = {}
    for placement in graph.placements:
        source = graph.edge_attr if isinstance(placement, EdgePlacement) else graph.x
        tensors[placement.name] = placement.read(source)
    for alias, name in graph.aliases.items():
        tensors[alias] = tensors[name]
    return tensors


class _Builder:
    """Walks the IR in topological order, giving each op's output a set of feature nodes."""

    def __init__(self, model: nn.Module, ir: ModelIR) -> None:
        self.model = model
        self.ir = ir
        self.state = model.state_dict(keep_vars=True)
        self.device = next(iter(self.state.values())).device if self.state else torch.device("cpu")
        self.owner = ir.owner()
        self.consumers: dict[int, list[Op]] = {}
        for op in ir.ops:
            for i in op.inputs:
                self.consumers.setdefault(i, []).append(op)
        self.sets: dict[int, Tensor] = {}  # op index -> node ids of its output features
        self.producer: dict[int, Op] = {}  # first node id of a set -> op that created it
        self.with_norm: set[int] = set()  # first node ids of sets a batch norm was attached to
        self.node_types: list[Tensor] = []
        self.node_values: list[tuple[Tensor, int, Tensor]] = []
        self.edges: list[tuple[Tensor, Tensor, Tensor, int]] = []
        self.num_nodes = 0
        self.num_edges = 0
        self.placements: list[Placement] = []

    # -- nodes and edges ------------------------------------------------------------------------
    def new_nodes(self, count: int, node_type: str) -> Tensor:
        ids = torch.arange(self.num_nodes, self.num_nodes + count)
        self.node_types.append(torch.full((count,), _NODE_TYPE[node_type]))
        self.num_nodes += count
        return ids

    def set_values(self, name: str, nodes: Tensor, slot: int) -> None:
        value = self.state[name]
        if value.numel() != len(nodes):
            raise UnsupportedModuleError(
                f"'{name}' has {value.numel()} values but feeds {len(nodes)} neurons; the neuron graph "
                f"needs one value per neuron"
            )
        self.node_values.append((nodes, slot, value.detach().reshape(-1)))
        self.placements.append(NodePlacement(name, tuple(value.shape), value.dtype, nodes, slot))

    def add_edges(self, src: Tensor, dst: Tensor, attr: Tensor, edge_type: str) -> int:
        start = self.num_edges
        self.edges.append((src, dst, attr, _EDGE_TYPE[edge_type]))
        self.num_edges += len(src)
        return start

    def identity(self, src: Tensor, dst: Tensor, edge_type: str = "identity") -> None:
        ones = torch.ones(len(src), 1, device=self.device)
        self.add_edges(src.to(self.device), dst.to(self.device), ones, edge_type)

    def dense(self, op: Op, name: str, src: Tensor, dst: Tensor, transposed: bool, groups: int = 1) -> None:
        """Edges for weight ``name`` mapping ``src`` features to ``dst`` features, output-major order."""
        weight = self.state[name].detach()
        src, dst = src.to(self.device), dst.to(self.device)  # on meta, the index arithmetic allocates nothing
        rows, in_per_group = len(dst), len(src) // groups
        matrix = weight.reshape(-1, rows).T if transposed else weight.reshape(rows, -1)
        if len(src) % groups or matrix.shape[1] % in_per_group:
            raise UnsupportedModuleError(
                f"module {describe_module(op.module_path, op.module_type)}: weight '{name}' of shape "
                f"{tuple(weight.shape)} does not map {len(src)} input features to {rows} outputs{self._cause(op, src)}"
            )
        width = matrix.shape[1] // in_per_group
        grouped_src = src.view(groups, in_per_group).repeat_interleave(rows // groups, dim=0).reshape(-1)
        edge_type = "weight" if self.owner[name] == op.index else "tied"
        start = self.add_edges(
            grouped_src, dst.repeat_interleave(in_per_group), matrix.reshape(rows * in_per_group, width), edge_type
        )
        if edge_type == "weight":
            self.placements.append(
                EdgePlacement(name, tuple(weight.shape), weight.dtype, start, rows, in_per_group, width, transposed)
            )

    def _cause(self, op: Op, src: Tensor) -> str:
        """Why a layer's input is not the features the op before it made, when its input shape tells."""
        if op.kind not in ("linear", "conv") or not op.in_shapes:
            return ""
        shape = op.in_shapes[0]
        reads = shape[-1] if op.kind == "linear" else shape[len(shape) - self.state[op.params["weight"]].dim() + 1]
        if reads == len(src):
            return ""
        return (
            f": it reads {reads} features where the op before it made {len(src)}, so the activation was split "
            "(a channel split, as in ShuffleNet) or had its axes swapped (mixing along tokens, as in MLP-Mixer) "
            "on the way, which the neuron graph does not follow"
        )

    # -- ops --------------------------------------------------------------------------------------
    def add(self, op: Op) -> None:
        handler = self._rotary if op.function == ROTARY else getattr(self, f"_{op.kind}", None)
        if handler is None and op.kind in _PASS_THROUGH:
            handler = self._pass_through
        if handler is None:
            raise UnsupportedModuleError(
                f"module {describe_module(op.module_path, op.module_type)}: op '{op.kind}' "
                f"({op.function}) has no neuron-graph form yet; supported: "
                f"{', '.join(sorted(_PASS_THROUGH | _HANDLED))}"
            )
        if op.attrs.get("sliced"):
            self._unsupported(op, f"reading part of parameter(s) {', '.join(op.attrs['sliced'])}")
        if op.kind in ("linear", "conv", "embedding") and set(op.params) - {"weight", "bias"}:
            self._unsupported(op, f"a '{op.kind}' reading parameters {', '.join(op.params.values())}")
        handler(op)

    def input_set(self, op: Op, position: int = 0) -> Tensor:
        return self.sets[op.inputs[position]]

    def _input(self, op: Op) -> None:
        if op.attrs.get("argument") is not None and len(op.out_shape) and self._is_index_input(op):
            return  # token ids: embeddings create one node per vocabulary entry
        consumers = self.consumers[op.index]
        first = consumers[0]
        if first.kind == "linear":
            count = self._weight_matrix_shape(first)[1]
        elif len(consumers) == 1 and self._is_patch_embedding(first):
            count = self.state[first.params["weight"]][0].numel()  # one node per channel and kernel position
        elif first.kind == "conv":
            count = self.state[first.params["weight"]].shape[1] * first.attrs.get("groups", 1)
        else:
            count = op.out_shape[-1]
        self.sets[op.index] = self.new_nodes(count, "input")

    def _is_patch_embedding(self, op: Op) -> bool:
        """A conv whose stride is its kernel and that pads nothing is a linear map on non-overlapping patches."""
        if op.kind != "conv" or op.attrs.get("transposed") or op.attrs.get("groups", 1) != 1:
            return False
        padding = op.attrs.get("padding")
        unpadded = padding == "valid" or (isinstance(padding, tuple) and not any(padding))
        return unpadded and op.attrs.get("stride") == tuple(self.state[op.params["weight"]].shape[2:])

    def _is_index_input(self, op: Op) -> bool:
        return all(consumer.kind == "embedding" for consumer in self.consumers.get(op.index, []))

    def _weight_matrix_shape(self, op: Op) -> tuple[int, int]:
        shape = self.state[op.params["weight"]].shape
        return (shape[1], shape[0]) if op.attrs.get("weight_layout") == "in_out" else (shape[0], shape[1])

    def _linear(self, op: Op) -> None:
        rows, _ = self._weight_matrix_shape(op)
        out = self.new_nodes(rows, "neuron")
        self.dense(op, op.params["weight"], self.input_set(op), out, op.attrs.get("weight_layout") == "in_out")
        self._finish_neurons(op, out)

    def _conv(self, op: Op) -> None:
        if op.attrs.get("transposed"):
            self._unsupported(op, "transposed convolutions")
        weight = self.state[op.params["weight"]]
        out = self.new_nodes(weight.shape[0], "neuron")
        self.dense(op, op.params["weight"], self.input_set(op), out, False, op.attrs.get("groups", 1))
        self._finish_neurons(op, out)

    def _embedding(self, op: Op) -> None:
        vocabulary, features = self.state[op.params["weight"]].shape
        tokens = self.new_nodes(vocabulary, "input" if op.inputs else "token")
        out = self.new_nodes(features, "neuron")
        self.dense(op, op.params["weight"], tokens, out, transposed=True)
        self._finish_neurons(op, out)

    def _finish_neurons(self, op: Op, out: Tensor) -> None:
        if "bias" in op.params:
            self.set_values(op.params["bias"], out, _BIAS)
        self.sets[op.index] = out
        self.producer[int(out[0])] = op

    def _layer_norm(self, op: Op) -> None:
        out = self.new_nodes(len(self.input_set(op)), "norm")
        self.identity(self.input_set(op), out)
        for role, slot in (("weight", _WEIGHT), ("bias", _NORM_BIAS)):
            if role in op.params:
                self.set_values(op.params[role], out, slot)
        self.sets[op.index] = out

    _group_norm = _layer_norm
    _rms_norm = _layer_norm

    def _batch_norm(self, op: Op) -> None:
        """Attached to the neurons of the conv/linear before it (the usual case), else to new nodes."""
        features = self.input_set(op)
        first = int(features[0])
        attach = first in self.producer and first not in self.with_norm
        out = features if attach else self.new_nodes(len(features), "norm")
        if not attach:
            self.identity(features, out)
        self.with_norm.add(int(out[0]))
        for role, slot in (("weight", _WEIGHT), ("bias", _NORM_BIAS)):
            if role in op.params:
                self.set_values(op.params[role], out, slot)
        for buffer, slot in (("running_mean", _MEAN), ("running_var", _VAR)):
            name = f"{op.module_path}.{buffer}" if op.module_path else buffer
            if self.state.get(name) is not None:
                self.set_values(name, out, slot)
        self.sets[op.index] = out

    def _pass_through(self, op: Op) -> None:
        if len(op.inputs) != 1:
            self._unsupported(op, f"'{op.kind}' of {len(op.inputs)} activations")
        self.sets[op.index] = self.input_set(op)

    def _elementwise(self, op: Op, node_type: str, slot: int) -> None:
        """x + y, x * y, x + parameter (positional table), x * parameter (layer scale)."""
        if not op.params and len(op.inputs) == 1:
            self.sets[op.index] = self.input_set(op)  # arithmetic with a constant
            return
        sets = [self.sets[i] for i in op.inputs]
        if len({len(s) for s in sets}) > 1:
            self._unsupported(op, f"'{op.kind}' of activations with {[len(s) for s in sets]} features")
        out = self.new_nodes(len(sets[0]), node_type)
        for features in sets:
            self.identity(features, out)
        for name in op.params.values():
            self._parameter_operand(op, name, out, slot)
        self.sets[op.index] = out

    def _add(self, op: Op) -> None:
        self._elementwise(op, "sum", _BIAS)

    def _mul(self, op: Op) -> None:
        self._elementwise(op, "scale", _WEIGHT)

    def _parameter_operand(self, op: Op, name: str, out: Tensor, slot: int) -> None:
        """A (..., D) parameter: one value per neuron when it is a vector, else one token node per
        leading position with weight edges to the D neurons (ViT ``pos_embed``, register tokens)."""
        if self.state[name].numel() == len(out):
            self.set_values(name, out, slot)
            return
        positions = self.new_nodes(self.state[name].numel() // len(out), "token")
        self.dense(op, name, positions, out, transposed=True)

    def _concat(self, op: Op) -> None:
        rank = len(op.out_shape)
        dim = op.attrs.get("dim", 0) % rank
        feature_dim = 1 if rank == 4 else rank - 1
        sets = [self.sets[i] for i in op.inputs]
        if dim == feature_dim and not op.params:
            self.sets[op.index] = torch.cat(sets)  # channels of both inputs side by side
            return
        if dim == feature_dim or len(sets) != 1:
            self._unsupported(op, "concatenating parameters along features, or different activations along tokens")
        out = self.new_nodes(len(sets[0]), "token")
        self.identity(sets[0], out)
        for name in op.params.values():
            self._parameter_operand(op, name, out, _BIAS)
        self.sets[op.index] = out

    def _attention(self, op: Op) -> None:
        """Per query head: q and k features -> head node -> output features; v -> output one-to-one.

        With grouped-query or multi-query attention each k/v head serves a group of query heads
        (``repeat_kv`` only views it): its features are wired to every head of the group.
        """
        q_shape = op.in_shapes[0]
        heads, head_dim = q_shape[1], q_shape[-1]
        if len(op.inputs) == 1:  # one fused projection [q | k | v], k and v as wide as each other
            fused = self.input_set(op)
            kv = max(len(fused) - heads * head_dim, 0) // 2
            q, k, v = fused.split([len(fused) - 2 * kv, kv, kv])
        elif len(op.inputs) == 3:
            q, k, v = (self.sets[i] for i in op.inputs)
        else:
            self._unsupported(op, "attention whose keys and values come from one projection")
        kv_heads = len(k) // head_dim
        if len(q) != heads * head_dim or len(k) != len(v) or not kv_heads or len(k) % head_dim or heads % kv_heads:
            self._unsupported(
                op, f"attention with q/k/v of {len(q)}/{len(k)}/{len(v)} features and {heads} heads of {head_dim}"
            )
        k, v = (t.view(kv_heads, 1, head_dim).expand(-1, heads // kv_heads, -1).reshape(-1) for t in (k, v))
        head_nodes = self.new_nodes(heads, "head")
        out = self.new_nodes(len(q), "attention")
        of_head = head_nodes.repeat_interleave(head_dim)
        self.identity(q, of_head, "head")
        self.identity(k, of_head, "head")
        self.identity(of_head, out, "head")
        self.identity(q, k, "qk_pair")
        self.identity(v, out)
        self.sets[op.index] = out

    def _rotary(self, op: Op) -> None:
        """Rotary position embeddings read no parameter but rotate features i and i + d/2 of every head
        together, at a frequency of their own: a qk_pair edge binds each pair and carries its frequency
        exponent i / (d/2) (RoPE's angle is position * base^(-i / (d/2))), so that permuting features
        within a head, which changes the function, does not merely permute the graph's nodes."""
        features, head_dim = self.input_set(op), op.in_shapes[0][-1]
        if math.prod(op.in_shapes[0]) != math.prod(self.ir.ops[op.inputs[0]].out_shape):
            self._unsupported(op, "rotary embeddings on part of a projection's features (fused q/k/v, partial rotary)")
        if head_dim % 2 or len(features) % head_dim:
            self._unsupported(op, f"rotary embeddings of {len(features)} features in heads of {head_dim}")
        pairs = features.view(-1, 2, head_dim // 2).to(self.device)
        exponent = torch.arange(head_dim // 2, device=self.device).repeat(len(pairs)) / (head_dim // 2)
        self.add_edges(pairs[:, 0].reshape(-1), pairs[:, 1].reshape(-1), exponent.unsqueeze(1), "qk_pair")
        self.sets[op.index] = features

    def _unsupported(self, op: Op, what: str) -> None:
        raise UnsupportedModuleError(
            f"module {describe_module(op.module_path, op.module_type)}: the neuron graph does not support {what}"
        )

    # -- assembly ---------------------------------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        """State-dict names of tied tensors (GPT-2's ``lm_head.weight``) -> the name that is placed."""
        placed = {id(self.state[p.name]): p.name for p in self.placements}
        return {
            name: placed[id(value)]
            for name, value in self.state.items()
            if id(value) in placed and placed[id(value)] != name
        }

    def finish(self) -> Data:
        node_type = torch.cat(self.node_types) if self.node_types else torch.zeros(0, dtype=torch.long)
        for index in self.ir.outputs:
            node_type[self.sets[index]] = _NODE_TYPE["output"]
        dtype = next((v.dtype for v in self.state.values() if v.is_floating_point()), torch.float32)
        x = torch.zeros(self.num_nodes, len(NODE_SLOTS), dtype=dtype, device=self.device)
        for nodes, slot, values in self.node_values:
            x[nodes.to(self.device), slot] = values.to(dtype)
        width = max((attr.shape[1] for _, _, attr, _ in self.edges), default=1)
        return Data(
            x=x,
            node_type=node_type,
            edge_index=torch.stack(
                [torch.cat([src for src, _, _, _ in self.edges]), torch.cat([dst for _, dst, _, _ in self.edges])]
            ),
            edge_attr=torch.cat([F.pad(attr.to(dtype), (0, width - attr.shape[1])) for _, _, attr, _ in self.edges]),
            edge_type=torch.cat([torch.full((len(src),), t, device=self.device) for src, _, _, t in self.edges]),
            placements=self.placements,
            aliases=self._aliases(),
            unused=list(self.ir.unused),
            num_nodes=self.num_nodes,
        )


_HANDLED = frozenset(
    {"input", "linear", "conv", "embedding", "layer_norm", "group_norm", "rms_norm", "batch_norm", "add", "mul",
     "concat", "attention"}
)  # fmt: skip
