"""Static description of a ragged group of decoded parameter tensors, and views into its flat buffer."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from torch import Tensor


def _offsets(sizes: Sequence[int]) -> tuple[int, ...]:
    """Exclusive prefix sums with the total appended: ``(0, s0, s0 + s1, ..., sum)``."""
    return (0, *itertools.accumulate(sizes))


@dataclass(frozen=True)
class DecodeLayout:
    """Where each segment of a ragged group lives: static, hashable, built once per target architecture.

    Low-rank segment ``i`` decodes to ``W_i = A_i @ B_i.T`` of shape ``(rows[i], cols[i])``; vector segment
    ``j`` is a 1-D tensor of length ``vector_sizes[j]``.  In the flat output buffer the low-rank segments come
    first (each row-major), then the vectors, in order.  Being hashable lets kernels cache per-layout tables.
    """

    rows: tuple[int, ...]
    cols: tuple[int, ...]
    vector_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rows", "cols", "vector_sizes"):
            values = tuple(int(v) for v in getattr(self, name))
            bad = [i for i, v in enumerate(values) if v < 1]
            if bad:
                raise ValueError(f"DecodeLayout.{name}[{bad[0]}] = {values[bad[0]]}; every size must be >= 1")
            object.__setattr__(self, name, values)
        if len(self.rows) != len(self.cols):
            raise ValueError(
                f"DecodeLayout needs one rows and one cols entry per low-rank segment; "
                f"got {len(self.rows)} rows and {len(self.cols)} cols"
            )
        if self.n_segments == 0:
            raise ValueError("DecodeLayout is empty: give at least one matrix shape or one vector size")

    @classmethod
    def from_shapes(cls, matrix_shapes: Sequence[tuple[int, int]], vector_sizes: Sequence[int] = ()) -> DecodeLayout:
        """Layout for matrices of the given ``(d_out, d_in)`` shapes followed by vectors of the given sizes."""
        shapes = [tuple(s) for s in matrix_shapes]
        if any(len(s) != 2 for s in shapes):
            raise ValueError(f"matrix_shapes must be (d_out, d_in) pairs; got {shapes}")
        return cls(tuple(s[0] for s in shapes), tuple(s[1] for s in shapes), tuple(vector_sizes))

    @property
    def n_matrices(self) -> int:
        return len(self.rows)

    @property
    def n_segments(self) -> int:
        return len(self.rows) + len(self.vector_sizes)

    @cached_property
    def row_offsets(self) -> tuple[int, ...]:
        """Start row of each ``A_i`` in the packed ``a``, plus ``sum(rows)``."""
        return _offsets(self.rows)

    @cached_property
    def col_offsets(self) -> tuple[int, ...]:
        """Start row of each ``B_i`` in the packed ``b``, plus ``sum(cols)``."""
        return _offsets(self.cols)

    @cached_property
    def vector_offsets(self) -> tuple[int, ...]:
        """Start of each vector in the packed ``vectors``, plus ``sum(vector_sizes)``."""
        return _offsets(self.vector_sizes)

    @cached_property
    def segment_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shape of every segment, low-rank first: ``(rows_i, cols_i)`` then ``(size_j,)``."""
        return (*zip(self.rows, self.cols, strict=True), *((n,) for n in self.vector_sizes))

    @cached_property
    def segment_numels(self) -> tuple[int, ...]:
        return (*(m * n for m, n in zip(self.rows, self.cols, strict=True)), *self.vector_sizes)

    @cached_property
    def out_offsets(self) -> tuple[int, ...]:
        """Start of every segment in the flat output buffer, plus ``total``."""
        return _offsets(self.segment_numels)

    @property
    def total(self) -> int:
        """Number of elements in the flat output buffer."""
        return self.out_offsets[-1]

    @property
    def matrix_numel(self) -> int:
        """Elements of the low-rank part of the buffer, which is where the vectors start."""
        return self.out_offsets[self.n_matrices]


def split(flat: Tensor, layout: DecodeLayout) -> list[Tensor]:
    """Views of ``flat``: each ``W_i`` shaped ``(rows_i, cols_i)``, then each vector; no copies."""
    if flat.dim() != 1 or flat.numel() != layout.total:
        raise ValueError(f"flat has shape {tuple(flat.shape)}, expected ({layout.total},) = (layout.total,)")
    return [
        part.view(shape) for part, shape in zip(flat.split(layout.segment_numels), layout.segment_shapes, strict=True)
    ]
