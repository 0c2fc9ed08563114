"""Pictures of the graph views, for the docs and for checking by eye what the converter produced.

Both views are drawn alike: nodes in columns by depth (the longest path from a node without inputs),
left to right, colored by type with a legend. Neuron graphs of real models have up to millions of nodes,
so only an evenly spaced sample of each column is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import networkx as nx
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor
from torch_geometric.data import Data

from .vocab import OP_KINDS

DEFAULT_MAX_NODES = 400

# Colors are indexed by type id, so a kind has the same color in every picture.
_NODE_COLORS = [*colormaps["tab20"].colors, *colormaps["tab20b"].colors]
_EDGE_COLORS = colormaps["Set1"].colors
_INCH = 0.3  # inches per unit of the layout
_ARC_BULGE = 0.125  # how far a curved edge strays from the straight line, per unit of its length
_CURVED_EDGES = {"arrows": True, "arrowstyle": "-", "connectionstyle": f"arc3,rad={2 * _ARC_BULGE}", "width": 0.8}
_STRAIGHT_EDGES = {"arrows": False, "width": 0.5, "alpha": 0.4}  # one LineCollection: fast for many edges


def draw_op_graph(data: Data, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Draw an op graph (from :func:`to_op_graph`) as a PNG at ``path``, nodes colored by op kind."""
    edge_index = data.edge_index.cpu()
    edge_type = torch.zeros(edge_index.shape[1], dtype=torch.long)
    depth = layer_depths(edge_index, data.num_nodes)
    title = title or f"op graph: {data.num_nodes} nodes, {edge_index.shape[1]} edges"
    _draw(edge_index, edge_type, ("data flow",), depth, data.op.cpu(), OP_KINDS, path, title, curved=True)


def draw_neuron_graph(
    data: Data, path: str | os.PathLike[str], max_nodes: int = DEFAULT_MAX_NODES, title: str | None = None
) -> None:
    """Draw a neuron graph (from :func:`to_neuron_graph`) as a PNG at ``path``.

    At most about ``max_nodes`` nodes are drawn, an even share of each column, with the edges among them.
    """
    from .neuron_graph import EDGE_TYPES, NODE_TYPES

    edge_index, edge_type = data.edge_index.cpu(), data.edge_type.cpu()
    depth = layer_depths(edge_index, data.num_nodes)
    keep = _sample_columns(depth, max_nodes)
    new_id = torch.full((data.num_nodes,), -1, dtype=torch.long)
    new_id[keep] = torch.arange(len(keep))
    inside = (new_id[edge_index] >= 0).all(dim=0)
    title = title or f"neuron graph: {data.num_nodes:,} nodes, {edge_index.shape[1]:,} edges"
    if len(keep) < data.num_nodes:
        title += f" (drawn: {len(keep):,} nodes, an even sample of each column)"
    edges = new_id[edge_index[:, inside]]
    _draw(edges, edge_type[inside], EDGE_TYPES, depth[keep], data.node_type.cpu()[keep], NODE_TYPES, path, title)


def layer_depths(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Longest-path distance of each node from a node without inputs (graph views are acyclic)."""
    src, dst = edge_index.cpu()
    depth = torch.zeros(num_nodes, dtype=torch.long)
    for _ in range(num_nodes):
        relaxed = depth.scatter_reduce(0, dst, depth[src] + 1, reduce="amax")
        if torch.equal(relaxed, depth):
            return depth
        depth = relaxed
    raise ValueError("the graph has a cycle, so its nodes cannot be laid out left to right")


def _sample_columns(depth: Tensor, max_nodes: int) -> Tensor:
    """Ids of an evenly spaced sample of each depth column, about ``max_nodes`` in all."""
    order = torch.argsort(depth, stable=True)
    counts = torch.bincount(depth)
    share = max(1, max_nodes // int((counts > 0).sum()))
    kept, start = [], 0
    for count in counts.tolist():
        picks = torch.linspace(0, count - 1, min(count, share)).round().long() if count else counts[:0]
        kept.append(order[start + picks])
        start += count
    return torch.cat(kept)


def _draw(
    edge_index: Tensor,
    edge_type: Tensor,
    edge_names: Sequence[str],
    depth: Tensor,
    node_type: Tensor,
    node_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str,
    curved: bool = False,
) -> None:
    """Lay nodes ``0..N-1`` out in their depth columns and save the picture, with a legend of the types present.

    ``curved`` bends each edge by its length, so that skip connections along a chain (residuals) stay visible.
    """
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(node_type)))
    edges = edge_index.t().tolist()
    graph.add_edges_from(edges)
    pos = _column_layout(depth)
    width, height = int(depth.max()) + 1, max(abs(y) for _, y in pos.values()) * 2 + 1
    margin = 0.6 + (_ARC_BULGE * int((depth[edge_index[1]] - depth[edge_index[0]]).max()) if curved else 0)
    figure = Figure(figsize=(min(max(width * _INCH, 4), 40), min(max((height + 2 * margin) * _INCH, 1.5), 20)))
    ax = figure.add_subplot(xlim=(-0.5, width - 0.5), ylim=(-height / 2 - margin, height / 2 + margin))
    spacing = figure.get_figwidth() * 72 / width  # points between columns
    nx.draw_networkx_edges(
        graph, pos, edgelist=edges, edge_color=[_EDGE_COLORS[t] for t in edge_type.tolist()],
        ax=ax, **(_CURVED_EDGES if curved else _STRAIGHT_EDGES),
    )  # fmt: skip
    nx.draw_networkx_nodes(
        graph, pos, node_color=[_NODE_COLORS[t] for t in node_type.tolist()],
        node_size=min(max((0.6 * spacing) ** 2, 4), 60), ax=ax,
    )  # fmt: skip
    handles = [_marker(_NODE_COLORS[t], node_names[t]) for t in sorted(set(node_type.tolist()))]
    if len(edge_names) > 1:
        handles += [_line(_EDGE_COLORS[t], edge_names[t]) for t in sorted(set(edge_type.tolist()))]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title)
    ax.set_axis_off()
    figure.savefig(path, format="png", dpi=120, bbox_inches="tight")


def _column_layout(depth: Tensor) -> dict[int, tuple[float, float]]:
    """x = depth, y = rank within the column, centred; one unit between neighbours either way."""
    sizes = torch.bincount(depth).tolist()
    filled = [0] * len(sizes)
    pos = {}
    for node, column in enumerate(depth.tolist()):
        pos[node] = (column, filled[column] - (sizes[column] - 1) / 2)
        filled[column] += 1
    return pos


def _marker(color: tuple[float, ...], label: str) -> Line2D:
    return Line2D([], [], color=color, marker="o", linestyle="", label=label)


def _line(color: tuple[float, ...], label: str) -> Line2D:
    return Line2D([], [], color=color, label=f"{label} edge")
