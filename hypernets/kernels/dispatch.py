"""Public ``decode``: validates arguments against the layout once, then runs the chosen backend."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from hypernets.kernels.layout import DecodeLayout
from hypernets.kernels.reference import decode_reference

BACKENDS = ("auto", "triton", "torch")
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TRITON_MAX_RANK = 128  # the backward keeps a BLOCK_M x rank fp32 accumulator in registers


def _check_shape(name: str, tensor: Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected} = {meaning}")


def _check_optional(
    name: str, tensor: Tensor | None, expected: tuple[int, ...], meaning: str, device: torch.device
) -> None:
    if tensor is None:
        return
    _check_shape(name, tensor, expected, meaning)
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but a is on {device}")


def _check_factors(a: Tensor, b: Tensor, layout: DecodeLayout) -> None:
    for name, t in (("a", a), ("b", b)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [rows, rank], got shape {tuple(t.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"rank mismatch: a has rank {a.shape[1]} (a.shape[1]) but b has rank {b.shape[1]}")
    rank = a.shape[1]
    if rank < 1:
        raise ValueError("rank must be >= 1, got a.shape[1] = 0")
    _check_shape("a", a, (layout.row_offsets[-1], rank), "(sum(layout.rows), rank)")
    _check_shape("b", b, (layout.col_offsets[-1], rank), "(sum(layout.cols), rank)")
    if a.dtype != b.dtype or not a.is_floating_point():
        raise TypeError(f"a and b must share one floating-point dtype, got {a.dtype} and {b.dtype}")
    if b.device != a.device:
        raise ValueError(f"b is on {b.device} but a is on {a.device}")


def _check_epilogue_inputs(
    layout: DecodeLayout, scale: Tensor | None, theta0: Tensor | None, vectors: Tensor | None, device: torch.device
) -> None:
    if vectors is None and layout.vector_sizes:
        raise ValueError(
            f"vectors is required: layout has {len(layout.vector_sizes)} vector segments "
            f"({layout.vector_offsets[-1]} elements in total)"
        )
    if vectors is not None and not layout.vector_sizes:
        raise ValueError(f"vectors was given (shape {tuple(vectors.shape)}) but layout has no vector segments")
    _check_optional("vectors", vectors, (layout.vector_offsets[-1],), "(sum(layout.vector_sizes),)", device)
    _check_optional("theta0", theta0, (layout.total,), "(layout.total,)", device)
    _check_optional("scale", scale, (layout.n_segments,), "(layout.n_segments,)", device)
    if scale is not None and scale.requires_grad:
        raise ValueError("scale is a constant multiplier and must not require grad; pass scale.detach()")


def _validate(
    a: Tensor,
    b: Tensor,
    layout: DecodeLayout,
    scale: Tensor | None,
    theta0: Tensor | None,
    vectors: Tensor | None,
    out_dtype: torch.dtype,
) -> None:
    """Raise a message naming the argument and the expected vs actual shape for anything off-layout."""
    if not isinstance(layout, DecodeLayout):
        raise TypeError(f"layout must be a DecodeLayout, got {type(layout).__name__}")
    _check_factors(a, b, layout)
    _check_epilogue_inputs(layout, scale, theta0, vectors, a.device)
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def _resolve_backend(backend: str, a: Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if a.is_cuda else "torch"
    return backend


def _interpreting() -> bool:
    """Whether the Triton kernels run under the interpreter: the variable must predate their import."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    from hypernets.kernels import triton_decode

    return triton_decode.INTERPRET


def _check_triton_inputs(a: Tensor, out_dtype: torch.dtype) -> None:
    if not a.is_cuda and not _interpreting():
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got tensors on {a.device}. To run the Triton kernels on CPU, "
            "set TRITON_INTERPRET=1 in the environment before the process imports triton "
            "(e.g. `TRITON_INTERPRET=1 python ...`), or use backend='torch'."
        )
    if a.dtype not in TRITON_DTYPES or out_dtype not in TRITON_DTYPES:
        raise TypeError(
            f"backend='triton' supports a/b and out_dtype in {TRITON_DTYPES}, got a.dtype={a.dtype}, "
            f"out_dtype={out_dtype}; use backend='torch'"
        )
    if a.shape[1] > TRITON_MAX_RANK:
        raise ValueError(f"backend='triton' supports rank <= {TRITON_MAX_RANK}, got {a.shape[1]}; use backend='torch'")


def decode(
    a: Tensor,
    b: Tensor,
    layout: DecodeLayout,
    scale: Tensor | None = None,
    theta0: Tensor | None = None,
    vectors: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> Tensor:
    """Decode a ragged group of low-rank factors (and raw vectors) into one flat ``[layout.total]`` buffer.

    Segment ``i < layout.n_matrices`` is ``theta0_i + scale_i * (A_i @ B_i.T)`` stored row-major, vector
    segment ``j`` is ``theta0_j + scale_j * v_j``; ``A_i``/``B_i``/``v_j`` are consecutive row blocks of
    ``a``/``b``/``vectors``.  Products and the epilogue are computed in fp32 (or wider) and cast once to
    ``out_dtype`` (default ``a.dtype``).  ``backend="auto"`` uses Triton for CUDA tensors and plain torch
    otherwise; ``"triton"`` and ``"torch"`` force one and never fall back silently.  Use :func:`split` for
    per-tensor views of the result.
    """
    out_dtype = out_dtype or a.dtype
    _validate(a, b, layout, scale, theta0, vectors, out_dtype)
    if _resolve_backend(backend, a) == "torch":
        return decode_reference(a, b, layout, scale, theta0, vectors, out_dtype)
    _check_triton_inputs(a, out_dtype)
    from hypernets.kernels.triton_decode import decode_triton

    return decode_triton(a, b, layout, scale, theta0, vectors, out_dtype)
