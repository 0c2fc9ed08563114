"""Decoders from node embeddings to parameter values: LoGAH's low-rank one, GHN-3's tiled baseline,
and the small decoder of 1-D tensors. All three read a :class:`TargetPlan` and return values whose
magnitude the plan's per-tensor scale sets (unit RMS here), so they are interchangeable."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .plan import VECTOR_ROLES, TargetPlan, _BlockRequests


def mlp(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))


def unit_rms(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Rows rescaled to unit root-mean-square: the decoder picks directions, the plan the magnitude."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class BlockEmbedding(nn.Module):
    """Which block of a wide tensor is being decoded: a constant-norm sinusoidal code, projected."""

    def __init__(self, hidden: int, frequencies: int = 16) -> None:
        super().__init__()
        self.register_buffer("frequencies", 1.0 / 10_000 ** (torch.arange(frequencies) / frequencies))
        self.proj = nn.Linear(2 * frequencies, hidden)

    def forward(self, blocks: Tensor) -> Tensor:
        angles = blocks[:, None].float() * self.frequencies[None, :]
        return self.proj(torch.cat([angles.cos(), angles.sin()], dim=-1))


class LowRankDecoder(nn.Module):
    """LoGAH: each node emits blocks of ``max_ck`` rows of ``A`` and of ``B`` (rank ``r``) so that
    ``W = A @ B.T``. Cost grows as ``2 * max_ck * r`` outputs, not ``max_ck ** 2`` as for a tile."""

    def __init__(self, hidden: int, rank: int, max_ck: int) -> None:
        super().__init__()
        self.rank = rank
        self.block = BlockEmbedding(hidden)
        self.a_head = mlp(hidden, max_ck * rank)
        self.b_head = mlp(hidden, max_ck * rank)

    def factor(self, h: Tensor, requests: _BlockRequests, head: nn.Module) -> Tensor:
        x = h[requests.nodes] + self.block(requests.blocks.to(h.device))
        return unit_rms(head(x).view(-1, self.rank)[requests.index.to(h.device)])

    def forward(self, h: Tensor, plan: TargetPlan) -> tuple[Tensor, Tensor]:
        """Packed ``A`` ``[sum rows, r]`` and ``B`` ``[sum cols, r]`` in the plan's kernel layout."""
        return self.factor(h, plan.a, self.a_head), self.factor(h, plan.b, self.b_head)


class TiledDecoder(nn.Module):
    """GHN-3 baseline: each node emits one ``tile x tile`` chunk, repeated to fill its tensor."""

    def __init__(self, hidden: int, tile: int) -> None:
        super().__init__()
        self.tile = tile
        self.head = mlp(hidden, tile * tile)

    def forward(self, h: Tensor, plan: TargetPlan) -> list[Tensor]:
        """One flattened matrix per plan matrix, unit RMS chunk values, row-major."""
        nodes = torch.tensor([e.node for e in plan.matrices], dtype=torch.long, device=h.device)
        chunks = unit_rms(self.head(h[nodes])).view(-1, self.tile, self.tile)
        return [
            chunk.repeat(math.ceil(e.rows / self.tile), math.ceil(e.cols / self.tile))[: e.rows, : e.cols].reshape(-1)
            for chunk, e in zip(chunks, plan.matrices, strict=True)
        ]


class VectorDecoder(nn.Module):
    """1-D tensors (biases, norm weights): blocks of ``max_ck`` values per node and role."""

    def __init__(self, hidden: int, max_ck: int) -> None:
        super().__init__()
        self.block = BlockEmbedding(hidden)
        self.role = nn.Embedding(len(VECTOR_ROLES), hidden)
        self.head = mlp(hidden, max_ck)

    def forward(self, h: Tensor, plan: TargetPlan) -> Tensor:
        """All vectors of the plan, packed in order: ``[sum of vector sizes]``."""
        requests = plan.v
        roles = plan.vector_roles[requests.entries].to(h.device)
        x = h[requests.nodes] + self.block(requests.blocks.to(h.device)) + self.role(roles)
        return self.head(x).reshape(-1)[requests.index.to(h.device)]


def decoder_parameters(hidden: int, outputs: int) -> int:
    """Parameters of :func:`mlp` ``(hidden -> hidden -> outputs)``: for sizing decoders against each other."""
    return hidden * hidden + hidden + hidden * outputs + outputs
