"""Meta-training terms that keep predicted matrices fine-tunable (issue 28).

A hypernetwork meta-trained on the loss alone predicts GPT-2 matrices of a few singular values 3 to 10 times
random init's largest: the predicted network starts far ahead of random init and then fine-tunes slowly, its
residual stream squeezed into a few directions (docs/benchmarks.md, "The trap is the spectra"). The penalty
here charges each predicted matrix for the part of its largest singular value above what a random init of
the planned std would have, so meta-training looks for predictions that do without the spikes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from hypernets.nn.plan import matrix_view, plan_entries

POWER_ITERATIONS = 8  # low-rank predictions have a wide gap below their top singular value


def top_singular_value(matrix: Tensor, iterations: int = POWER_ITERATIONS) -> Tensor:
    """``matrix``'s largest singular value by power iteration, differentiable in ``matrix`` (the singular
    vector is found without gradient, as it is at a converged iteration). Deterministic: it starts from the
    mean row direction, which no matrix with a dominant direction is orthogonal to in practice."""
    with torch.no_grad():
        v = matrix.detach().float().T @ torch.ones(matrix.shape[0], device=matrix.device)
        for _ in range(iterations):
            v = matrix.detach().float().T @ (matrix.detach().float() @ v)
            v = v / v.norm().clamp_min(1e-30)
    return (matrix.float() @ v).norm()


def in_matrix_view(tensor: Tensor) -> Tensor:
    """``tensor`` in LoGAH's 2-D view (:func:`hypernets.nn.plan.matrix_view`), the inverse of
    ``from_matrix_view``: a conv kernel (o, i, kh, kw) as (o * kh, i * kw)."""
    if tensor.ndim == 4:
        out, inp, kh, kw = tensor.shape
        return tensor.permute(0, 2, 1, 3).reshape(out * kh, inp * kw)
    return tensor.reshape(matrix_view(tuple(tensor.shape)))


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
            top = top_singular_value(in_matrix_view(predicted[entry.graph][entry.name]))
            terms.append((top / random_init_top(entry.rows, entry.cols, entry.std) - 1).relu() ** 2)
    return torch.stack(terms).mean()
