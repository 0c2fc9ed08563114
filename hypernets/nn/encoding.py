"""Encodings of the hypernetwork's continuous inputs (tensor shapes).

Magnitude Invariant Parametrization (MIP) asks that an input's encoding has the same norm whatever
its value, so a wide layer does not feed the network a larger vector than a narrow one. Shapes are
encoded on a log scale with cos/sin pairs: every pair has norm 1. Without MIP the same log-scale
features enter linearly, and their magnitude grows with the size, as in GHN-2/3.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SHAPE_DIMS = 4  # (d_out, d_in, k_h, k_w), the op graph's shape code
LOG2_MAX_SIZE = 20.0  # sizes up to about a million map into one period of the slowest frequency
# 4 frequencies: the fastest turns 0.63 rad per doubling of a size, so a width a third beyond the widest
# one trained on encodes next to it. With 8 it turns 10 rad, and an unseen width gets an arbitrary code:
# held-out width-128 ViTs with a class token fell to 20 to 35% at step 0 (75 to 85% with 4).
DEFAULT_FREQUENCIES = 4


def shape_features(num_frequencies: int) -> int:
    """Width of :func:`encode_shape`'s output."""
    return SHAPE_DIMS * 2 * num_frequencies


def encode_shape(shape: Tensor, mip: bool, num_frequencies: int = DEFAULT_FREQUENCIES) -> Tensor:
    """``[N, 4]`` integer shape codes -> ``[N, 4 * 2 * num_frequencies]`` float features.

    With ``mip`` every row has norm ``sqrt(4 * num_frequencies)`` exactly; without it the features
    are ``log2(1 + d)`` times each frequency, and their norm grows with the tensor's size.
    """
    if shape.dim() != 2 or shape.shape[1] != SHAPE_DIMS:
        raise ValueError(f"shape codes must be [N, {SHAPE_DIMS}], got {tuple(shape.shape)}")
    x = torch.log2(1 + shape.float().clamp(min=0)) / LOG2_MAX_SIZE  # [N, 4], in [0, 1) for sane sizes
    frequencies = 2.0 ** torch.arange(num_frequencies, device=shape.device, dtype=x.dtype)
    angles = (math.pi / 2) * x[:, :, None] * frequencies  # [N, 4, F]
    if mip:
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)
    else:
        features = torch.cat([angles, angles], dim=-1) / (math.pi / 2)
    return features.flatten(1)
