"""Plain-torch ragged low-rank decoding: the numerical oracle for the Triton kernel and the CPU path."""

from __future__ import annotations

import torch
from torch import Tensor

from hypernets.kernels.layout import DecodeLayout


def decode_reference(
    a: Tensor,
    b: Tensor,
    layout: DecodeLayout,
    scale: Tensor | None = None,
    theta0: Tensor | None = None,
    vectors: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """``theta0 + scale * [A_i @ B_i.T ..., vectors]`` as one flat buffer; inputs are assumed validated.

    Products and the epilogue run in at least fp32 (float64 stays float64, for gradcheck) and the result is
    cast once at the end, matching the Triton kernel's numerics. Each matrix is one ``addmm`` with the scale
    and ``theta0`` folded in (one pass over its values, not three), and autograd flows through plain torch ops.
    """
    acc_dtype = torch.promote_types(a.dtype, torch.float32)
    scales = scale.tolist() if scale is not None else [1.0] * layout.n_segments
    bases = theta0.to(acc_dtype).split(layout.segment_numels) if theta0 is not None else None
    pieces = []
    products = zip(a.to(acc_dtype).split(layout.rows), b.to(acc_dtype).split(layout.cols), strict=True)
    for i, (a_i, b_i) in enumerate(products):
        if bases is None:
            pieces.append(torch.mm(a_i, b_i.T).mul_(scales[i]).flatten())
        else:
            pieces.append(torch.addmm(bases[i].view(len(a_i), len(b_i)), a_i, b_i.T, alpha=scales[i]).flatten())
    if vectors is not None:
        vector_scale = torch.tensor(scales[layout.n_matrices :], dtype=acc_dtype, device=vectors.device)
        vector_part = vectors.to(acc_dtype) * vector_scale.repeat_interleave(
            torch.tensor(layout.vector_sizes, device=vectors.device), output_size=len(vectors)
        )
        pieces.append(vector_part if bases is None else torch.cat(bases[layout.n_matrices :]) + vector_part)
    return torch.cat(pieces).to(out_dtype or a.dtype)


@torch.no_grad()
def accumulate_decoded_(
    theta: Tensor, a: Tensor, b: Tensor, layout: DecodeLayout, scale: Tensor, vectors: Tensor | None = None
) -> Tensor:
    """``theta += scale * [A_i @ B_i.T ..., vectors]`` in place, segment by segment, and ``theta`` back.

    The inference path on CPU: the prediction is built inside the buffer that already holds ``theta0``, so
    decoding a part of a model needs that one buffer, not three (products, their concatenation, the sum).
    """
    scales = scale.tolist()
    segments = theta.split(layout.segment_numels)
    products = zip(a.to(theta.dtype).split(layout.rows), b.to(theta.dtype).split(layout.cols), strict=True)
    for i, (a_i, b_i) in enumerate(products):
        segments[i].view(len(a_i), len(b_i)).addmm_(a_i, b_i.T, alpha=scales[i])
    if vectors is not None:
        vector_segments = zip(segments[layout.n_matrices :], vectors.split(layout.vector_sizes), strict=True)
        for j, (segment, v_j) in enumerate(vector_segments, start=layout.n_matrices):
            segment.add_(v_j, alpha=scales[j])
    return theta
