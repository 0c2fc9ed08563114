"""Shared fixtures for the decode-kernel tests: ragged groups, random inputs and an independent oracle."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hypernets.kernels import DecodeLayout

# Ragged groups: odd sizes, a 1x1, tensors smaller than a tile, one larger than several tiles in both
# directions (and longer than the interpreter's SPLIT_K of 64 in both reductions), 1-D segments.
GROUPS = {
    "ragged": DecodeLayout.from_shapes([(1, 1), (3, 17), (130, 65), (16, 16)], [1, 70]),
    "aligned": DecodeLayout.from_shapes([(20, 32), (3, 48), (1, 16)]),  # every cols % 16 == 0: vectorised path
    "vectors_only": DecodeLayout.from_shapes([], [5, 33]),
}

# (input dtype of a/b/theta0/vectors, out_dtype)
DTYPES = [
    (torch.float32, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16),
]

_TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-4},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
}


def tolerance(*dtypes: torch.dtype) -> dict[str, float]:
    """The loosest tolerance among the dtypes a value was rounded through."""
    return max((_TOLERANCES[d] for d in dtypes), key=lambda t: t["rtol"])


class Inputs(NamedTuple):
    a: Tensor
    b: Tensor
    scale: Tensor | None
    theta0: Tensor | None
    vectors: Tensor | None

    def differentiable(self) -> list[Tensor]:
        return [t for t in (self.a, self.b, self.theta0, self.vectors) if t is not None and t.requires_grad]


def make_inputs(
    layout: DecodeLayout,
    rank: int,
    dtype: torch.dtype = torch.float32,
    *,
    with_scale: bool = True,
    with_theta0: bool = True,
    requires_grad: bool = False,
    seed: int = 0,
) -> Inputs:
    """Random inputs for ``layout``; ``vectors`` is present exactly when the layout has vector segments."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen).to(dtype).requires_grad_(requires_grad)

    return Inputs(
        a=randn(layout.row_offsets[-1], rank),
        b=randn(layout.col_offsets[-1], rank),
        scale=torch.rand(layout.n_segments, generator=gen) + 0.5 if with_scale else None,
        theta0=randn(layout.total) if with_theta0 else None,
        vectors=randn(layout.vector_offsets[-1]) if layout.vector_sizes else None,
    )


def naive_decode(layout: DecodeLayout, inputs: Inputs) -> Tensor:
    """Per-tensor float64 loop that recomputes every offset itself rather than trusting the layout's."""
    a, b, scale, theta0, vectors = inputs
    pieces, row_a, row_b, row_v = [], 0, 0, 0
    for i, (m, n) in enumerate(zip(layout.rows, layout.cols, strict=True)):
        w = a[row_a : row_a + m].double() @ b[row_b : row_b + n].double().T
        pieces.append(w.reshape(-1) * (1.0 if scale is None else scale[i].double()))
        row_a, row_b = row_a + m, row_b + n
    for j, size in enumerate(layout.vector_sizes):
        v = vectors[row_v : row_v + size].double()
        pieces.append(v * (1.0 if scale is None else scale[layout.n_matrices + j].double()))
        row_v += size
    flat = torch.cat(pieces)
    return flat if theta0 is None else flat + theta0.double()
