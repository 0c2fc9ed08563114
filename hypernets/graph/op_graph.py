"""The op graph: one node per op, the view graph hypernetworks (GHN-2/3, LoGAH) read."""

from __future__ import annotations

from collections import deque

import torch
from torch import nn
from torch_geometric.data import Data

from .inputs import Inputs
from .ir import ModelIR, Op
from .tracer import trace
from .vocab import OP_INDEX

DEFAULT_MAX_DISTANCE = 8


def to_op_graph(
    model_or_ir: nn.Module | ModelIR, inputs: Inputs = None, max_distance: int = DEFAULT_MAX_DISTANCE
) -> Data:
    """Convert a module (traced on ``inputs``) or an existing IR into a PyG ``Data`` op graph.

    Fields, with ``N`` nodes:

    - ``op`` ``[N]``: index of the op kind in ``OP_KINDS``.
    - ``shape`` ``[N, 4]``: the node's main parameter as (d_out, d_in, k_h, k_w); a 1-D parameter is
      (d, 1, 1, 1), a 3-D one such as ViT's ``pos_embed`` (1, T, D) is (D, T, 1, 1); zeros when the
      op has none. Linear weights stored (in, out) (HF ``Conv1D``) are reported as (out, in).
    - ``edge_index`` ``[2, E]``: data flow, producer -> consumer.
    - ``spd_index`` ``[2, P]`` and ``spd`` ``[P]``: every ordered pair of distinct nodes at undirected
      shortest-path distance ``<= max_distance``, for the attention bias of a graph transformer.
      Pairs further apart are simply absent.
    - ``params``: per node, the (name, shape) of each parameter tensor the node owns (tied parameters
      belong to their first reader only), so a hypernetwork can write predictions back.
    - ``names``: per node, the module path.
    - ``unused``: parameters the forward pass never reads, which no node owns.
    """
    ir = model_or_ir if isinstance(model_or_ir, ModelIR) else trace(model_or_ir, inputs)
    if max_distance < 1:
        raise ValueError(f"max_distance must be at least 1, got {max_distance}")
    owner = ir.owner()
    params = [
        [(name, ir.parameters[name].shape) for name in op.params.values() if owner[name] == op.index] for op in ir.ops
    ]
    src = [i for op in ir.ops for i in op.inputs]
    dst = [op.index for op in ir.ops for _ in op.inputs]
    spd_index, spd = shortest_path_pairs(len(ir.ops), src, dst, max_distance)
    return Data(
        op=torch.tensor([OP_INDEX[op.kind] for op in ir.ops], dtype=torch.long),
        shape=torch.tensor([shape_code(op, ir) for op in ir.ops], dtype=torch.long).view(-1, 4),
        edge_index=torch.tensor([src, dst], dtype=torch.long).view(2, -1),
        spd_index=spd_index,
        spd=spd,
        params=params,
        names=[op.module_path for op in ir.ops],
        unused=list(ir.unused),
        num_nodes=len(ir.ops),
    )


def shape_code(op: Op, ir: ModelIR) -> tuple[int, int, int, int]:
    """The (d_out, d_in, k_h, k_w) code of the op's main parameter (its weight, else its first)."""
    name = op.params.get("weight") or next(iter(op.params.values()), None)
    if name is None:
        return (0, 0, 0, 0)
    shape = ir.parameters[name].shape
    if op.kind == "linear" and op.attrs.get("weight_layout") == "in_out":
        shape = shape[::-1]
    elif op.kind == "embedding":
        shape = shape[::-1]  # a lookup is a linear map from one-hot vocabulary to features
    elif len(shape) == 3 and shape[0] == 1:  # (1, T, D) positional tables, (1, 1, D) class tokens
        shape = (shape[2], shape[1])
    dims = [*shape[:2], *_kernel(shape[2:])]
    return tuple(dims + [1] * (4 - len(dims)))  # type: ignore[return-value]


def _kernel(dims: tuple[int, ...]) -> list[int]:
    """Kernel dimensions folded into (k_h, k_w): conv1d (k,) -> (k, 1), conv3d (d, h, w) -> (d*h, w)."""
    if not dims:
        return []
    if len(dims) == 1:
        return [dims[0], 1]
    height = 1
    for d in dims[:-1]:
        height *= d
    return [height, dims[-1]]


def shortest_path_pairs(
    num_nodes: int, src: list[int], dst: list[int], max_distance: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Undirected hop distances between all pairs up to ``max_distance``, by a bounded BFS per node.

    Op graphs are long chains of low degree, so each BFS touches few nodes: linear in N in practice.
    """
    neighbours: list[list[int]] = [[] for _ in range(num_nodes)]
    for a, b in zip(src, dst, strict=True):
        neighbours[a].append(b)
        neighbours[b].append(a)
    rows: list[int] = []
    cols: list[int] = []
    dists: list[int] = []
    for start in range(num_nodes):
        seen = {start: 0}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            d = seen[node] + 1
            if d > max_distance:
                continue
            for nxt in neighbours[node]:
                if nxt not in seen:
                    seen[nxt] = d
                    queue.append(nxt)
                    rows.append(start)
                    cols.append(nxt)
                    dists.append(d)
    index = torch.tensor([rows, cols], dtype=torch.long).view(2, -1)
    return index, torch.tensor(dists, dtype=torch.long)
