"""Host-side tables that turn a ragged layout into a flat 1-D grid of equally shaped kernel programs.

A kernel launch over a ragged group has one program per *tile*.  Each tile is a row ``(segment, kind, i, j)``
of an int32 table; each segment is a row ``(a_start, b_start, rows, cols, out_start)`` of an int64 table
(for a vector segment: ``(vectors_start, 0, 1, size, out_start)``).  Program ``p`` of a launch that uses tile
set ``s`` reads tile ``starts[s] + p``.  Several tile sets (one per block shape an autotuner may pick) live
concatenated in one table so that a config only has to carry its set index.  Tables are pure functions of
``(layout, block shapes, device)`` and cached, so steady-state launches do no host work beyond a dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from hypernets.kernels.layout import DecodeLayout

# Tile kinds, the second column of a tile table.
MATRIX, VECTOR = 0, 1  # forward: a BLOCK_M x BLOCK_N tile of W_i, or a chunk of a vector
GRAD_A, GRAD_B = 0, 1  # backward: a row block of grad A_i (or grad B_i) reduced over one split-K chunk


def _cdiv(n: int, d: int) -> int:
    return -(-n // d)


@dataclass(frozen=True)
class TileTable:
    """Concatenated tile sets: ``tiles[starts[s] : starts[s] + counts[s]]`` is set ``s``."""

    tiles: Tensor  # int32 [sum(counts), 4]: segment, kind, i, j
    starts: Tensor  # int64 [n_sets]
    counts: tuple[int, ...]


def _enumerate(grids: Sequence[tuple[int, int, int, int]]) -> Tensor:
    """Expand ``(segment, kind, n_i, n_j)`` grids into one ``(segment, kind, i, j)`` row per tile, j fastest."""
    g = torch.tensor(grids, dtype=torch.int64).reshape(-1, 4)
    counts = g[:, 2] * g[:, 3]
    owner = torch.repeat_interleave(torch.arange(len(g)), counts)
    local = torch.arange(len(owner)) - (counts.cumsum(0) - counts)[owner]
    n_j = g[owner, 3]
    return torch.stack([g[owner, 0], g[owner, 1], local // n_j, local % n_j], dim=1).to(torch.int32)


def _table(grid_sets: Sequence[Sequence[tuple[int, int, int, int]]], device: torch.device) -> TileTable:
    parts = [_enumerate(grids) for grids in grid_sets]
    counts = tuple(len(p) for p in parts)
    starts = torch.tensor([0, *counts[:-1]], dtype=torch.int64).cumsum(0)
    return TileTable(torch.cat(parts).to(device), starts.to(device), counts)


@lru_cache(maxsize=64)
def segment_table(layout: DecodeLayout, device: torch.device) -> Tensor:
    """int64 ``[n_segments, 5]``: where each segment reads its inputs and writes its output."""
    lo, n = layout, layout.n_matrices
    matrices = [(lo.row_offsets[s], lo.col_offsets[s], lo.rows[s], lo.cols[s], lo.out_offsets[s]) for s in range(n)]
    vectors = [(lo.vector_offsets[j], 0, 1, size, lo.out_offsets[n + j]) for j, size in enumerate(lo.vector_sizes)]
    return torch.tensor(matrices + vectors, dtype=torch.int64, device=device)


@lru_cache(maxsize=64)
def forward_tiles(layout: DecodeLayout, blocks: tuple[tuple[int, int], ...], device: torch.device) -> TileTable:
    """One tile set per ``(BLOCK_M, BLOCK_N)``: output tiles of every ``W_i``, then vector chunks of
    ``BLOCK_M * BLOCK_N`` elements, so the whole buffer is written by one launch."""
    n = layout.n_matrices

    def grids(block_m: int, block_n: int) -> list[tuple[int, int, int, int]]:
        shapes = enumerate(zip(layout.rows, layout.cols, strict=True))
        matrices = [(s, MATRIX, _cdiv(m, block_m), _cdiv(c, block_n)) for s, (m, c) in shapes]
        chunk = block_m * block_n
        vectors = [(n + j, VECTOR, _cdiv(size, chunk), 1) for j, size in enumerate(layout.vector_sizes)]
        return matrices + vectors

    return _table([grids(*b) for b in blocks], device)


@lru_cache(maxsize=64)
def backward_tiles(layout: DecodeLayout, blocks: tuple[tuple[int, int], ...], device: torch.device) -> TileTable:
    """One tile set per ``(BLOCK_M, SPLIT_K)``: row blocks of every grad ``A_i`` (reducing over ``cols_i``)
    and grad ``B_i`` (reducing over ``rows_i``), with reductions longer than ``SPLIT_K`` split into several
    tiles so no program walks a whole 50k-row embedding alone."""

    def grids(block_m: int, split_k: int) -> list[tuple[int, int, int, int]]:
        shapes = list(enumerate(zip(layout.rows, layout.cols, strict=True)))
        grad_a = [(s, GRAD_A, _cdiv(m, block_m), _cdiv(c, split_k)) for s, (m, c) in shapes]
        grad_b = [(s, GRAD_B, _cdiv(c, block_m), _cdiv(m, split_k)) for s, (m, c) in shapes]
        return grad_a + grad_b

    return _table([grids(*b) for b in blocks], device)
