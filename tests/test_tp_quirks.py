"""Models that Torch-Pruning 1.6 misreads, pruned through the workarounds of ``metaprune.tp_quirks``."""

from __future__ import annotations

import pytest
import torch
from timm.layers import ScaledStdConv2d
from timm.models.gcvit import GlobalContextVit
from timm.models.tnt import TNT
from torch import nn

from metaprune.prune import prune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_expand_that_repeats_no_channels_gets_no_grouped_query_mapping() -> None:
    """GC ViT repeats its global query over windows with a 5-d expand, which Torch-Pruning took for grouped-query
    attention with a repeat of 0, and divided by it."""
    torch.manual_seed(0)
    model = GlobalContextVit(
        depths=(2, 2), num_heads=(2, 4), embed_dim=32, img_size=64, window_ratio=(16, 16), num_classes=3
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    result = prune(model, x, speedup=1.3)
    assert result.speedup >= 1.3
    assert result.model(x).shape == (1, 3)


def test_per_channel_parameters_of_a_convolution_lose_the_same_channels_as_its_weight() -> None:
    """NFNet's weight-standardized convolution keeps a gain per output channel beside its weight."""
    torch.manual_seed(0)
    model = nn.Sequential(
        ScaledStdConv2d(3, 8, 3), nn.ReLU(), ScaledStdConv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    )
    model.append(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))
    with torch.no_grad():
        for conv in (model[0], model[2]):
            conv.gain.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 12, 12)
    pruned = prune(model, x, speedup=1.3).model
    first, dense = pruned[0], model[0]
    assert first.out_channels < 8 and first.gain.shape == (first.out_channels, 1, 1, 1)
    kept = [i for i in range(8) if (dense.weight[i] == first.weight).flatten(1).all(1).any()]
    assert len(kept) == first.out_channels
    assert torch.equal(first.gain, dense.gain[kept])
    assert pruned[2].gain.shape == (pruned[2].out_channels, 1, 1, 1)
    assert pruned(x).shape == (2, 3)


@pytest.mark.slow
def test_a_concatenation_whose_sizes_cannot_be_inferred_gets_no_mapping() -> None:
    """TNT joins its class token to patch tokens computed from pixel embeddings; 8 blocks deep, Torch-Pruning's
    shape inference gives up (its recursion limit) and sums the size it could not infer (``None``) before checking
    for one."""
    torch.manual_seed(0)
    model = TNT(
        img_size=32, patch_size=16, num_classes=3, embed_dim=48, inner_dim=12, depth=8, num_heads_outer=2,
        num_heads_inner=2,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, speedup=1.3)
    assert result.speedup >= 1.3
    assert result.model(x).shape == (1, 3)
