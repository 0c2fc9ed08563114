"""The intermediate representation every graph view is built from."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ParamInfo:
    """A parameter of the traced module, known by name and shape only (it may live on ``meta``)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class ViewStep:
    """One call that only moves data (reshape, permute, slice, split, ...) between an op's output and a
    reader. Replayed on a tensor of node ids it tells which output feature lands at which position of
    what the reader sees: the neuron graph follows fused projections, per-head layouts and channel
    shuffles this way, whatever code wrote them."""

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()  # the arguments after the tensor
    kwargs: dict[str, Any] = field(default_factory=dict)
    item: int | None = None  # which tensor of a tuple result (split, chunk, unbind)

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            result = self.function(tensor, *self.args, **self.kwargs)
        except RuntimeError:  # ``view`` of an expanded (stride-0) tensor: the same call on a copy
            result = self.function(tensor.contiguous(), *self.args, **self.kwargs)
        return result[self.item] if self.item is not None else result


@dataclass
class Op:
    """One operation of the forward pass, in execution (hence topological) order.

    ``params`` maps a role ("weight", "bias", "operand", ...) to a parameter name. ``inputs`` are the
    indices of the ops whose results this op reads, in argument order. ``attrs`` holds what the graph
    views need: ``weight_layout`` of a linear ("out_in" or "in_out": which axis of the stored weight
    contracts with the input), ``groups``, ``transposed``, ``stride`` and ``padding`` of a conv, ``dim``
    of a concat, ``sliced``, the parameters an op reads only part of (a split fused projection),
    ``read_shapes``, the shape a parameter is read in where a view reshaped it (a bias ``b[:, None]``), and
    ``weight_offset`` of an RMS norm that scales by a constant plus its weight (Gemma's ``1 + weight``).
    A rotary position embedding is one op of kind "other" and function ``"rotary_embedding"``, with
    ``pairs`` "halves" (features i and i + d/2 rotate together) or "interleaved" (2i and 2i + 1).
    ``pieces`` of a concat lists, in order, each concatenated tensor as (parameter name or None, length).
    ``roles`` of an attention names each activation it reads ("query", "key", "value", "attn_mask").

    ``sources`` and ``views`` run parallel to ``in_shapes``: for each activation read, the op that made
    it and the data-moving calls in between (None where one of them cannot be replayed).
    """

    index: int
    kind: str
    function: str
    module_path: str
    module_type: str
    inputs: list[int] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    sources: list[int] = field(default_factory=list)
    views: list[tuple[ViewStep, ...] | None] = field(default_factory=list)


@dataclass
class ModelIR:
    """A traced network: ops in topological order plus every parameter of the module.

    ``unused`` lists parameters that no op reads in the traced forward pass; they are reported,
    never dropped silently. A parameter read by several ops (tied weights) is owned by the first.
    """

    model_type: str
    ops: list[Op]
    parameters: dict[str, ParamInfo]
    outputs: list[int]
    unused: list[str]

    def owner(self) -> dict[str, int]:
        """Parameter name -> index of the first op that reads it."""
        owners: dict[str, int] = {}
        for op in self.ops:
            for name in op.params.values():
                owners.setdefault(name, op.index)
        return owners

    def tied(self) -> dict[str, list[int]]:
        """Parameters read by more than one op (e.g. GPT-2's lm_head sharing wte), with the readers."""
        readers: dict[str, list[int]] = {}
        for op in self.ops:
            for name in op.params.values():
                readers.setdefault(name, []).append(op.index)
        return {name: ops for name, ops in readers.items() if len(ops) > 1}

    @property
    def num_parameters(self) -> int:
        return sum(p.numel for p in self.parameters.values())

    def summary(self) -> str:
        """A short human-readable account: op counts by kind, parameters covered, anything unused."""
        kinds = Counter(op.kind for op in self.ops)
        edges = sum(len(op.inputs) for op in self.ops)
        lines = [
            f"{self.model_type}: {len(self.ops)} ops, {edges} data-flow edges, "
            f"{len(self.parameters)} parameter tensors ({self.num_parameters:,} values)",
            "  ops: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()),
        ]
        tied = self.tied()
        if tied:
            lines.append("  tied: " + ", ".join(f"{name} (read by {len(ops)} ops)" for name, ops in tied.items()))
        if self.unused:
            lines.append("  not read by the forward pass: " + ", ".join(self.unused))
        return "\n".join(lines)
