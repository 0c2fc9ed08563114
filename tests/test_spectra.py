"""The meta-training penalty on predicted spectra: exact largest singular values, zero within random init's
edge, and the squared excess past it; the same for what GPT-2 blocks write into the residual stream (the
training run that applies them: tests/test_train.py)."""

from __future__ import annotations

import math

import pytest
import torch

from hypernets.nn.plan import from_matrix_view, plan_entries, to_matrix_view
from hypernets.train.graphs import arch_graph
from hypernets.train.spectra import (
    STREAM_RATIO,
    random_init_top,
    residual_writes,
    spectral_excess,
    stream_excess,
    top_singular_value,
)
from hypernets.zoo import ArchSampler, get_family
from hypernets.zoo.gpt2 import GPT2Arch

pytestmark = pytest.mark.usefixtures("one_thread")


def spiked(rows: int, cols: int, top: float, generator: torch.Generator) -> torch.Tensor:
    """A rank-2 matrix whose singular values are ``top`` and ``top / 3``."""
    u, _ = torch.linalg.qr(torch.randn(rows, 2, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, 2, generator=generator))
    return u @ torch.diag(torch.tensor([top, top / 3])) @ v.T


def test_top_singular_value_is_the_spectral_norm_with_its_gradient():
    generator = torch.Generator().manual_seed(0)
    matrix = (spiked(48, 96, 5.0, generator) + 0.01 * torch.randn(48, 96, generator=generator)).requires_grad_()
    top = top_singular_value(matrix)
    top.backward()
    u, s, vh = torch.linalg.svd(matrix.detach())
    assert top.item() == pytest.approx(s[0].item(), rel=1e-5)
    assert torch.allclose(matrix.grad, torch.outer(u[:, 0], vh[0]), atol=1e-4)  # d s_1 = u_1 v_1^T


def test_conv_kernels_take_logahs_matrix_view():
    kernel = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    matrix = to_matrix_view(kernel)
    assert matrix.shape == (8, 15)
    assert matrix[5, 7] == kernel[1, 1, 1, 2]  # row o * kh + y, column i * kw + x
    assert torch.equal(from_matrix_view(matrix, tuple(kernel.shape)), kernel)


def test_spectral_excess_is_zero_at_random_init_and_the_squared_excess_past_it():
    graph = arch_graph(ArchSampler(get_family("gpt2"), seed=0).sample(1)[0], 8)[1]
    matrices = [e for e in plan_entries([graph]) if e.is_matrix]
    generator = torch.Generator().manual_seed(0)
    reference = {e.name: random_init_top(e.rows, e.cols, e.std) for e in matrices}
    at_edge = {e.name: spiked(e.rows, e.cols, 0.99 * reference[e.name], generator) for e in matrices}
    assert spectral_excess([at_edge], [graph]).item() == 0.0
    past = {e.name: spiked(e.rows, e.cols, 3 * reference[e.name], generator) for e in matrices}
    assert spectral_excess([past], [graph]).item() == pytest.approx(4.0, rel=1e-4)  # (3 - 1) ** 2


def test_stream_excess_is_zero_at_random_init_and_the_squared_log_excess_past_it():
    torch.manual_seed(0)
    model = GPT2Arch(n_layer=1, n_embd=64, n_head=2, n_positions=16).build()
    x = torch.randint(0, 256, (4, 16))
    with torch.no_grad(), residual_writes(model) as found:
        model(x)
    assert sorted(found) == ["transformer.drop", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"]
    assert stream_excess(found).item() == 0.0
    factor = STREAM_RATIO * math.e * found["transformer.drop"] / found["transformer.h.0.mlp.c_proj"]
    with torch.no_grad():  # the last writer: scaling it changes nothing that the others read
        model.transformer.h[0].mlp.c_proj.weight.mul_(factor)
        model.transformer.h[0].mlp.c_proj.bias.mul_(factor)
    with torch.no_grad(), residual_writes(model) as found:
        model(x)
    assert stream_excess(found).item() == pytest.approx(0.5, rel=1e-4)  # log(e) ** 2 over two writers
