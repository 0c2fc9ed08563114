"""Graphormer-style graph transformer over op graphs (as in GHN-3 and LoGAH).

Each node starts from its op kind and its shape encoding. Attention is dense within a graph and
biased, per head, by the shortest-path distance between the two nodes (pairs further than
``max_distance`` share one "far" bucket) and by whether an edge runs between them and which way.
Graphs of a batch never attend to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch

from hypernets.graph.vocab import OP_KINDS

from .encoding import DEFAULT_FREQUENCIES, encode_shape, shape_features

NO_EDGE, FORWARD_EDGE, BACKWARD_EDGE = 0, 1, 2


@dataclass(frozen=True)
class EncoderConfig:
    hidden: int = 128
    layers: int = 3
    heads: int = 8
    max_distance: int = 8
    mlp_ratio: int = 4
    mip: bool = True
    num_frequencies: int = DEFAULT_FREQUENCIES

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")


class GraphEncoder(nn.Module):
    """``(Data | Batch) -> [num_nodes, hidden]`` node embeddings."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.op_embedding = nn.Embedding(len(OP_KINDS), config.hidden)
        self.shape_projection = nn.Linear(shape_features(config.num_frequencies), config.hidden)
        self.layers = nn.ModuleList(
            [BiasedAttentionBlock(config.hidden, config.heads, config.mlp_ratio) for _ in range(config.layers)]
        )
        self.distance_bias = nn.ModuleList([nn.Embedding(config.max_distance + 2, config.heads) for _ in self.layers])
        self.edge_bias = nn.ModuleList([nn.Embedding(3, config.heads) for _ in self.layers])
        self.norm = nn.LayerNorm(config.hidden)

    def forward(self, graph: Data | Batch) -> Tensor:
        batch = getattr(graph, "batch", None)
        if batch is None:
            batch = torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.op.device)
        shape = encode_shape(graph.shape, self.config.mip, self.config.num_frequencies)
        x = self.op_embedding(graph.op) + self.shape_projection(shape)
        dense, mask = to_dense_batch(x, batch)  # [B, N, hidden], [B, N]
        distance, direction = self._pair_codes(graph, batch, mask)
        padding = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        for block, distance_bias, edge_bias in zip(self.layers, self.distance_bias, self.edge_bias, strict=True):
            bias = (distance_bias(distance) + edge_bias(direction)).permute(0, 3, 1, 2)  # [B, heads, N, N]
            dense = block(dense, bias + padding[:, None, None, :])
        return self.norm(dense[mask])

    def _pair_codes(self, graph: Data | Batch, batch: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Dense ``[B, N, N]`` distance buckets and edge directions, from the sparse pair lists."""
        size, n = mask.shape
        far = self.config.max_distance + 1
        distance = torch.full((size, n, n), far, dtype=torch.long, device=mask.device)
        direction = torch.full((size, n, n), NO_EDGE, dtype=torch.long, device=mask.device)
        first = torch.cumsum(mask.sum(1), 0) - mask.sum(1)  # index of each graph's first node
        local = torch.arange(batch.numel(), device=batch.device) - first[batch]
        distance[batch, local, local] = 0
        rows, cols = graph.spd_index
        spd = graph.spd.clamp(max=far)
        distance[batch[rows], local[rows], local[cols]] = spd
        src, dst = graph.edge_index
        direction[batch[src], local[src], local[dst]] = FORWARD_EDGE
        direction[batch[src], local[dst], local[src]] = BACKWARD_EDGE
        return distance, direction


class BiasedAttentionBlock(nn.Module):
    """Pre-norm transformer block whose attention takes an additive bias per head."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden)
        )

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        size, n, hidden = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(size, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.proj(attended.transpose(1, 2).reshape(size, n, hidden))
        return x + self.mlp(self.norm2(x))
