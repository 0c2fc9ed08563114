"""Flatten the singular value spectra of predicted matrices before fine-tuning them.

A predicted matrix carries its function in a few singular directions far larger than random init's (its
effective rank is a few dozen of hundreds), and AdamW fine-tunes such a start slowly: a byte-level GPT-2
predicted by ``gpt2-pydoc`` ends 200 steps behind random init. The same singular vectors with equal singular
values (``power=0``) give up most of the step-0 advantage, but fine-tune at least as fast as random init at
widths 512 and 768, and at 1024 at random init's norms (``reference``); ``power`` in between keeps the start
and the slow fine-tuning. Use: ``flatten_model_(hypernet.predict_(model), reference=random_init_model)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def flatten_matrix(matrix: Tensor, power: float = 0.0, norm: float | Tensor | None = None) -> Tensor:
    """``matrix`` with its singular values raised to ``power`` (0 makes them equal, 1 changes nothing) and
    its singular vectors kept, at Frobenius norm ``norm`` (its own when ``None``)."""
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    s = s**power
    norm = matrix.float().norm() if norm is None else norm
    return ((u * (s * norm / s.norm())) @ vh).to(matrix.dtype)


def flatten_spectra(
    state: Mapping[str, Tensor], power: float = 0.0, reference: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """``state`` with every matrix (2-d tensor) flattened by :func:`flatten_matrix`, at the Frobenius norm of
    ``reference``'s tensor of the same name when given (random init's state dict: needed at widths far past
    meta-training, where predicted norms shrink); other tensors kept."""
    return {
        name: flatten_matrix(t, power, None if reference is None else reference[name].norm()) if t.ndim == 2 else t
        for name, t in state.items()
    }


@torch.no_grad()
def flatten_model_(model: nn.Module, power: float = 0.0, reference: nn.Module | None = None) -> nn.Module:
    """Flatten every matrix parameter of ``model`` in place (tied parameters once), at the norms of
    ``reference``'s parameters of the same names when given, and return it."""
    norms = {} if reference is None else {name: p.norm() for name, p in reference.named_parameters()}
    for name, parameter in model.named_parameters():
        if parameter.ndim == 2:
            parameter.copy_(flatten_matrix(parameter, power, norms.get(name)))
    return model
