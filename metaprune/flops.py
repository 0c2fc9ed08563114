"""Forward FLOPs counted per ATen op, the way users compare models (``torch.utils.flop_counter``).

Torch-Pruning's counter (:func:`metaprune.measure.count_macs_params`) hooks known module types, so it sees only
the functional ops of layers it has a formula for (e.g. timm's ``Attention``), misses any other functional op
and counts elementwise extras (biases, activations, softmax) its own way. ``FlopCounterMode`` counts at the
dispatcher instead, so every matmul, convolution and attention kernel is seen wherever it is called from.

What it counts: ``2 * MACs`` of matrix multiplies (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and
scaled-dot-product attention (QK^T and AV, causal masking ignored). Elementwise work (bias adds, normalization,
activations, softmax) is not counted: ``Linear(8, 4)`` on a batch of 3 is ``2 * 3 * 8 * 4`` whether it has a bias
or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops"]

Inputs = Tensor | tuple | dict


def count_flops(model: nn.Module, example_inputs: Inputs) -> int:
    """Forward FLOPs of one call on ``example_inputs``, every op counted (attention matmuls included).

    ``example_inputs`` is a tensor (one argument), a tuple (positional arguments) or a dict (keyword arguments,
    e.g. ``{"input_ids": ids}`` for Hugging Face models). The count covers the whole batch. The model runs in
    eval mode, and its training flag is restored afterwards.

    Autograd stays on: the counter's module tracker hooks the gradients of every module's inputs, and a view of a
    parameter made without autograd (CaiT's and SigLIP's expanded class tokens) requires grad yet has no
    gradient function, which the tracker rejects.
    """
    args, kwargs = _call_arguments(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _call_arguments(example_inputs: Inputs) -> tuple[tuple, dict[str, Any]]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    return (example_inputs,), {}


def _sdpa_flops(
    query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """QK^T plus AV of ``(batch, heads, tokens, head_dim)`` tensors; key/value heads may be fewer (GQA)."""
    batch, heads, q_len, qk_dim = query_shape
    kv_len, v_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * q_len * kv_len * (qk_dim + v_dim)


# Attention kernels FlopCounterMode has no formula for. On CPU, F.scaled_dot_product_attention dispatches to
# the fused `_scaled_dot_product_flash_attention_for_cpu` (torch 2.14 counts only the CUDA kernels), so without
# this the attention matmuls of a timm ViT or an HF GPT-2 would count zero on CPU.
_EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {
    op: _sdpa_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if (op := getattr(torch.ops.aten, name, None)) is not None
}
