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
    cast once at the end, matching the Triton kernel's numerics.  Autograd flows through plain torch ops.
    """
    acc_dtype = torch.promote_types(a.dtype, torch.float32)
    a_parts = a.to(acc_dtype).split(layout.rows)
    b_parts = b.to(acc_dtype).split(layout.cols)
    pieces = [(a_i @ b_i.T).flatten() for a_i, b_i in zip(a_parts, b_parts, strict=True)]
    if vectors is not None:
        pieces.append(vectors.to(acc_dtype))
    flat = torch.cat(pieces)
    if scale is not None:
        numels = torch.tensor(layout.segment_numels, device=flat.device)
        flat = flat * scale.to(acc_dtype).repeat_interleave(numels, output_size=layout.total)
    if theta0 is not None:
        flat = theta0.to(acc_dtype) + flat
    return flat.to(out_dtype or a.dtype)
