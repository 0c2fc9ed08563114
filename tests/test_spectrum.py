"""Flattening predicted spectra: singular vectors and norm kept, singular values made equal."""

from __future__ import annotations

import pytest
import torch

from hypernets.spectrum import flatten_matrix, flatten_model_, flatten_spectra


def low_rank(rows: int = 48, cols: int = 32, rank: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)


def test_power_zero_equalizes_the_singular_values_and_keeps_the_top_directions_and_norm():
    matrix = low_rank() + 1e-3 * torch.randn(48, 32, generator=torch.Generator().manual_seed(1))
    flat = flatten_matrix(matrix, 0.0)
    values = torch.linalg.svdvals(flat)
    assert torch.allclose(values, values.mean().expand_as(values), rtol=1e-4)
    assert flat.norm().item() == pytest.approx(matrix.norm().item(), rel=1e-5)
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    rotated = u.T @ flat @ vh.T  # diagonal: the same singular vectors
    assert torch.allclose(rotated, torch.diag(torch.diagonal(rotated)), atol=1e-4)
    assert torch.linalg.matrix_rank(matrix, rtol=1e-2) == 3 and torch.linalg.matrix_rank(flat) == 32


def test_power_one_changes_nothing_and_half_is_in_between():
    matrix = low_rank() + 1e-2 * torch.randn(48, 32, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(flatten_matrix(matrix, 1.0), matrix, atol=1e-4)
    ratio = {p: (lambda s: (s[0] / s[-1]).item())(torch.linalg.svdvals(flatten_matrix(matrix, p))) for p in (1, 0.5)}
    assert ratio[0.5] == pytest.approx(ratio[1] ** 0.5, rel=1e-3)


def test_state_dicts_and_models_flatten_only_their_matrices():
    state = {"weight": low_rank(), "bias": torch.arange(4.0)}
    flat = flatten_spectra(state)
    assert torch.equal(flat["bias"], state["bias"]) and torch.linalg.matrix_rank(flat["weight"]) == 32
    model = torch.nn.Sequential(torch.nn.Linear(32, 48))
    with torch.no_grad():
        model[0].weight.copy_(low_rank())
    bias = model[0].bias.clone()
    flatten_model_(model)
    assert torch.linalg.matrix_rank(model[0].weight.detach()) == 32 and torch.equal(model[0].bias, bias)


def test_a_reference_sets_the_norms_and_keeps_the_directions():
    matrix, reference = low_rank(), 5.0 * torch.randn(48, 32, generator=torch.Generator().manual_seed(3))
    flat = flatten_spectra({"w": matrix}, reference={"w": reference})["w"]
    assert flat.norm().item() == pytest.approx(reference.norm().item(), rel=1e-5)
    assert torch.allclose(flat / flat.norm(), flatten_matrix(matrix) / flatten_matrix(matrix).norm(), atol=1e-5)
    model, other = torch.nn.Linear(32, 48), torch.nn.Linear(32, 48)
    with torch.no_grad():
        other.weight.mul_(3.0)
    flatten_model_(model, reference=other)
    assert model.weight.norm().item() == pytest.approx(other.weight.norm().item(), rel=1e-5)
