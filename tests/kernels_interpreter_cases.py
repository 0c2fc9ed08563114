"""Triton-vs-reference decode cases, run on CPU tensors under the Triton interpreter.

Not collected by default (no ``test_`` prefix): ``test_kernels.py::test_triton_matches_reference_in_interpreter``
runs pytest on this file in a subprocess with ``TRITON_INTERPRET=1``, which must be set before triton is
imported.  The interpreter is slow per program, so the cases are small and chosen rather than a full product.
"""

from __future__ import annotations

import os

import pytest
import torch
from kernels_helpers import DTYPES, GROUPS, make_inputs, tolerance

from hypernets.kernels import decode

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported; run via test_kernels.py", allow_module_level=True)

F32, BF16 = torch.float32, torch.bfloat16
# (group, rank, input dtype, out dtype, with_scale, with_theta0)
CASES = [
    *[("ragged", r, F32, F32, True, True) for r in (1, 7, 16, 128)],
    *[("ragged", 7, in_dt, out_dt, True, True) for in_dt, out_dt in DTYPES],
    ("ragged", 16, F32, BF16, False, False),
    ("ragged", 16, F32, BF16, True, False),
    ("ragged", 16, F32, BF16, False, True),
    ("aligned", 16, F32, F32, True, True),
    ("aligned", 64, BF16, BF16, True, True),
    ("vectors_only", 4, F32, BF16, True, True),
]


def _decode_with_grads(backend: str, group: str, rank: int, in_dtype, out_dtype, with_scale, with_theta0):
    layout = GROUPS[group]
    inputs = make_inputs(
        layout, rank, in_dtype, with_scale=with_scale, with_theta0=with_theta0, requires_grad=True, seed=rank
    )
    out = decode(*inputs[:2], layout, *inputs[2:], out_dtype=out_dtype, backend=backend)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out_dtype)
    # materialize: the vectors-only group has an empty a, which the reference never touches
    return out, torch.autograd.grad(out, inputs.differentiable(), grad_out, materialize_grads=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x).replace("torch.", "") for x in c))
def test_forward_and_backward_match_reference(case):
    _, _, in_dtype, out_dtype, *_ = case
    out, grads = _decode_with_grads("triton", *case)
    ref_out, ref_grads = _decode_with_grads("torch", *case)
    assert out.dtype == ref_out.dtype == out_dtype
    torch.testing.assert_close(out, ref_out, **tolerance(out_dtype))
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad.dtype == ref_grad.dtype == in_dtype
        torch.testing.assert_close(grad, ref_grad, **tolerance(in_dtype, out_dtype))


def test_partial_requires_grad_matches_reference():
    layout = GROUPS["ragged"]
    a, b, scale, theta0, vectors = make_inputs(layout, 8)
    theta0.requires_grad_(True)
    out = decode(a, b, layout, scale, theta0, vectors, backend="triton")
    (grad_theta0,) = torch.autograd.grad(out, [theta0], torch.ones_like(out))
    torch.testing.assert_close(grad_theta0, torch.ones_like(theta0))
    a.requires_grad_(True)
    out = decode(a, b, layout, scale, theta0, vectors, backend="triton")
    ref = decode(a, b, layout, scale, theta0, vectors, backend="torch")
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(
        torch.autograd.grad(out, [a], grad_out)[0], torch.autograd.grad(ref, [a], grad_out)[0], **tolerance(a.dtype)
    )


def test_auto_backend_on_cpu_is_torch_even_when_interpreting():
    layout = GROUPS["aligned"]
    inputs = make_inputs(layout, 4, requires_grad=True)
    assert decode(*inputs[:2], layout, *inputs[2:], backend="triton").grad_fn.name() == "_DecodeBackward"
    assert decode(*inputs[:2], layout, *inputs[2:]).grad_fn.name() != "_DecodeBackward"
