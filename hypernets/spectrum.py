"""Flatten the singular value spectra of predicted matrices before fine-tuning them.

A predicted matrix carries its function in a few singular directions far larger than random init's (its
effective rank is a few dozen of hundreds), and AdamW fine-tunes such a start slowly: a byte-level GPT-2
predicted by ``gpt2-pydoc`` ends 200 steps behind random init. The same singular vectors with equal singular
values (``power=0``) give up most of the step-0 advantage, but fine-tune at least as fast as random init at
widths 512 and 768 (not at 1024); ``power`` in between keeps the start and the slow fine-tuning. Use:
``flatten_model_(hypernet.predict_(model))`` before fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def flatten_matrix(matrix: Tensor, power: float = 0.0) -> Tensor:
    """``matrix`` with its singular values raised to ``power`` (0 makes them equal, 1 changes nothing), its
    singular vectors and its Frobenius norm kept."""
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    s = s**power
    return ((u * (s * matrix.float().norm() / s.norm())) @ vh).to(matrix.dtype)


def flatten_spectra(state: Mapping[str, Tensor], power: float = 0.0) -> dict[str, Tensor]:
    """``state`` with every matrix (2-d tensor) flattened by :func:`flatten_matrix`; other tensors kept."""
    return {name: flatten_matrix(t, power) if t.ndim == 2 else t for name, t in state.items()}


@torch.no_grad()
def flatten_model_(model: nn.Module, power: float = 0.0) -> nn.Module:
    """Flatten every matrix parameter of ``model`` in place (tied parameters once) and return it."""
    for parameter in model.parameters():
        if parameter.ndim == 2:
            parameter.copy_(flatten_matrix(parameter, power))
    return model
