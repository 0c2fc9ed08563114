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
the q/k feature pairs they rotate together (i and i + r/2 of the r rotated features, or 2i and 2i + 1).
Attention written as matmuls (``q @ k^T``, softmax, ``@ v``) is wired as SDPA is; a relative position
bias table (Swin, BEiT, LeViT, T5) feeds the head nodes through one token node per relative position.

Which feature an op reads at each position is found, not assumed: every op output has a *layout*, the
node of each of its elements, and the data-moving calls the tracer saw between it and a reader
(reshape, permute, split, slice, channel shuffle, ...) are replayed on it. Fused projections in any
layout ([q | k | v] blocks, per-head [q_h | k_h | v_h], partial rotary slices) and channel splits are
followed exactly. A linear layer whose input axis holds tokens rather than features (the token mixing of
MLP-Mixer and ResMLP, gMLP's spatial gating unit) maps the sequence of every feature alike: the features
pass through it, and its weights live in a token space of their own, from fixed position nodes ("token")
through hidden units ("neuron", where only another linear along tokens reads them) to fixed output
positions ("token", with its bias); any other layer along tokens is refused.

The map is a bijection: :func:`from_neuron_graph` returns every parameter (and batch-norm running
statistics) exactly, and permuting the hidden neurons of a network (a symmetry that leaves its function
unchanged) permutes the graph's nodes and nothing else.

Structure (edge indices) is built on the parameters' device, so a ``meta`` model gives node and edge
counts of even the largest GPT-2 without allocating anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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
        builder.check_layer(op)
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
        self.layouts: dict[int, Tensor] = {}  # op index -> node of each element of its output (broadcastable)
        self.scores: set[int] = set()  # ops whose output is attention scores (one head node per row)
        # Token space (see _token_inputs): op index -> the token node of each element of its output, where a
        # linear along tokens wrote it; token nodes read by a later linear along tokens, and those read otherwise.
        self.token_layouts: dict[int, Tensor] = {}
        self.read_along_tokens: set[int] = set()
        self.read_otherwise: set[int] = set()
        self.pieces: dict[int, list[tuple[str | None, int]]] = {}  # concatenations of parameters: a bias
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
                f"{tuple(weight.shape)} does not map {len(src)} input features to {rows} outputs"
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

    # -- what an op reads --------------------------------------------------------------------------
    def emit(self, op: Op, layout: Tensor | None, nodes: Tensor | None = None) -> None:
        """Record op's output: ``layout`` holds the node of each element (broadcastable to its shape)."""
        if layout is not None:
            layout = _compact(layout)
            self.layouts[op.index] = layout
        self.sets[op.index] = nodes if nodes is not None else _distinct(layout)[0]

    def emit_along(self, op: Op, nodes: Tensor, axis: int) -> None:
        """Output features ``nodes`` laid along ``axis`` of the op's output, the same at every other position."""
        shape = op.out_shape
        if not shape or shape[axis] != len(nodes):
            self.sets[op.index] = nodes  # a scalar or an output laid out otherwise: read as a plain set
            return
        self.emit(op, _laid_along(nodes, len(shape), axis), nodes)

    def layout(self, op: Op, position: int, layouts: dict[int, Tensor] | None = None) -> Tensor | None:
        """The node of each element of what op reads at ``position``: its producer's layout with the
        data-moving calls in between replayed on it; None when the producer is a model input. With
        ``layouts``, the same for another kind of layout (the token layouts)."""
        producer = self.ir.ops[op.sources[position]]
        base = (self.layouts if layouts is None else layouts).get(producer.index)
        steps = op.views[position]
        if base is None:
            return None
        if steps is None:
            self._unsupported(op, "an input reached through a data movement that cannot be replayed")
        tensor = base.expand(producer.out_shape) if steps else base
        for step in steps:
            tensor = step.apply(tensor)
        return _compact(tensor) if steps else tensor

    def features(self, op: Op, position: int, axis: int, layout: Tensor | None = None) -> Tensor:
        """The node of each position along ``axis`` of what op reads at ``position`` (whose ``layout`` may
        be given), which must be the same at every position of the other axes (a layer reads features)."""
        layout = self.layout(op, position) if layout is None else layout
        if layout is None:
            return self.sets[op.sources[position]]
        shape = op.in_shapes[position]
        lines = _lines(layout, shape, axis)
        if not (lines == lines[:1]).all():
            where = f"axis {axis % len(shape)} of its input {tuple(shape)}"
            self._unsupported(
                op,
                f"a '{op.kind}' along tokens: {where} does not hold features, which change along another axis; "
                "only a linear layer may mix tokens, one feature at a time"
                if layout.shape[axis] == 1
                else f"a '{op.kind}' along {where}, whose features also change along another axis (one layer "
                "shared by every head or group)",
            )
        if (lines[0] < 0).any():
            self._unsupported(op, "an input padded along its features")
        return lines[0]

    def rows(self, op: Op, position: int, transposed: bool = False) -> Tensor:
        """What an attention or matmul reads at ``position``, (..., tokens, features), as one row of
        feature nodes per head (the leading axes but the last are batch: their first entry is read)."""
        layout = self.layout(op, position)
        if layout is None:
            self._unsupported(op, "attention on a model input")
        shape = op.in_shapes[position]
        tensor = layout.expand(shape)
        tensor = tensor.transpose(-1, -2) if transposed else tensor
        tensor = tensor.reshape(1, *tensor.shape) if tensor.dim() == 2 else tensor
        tensor = tensor[(0,) * (tensor.dim() - 3)]
        if not (tensor == tensor[:, :1]).all():
            self._unsupported(op, f"attention whose input {position} of {tuple(shape)} changes features along tokens")
        return tensor[:, 0]

    # -- ops --------------------------------------------------------------------------------------
    def check_layer(self, op: Op) -> None:
        """Refuse, before any node is made, a layer whose weight is not a parameter (NFNet's weight-standardized
        convolution computes it) or whose input no traced op produces (XCiT's positional encoding convolves a
        grid made from constants): the graph places parameters and follows the model's input."""
        if op.kind not in ("linear", "conv", "embedding"):
            return
        if "weight" not in op.params:
            self._unsupported(op, f"a '{op.kind}' whose weight is computed from parameters, not a parameter itself")
        if op.kind != "embedding" and not op.sources:
            self._unsupported(op, f"a '{op.kind}' whose input is computed from constants, not from the model's input")

    def add(self, op: Op) -> None:
        handler = self._rotary if op.function == ROTARY else getattr(self, f"_{op.kind}", None)
        if handler is None and op.kind in _PASS_THROUGH:
            handler = self._pass_through
        if handler is None:
            self._no_form(op)
        if op.attrs.get("sliced"):
            self._unsupported(op, f"reading part of parameter(s) {', '.join(op.attrs['sliced'])}")
        if op.kind in ("linear", "conv", "embedding") and set(op.params) - {"weight", "bias"}:
            self._unsupported(op, f"a '{op.kind}' reading parameters {', '.join(op.params.values())}")
        handler(op)
        self._track_token_space(op)
        if op.sources and any(source in self.scores for source in op.sources) and op.kind != "matmul":
            self.scores.add(op.index)  # masked, scaled, biased or normalized attention scores

    def _no_form(self, op: Op) -> None:
        raise UnsupportedModuleError(
            f"module {describe_module(op.module_path, op.module_type)}: op '{op.kind}' "
            f"({op.function}) has no neuron-graph form yet; supported: "
            f"{', '.join(sorted(_PASS_THROUGH | _HANDLED))}"
        )

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
        nodes = self.new_nodes(count, "input")
        channels = len(op.out_shape) > 2 and first.kind == "conv"
        if op.out_shape and count == op.out_shape[1 if channels else -1]:
            self.emit_along(op, nodes, 1 if channels else -1)
        else:
            self.sets[op.index] = nodes  # flattened or patched by its reader: read as a plain set

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
        rows, cols = self._weight_matrix_shape(op)
        axis = op.attrs.get("feature_axis", -1)  # -2 for W @ x
        layout = self.layout(op, 0)
        along_tokens = layout is not None and _holds_tokens(layout, op.in_shapes[0], axis)
        if along_tokens:
            src, out = self._token_inputs(op, axis, cols), self.new_nodes(rows, "token")
        else:
            out = self.new_nodes(rows, "neuron")
            src = _runs(op, self.features(op, 0, axis, layout))
        self.dense(op, op.params["weight"], src, out, op.attrs.get("weight_layout") == "in_out")
        for position in range(1, len(op.sources)):
            self._bias_pieces(op, op.sources[position], out)
        if along_tokens:
            self._finish_token_linear(op, layout, out, axis)
        else:
            self._finish_neurons(op, out, axis)

    # A linear layer along tokens (MLP-Mixer's and ResMLP's token mixing, gMLP's spatial gating unit) applies one
    # map to the sequence of every feature. Its neurons live in a token space of their own: it reads fixed position
    # nodes ("token"), or the token nodes of a linear along tokens before it, and writes one node per row of its
    # weight, which carries its bias. The features pass through it: feature i of its output is feature i of its
    # input. Its output nodes are hidden units ("neuron", permutable) where only another linear along tokens reads
    # them, as in a token-mixing MLP, and fixed positions ("token") where the sequence is read by anything else.
    def _token_inputs(self, op: Op, axis: int, count: int) -> Tensor:
        """The token nodes a linear along tokens reads: new position nodes, or those a linear along tokens wrote."""
        tokens = self.layout(op, 0, self.token_layouts)
        if tokens is None:
            return self.new_nodes(count, "token")
        lines = _lines(tokens, op.in_shapes[0], axis)
        if not (lines == lines[:1]).all():
            self._unsupported(op, "reading token nodes that change along features")
        self.read_along_tokens.update(lines[0].tolist())
        return lines[0]

    def _finish_token_linear(self, op: Op, layout: Tensor, out: Tensor, axis: int) -> None:
        if "bias" in op.params:
            self.set_values(op.params["bias"], out, _BIAS)
        self.emit(op, layout)  # the features, constant along the token axis, broadcast to the output
        self.token_layouts[op.index] = _compact(_laid_along(out, len(op.out_shape), axis))

    def _track_token_space(self, op: Op) -> None:
        """Token nodes an op reads without carrying them on (a residual sum, a product, a model output) are
        positions of the sequence: they stay fixed."""
        if op.index in self.token_layouts:
            return
        for source in set(op.sources) & self.token_layouts.keys():
            self.read_otherwise.update(self.token_layouts[source].reshape(-1).tolist())

    def _bias_pieces(self, op: Op, source: int, out: Tensor) -> None:
        """A bias concatenated from parameters and constants (EVA's and BEiT's q/v biases around a zero
        k bias): each parameter is the bias of its own range of neurons, the constants stay zero."""
        pieces = self.pieces.get(source)
        if pieces is None:
            self._unsupported(op, "a linear layer whose bias is an activation")
        start = 0
        for name, length in pieces:
            if name is not None:
                self.set_values(name, out[start : start + length], _BIAS)
            start += length

    def _conv(self, op: Op) -> None:
        if op.attrs.get("transposed"):
            self._unsupported(op, "transposed convolutions")
        weight = self.state[op.params["weight"]]
        out = self.new_nodes(weight.shape[0], "neuron")
        self.dense(op, op.params["weight"], self.features(op, 0, 1), out, False, op.attrs.get("groups", 1))
        self._finish_neurons(op, out, 1)

    def _embedding(self, op: Op) -> None:
        vocabulary, features = self.state[op.params["weight"]].shape
        tokens = self.new_nodes(vocabulary, "input" if op.inputs else "token")
        out = self.new_nodes(features, "neuron")
        self.dense(op, op.params["weight"], tokens, out, transposed=True)
        self._finish_neurons(op, out, -1)

    def _finish_neurons(self, op: Op, out: Tensor, axis: int) -> None:
        if "bias" in op.params:
            self.set_values(op.params["bias"], out, _BIAS)
        self.emit_along(op, out, axis)
        self.producer[int(out[0])] = op

    def _norm(self, op: Op, axis: int) -> None:
        layout = self.layout(op, 0)
        if layout is not None and layout.shape[axis] > 1:
            groups = torch.unique(_lines(layout, op.in_shapes[0], axis), dim=0)  # one row per head (or group)
            if len(groups) > 1:
                self._norm_per_group(op, groups, layout)
                return
        features = self.features(op, 0, axis, layout)
        out = self.new_nodes(len(features), "norm")
        self.identity(features, out)
        for role, slot in (("weight", _WEIGHT), ("bias", _NORM_BIAS)):
            if role in op.params:
                self.set_values(op.params[role], out, slot)
        self.emit_along(op, out, axis)

    def _norm_per_group(self, op: Op, groups: Tensor, layout: Tensor) -> None:
        """A norm over each head (or group) of features on its own, one weight shared by all (the per-head
        QK-norm of Qwen3): a norm node per feature, and a node per weight entry that carries the shared value,
        with an identity edge to the feature it scales in every head, so that permuting heads permutes nodes."""
        features = groups.reshape(-1)
        if (features < 0).any() or len(features.unique()) != len(features):
            self._unsupported(op, f"a '{op.kind}' over groups of features that overlap")
        out = self.new_nodes(len(features), "norm")
        self.identity(features, out)
        if op.params:
            shared = self.new_nodes(groups.shape[1], "norm")
            self.identity(shared.repeat(len(groups)), out)
            for role, slot in (("weight", _WEIGHT), ("bias", _NORM_BIAS)):
                if role in op.params:
                    self.set_values(op.params[role], shared, slot)
        renamed = torch.full((self.num_nodes,), -1, dtype=torch.long)
        renamed[features] = out
        self.emit(op, renamed[layout])

    def _layer_norm(self, op: Op) -> None:
        self._norm(op, -1)

    _rms_norm = _layer_norm

    def _group_norm(self, op: Op) -> None:
        self._norm(op, 1)

    def _batch_norm(self, op: Op) -> None:
        """Attached to the neurons of the conv/linear before it (the usual case), else to new nodes."""
        axis = 1 if len(op.in_shapes[0]) > 1 else 0
        features = self.features(op, 0, axis)
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
        self.emit_along(op, out, axis)

    def _pass_through(self, op: Op) -> None:
        """Activations, pooling, softmax: the output's features are the input's."""
        if len(set(op.sources)) != 1:
            self._unsupported(op, f"'{op.kind}' of {len(set(op.sources))} activations")
        layout = self.layout(op, 0)
        if layout is None:
            self.sets[op.index] = self.sets[op.sources[0]]
        elif _broadcasts(layout.shape, op.out_shape):
            self.emit(op, layout)
            tokens = self.layout(op, 0, self.token_layouts)
            if tokens is not None and _broadcasts(tokens.shape, op.out_shape):
                self.token_layouts[op.index] = tokens  # an activation between two linears along tokens
        else:  # a reduction or pooling that dropped or resized axes (NCHW, NHWC or tokens): features stay
            varying = [axis for axis, size in enumerate(_compact(layout).shape) if size > 1]
            features = self.features(op, 0, varying[0] if len(varying) == 1 else -1)
            shape = op.out_shape
            self.emit_along(op, features, -1 if shape and shape[-1] == len(features) else 1)

    def _other(self, op: Op) -> None:
        """Masking attention scores (``where``, ``masked_fill``) and resizing an image (``interpolate``) move no
        feature; anything else has no form."""
        if op.params or len(set(op.sources)) != 1 or (op.sources[0] not in self.scores and op.function not in _RESIZE):
            self._no_form(op)
        self._pass_through(op)

    def _elementwise(self, op: Op, node_type: str, slot: int) -> None:
        """x + y, x * y, x + parameter (positional table), x * parameter (layer scale): one node per distinct
        combination of input features, found by pairing the inputs' layouts element by element."""
        if not op.params and len(set(op.sources)) == 1:
            self._pass_through(op)  # arithmetic with constants
            return
        layouts = [self.layout(op, i) for i in range(len(op.sources))]
        if any(layout is None for layout in layouts):
            layouts = [  # a model input: features along the channel (4-D) or last axis
                self.features(op, i, 1 if len(shape) == 4 else -1).view(
                    -1, *[1] * (len(shape) - 1 if len(shape) == 4 else 0)
                )
                for i, shape in enumerate(op.in_shapes)
            ]
        layouts = list(torch.broadcast_tensors(*layouts))
        key = layouts[0]
        for layout in layouts[1:]:
            key = key * self.num_nodes + layout
        _, inverse, first = _distinct(key, positions=True)
        out = self.new_nodes(len(first), node_type)
        for layout in layouts:
            features = layout.reshape(-1)[first]
            if (features < 0).any():
                self._unsupported(op, f"'{op.kind}' of a padded activation")
            self.identity(features, out)
        self.emit(op, out[inverse], out)
        for name in op.params.values():
            self._parameter_operand(op, name, self._along_one_axis(op, out), slot)

    def _along_one_axis(self, op: Op, out: Tensor) -> Tensor:
        """``out`` in the order of the one output axis it varies along, the axis a parameter operand spans."""
        layout = self.layouts[op.index]
        varying = [axis for axis, size in enumerate(layout.shape) if size > 1]
        if len(varying) > 1:
            self._unsupported(op, f"'{op.kind}' of a parameter with activations laid out along axes {varying}")
        return layout.reshape(-1)

    def _add(self, op: Op) -> None:
        if not self._token_bias(op):
            self._elementwise(op, "sum", _BIAS)

    def _token_bias(self, op: Op) -> bool:
        """``W @ x + b[:, None]``: a parameter added along the tokens of a linear along tokens that has no bias
        of its own is its bias, on its token nodes; the layouts pass through."""
        if len(op.params) != 1 or len(op.sources) != 1 or op.sources[0] not in self.token_layouts:
            return False
        tokens = self.layout(op, 0, self.token_layouts)
        name = next(iter(op.params.values()))
        shape = op.attrs.get("read_shapes", {}).get(name, self.state[name].shape)
        varying = [size > 1 for size in (1,) * (len(op.out_shape) - len(shape)) + tuple(shape)]
        if varying != [size > 1 for size in tokens.shape]:
            return False
        nodes = tokens.reshape(-1)
        placed = (p for p in self.placements if isinstance(p, NodePlacement) and p.slot == _BIAS)
        if any(torch.isin(p.nodes, nodes).any() for p in placed):
            self._unsupported(op, f"a second bias '{name}' along tokens")
        self.set_values(name, nodes, _BIAS)
        self.emit(op, self.layout(op, 0))
        self.token_layouts[op.index] = tokens
        return True

    def _mul(self, op: Op) -> None:
        self._elementwise(op, "scale", _WEIGHT)

    def _parameter_operand(self, op: Op, name: str, out: Tensor, slot: int) -> None:
        """A parameter added to or multiplying ``out``: one value per neuron when it is a vector, one node
        feeding them all when it is a scalar (StarReLU's), else one token node per other position with weight
        edges to the neurons (ViT ``pos_embed``, register tokens, relative position bias tables (positions,
        heads), or (heads, positions) as LeViT's)."""
        value = self.state[name]
        if value.numel() == len(out):
            self.set_values(name, out, slot)
            return
        if value.numel() == 1:
            carrier = self.new_nodes(1, "token")
            self.set_values(name, carrier, slot)
            self.identity(carrier.expand(len(out)), out)
            return
        if value.numel() % len(out):
            self._unsupported(op, f"parameter '{name}' of {tuple(value.shape)} on {len(out)} features")
        positions = self.new_nodes(value.numel() // len(out), "token")
        heads_first = value.dim() == 2 and value.shape[0] == len(out) != value.shape[1]
        self.dense(op, name, positions, out, transposed=not heads_first)

    def _concat(self, op: Op) -> None:
        if not op.sources:  # parameters and constants only: a bias for the layer it feeds (see _bias_pieces)
            self.pieces[op.index] = op.attrs.get("pieces", [])
            self.sets[op.index] = torch.zeros(0, dtype=torch.long)
            return
        if not op.params:
            self._join(op)
            return
        rank = len(op.out_shape)
        feature_dim = 1 if rank == 4 else rank - 1
        if op.attrs.get("dim", 0) % rank == feature_dim or len(set(op.sources)) != 1:
            self._unsupported(op, "concatenating parameters along features, or different activations along tokens")
        features = self.features(op, 0, feature_dim)
        out = self.new_nodes(len(features), "token")
        self.identity(features, out)
        for i, name in enumerate(op.params.values()):  # a class token, then distillation or register tokens
            carrier = out if i == 0 else self.new_nodes(len(out), "token")
            if i:
                self.identity(carrier, out)
            self._parameter_operand(op, name, carrier, _BIAS)
        self.emit_along(op, out, feature_dim)

    def _join(self, op: Op) -> None:
        """Activations concatenated or stacked: the output's layout is the inputs' joined the same way
        (channels side by side, tokens one after another); no node is added."""
        layouts = [self.layout(op, i) for i in range(len(op.sources))]
        if any(layout is None for layout in layouts):
            self.sets[op.index] = torch.cat([self.sets[i] for i in op.sources])
            return
        full = [layout.expand(shape) for layout, shape in zip(layouts, op.in_shapes, strict=True)]
        join = torch.stack if op.function == "stack" else torch.cat
        self.emit(op, join(full, op.attrs.get("dim", 0)))

    def _attention(self, op: Op) -> None:
        """Per query head: q and k features -> head node -> output features; v -> output one-to-one.

        With grouped-query or multi-query attention each k/v head serves a group of query heads
        (``repeat_kv`` only views it): its features are wired to every head of the group. An attention
        mask computed from parameters (T5's relative position bias) feeds its heads; a parameter used as
        the mask (BEiT's relative position bias table) is a token node per relative position.
        """
        roles = op.attrs.get("roles") or ["query", "key", "value"]
        if not {"query", "key", "value"} <= set(roles):
            self._unsupported(op, f"attention reading {', '.join(roles)}")
        q, k, v = (self.rows(op, roles.index(role)) for role in ("query", "key", "value"))
        heads, out = self._score_heads(op, q, k)
        out = self._attend(op, heads, v)
        if "attn_mask" in roles:
            self._head_bias(op, roles.index("attn_mask"), heads)
        if "attn_mask" in op.params:
            self._parameter_operand(op, op.params["attn_mask"], heads, _BIAS)
        self._emit_heads(op, out.view(len(heads), -1))

    def _score_heads(self, op: Op, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Head nodes fed by q and k rows ``(heads, d)`` and ``(kv heads, d)``; q i and k i of a head are paired."""
        if k.shape[1] != q.shape[1] or not len(k) or len(q) % len(k):
            self._unsupported(op, f"attention with q/k of {tuple(q.shape)}/{tuple(k.shape)} (heads, features)")
        k = k.repeat_interleave(len(q) // len(k), dim=0)
        heads = self.new_nodes(len(q), "head")
        of_head = heads.repeat_interleave(q.shape[1])
        self.identity(q.reshape(-1), of_head, "head")
        self.identity(k.reshape(-1), of_head, "head")
        self.identity(q.reshape(-1), k.reshape(-1), "qk_pair")
        return heads, of_head

    def _attend(self, op: Op, heads: Tensor, v: Tensor) -> Tensor:
        """Output features of each head: its head node and its value features, one to one."""
        if not len(v) or len(heads) % len(v):
            self._unsupported(op, f"attention of {len(heads)} heads on values of {tuple(v.shape)} (heads, features)")
        v = v.repeat_interleave(len(heads) // len(v), dim=0).reshape(-1)
        out = self.new_nodes(len(v), "attention")
        self.identity(heads.repeat_interleave(len(v) // len(heads)), out, "head")
        self.identity(v, out)
        return out

    def _head_bias(self, op: Op, position: int, heads: Tensor) -> None:
        """An additive mask computed by the network feeds the heads it is added to."""
        bias = self.rows(op, position)
        if (bias != bias[:, :1]).any() or len(heads) % len(bias):
            self._unsupported(op, f"an attention mask of {op.in_shapes[position]} that is not one value per head")
        self.identity(bias[:, 0].repeat_interleave(len(heads) // len(bias)), heads)

    def _emit_heads(self, op: Op, nodes: Tensor) -> None:
        """Lay ``(heads, features)`` nodes out as an attention output ``(..., heads, tokens, features)``."""
        shape = op.out_shape
        if len(shape) < 3 or shape[-3] != nodes.shape[0] or shape[-1] != nodes.shape[1]:
            self._unsupported(op, f"an attention output of {tuple(shape)} for {tuple(nodes.shape)} head features")
        view = [1] * len(shape)
        view[-3], view[-1] = nodes.shape
        self.emit(op, nodes.view(view), nodes.reshape(-1))

    def _matmul(self, op: Op) -> None:
        """Attention written as matmuls (GPT-Neo, Bloom's ``baddbmm``, Swin, LeViT): ``q @ k^T`` gives head
        nodes, then masks, biases and softmax act on them, and ``scores @ v`` gives the output features."""
        if len(op.sources) != 2:
            self._unsupported(op, f"a matmul of {len(op.sources)} activations")
        if op.sources[0] in self.scores:
            layout = self.rows(op, 0)
            if (layout != layout[:, :1]).any():
                self._unsupported(op, "attention scores that are not one head per row")
            out = self._attend(op, layout[:, 0], self.rows(op, 1))
            self._emit_heads(op, out.view(len(layout), -1))
            return
        heads, _ = self._score_heads(op, self.rows(op, 0), self.rows(op, 1, transposed=True))
        shape = op.out_shape
        view = [1] * len(shape)
        view[-3] = len(heads)
        self.emit(op, heads.view(view), heads)
        self.scores.add(op.index)

    def _rotary(self, op: Op) -> None:
        """Rotary position embeddings read no parameter but rotate pairs of features of every head together,
        at a frequency of their own: a qk_pair edge binds each pair (features i and i + r/2 of the r rotated
        ones, or 2i and 2i + 1 when interleaved) and carries its frequency exponent i / (r/2) (RoPE's angle
        is position * base^(-i / (r/2))), so that permuting features within a head, which changes the
        function, does not merely permute the graph's nodes. Partial rotary (GPT-NeoX, Phi, GPT-J) rotates
        the first r features of a head: the layout of what it reads says which nodes those are."""
        layout = self.layout(op, 0)
        if layout is None:
            self._unsupported(op, "rotary embeddings of a model input")
        shape = op.in_shapes[0]
        width = shape[-1]
        rows = torch.unique(layout.expand(shape).reshape(-1, width), dim=0)  # one per head (tokens repeat it)
        if width % 2:
            self._unsupported(op, f"rotary embeddings of {width} features")
        half = width // 2
        first, second = (
            (rows[:, :half], rows[:, half:])
            if op.attrs.get("pairs") != "interleaved"
            else (rows[:, 0::2], rows[:, 1::2])
        )
        exponent = torch.arange(half, device=self.device).repeat(len(rows)) / half
        self.add_edges(
            first.reshape(-1).to(self.device), second.reshape(-1).to(self.device), exponent.unsqueeze(1), "qk_pair"
        )
        self.emit(op, layout)

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
            if index in self.token_layouts:
                self.read_otherwise.update(self.token_layouts[index].reshape(-1).tolist())
        hidden = sorted(self.read_along_tokens - self.read_otherwise)
        node_type[torch.tensor(hidden, dtype=torch.long)] = _NODE_TYPE["neuron"]  # hidden units of a token MLP
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


_RESIZE = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"})
_HANDLED = frozenset(
    {"input", "linear", "conv", "embedding", "layer_norm", "group_norm", "rms_norm", "batch_norm", "add", "mul",
     "concat", "attention", "matmul"}
)  # fmt: skip


def _laid_along(nodes: Tensor, rank: int, axis: int) -> Tensor:
    """``nodes`` as a layout of ``rank`` axes that varies along ``axis`` only."""
    view = [1] * rank
    view[axis] = len(nodes)
    return nodes.view(view)


def _lines(layout: Tensor, shape: tuple[int, ...], axis: int) -> Tensor:
    """The nodes along ``axis`` of a tensor of ``shape`` laid out as ``layout``, one row per position of the others."""
    lines = layout.movedim(axis, -1)
    return lines.expand(*lines.shape[:-1], shape[axis]).reshape(-1, shape[axis])


def _holds_tokens(layout: Tensor, shape: tuple[int, ...], axis: int) -> bool:
    """Whether ``axis`` of an input laid out as ``layout`` holds tokens: the features change along another axis
    and stay the same along this one."""
    return shape[axis] > 1 and layout.shape[axis] == 1 and layout.numel() > 1


def _compact(layout: Tensor) -> Tensor:
    """``layout`` with every axis along which it is constant reduced to size 1 (it still broadcasts)."""
    for axis in range(layout.dim()):
        if layout.shape[axis] > 1 and (layout.stride(axis) == 0 or _constant_along(layout, axis)):
            layout = layout.narrow(axis, 0, 1)
    return layout


def _constant_along(layout: Tensor, axis: int) -> bool:
    values = layout.movedim(axis, 0).reshape(layout.shape[axis], -1).cpu().numpy()  # numpy: see _distinct
    return bool((values == values[:1]).all())


def _distinct(values: Tensor, positions: bool = False):
    """The distinct values of ``values`` in order of first appearance; with ``positions``, also each element's
    index among them (shaped as ``values``) and the flat position where each first appears.

    On numpy: these are small bookkeeping arrays, and torch's parallel sorts are slow on a busy machine."""
    flat = values.reshape(-1).cpu().numpy()
    unique, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    if not positions:
        return torch.from_numpy(unique[order]), None, None
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return (
        torch.from_numpy(unique[order]),
        torch.from_numpy(rank[inverse.reshape(-1)]).view(values.shape),
        torch.from_numpy(first[order]),
    )


def _broadcasts(shape: torch.Size, target: tuple[int, ...]) -> bool:
    return len(shape) == len(target) and all(s in (1, t) for s, t in zip(shape, target, strict=True))


def _runs(op: Op, nodes: Tensor) -> Tensor:
    """The distinct nodes of ``nodes`` when each fills a run of equal length (a flattened conv output read
    by a linear layer: its positions become the edge's feature vector), else ``nodes`` itself."""
    if len(nodes) < 2 or nodes[0] != nodes[1]:
        return nodes
    width = int((nodes != nodes[0]).nonzero()[0]) if (nodes != nodes[0]).any() else len(nodes)
    distinct = nodes[::width]
    if len(nodes) % width or not torch.equal(distinct.repeat_interleave(width), nodes):
        raise UnsupportedModuleError(
            f"module {describe_module(op.module_path, op.module_type)}: the neuron graph does not support "
            "reading features flattened with other axes in an order other than feature-major"
        )
    return distinct
