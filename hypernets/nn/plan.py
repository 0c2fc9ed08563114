"""What a hypernetwork predicts for a batch of target networks, and where each value goes.

A :class:`TargetPlan` is built once per batch of op graphs (it is pure bookkeeping: no learned
state). It lists every parameter tensor the graphs own, gives each a 2-D *matrix view* (decoded
low-rank) or a 1-D *vector* (decoded directly), the initialization statistics the decoder scales
its output to, and the gather indices that assemble per-tensor factors from fixed-size decoder
blocks. The flat buffer it describes is exactly the :class:`hypernets.kernels.DecodeLayout` one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from torch_geometric.data import Data

from hypernets.graph.vocab import OP_KINDS
from hypernets.kernels import DecodeLayout, split

VECTOR_ROLES: tuple[str, ...] = ("bias", "norm_weight", "norm_bias", "other")
NORM_KINDS = frozenset({"layer_norm", "batch_norm", "group_norm", "rms_norm"})
TABLE_KINDS = frozenset({"embedding", "add", "concat", "mul"})  # lookup tables, positions, tokens
TABLE_STD = 0.02  # the std GPT-2 and timm ViTs initialise embeddings, positions and tokens with
# Under "mup" width scaling a matrix's decoded part has its planned std at this fan-in, and shrinks as
# 1/fan_in beyond it (so 1/sqrt(fan_in) times sqrt(REFERENCE_FAN_IN / fan_in)): see TargetPlan.scale.
REFERENCE_FAN_IN = 64
WIDTH_SCALINGS = ("standard", "mup")
VECTOR_STD = 0.02  # predicted biases and norm parameters stay close to their usual init
# (op is a normalization, parameter is a bias) -> role of a 1-D tensor
_VECTOR_ROLE_OF = {
    (True, True): "norm_bias",
    (True, False): "norm_weight",
    (False, True): "bias",
    (False, False): "other",
}


@dataclass(frozen=True)
class TensorEntry:
    """One parameter tensor of one target network, as the decoders see it."""

    graph: int  # which network of the batch
    name: str
    shape: tuple[int, ...]
    node: int  # node of the batched op graph that owns it
    kind: str  # op kind of that node
    rows: int  # matrix view (rows, cols); vectors have cols == 0
    cols: int
    std: float  # the std an initialization of this tensor should have
    base: float  # the constant a vector starts from (1 for norm weights, else 0)
    role: str = "weight"
    fan_in: int = 1  # inputs each output sums over (a table's width: what a tied head sums over)
    row_start: int = 0  # a row block of a larger matrix (see row_blocks): its first row there,
    whole_rows: int = 0  # and the rows of that matrix (0: a whole tensor)
    stream: _BaseStream | None = field(default=None, compare=False, repr=False)  # shared by a matrix's row blocks

    @property
    def is_matrix(self) -> bool:
        return self.cols > 0

    def base_generator(self, seed: int) -> torch.Generator:
        """The generator of this tensor's random base, at the base's first value: seeded by the tensor's name
        (the same base whatever batch the network is in); a row block continues the blocks above it."""
        if self.stream is None:
            return torch.Generator().manual_seed(_base_seed(seed, self.name))
        return self.stream.at(self, seed)


def _base_seed(seed: int, name: str) -> int:
    """The seed of a tensor's random base: the hypernetwork's seed mixed with the tensor's name."""
    return seed ^ zlib.crc32(name.encode())


class _BaseStream:
    """One random base drawn block after block: the row blocks of a matrix, decoded in order, take their
    values from one generator, so together they hold exactly what one draw of the whole matrix gives (torch
    draws normals from uniforms in aligned groups of 16, and every block but the last is a multiple of 16)."""

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.next_row = 0

    def at(self, block: TensorEntry, seed: int) -> torch.Generator:
        if block.row_start == 0:
            self.generator.manual_seed(_base_seed(seed, block.name))
        elif block.row_start != self.next_row:
            raise RuntimeError(f"the row blocks of {block.name} must be decoded in order, once each")
        self.next_row = block.row_start + block.rows
        return self.generator


def row_blocks(entry: TensorEntry, max_values: int, max_ck: int) -> list[TensorEntry]:
    """A 2-D matrix of more than ``max_values`` values as blocks of whole rows (a multiple of ``max_ck``, each
    at most ``max_values`` values where a ``max_ck`` block fits), ``[entry]`` otherwise. The rows of ``A B^T``
    are independent: each block decodes the whole matrix's factors (a few MB), exactly as its own plan would,
    and keeps its rows of ``A``, so the blocks decoded in order hold the whole matrix's values bit for bit."""
    if not entry.is_matrix or len(entry.shape) != 2 or entry.rows * entry.cols <= max_values:
        return [entry]
    step = max(max_values // entry.cols // max_ck, 1) * max_ck
    starts = list(range(0, entry.rows, step))
    if (entry.rows - starts[-1]) * entry.cols < _NORMAL_GROUP:  # torch draws fewer than 16 normals differently
        starts.pop()
    stops = [*starts[1:], entry.rows]
    stream = _BaseStream()
    return [
        replace(
            entry,
            shape=(stop - start, entry.cols),
            rows=stop - start,
            row_start=start,
            whole_rows=entry.rows,
            stream=stream,
        )
        for start, stop in zip(starts, stops, strict=True)
    ]


_NORMAL_GROUP = 16  # torch's CPU normal_ turns uniforms into normals 16 at a time (see _BaseStream)


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """LoGAH's 2-D view: conv kernels (o, i, kh, kw) as (o*kh, i*kw), tables (1, T, D) as (T, D)."""
    if len(shape) == 4:
        return shape[0] * shape[2], shape[1] * shape[3]
    if len(shape) == 3:
        return shape[0] * shape[1], shape[2]
    return shape[0], math.prod(shape[1:])


def to_matrix_view(tensor: Tensor) -> Tensor:
    """:func:`matrix_view` on values: ``tensor`` in LoGAH's 2-D view, a conv kernel (o, i, kh, kw) as
    (o * kh, i * kw); :func:`from_matrix_view` takes it back."""
    if tensor.ndim == 4:
        out, inp, kh, kw = tensor.shape
        return tensor.permute(0, 2, 1, 3).reshape(out * kh, inp * kw)
    return tensor.reshape(matrix_view(tuple(tensor.shape)))


def from_matrix_view(matrix: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`matrix_view` on values (of :func:`to_matrix_view`)."""
    if len(shape) == 4:
        out, inp, kh, kw = shape
        return matrix.view(out, kh, inp, kw).permute(0, 2, 1, 3)
    return matrix.reshape(shape)


def _entry(graph: int, node: int, kind: str, name: str, shape: tuple[int, ...], code: Tensor) -> TensorEntry:
    if len(shape) >= 2:
        rows, cols = matrix_view(shape)
        if kind in TABLE_KINDS:
            fan_in, std = cols, TABLE_STD
        else:  # fan-in from the op graph's canonical (out, in, kh, kw): HF Conv1D stores (in, out)
            main = math.prod(int(c) for c in code) == math.prod(shape)
            fan_in = max(int(code[1] * code[2] * code[3]) if main else cols, 1)
            std = 1.0 / math.sqrt(fan_in)
        return TensorEntry(graph, name, shape, node, kind, rows, cols, std, 0.0, fan_in=fan_in)
    role = _VECTOR_ROLE_OF[(kind in NORM_KINDS, name.endswith("bias"))]
    base = 1.0 if role == "norm_weight" else 0.0
    return TensorEntry(graph, name, shape, node, kind, math.prod(shape), 0, VECTOR_STD, base, role)


def plan_entries(graphs: Sequence[Data]) -> list[TensorEntry]:
    """Every parameter tensor the op graphs own, in graph and node order; node indices are batch-wide."""
    entries: list[TensorEntry] = []
    offset = 0
    for g, graph in enumerate(graphs):
        for node, params in enumerate(graph.params):
            kind = OP_KINDS[int(graph.op[node])]
            for name, shape in params:
                entries.append(_entry(g, offset + node, kind, name, tuple(shape), graph.shape[node]))
        offset += graph.num_nodes
    return entries


class TargetPlan:
    """Tensors to predict for a batch of ``num_graphs`` networks, matrices first, in the kernel's flat order."""

    def __init__(self, entries: Sequence[TensorEntry], num_graphs: int, max_ck: int) -> None:
        if not entries:
            raise ValueError("the target networks have no parameters to predict")
        self.num_graphs = num_graphs
        self.max_ck = max_ck
        self.matrices = [e for e in entries if e.is_matrix]
        self.vectors = [e for e in entries if not e.is_matrix]
        self.layout = DecodeLayout(
            tuple(e.rows for e in self.matrices),
            tuple(e.cols for e in self.matrices),
            tuple(e.rows for e in self.vectors),
        )
        self.a = _BlockRequests([(e.node, e.rows, e.row_start, e.whole_rows or e.rows) for e in self.matrices], max_ck)
        self.b = _BlockRequests([(e.node, e.cols, 0, e.cols) for e in self.matrices], max_ck)
        self.v = _BlockRequests([(e.node, e.rows, 0, e.rows) for e in self.vectors], max_ck)
        self.matrix_kinds = torch.tensor([OP_KINDS.index(e.kind) for e in self.matrices], dtype=torch.long)
        self.vector_roles = torch.tensor([VECTOR_ROLES.index(e.role) for e in self.vectors], dtype=torch.long)
        self.vector_sizes = torch.tensor(self.layout.vector_sizes, dtype=torch.long)

    @classmethod
    def for_graphs(
        cls, graphs: Sequence[Data], max_ck: int, max_values: int | None = None, split_rows: bool = False
    ) -> list[TargetPlan]:
        """Plans covering every tensor of ``graphs``: one, or as few as keep each under ``max_values``
        predicted values (a single tensor larger than that gets a plan of its own). Decoding plan by plan
        bounds the memory that prediction needs beyond the predicted parameters themselves. ``split_rows``
        cuts larger matrices into :func:`row_blocks`, each starting a plan, so that the blocks of a matrix
        come out one after the other (for a caller that writes each block where it belongs)."""
        entries = plan_entries(graphs)
        if max_values is None:
            return [cls(entries, len(graphs), max_ck)]
        if split_rows:
            entries = [block for entry in entries for block in row_blocks(entry, max_values, max_ck)]
        groups: list[list[TensorEntry]] = [[]]
        size = 0
        alone = False  # a row block has a plan of its own, as a matrix too large for a plan would
        for entry in entries:
            numel = math.prod(entry.shape)
            if groups[-1] and (size + numel > max_values or alone or entry.stream is not None):
                groups.append([])
                size = 0
            groups[-1].append(entry)
            size += numel
            alone = entry.stream is not None
        return [cls(group, len(graphs), max_ck) for group in groups]

    @property
    def entries(self) -> list[TensorEntry]:
        return self.matrices + self.vectors

    def scale(self, rank: int, width_scaling: str = "standard") -> Tensor:
        """Per-segment output scale: the init std, over sqrt(rank) for unit-RMS low-rank factors.

        ``"standard"`` keeps the init std at every width. ``"mup"`` shrinks matrices as ``1 / fan_in``
        past :data:`REFERENCE_FAN_IN`, as muP scales learned updates and readouts: a decoded matrix is
        aligned with its inputs (they come from decoded matrices too), so its outputs grow as
        ``sqrt(fan_in)`` faster than a random matrix's would. Measured (docs/benchmarks.md): on GPT-2 4x
        wider than meta-training it starts better than ``"standard"``; nearer in, and on ViTs, worse.
        """
        if width_scaling not in WIDTH_SCALINGS:
            raise ValueError(f"width_scaling must be one of {', '.join(WIDTH_SCALINGS)}, got {width_scaling!r}")
        stds = [e.std / math.sqrt(rank) * _width_factor(e.fan_in, width_scaling) for e in self.matrices]
        return torch.tensor(stds + [e.std for e in self.vectors], dtype=torch.float32)

    def vector_base(self) -> Tensor:
        """Per-element constants vectors start from (norm weights 1, the rest 0)."""
        parts = [torch.full((e.rows,), e.base) for e in self.vectors]
        return torch.cat(parts) if parts else torch.zeros(0)

    def matrix_base(self, seed: int, out: Tensor | None = None) -> Tensor:
        """A reproducible random init of every matrix, std as in :class:`TensorEntry`, in matrix view, as one
        flat ``[layout.matrix_numel]`` CPU buffer (``out`` if given), each matrix drawn into its segment.

        Seeded by the tensor's name, so a network gets the same base whatever batch it is in.
        """
        flat = torch.empty(self.layout.matrix_numel) if out is None else out
        for e, segment in zip(self.matrices, flat.split(self.matrix_numels), strict=True):
            torch.randn(segment.numel(), generator=e.base_generator(seed), out=segment).mul_(e.std)
        return flat

    @property
    def matrix_numels(self) -> tuple[int, ...]:
        return self.layout.segment_numels[: len(self.matrices)]

    def unflatten(self, flat: Tensor) -> list[dict[str, Tensor]]:
        """Split the flat decoded buffer into one ``{name: tensor}`` dict per network, exact shapes."""
        results: list[dict[str, Tensor]] = [{} for _ in range(self.num_graphs)]
        for entry, part in zip(self.entries, split(flat, self.layout), strict=True):
            results[entry.graph][entry.name] = from_matrix_view(part, entry.shape)
        return results


def _width_factor(fan_in: int, width_scaling: str) -> float:
    return math.sqrt(REFERENCE_FAN_IN / fan_in) if width_scaling == "mup" else 1.0


class _BlockRequests:
    """Rows of ragged factors assembled from fixed ``max_ck``-row decoder blocks.

    A tensor with ``n`` rows asks its node for ``ceil(n / max_ck)`` blocks, block ``j`` conditioned
    on ``j``: wide tensors get distinct rows, never one chunk copied over and over (GHN-3 tiling).
    """

    def __init__(self, sizes: Sequence[tuple[int, int, int, int]], max_ck: int) -> None:
        """``sizes``: per tensor, its node, its rows, and the first row and rows of the matrix it is a row
        block of (``0`` and its rows for a whole tensor): a row block asks for every block of its matrix."""
        nodes, blocks, entries, index = [], [], [], []
        for entry, (node, size, start, whole) in enumerate(sizes):
            first = len(nodes)
            count = math.ceil(whole / max_ck)
            nodes += [node] * count
            blocks += range(count)
            entries += [entry] * count
            index.append(torch.arange(start, start + size) + first * max_ck)
        self.nodes = torch.tensor(nodes, dtype=torch.long)  # node each block is decoded from
        self.blocks = torch.tensor(blocks, dtype=torch.long)  # block number within its tensor
        self.entries = torch.tensor(entries, dtype=torch.long)  # tensor each block belongs to
        self.index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)  # packed row -> block row
        self.row_entries = torch.repeat_interleave(
            torch.arange(len(sizes)), torch.tensor([s for _, s, _, _ in sizes], dtype=torch.long)
        )

    def __len__(self) -> int:
        return len(self.nodes)
