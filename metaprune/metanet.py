"""A GNN metanetwork that rewrites a network's neuron graph: ``graph -> graph`` with the same structure.

Weights live on edges and biases / norm parameters on nodes (see :mod:`hypernets.graph.neuron_graph`),
so every layer updates both: an edge reads ``[edge, source, target]``, then a node aggregates messages
from its incoming and its outgoing edges with mean, std, max and min (PNA-style). Nodes start from
their type and values only, never from their index, so permuting hidden neurons permutes the output
the same way. Values are divided by their tensor's RMS on the way in (trained weights are tiny) and
the output is ``value + alpha * rms * delta`` with a learned ``alpha`` that starts at ``1e-3``: a
fresh metanetwork is nearly the identity map. Only parameters change; batch-norm statistics, padding
columns and identity edges are passed through untouched.

Edges are read and written at ``max_width`` values, whatever kernel the converter emits: an edge that fits
is zero-padded to it (exactly as before resampling existed), a wider one (a 7x7 stem, a 1-D kernel of 11,
a flattened 7x7 map) is resampled to ``max_width`` values on the way in and its decoded delta back to the
edge's own width on the way out, per group of edges of one width (:func:`resample`). Narrow kernels in a
graph that also has wide ones read their values exactly as in a graph without them.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing

from hypernets.checkpoint import load_model, save_checkpoint
from hypernets.graph import EDGE_TYPES, NODE_SLOTS, NODE_TYPES, from_neuron_graph, to_neuron_graph
from hypernets.graph.inputs import Inputs
from hypernets.graph.neuron_graph import EdgePlacement, NodePlacement

CHECKPOINT_KIND = "metaprune.Metanet"
PARAMETER_SLOTS = tuple(NODE_SLOTS.index(s) for s in ("bias", "weight", "norm_bias"))  # running stats are not
AGGREGATORS = ("mean", "std", "max", "min")
MIN_SCALE = 1e-6


@dataclass(frozen=True)
class MetanetConfig:
    """Sizes of a metanetwork; saved as ``config.json`` next to its weights."""

    node_dim: int = 64
    edge_dim: int = 64
    layers: int = 3
    max_width: int = 9  # resolution at which kernels are read (k * k = 9: 3x3); wider ones are resampled
    residual_scale: float = 1e-3  # initial alpha

    def __post_init__(self) -> None:
        for name in ("node_dim", "edge_dim", "layers", "max_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"MetanetConfig.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class GraphLayout:
    """Which values of a neuron graph are parameters, the RMS of the tensor each belongs to, and the true
    width of every edge (``edge_attr`` is zero-padded to the widest kernel of the graph)."""

    node_mask: Tensor  # [N, slots] bool: a parameter lives here
    node_scale: Tensor  # [N, slots]
    edge_mask: Tensor  # [E, width] bool: a weight value (not padding, not a tied copy) lives here
    edge_scale: Tensor  # [E, 1]
    edge_groups: tuple[tuple[int, Tensor], ...]  # (width, edge ids) per edge width above 1, ascending

    @classmethod
    def of(cls, graph: Data) -> GraphLayout:
        x, attr = graph.x.detach(), graph.edge_attr.detach()
        node_mask, node_scale = torch.zeros_like(x, dtype=torch.bool), torch.ones_like(x)
        edge_mask, edge_scale = torch.zeros_like(attr, dtype=torch.bool), torch.ones_like(attr[:, :1])
        for p in graph.placements:
            if isinstance(p, NodePlacement):
                node_scale[p.nodes, p.slot] = _rms(x[p.nodes, p.slot])
                node_mask[p.nodes, p.slot] = p.slot in PARAMETER_SLOTS
            elif isinstance(p, EdgePlacement):
                rows = slice(p.start, p.start + p.rows * p.cols)
                edge_scale[rows] = _rms(attr[rows, : p.width])
                edge_mask[rows, : p.width] = True
        return cls(node_mask, node_scale, edge_mask, edge_scale, _edge_groups(graph, attr))

    def wider_than(self, width: int) -> tuple[tuple[int, Tensor], ...]:
        """The edge groups whose values do not fit in ``width`` columns (the ones to resample)."""
        return tuple((w, edges) for w, edges in self.edge_groups if w > width)


def _edge_groups(graph: Data, attr: Tensor) -> tuple[tuple[int, Tensor], ...]:
    """``(width, edge ids)`` for each true edge width above 1 (a single value never needs resampling, and
    the largest graphs, transformers, are all 1 wide: they pay nothing)."""
    if attr.shape[1] == 1:
        return ()
    edge_width = torch.ones(len(attr), dtype=torch.int32, device=attr.device)  # identity edges: column 0
    placed = set()
    for p in graph.placements:
        if isinstance(p, EdgePlacement):
            edge_width[p.start : p.start + p.rows * p.cols] = p.width
            placed.add(p.width)
    tied = graph.edge_type == EDGE_TYPES.index("tied")
    if tied.any():
        edge_width[tied] = _tied_widths(attr[tied], placed).to(edge_width.dtype)
    return tuple((w, (edge_width == w).nonzero().flatten()) for w in edge_width.unique().tolist() if w > 1)


def _tied_widths(attr: Tensor, placed: set[int]) -> Tensor:
    """Widths of tied edges, which have no placement of their own: the narrowest placed width (the tensor
    they copy is placed) that holds all their nonzero values, so a tied 7x7 kernel reads as 49 values."""
    occupied = ((attr != 0) * torch.arange(1, attr.shape[1] + 1, device=attr.device)).amax(dim=1)
    widths = torch.tensor(sorted(placed | {attr.shape[1]}), device=attr.device)
    return widths[torch.searchsorted(widths, occupied.clamp_min(1))]


def _rms(values: Tensor) -> Tensor:
    return values.float().square().mean().sqrt().clamp_min(MIN_SCALE).to(values.dtype)


def _square_side(width: int) -> int | None:
    side = math.isqrt(width)
    return side if side * side == width else None


def _grid(width: int, square: bool) -> tuple[int, int]:
    return (_square_side(width),) * 2 if square else (1, width)


def resample(values: Tensor, width: int) -> Tensor:
    """``[n, w] -> [n, width]``: each row's values resampled, as a k x k image when both widths are squares
    (k x k kernels, flattened square maps), else as a line (1-D kernels, 1 x k, odd shapes).

    Bilinear with the pixel-area convention (``align_corners=False``) both ways, antialiased when
    shrinking: a read value is a weighted mean of the kernel around its cell and the written delta is
    interpolated from the same cell centres, so what the metanetwork reads at a cell it writes there. The
    weights are non-negative and sum to one, so the values keep their scale (they are already over their
    tensor's RMS) and a constant stays constant.
    """
    n, w = values.shape
    square = _square_side(w) is not None and _square_side(width) is not None
    image = values.float().reshape(n, 1, *_grid(w, square))
    out = nn.functional.interpolate(
        image, size=_grid(width, square), mode="bilinear", align_corners=False, antialias=width < w
    )
    return out.reshape(n, width).to(values.dtype)


def _resample_mask(mask: Tensor, width: int) -> Tensor:
    """``[n, w] -> [n, width]``, 1 where any value of the cell's region exists (the mask of a resampled edge)."""
    n, w = mask.shape
    square = _square_side(w) is not None and _square_side(width) is not None
    image = mask.float().reshape(n, 1, *_grid(w, square))
    return nn.functional.adaptive_max_pool2d(image, _grid(width, square)).reshape(n, width).to(mask.dtype)


def _fit_columns(values: Tensor, width: int) -> Tensor:
    """Zero-pad or cut ``values`` to ``width`` columns (for an edge that fits, only zero padding is cut)."""
    if values.shape[1] >= width:
        return values[:, :width]
    return nn.functional.pad(values, (0, width - values.shape[1]))


def read_edges(attr: Tensor, layout: GraphLayout, max_width: int) -> Tensor:
    """The edge encoder's input ``[E, 2 * max_width]``: values over their tensor's RMS, then which exist.

    Edges that fit are zero-padded (or their padding cut), so a graph no wider than ``max_width`` is read
    exactly as before resampling existed; each wider group is resampled from its own width, not the
    padded one.
    """
    scaled = attr / layout.edge_scale
    values, mask = _fit_columns(scaled, max_width), _fit_columns(layout.edge_mask, max_width)
    for width, edges in layout.wider_than(max_width):
        values = values.index_put((edges,), resample(scaled[edges, :width], max_width))
        mask = mask.index_put((edges,), _resample_mask(layout.edge_mask[edges, :width], max_width))
    return torch.cat([values, mask.to(values.dtype)], dim=-1)


def write_edges(delta: Tensor, layout: GraphLayout, width: int) -> Tensor:
    """Decoded ``[E, max_width]`` deltas as ``[E, width]`` graph columns: each wider group resampled back to
    its own width; the rest cut to ``width`` (``layout.edge_mask`` then zeroes what is not a weight)."""
    max_width = delta.shape[1]
    out = _fit_columns(delta, width)
    for own, edges in layout.wider_than(max_width):
        out = out.index_put((edges,), _fit_columns(resample(delta[edges], own), width))
    return out


def _mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class NeuronGraphLayer(MessagePassing):
    """One round of edge then node updates, both pre-norm residual.

    Messages run both ways, each with its own weights: a neuron learns from the weights that feed it
    and from those that read it (a channel is prunable when either side is small).
    """

    def __init__(self, node_dim: int, edge_dim: int) -> None:
        super().__init__(aggr=list(AGGREGATORS))
        self.node_norm, self.edge_norm = nn.LayerNorm(node_dim), nn.LayerNorm(edge_dim)
        self.edge_mlp = _mlp(edge_dim + 2 * node_dim, edge_dim)
        self.forward_message = nn.Linear(node_dim + edge_dim, node_dim)
        self.backward_message = nn.Linear(node_dim + edge_dim, node_dim)
        self.node_mlp = _mlp(node_dim * (1 + 2 * len(AGGREGATORS)), node_dim)

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        hn = self.node_norm(h)
        e = e + self.edge_updater(edge_index, h=hn, e=self.edge_norm(e))
        size = (h.shape[0], h.shape[0])
        incoming = self.propagate(edge_index, h=hn, e=e, message_net=self.forward_message, size=size)
        outgoing = self.propagate(edge_index.flip(0), h=hn, e=e, message_net=self.backward_message, size=size)
        return h + self.node_mlp(torch.cat([hn, incoming, outgoing], dim=-1)), e

    def edge_update(self, h_i: Tensor, h_j: Tensor, e: Tensor) -> Tensor:
        return self.edge_mlp(torch.cat([e, h_j, h_i], dim=-1))

    def message(self, h_j: Tensor, e: Tensor, message_net: nn.Module) -> Tensor:
        return torch.nn.functional.gelu(message_net(torch.cat([h_j, e], dim=-1)))


class Metanet(nn.Module):
    """``Metanet(config)(graph) -> graph``: the same neuron graph with rewritten parameter values."""

    def __init__(self, config: MetanetConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = config = MetanetConfig(**{**(asdict(config) if config else {}), **overrides})
        slots, width = len(NODE_SLOTS), config.max_width
        self.node_type_embedding = nn.Embedding(len(NODE_TYPES), config.node_dim)
        self.edge_type_embedding = nn.Embedding(len(EDGE_TYPES), config.edge_dim)
        self.node_encoder = nn.Linear(2 * slots, config.node_dim)  # values and which slots exist
        self.edge_encoder = nn.Linear(2 * width, config.edge_dim)
        self.layers = nn.ModuleList(NeuronGraphLayer(config.node_dim, config.edge_dim) for _ in range(config.layers))
        self.node_decoder = nn.Sequential(nn.LayerNorm(config.node_dim), nn.Linear(config.node_dim, slots))
        self.edge_decoder = nn.Sequential(nn.LayerNorm(config.edge_dim), nn.Linear(config.edge_dim, width))
        self.alpha = nn.Parameter(torch.full((2,), config.residual_scale))  # nodes, edges

    def forward(self, graph: Data, layout: GraphLayout | None = None) -> Data:
        layout = layout or GraphLayout.of(graph)
        x = graph.x / layout.node_scale
        h = self.node_type_embedding(graph.node_type) + self.node_encoder(
            torch.cat([x, layout.node_mask.to(x.dtype)], dim=-1)
        )
        e = self.edge_type_embedding(graph.edge_type) + self.edge_encoder(
            read_edges(graph.edge_attr, layout, self.config.max_width)
        )
        for layer in self.layers:
            h, e = layer(h, graph.edge_index, e)
        node_delta = self.node_decoder(h) * layout.node_mask * layout.node_scale
        edge_delta = write_edges(self.edge_decoder(e), layout, graph.edge_attr.shape[1])
        edge_delta = edge_delta * layout.edge_mask * layout.edge_scale
        out = copy.copy(graph)
        out.x = graph.x + self.alpha[0] * node_delta
        out.edge_attr = graph.edge_attr + self.alpha[1] * edge_delta
        return out

    def transform(self, model: nn.Module, inputs: Inputs = None) -> dict[str, Tensor]:
        """``model``'s rewritten state dict, differentiable: run it with ``torch.func.functional_call``."""
        return transformed_state(self, to_neuron_graph(model, inputs))

    @torch.no_grad()
    def rewrite_(self, model: nn.Module, inputs: Inputs = None, strength: float = 1.0) -> nn.Module:
        """Load the rewritten parameters into ``model`` in place (the inference path of pruning).

        ``strength`` applies part of the rewrite, ``W + strength * (M(W) - W)``: 1 is the metanetwork's output,
        0 leaves the model as it was (see :mod:`metaprune.strength` for choosing it per speed-up).
        Batch-norm running statistics stay as they were, and no longer match the rewritten weights: the
        metanetwork is trained for networks whose statistics are re-estimated before use
        (:func:`metaprune.finetune.recalibrate_batchnorm`), as ``metaprune prune`` does after pruning.
        """
        if not 0 <= strength <= 1:
            raise ValueError(f"rewrite strength must be in [0, 1], got {strength}")
        rewritten = self.transform(model, inputs)
        state = model.state_dict()
        for name, value in rewritten.items():
            state[name].lerp_(value.to(state[name].dtype), strength)  # exactly the output at 1, the input at 0
        return model

    # -- checkpoints ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` in ``directory``, each written atomically."""
        save_checkpoint(directory, {"kind": CHECKPOINT_KIND, **asdict(self.config)}, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Metanet:
        return load_model(directory, CHECKPOINT_KIND, MetanetConfig, cls).to(map_location)


def graph_state(graph: Data) -> dict[str, Tensor]:
    """The state dict a (rewritten) neuron graph decodes to, ready for ``functional_call``: batch-norm
    statistics are detached (never rewritten anyway), as ``batch_norm`` refuses ones that require grad."""
    statistics = {p.name for p in graph.placements if isinstance(p, NodePlacement) and p.slot not in PARAMETER_SLOTS}
    return {k: v.detach() if k in statistics else v for k, v in from_neuron_graph(graph).items()}


def transformed_state(metanet: Metanet, graph: Data, layout: GraphLayout | None = None) -> dict[str, Tensor]:
    """The state dict of ``graph`` rewritten by ``metanet``, differentiable in its parameters."""
    return graph_state(metanet(graph, layout))
