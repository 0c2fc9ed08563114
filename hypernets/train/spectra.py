"""Meta-training terms that keep predicted matrices fine-tunable (issue 28).

A hypernetwork meta-trained on the loss alone predicts GPT-2 matrices of a few singular values 3 to 10 times
random init's largest: the predicted network starts far ahead of random init and then fine-tunes slowly, its
residual stream squeezed into a few directions (docs/benchmarks.md, "The trap is the spectra"). Two
penalties let meta-training look for predictions without the trap: :func:`spectral_excess` charges each
predicted matrix for the part of its largest singular value above what a random init of the planned std
would have; :func:`stream_excess` charges each GPT-2 block for writing far more into the residual stream than
the embeddings do (the shipped prediction's first MLP writes 600 times their rms, random init's 2 to 4 times).
Measured (docs/benchmarks.md, "Meta-training against the trap"): the stream penalty brings the prediction's
fine-tuned loss at widths 768 and 1024 from 0.3 nats behind random init's to between 0.1 behind and 0.04 below
it, with a step-0 lead as large; the spectral penalty makes it worse, alone or beside the stream penalty.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from hypernets.nn.plan import plan_entries, to_matrix_view

POWER_ITERATIONS = 8  # low-rank predictions have a wide gap below their top singular value
STREAM_RATIO = 4.0  # random init GPT-2's blocks write at most about 4x the embeddings' rms (l2-w512: 1.6 to 4)
EMBEDDINGS = "transformer.drop"  # GPT-2's module whose output is the embedding stream (tokens + positions)
WRITERS = ("attn.c_proj", "mlp.c_proj")  # what each GPT-2 block adds to the residual stream


def top_singular_value(matrix: Tensor, iterations: int = POWER_ITERATIONS) -> Tensor:
    """``matrix``'s largest singular value by power iteration, differentiable in ``matrix`` (the singular
    vector is found without gradient, as it is at a converged iteration). Deterministic: it starts from the
    mean row direction, which no matrix with a dominant direction is orthogonal to in practice."""
    with torch.no_grad():
        fixed = matrix.detach().float()
        v = fixed.T @ torch.ones(matrix.shape[0], device=matrix.device)
        for _ in range(iterations):
            v = fixed.T @ (fixed @ v)
            v = v / v.norm().clamp_min(1e-30)
    return (matrix.float() @ v).norm()


def random_init_top(rows: int, cols: int, std: float) -> float:
    """The largest singular value of a ``rows x cols`` Gaussian matrix of std ``std`` (about
    ``std * (sqrt(rows) + sqrt(cols))``, Marchenko-Pastur's edge)."""
    return std * (math.sqrt(rows) + math.sqrt(cols))


def spectral_excess(predicted: Sequence[dict[str, Tensor]], graphs: Sequence[Data]) -> Tensor:
    """The mean over every predicted matrix of ``relu(top / random_top - 1) ** 2``: zero while each largest
    singular value stays within a random init's at the planned std, quadratic in the excess past it."""
    terms = []
    for entry in plan_entries(graphs):
        if entry.is_matrix:
            top = top_singular_value(to_matrix_view(predicted[entry.graph][entry.name]))
            terms.append((top / random_init_top(entry.rows, entry.cols, entry.std) - 1).relu() ** 2)
    return torch.stack(terms).mean()


@contextmanager
def residual_writes(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """While open, records (differentiably) the rms of a GPT-2's embedding stream and of what each block's
    output projection adds to the residual stream, by module name, on every forward pass."""
    found: dict[str, Tensor] = {}
    modules = {n: m for n, m in model.named_modules() if n == EMBEDDINGS or n.endswith(WRITERS)}
    if EMBEDDINGS not in modules:
        raise ValueError(f"{type(model).__name__} is no GPT-2: it has no {EMBEDDINGS!r} module")
    record = lambda name: lambda _, __, out: found.__setitem__(name, out.float().pow(2).mean().sqrt())
    hooks = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    try:
        yield found
    finally:
        for hook in hooks:
            hook.remove()


def stream_excess(found: dict[str, Tensor]) -> Tensor:
    """The mean over the writers :func:`residual_writes` found of ``relu(log(rms / (STREAM_RATIO *
    embeddings' rms))) ** 2``: zero while every block writes at most ``STREAM_RATIO`` times the embeddings'
    rms, the squared log of the excess past it."""
    ratios = torch.stack([rms for name, rms in found.items() if name != EMBEDDINGS]) / found[EMBEDDINGS]
    return ((ratios / STREAM_RATIO).log().relu() ** 2).mean()
