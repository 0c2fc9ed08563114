"""What a hypernetized model is conditioned on, and how the condition enters the hypernetwork.

A condition spec is one string, saved in the config:

- ``"scalar"``: one number in [0, 1] per condition (a hyperparameter, rescaled to [0, 1] by the user);
- ``"scalar:D"``: ``D`` such numbers, given as a ``[D]`` tensor;
- ``"task:N"``: a task id in ``0 .. N-1``, looked up in a learned embedding table.

With MIP each condition is encoded with a norm that does not depend on its value, so the hypernetwork's
output magnitude cannot depend on it either (Ortiz et al. 2023): a scalar ``x`` becomes the unit vector
``[cos(pi/2 x), sin(pi/2 x)]``, and a task embedding is rescaled to norm ``sqrt(dim)`` (features of order
one, like the scalars'). Without MIP the scalars go in raw and the embeddings unnormalized.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

KINDS = ("scalar", "task")


def parse_condition(spec: str) -> tuple[str, int]:
    """``"scalar"`` -> ``("scalar", 1)``, ``"scalar:3"`` -> ``("scalar", 3)``, ``"task:10"`` -> ``("task", 10)``."""
    kind, _, count = spec.partition(":")
    if kind not in KINDS or (kind == "task" and not count) or (count and not (count.isdigit() and int(count) > 0)):
        raise ValueError(
            f"condition must be 'scalar', 'scalar:D' or 'task:N' with D, N positive integers; got {spec!r}"
        )
    return kind, int(count or 1)


class ConditionEncoder(nn.Module):
    """Turns user conditions into ``[B, out_features]`` hypernetwork inputs.

    ``single_shape`` is the shape of one condition; a tensor with one more leading dimension is a batch
    of conditions, one per example.
    """

    single_shape: tuple[int, ...]
    out_features: int

    def prepare(self, condition: float | int | Tensor, device: torch.device) -> tuple[Tensor, bool]:
        """``condition`` as a checked ``[B, *single_shape]`` tensor, and whether it was a batch."""
        c = torch.as_tensor(condition, device=device)
        batched = c.dim() == len(self.single_shape) + 1
        if tuple(c.shape[int(batched) :]) != self.single_shape:
            single = list(self.single_shape)
            raise ValueError(
                f"a condition must have shape {single} (one for the whole batch) or [B, *{single}] "
                f"(one per example); got {list(c.shape)}"
            )
        c = c if batched else c[None]
        self.check(c)
        return c, batched

    def check(self, c: Tensor) -> None:
        """Raise a ValueError naming what is wrong with the values of a batch of conditions."""


class ScalarEncoder(ConditionEncoder):
    """``D`` numbers in [0, 1] per condition: cos/sin pairs under MIP, the raw numbers without."""

    def __init__(self, dims: int, mip: bool, vector: bool) -> None:
        super().__init__()
        self.dims, self.mip = dims, mip
        self.single_shape = (dims,) if vector else ()
        self.out_features = 2 * dims if mip else dims

    def prepare(self, condition: float | int | Tensor, device: torch.device) -> tuple[Tensor, bool]:
        c, batched = super().prepare(condition, device)
        return (c if c.is_floating_point() else c.float()), batched

    def check(self, c: Tensor) -> None:
        values = c.detach()
        if not ((values >= 0) & (values <= 1)).all():  # NaN fails both comparisons
            raise ValueError(
                f"scalar conditions must lie in [0, 1] (rescale the hyperparameter first); got values from "
                f"{values.min().item():g} to {values.max().item():g}"
            )

    def forward(self, c: Tensor) -> Tensor:
        x = c.reshape(len(c), self.dims)
        if not self.mip:
            return x
        angles = (math.pi / 2) * x
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TaskEncoder(ConditionEncoder):
    """A learned embedding per task id; rescaled to norm ``sqrt(dim)`` under MIP."""

    def __init__(self, num_tasks: int, dim: int, mip: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_tasks, dim)
        self.mip = mip
        self.single_shape = ()
        self.out_features = dim

    def check(self, c: Tensor) -> None:
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise ValueError(f"task conditions must be integer ids, got a {c.dtype} tensor")
        num_tasks = self.embedding.num_embeddings
        if not ((c >= 0) & (c < num_tasks)).all():
            raise ValueError(f"task ids must lie in 0..{num_tasks - 1}; got {c.min().item()} to {c.max().item()}")

    def forward(self, c: Tensor) -> Tensor:
        e = self.embedding(c)
        if not self.mip:
            return e
        return e * (math.sqrt(e.shape[-1]) / e.norm(dim=-1, keepdim=True).clamp(min=1e-12))


def build_encoder(spec: str, mip: bool, embedding_dim: int) -> ConditionEncoder:
    """The encoder a condition spec names (see the module docstring)."""
    kind, count = parse_condition(spec)
    if kind == "task":
        return TaskEncoder(count, embedding_dim, mip)
    return ScalarEncoder(count, mip, vector=":" in spec)
