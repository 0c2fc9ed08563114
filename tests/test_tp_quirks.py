"""Models that Torch-Pruning 1.6 misreads, pruned through the workarounds of ``metaprune.tp_quirks``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch_pruning as tp
from timm.layers import ScaledStdConv2d
from timm.models.focalnet import FocalNet
from timm.models.gcvit import GlobalContextVit
from timm.models.metaformer import GroupNorm1NoBias, MetaFormer
from timm.models.nest import Nest
from timm.models.tnt import TNT
from torch import nn

from metaprune.conv1d import pruner_options
from metaprune.prune import prune, sparse_regularizer
from metaprune.tp_quirks import quirks_handled, unmappable_roots

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(model, x, speedup=1.3)
    assert not [w for w in caught if "Maximum recursive depth" in str(w.message)]  # kept out of the user's log
    assert result.speedup >= 1.3
    assert result.model(x).shape == (1, 3)


def test_layers_whose_group_cannot_be_mapped_are_found_before_pruning() -> None:
    """NesT's attention reshapes its ``qkv`` output over nested blocks of tokens; Torch-Pruning's index mapping of
    those reshapes multiplies indices until memory runs out (the full NesT-T took 145 s to a ``MemoryError``).
    The probe names the layers whose group cannot be mapped, in bounded time, so that they are kept whole."""
    torch.manual_seed(0)
    model = Nest(
        img_size=32, patch_size=4, num_levels=3, embed_dims=(16, 32, 64), num_heads=(1, 2, 4), depths=(1, 1, 1),
        num_classes=3,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    with torch.enable_grad(), quirks_handled():
        found = unmappable_roots(model, x, [], **pruner_options())
    qkv = [model.levels[i].transformer_encoder[0].attn.qkv for i in range(3)]
    assert found == qkv
    with torch.enable_grad(), quirks_handled():
        assert unmappable_roots(model, x, qkv, **pruner_options()) == []  # kept ones are not probed


_FOCAL_LAYERS = ("focal_layers.0.0", "focal_layers.1.0")


class _Endless(RuntimeError):
    pass


def test_layers_whose_group_goes_round_a_cycle_are_found_before_pruning(monkeypatch) -> None:
    """FocalNet's modulation multiplies all of a map's channels by one gate channel sliced off a linear: Torch-Pruning
    goes round that cycle adding the same dependencies without end (the full FocalNet-T was still in it after
    300 s). The probe stops each group at its 17th visit to one layer, and names the layers to keep whole."""
    torch.manual_seed(0)
    model = FocalNet(depths=(1, 1), embed_dim=16, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.enable_grad(), quirks_handled():
        found = unmappable_roots(model, x, [], **pruner_options())
    names = {module: name for name, module in model.named_modules()}
    assert [names[m] for m in found] == [
        f"layers.{i}.blocks.0.modulation.{layer}" for i in (0, 1) for layer in ("f", "h", *_FOCAL_LAYERS)
    ]
    result = prune(model, x, speedup=1.2)
    assert result.speedup >= 1.2 and result.model(x).shape == (1, 3)

    add_dep = tp.dependency.Group.add_dep

    def counted(group: tp.dependency.Group, dep: tp.Dependency, idxs: list) -> None:
        if len(group) > 5000:
            raise _Endless
        add_dep(group, dep, idxs)

    monkeypatch.setattr(tp.dependency.Group, "add_dep", counted)
    graph = tp.DependencyGraph().build_dependency(model, x)
    h = model.layers[0].blocks[0].modulation.h
    with pytest.raises(_Endless):  # Torch-Pruning alone: over 5000 dependencies in a group of a 16-channel layer
        graph.get_pruning_group(h, tp.prune_conv_out_channels, idxs=list(range(16)))


def test_a_norm_without_a_bias_keeps_none() -> None:
    """PoolFormer v2's ``GroupNorm1NoBias`` has no bias; Torch-Pruning's group norm pruner cut it anyway."""
    torch.manual_seed(0)
    model = MetaFormer(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), num_classes=3, norm_layers=GroupNorm1NoBias).eval()
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, speedup=1.3)
    norm = result.model.stages[0].blocks[0].norm2
    assert norm.bias is None and norm.weight.shape == (norm.num_channels,)
    assert result.speedup >= 1.3 and result.model(x).shape == (1, 3)


def test_sparsity_training_keeps_the_layers_whose_group_cannot_be_mapped() -> None:
    """The group-sparsity regularizer builds its own dependency graph: it gets the same probe (it hung on NesT)."""
    torch.manual_seed(0)
    model = Nest(
        img_size=32, patch_size=4, num_levels=3, embed_dims=(16, 32, 64), num_heads=(1, 2, 4), depths=(1, 1, 1),
        num_classes=3,
    )  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    hook = sparse_regularizer(model, x[:1])
    model(x).square().sum().backward()
    fc1 = model.levels[0].transformer_encoder[0].mlp.fc1
    before = fc1.weight.grad.clone()
    hook(model)
    assert not torch.equal(fc1.weight.grad, before)  # the groups it can map are regularized
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
