"""Triton ragged low-rank decoding: one launch writes a whole model's parameters into one flat buffer.

Forward: every program owns one tile of the ragged grid built by :mod:`hypernets.kernels.tiles`.  A matrix
tile computes ``A_i[rows] @ B_i[cols].T`` with one ``tl.dot`` over the rank (padded to a power of two >= 16,
masked), applies ``theta0 + scale * acc`` in fp32 and casts once at the store.  Vector segments ride in the
same launch as extra tiles that stream ``theta0 + scale * v`` in chunks of ``BLOCK_M * BLOCK_N``.

Backward: one launch over row blocks of every ``grad A_i = scale_i * G_i @ B_i`` and every
``grad B_i = scale_i * G_i.T @ A_i`` (both are computed when either is needed), so ``G`` is read twice.
Reductions longer than ``SPLIT_K`` are split across programs that ``atomic_add`` into fp32 buffers, which
bounds per-program work (a 50k-row embedding does not serialise onto 20 programs) at the price of
run-to-run bit differences when a reduction is split.  ``grad theta0`` is ``G`` itself and ``grad vectors``
one elementwise product, both left to torch.

fp32 dots follow ``torch.get_float32_matmul_precision()`` like ``torch.matmul``: IEEE at "highest" (the
default), TF32 otherwise.  A dot whose operands differ in dtype (bf16 factors, fp32 ``G``) runs in fp32.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from hypernets.kernels import tiles
from hypernets.kernels.layout import DecodeLayout

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Autotuning candidates, (BLOCK_M, BLOCK_N, num_warps) forward and (BLOCK_M, BLOCK_K, num_warps) backward:
# the larger tiles are listed only with the warp counts that do not spill registers on sm_90 (ptxas -v).
# The interpreter cannot benchmark and is slow per program: one small config each, and a small SPLIT_K so
# that CPU tests exercise split reductions.
_FORWARD_CANDIDATES = ((32, 32, 4),) if INTERPRET else ((64, 64, 4), (64, 64, 8), (64, 128, 8), (128, 64, 8))
_BACKWARD_CANDIDATES = (
    ((32, 32, 4),) if INTERPRET else ((32, 32, 4), (32, 64, 4), (64, 32, 8), (64, 64, 8), (128, 32, 8))
)
SPLIT_K = 64 if INTERPRET else 2048
# The distinct tile shapes, one tile set each in the host tables; a config names its set by index.
FORWARD_BLOCKS = tuple(dict.fromkeys((m, n) for m, n, _ in _FORWARD_CANDIDATES))  # (BLOCK_M, BLOCK_N)
BACKWARD_BLOCKS = tuple(dict.fromkeys((m, SPLIT_K) for m, _, _ in _BACKWARD_CANDIDATES))  # (BLOCK_M, SPLIT_K)

_MATRIX = tl.constexpr(tiles.MATRIX)
_GRAD_A = tl.constexpr(tiles.GRAD_A)
# The interpreter keeps bf16 as raw uint16 and its tl.dot multiplies the bit patterns (unsupported upstream:
# triton-lang/triton#11584).  Upcasting is exact, as bf16 x bf16 products fit in fp32 like on tensor cores.
_UPCAST_BF16_DOT = tl.constexpr(INTERPRET)


def _forward_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "TILE_SET": FORWARD_BLOCKS.index((m, n))}, num_warps=w)
        for m, n, w in _FORWARD_CANDIDATES
    ]


def _backward_configs() -> list[triton.Config]:
    return [
        triton.Config(
            {"BLOCK_M": m, "BLOCK_K": k, "SPLIT_K": SPLIT_K, "TILE_SET": BACKWARD_BLOCKS.index((m, SPLIT_K))},
            num_warps=w,
            num_stages=3,
        )
        for m, k, w in _BACKWARD_CANDIDATES
    ]


@triton.jit
def _load_tile(tile_ptr, starts_ptr, TILE_SET: tl.constexpr):
    """``(segment, kind, i, j)`` of the tile this program owns in tile set ``TILE_SET``."""
    row = tile_ptr + 4 * (tl.load(starts_ptr + TILE_SET) + tl.program_id(0))
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)


@triton.jit
def _load_segment(segment_ptr, seg):
    """``(a_start, b_start, rows, cols, out_start)`` of segment ``seg``, as int64."""
    row = segment_ptr + 5 * seg
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3), tl.load(row + 4)


@triton.jit
def _dot(x, y, acc, INPUT_PRECISION: tl.constexpr):
    """``acc + x @ y`` accumulated in fp32; mixed operand dtypes meet in fp32 so neither is rounded down."""
    if x.dtype != y.dtype or (_UPCAST_BF16_DOT and x.dtype == tl.bfloat16):
        x, y = x.to(tl.float32), y.to(tl.float32)
    return tl.dot(x, y, acc, input_precision=INPUT_PRECISION)


@triton.jit
def _hint_aligned(n_cols, out_start, ALIGNED: tl.constexpr):
    """Tell the compiler a matrix segment is 16-element aligned so its loads and stores vectorise.

    ``ALIGNED`` means every ``cols_i % 16 == 0`` (hence every matrix ``out_start`` too).  ``x // 16 * 16`` is
    then an identity whose divisibility the compiler can see; ``tl.multiple_of`` does not stick to scalars
    loaded from memory.
    """
    if ALIGNED:
        n_cols = n_cols // 16 * 16
        out_start = out_start // 16 * 16
    return n_cols, out_start


@triton.jit
def _epilogue(acc, offs, mask, seg, scale_ptr, theta0_ptr, out_ptr):
    """``out[offs] = theta0[offs] + scale[seg] * acc`` in fp32, cast once at the store."""
    if scale_ptr is not None:
        acc = acc * tl.load(scale_ptr + seg).to(tl.float32)
    if theta0_ptr is not None:
        acc = acc + tl.load(theta0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_forward_configs(), key=["rank", "INPUT_PRECISION"])
@triton.jit
def _forward_kernel(
    a_ptr, b_ptr, vectors_ptr, scale_ptr, theta0_ptr, out_ptr, segment_ptr, tile_ptr, starts_ptr, rank,
    R_PAD: tl.constexpr, INPUT_PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TILE_SET: tl.constexpr,
):  # fmt: skip
    seg, kind, i, j = _load_tile(tile_ptr, starts_ptr, TILE_SET)
    a_start, b_start, n_rows, n_cols, out_start = _load_segment(segment_ptr, seg)
    if kind == _MATRIX:
        n_cols, out_start = _hint_aligned(n_cols, out_start, ALIGNED)
        rm = i * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = j * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, R_PAD)
        m_ok, n_ok, k_ok = rm < n_rows, rn < n_cols, rk < rank
        a = tl.load(a_ptr + (a_start + rm)[:, None] * rank + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        bt = tl.load(
            b_ptr + (b_start + rn)[None, :] * rank + rk[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0
        )
        acc = _dot(a, bt, None, INPUT_PRECISION)
        offs = out_start + rm[:, None] * n_cols + rn[None, :]
        _epilogue(acc, offs, m_ok[:, None] & n_ok[None, :], seg, scale_ptr, theta0_ptr, out_ptr)
    elif vectors_ptr is not None:
        local = i * (BLOCK_M * BLOCK_N) + tl.arange(0, BLOCK_M * BLOCK_N)
        mask = local < n_cols
        v = tl.load(vectors_ptr + a_start + local, mask=mask, other=0.0).to(tl.float32)
        _epilogue(v, out_start + local, mask, seg, scale_ptr, theta0_ptr, out_ptr)


@triton.jit
def _grad_tile(
    g_ptr, other_ptr, out_ptr, n_out, n_red, ld, i, chunk, rank, scale,
    TRANSPOSE: tl.constexpr, INPUT_PRECISION: tl.constexpr, R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """``out[block i] += scale * op(G)[block i, chunk] @ other[chunk]``, ``op(G) = G.T if TRANSPOSE else G``.

    ``G`` is row-major with row stride ``ld``; ``TRANSPOSE`` is a constexpr so both directions keep
    compile-time-known contiguity for coalesced loads.
    """
    rm = i * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = tl.arange(0, R_PAD)
    m_ok, r_ok = rm < n_out, rr < rank
    k_end = tl.minimum(chunk * SPLIT_K + SPLIT_K, n_red)
    acc = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(chunk * SPLIT_K, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < k_end
        g_offs = rk[None, :] * ld + rm[:, None] if TRANSPOSE else rm[:, None] * ld + rk[None, :]
        g = tl.load(g_ptr + g_offs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        other = tl.load(other_ptr + rk[:, None] * rank + rr[None, :], mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        acc = _dot(g, other, acc, INPUT_PRECISION)
    mask = m_ok[:, None] & r_ok[None, :]
    tl.atomic_add(out_ptr + rm[:, None] * rank + rr[None, :], acc * scale, mask=mask, sem="relaxed")


@triton.autotune(
    configs=_backward_configs(), key=["rank", "INPUT_PRECISION"], reset_to_zero=["grad_a_ptr", "grad_b_ptr"]
)
@triton.jit
def _backward_kernel(
    grad_ptr, a_ptr, b_ptr, scale_ptr, grad_a_ptr, grad_b_ptr, segment_ptr, tile_ptr, starts_ptr, rank,
    R_PAD: tl.constexpr, INPUT_PRECISION: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, TILE_SET: tl.constexpr,
):  # fmt: skip
    seg, kind, i, chunk = _load_tile(tile_ptr, starts_ptr, TILE_SET)
    a_start, b_start, n_rows, n_cols, out_start = _load_segment(segment_ptr, seg)
    n_cols, out_start = _hint_aligned(n_cols, out_start, ALIGNED)
    scale = tl.load(scale_ptr + seg).to(tl.float32) if scale_ptr is not None else 1.0
    g_ptr = grad_ptr + out_start
    if kind == _GRAD_A:  # grad A_i = scale_i * G_i @ B_i, reducing over cols_i
        _grad_tile(
            g_ptr, b_ptr + b_start * rank, grad_a_ptr + a_start * rank, n_rows, n_cols, n_cols, i, chunk, rank,
            scale, False, INPUT_PRECISION, R_PAD, BLOCK_M, BLOCK_K, SPLIT_K,
        )  # fmt: skip
    else:  # grad B_i = scale_i * G_i.T @ A_i, reducing over rows_i
        _grad_tile(
            g_ptr, a_ptr + a_start * rank, grad_b_ptr + b_start * rank, n_cols, n_rows, n_cols, i, chunk, rank,
            scale, True, INPUT_PRECISION, R_PAD, BLOCK_M, BLOCK_K, SPLIT_K,
        )  # fmt: skip


def _grid(table: tiles.TileTable):
    """Launch grid for whichever tile set the autotuner picked."""
    return lambda meta: (table.counts[meta["TILE_SET"]],)


def _meta(layout: DecodeLayout, rank: int) -> dict:
    """Constexprs shared by both kernels: padded rank, fp32 dot precision (follows torch's setting, as
    ``torch.matmul`` does) and whether every matrix segment is 16-element aligned."""
    return {
        "R_PAD": max(16, triton.next_power_of_2(rank)),
        "INPUT_PRECISION": "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32",
        "ALIGNED": all(c % 16 == 0 for c in layout.cols),
    }


def _forward(
    a: Tensor,
    b: Tensor,
    layout: DecodeLayout,
    scale: Tensor | None,
    theta0: Tensor | None,
    vectors: Tensor | None,
    out_dtype: torch.dtype,
) -> Tensor:
    out = torch.empty(layout.total, dtype=out_dtype, device=a.device)
    table = tiles.forward_tiles(layout, FORWARD_BLOCKS, a.device)
    rank = a.shape[1]
    _forward_kernel[_grid(table)](
        a, b, vectors, scale, theta0, out, tiles.segment_table(layout, a.device), table.tiles, table.starts, rank,
        **_meta(layout, rank),
    )  # fmt: skip
    return out


def _backward(grad: Tensor, a: Tensor, b: Tensor, scale: Tensor | None, layout: DecodeLayout) -> tuple[Tensor, Tensor]:
    """fp32-accumulated ``(grad_a, grad_b)`` in the dtypes of ``a`` and ``b``."""
    grad_a = torch.zeros(a.shape, dtype=torch.float32, device=a.device)
    grad_b = torch.zeros(b.shape, dtype=torch.float32, device=b.device)
    if layout.n_matrices:
        table = tiles.backward_tiles(layout, BACKWARD_BLOCKS, a.device)
        rank = a.shape[1]
        _backward_kernel[_grid(table)](
            grad, a, b, scale, grad_a, grad_b, tiles.segment_table(layout, a.device), table.tiles, table.starts,
            rank, **_meta(layout, rank),
        )  # fmt: skip
    return grad_a.to(a.dtype), grad_b.to(b.dtype)


def _vector_grad(grad: Tensor, scale: Tensor | None, layout: DecodeLayout) -> Tensor:
    """``G_vec * scale`` with each vector segment's scale repeated over its elements."""
    g = grad[layout.matrix_numel :].float()
    if scale is None:
        return g
    sizes = torch.tensor(layout.vector_sizes, device=grad.device)
    return g * scale[layout.n_matrices :].float().repeat_interleave(sizes, output_size=g.numel())


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, theta0, vectors, layout, scale, out_dtype):
        ctx.layout = layout
        ctx.theta0_dtype = None if theta0 is None else theta0.dtype
        ctx.vectors_dtype = None if vectors is None else vectors.dtype
        ctx.save_for_backward(a, b, scale)
        return _forward(a, b, layout, scale, theta0, vectors, out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b, scale = ctx.saved_tensors
        need_a, need_b, need_theta0, need_vectors = ctx.needs_input_grad[:4]
        grad = grad.contiguous()
        grad_a = grad_b = grad_theta0 = grad_vectors = None
        if need_a or need_b:
            grad_a, grad_b = _backward(grad, a, b, scale, ctx.layout)
        if need_theta0:
            grad_theta0 = grad.to(ctx.theta0_dtype)
        if need_vectors:
            grad_vectors = _vector_grad(grad, scale, ctx.layout).to(ctx.vectors_dtype)
        return grad_a if need_a else None, grad_b if need_b else None, grad_theta0, grad_vectors, None, None, None


def decode_triton(
    a: Tensor,
    b: Tensor,
    layout: DecodeLayout,
    scale: Tensor | None = None,
    theta0: Tensor | None = None,
    vectors: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Triton implementation of :func:`hypernets.kernels.decode`; inputs are assumed validated."""
    a, b = a.contiguous(), b.contiguous()
    theta0 = None if theta0 is None else theta0.contiguous()
    vectors = None if vectors is None else vectors.contiguous()
    scale = None if scale is None else scale.contiguous()
    # Triton launches on the current device, which need not be the inputs' one.
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        return _Decode.apply(a, b, theta0, vectors, layout, scale, out_dtype or a.dtype)
