"""Pruning models that keep state outside their parameters: caches of computed tensors, sizes stored in plain
attributes, and a clear error naming the module when the pruned model no longer runs."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.metaformer import MetaFormer
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import Tensor, nn

from metaprune.consistency import PrunedModelBrokenError, parameter_shapes, sync_size_attributes
from metaprune.copying import copy_model
from metaprune.measure import count_macs_params
from metaprune.prune import prune
from metaprune.task import logits_of


class CachedBias(nn.Module):
    """Caches a tensor computed from its parameter in eval mode, as timm's LeViT caches attention biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(channels))
        self.cache: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            self.cache.setdefault("cpu", self.bias * 2)
            return x + self.cache["cpu"].view(1, -1, 1, 1)
        return x + (self.bias * 2).view(1, -1, 1, 1)


class Scale(nn.Module):
    """Scales channels by a parameter viewed by a stored shape, as timm's MetaFormer ``Scale``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shape = (channels, 1, 1)
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(self.shape)


class StoredWidth(nn.Module):
    """A convolution followed by a reshape by a width kept where no rule can find it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.config = {"width": str(channels)}

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y.reshape(len(y), int(self.config["width"]), y[0, 0].numel()).view_as(y)


def network(middle: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        middle,
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_copy_model_copies_a_model_with_a_computed_cache() -> None:
    model = network(CachedBias(8)).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)  # gradients on: the cached tensor is not a graph leaf
    cached = model[2].cache["cpu"]
    assert not cached.is_leaf
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    copied = copy_model(model)
    assert torch.equal(copied(x), expected)
    assert model[2].cache["cpu"] is cached  # the original keeps its own cache
    assert count_macs_params(model, x)[1] == sum(p.numel() for p in model.parameters())


def test_sizes_stored_in_attributes_follow_pruned_parameters() -> None:
    model = network(Scale(8)).eval()
    x = torch.randn(1, 3, 8, 8)
    result = prune(model, x, speedup=1.5)
    scale = result.model[2]
    assert len(scale.scale) < 8
    assert scale.shape == (len(scale.scale), 1, 1)
    assert result.model(x).shape == (1, 10)
    assert model[2].shape == (8, 1, 1)  # the original is untouched


def test_a_size_some_dimension_kept_is_left_alone() -> None:
    module = nn.Module()
    module.weight = nn.Parameter(torch.zeros(4, 4))
    module.width, module.sizes = 4, [4, 2]
    before = parameter_shapes(module)
    module.weight = nn.Parameter(torch.zeros(3, 4))  # rows pruned, columns kept: which one "4" meant is unknown
    assert sync_size_attributes(module, before) == {"": {"weight": torch.Size([3, 4])}}
    assert (module.width, module.sizes) == (4, [4, 2])
    module.weight = nn.Parameter(torch.zeros(2, 3))
    sync_size_attributes(module, {"": {"weight": torch.Size([3, 4])}})
    assert (module.width, module.sizes) == (3, [3, 2])  # 4 -> 3 and 3 -> 2 at once: each size maps once


def test_a_broken_pruned_model_names_the_module_to_keep(monkeypatch) -> None:
    model = network(StoredWidth(8)).eval()
    x = torch.randn(1, 3, 8, 8)
    monkeypatch.setattr("metaprune.prune.MAX_REPAIRED", 0)
    with pytest.raises(PrunedModelBrokenError, match=r"module '2' \(StoredWidth\).*--keep 2") as raised:
        prune(model, x, speedup=1.2)
    assert raised.value.module == "2"
    kept = prune(model, x, speedup=1.2, keep=["2"])
    assert kept.model[2].conv.out_channels == 8
    assert kept.model(x).shape == (1, 10)


def test_a_module_a_pruned_copy_breaks_in_is_kept_whole_with_the_features_it_reads() -> None:
    """Its reshape reads its input's width: keeping it whole is not enough, the convolution writing its input stays
    whole too, and pruning goes on elsewhere."""
    model = network(StoredWidth(8)).eval()
    x = torch.randn(1, 3, 8, 8)
    result = prune(model, x, speedup=1.2)
    assert result.repaired == ("2",)
    assert [result.model[0].out_channels, result.model[2].conv.out_channels] == [8, 8]
    assert result.model[3].out_channels < 16
    assert result.to_dict()["repaired"] == ["2"]
    assert result.model(x).shape == (1, 10)


class _RootReshape(nn.Module):
    """Breaks in its own forward, outside any submodule: nothing to keep whole, so the failure stays the user's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 10, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.head(y.reshape(len(x), 8, y[0, 0].numel()).reshape(y.shape))


def test_only_modules_that_are_not_layers_are_repaired() -> None:
    from metaprune.prune import _same_kind

    model = nn.Sequential(StoredWidth(8), nn.Linear(8, 8), StoredWidth(8))
    assert _same_kind(model, "2") == ["0", "2"]
    assert _same_kind(model, "1") == []  # a linear failing on its input: the cause is before it
    assert _same_kind(model, None) == []


def test_a_failure_outside_any_module_is_not_repaired() -> None:
    with pytest.raises(PrunedModelBrokenError, match="the pruned model fails with RuntimeError") as raised:
        prune(_RootReshape().eval(), torch.randn(1, 3, 4, 4), speedup=1.2)
    assert raised.value.module is None


def _caformer() -> nn.Module:
    from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, SepConv

    norms = [LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2
    return MetaFormer(**METAFORMER, token_mixers=(SepConv, SepConv, Attention, Attention), norm_layers=norms)


def _nest() -> nn.Module:
    from timm.models.nest import Nest

    return Nest(img_size=32, patch_size=4, num_levels=2, embed_dims=(32, 64), num_heads=(2, 4), depths=(1, 1))


@pytest.mark.parametrize(
    "build, attention",
    [
        (_caformer, ["stages.2.blocks.0.token_mixer", "stages.3.blocks.0.token_mixer"]),
        pytest.param(
            _nest,
            ["levels.0.transformer_encoder.0.attn", "levels.1.transformer_encoder.0.attn"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["caformer", "nest"],
)
def test_attention_sized_from_its_input_width_is_repaired_for_every_module_of_its_kind(
    build, attention: list[str], monkeypatch
) -> None:
    """CAFormer's and NesT's attention reshape their output (NesT: their heads) by the width of their input, so a
    pruned residual stream broke them; every attention module of the class is kept whole with its stream, at once."""
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, speedup=1.3)
    assert list(result.repaired) == attention
    assert result.speedup >= 1.3 and result.params < result.base_params
    assert result.model(x).shape == model(x).shape
    monkeypatch.setattr("metaprune.prune.MAX_REPAIRED", 0)
    with pytest.raises(PrunedModelBrokenError, match=f"module '{attention[0]}' \\(Attention\\)"):
        prune(model, x, speedup=1.3)


def test_an_output_without_logits_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="returns logits"):
        logits_of({"hidden": torch.zeros(1)})


METAFORMER = dict(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), num_classes=10)
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
TIMM_MODELS = {  # families whose pruning crashed, ran out of memory or corrupted the model before
    "levit": lambda: timm.create_model(
        "levit_128s",
        img_size=32,
        embed_dim=(16, 32),
        key_dim=8,
        depth=(1, 1),
        num_heads=(2, 2),
        distilled=False,
        num_classes=10,
    ),
    "coatnet": lambda: timm.create_model(
        "coatnet_nano_rw_224",
        img_size=32,
        embed_dim=(32, 32, 64, 64),
        depths=(1, 1, 1, 1),
        stem_width=16,
        num_classes=10,
    ),
    "pvt_v2": lambda: PyramidVisionTransformerV2(
        depths=(1, 1, 1, 1), embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2), num_classes=10
    ),
    "poolformer": lambda: MetaFormer(**METAFORMER, downsample_norm=None, layer_scale_init_values=1e-5),
    "cait": lambda: timm.create_model("cait_xxs24_224", **TINY_VIT, depth_token_only=1),
    "convit": lambda: timm.create_model("convit_tiny", **TINY_VIT, local_up_to_layer=1),
    "eva02": lambda: timm.create_model("eva02_tiny_patch14_224", **TINY_VIT, ref_feat_shape=(4, 4)),
}


@pytest.mark.parametrize("family", TIMM_MODELS)
def test_timm_families_prune_to_a_model_that_runs(family: str) -> None:
    torch.manual_seed(0)
    model = TIMM_MODELS[family]().eval()
    x = torch.randn(1, 3, 32, 32)
    model(x)  # a forward pass with gradients on fills LeViT's cache with a non-leaf tensor
    result = prune(model, x, speedup=1.3)
    assert result.params < result.base_params
    assert result.model(x).shape == model(x).shape == (1, 10)


def test_torchvision_vit_keeps_its_heads_whole_and_its_image_size() -> None:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()  # hidden_dim equals image_size: a stored 32 that is not a channel count
    x = torch.randn(1, 3, 32, 32)
    result = prune(model, x, speedup=1.2)
    attention = result.model.encoder.layers[0].self_attention
    assert result.model.encoder.layers[0].mlp[0].out_features < 64
    assert attention.embed_dim == 32 and result.model.image_size == 32
    assert result.model(x).shape == (1, 10)


def test_torchvision_swin_keeps_the_streams_its_functional_attention_reads() -> None:
    """Its attention is a function of ``qkv.weight`` and ``proj.weight``: the residual streams stay whole (the
    dependency graph used to enumerate indices through the window reshapes until memory ran out), the MLPs shrink."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = prune(model, x, speedup=1.2).model
    assert [pruned.features[0][0].out_channels, pruned.features[2].reduction.out_features] == [16, 32]
    assert pruned.features[1][0].mlp[0].out_features < 64
    assert pruned(x).shape == (1, 10)


def test_pruning_a_vit_does_not_pass_on_torch_pruning_warnings_the_user_cannot_act_on() -> None:
    import warnings

    model = timm.create_model("vit_tiny_patch16_224", **TINY_VIT).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prune(model, torch.randn(1, 3, 32, 32), speedup=1.2)
    assert not [w for w in caught if "Unwrapped parameters" in str(w.message)]


def test_the_report_and_its_summary_name_the_modules_kept_after_a_pruned_copy_broke() -> None:
    from torch.utils.data import TensorDataset

    from metaprune import prune_model
    from metaprune.report import summary_markdown

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))
    outcome = prune_model(
        network(StoredWidth(8)).eval(),
        train=data,
        val=data,
        example_inputs=torch.randn(1, 3, 8, 8),
        speedup=1.2,
        max_acc_drop=100,
        finetune_steps=1,
        batch_size=4,
        progress=False,
    )
    assert outcome.report["repaired"] == ["2"]
    assert "after a pruned copy broke in them: 1 module (`2`)." in summary_markdown(outcome.report)
