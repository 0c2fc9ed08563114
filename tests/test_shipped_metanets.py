"""The metanetworks shipped as package data (metaprune/pretrained/): loadable by name, calibrated, small, and
matched to models by family for ``--metanet auto``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hypernets import zoo
from hypernets.zoo.vit import ViTArch
from metaprune.metanet import Metanet
from metaprune.population import vit
from metaprune.pretrained import SHIPPED, family_of, shipped_path
from metaprune.strength import Budget, Calibration

MAX_BYTES = 5 * 2**20  # package data stays small
SPEEDUPS = {"cnn": (2.0, 4.0, 8.0), "vit": (1.5, 2.0, 3.0, 4.0)}


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_metanet_loads_with_its_calibration(name: str):
    directory = shipped_path(name)
    assert directory.is_dir(), f"{directory} is missing: run python recipes/train_shipped_metanets.py --only {name}"
    metanet = Metanet.from_pretrained(directory)
    assert all(torch.isfinite(p).all() for p in metanet.parameters())
    calibration = Calibration.load(directory)
    assert calibration is not None, f"{directory} has no strengths.json"
    assert calibration.speedups == SPEEDUPS[name]
    assert calibration.budget == Budget(sparse_steps=100, finetune_steps=100)  # `metaprune prune`'s, 100 fine-tuning
    strengths = [s for row in calibration.strengths.values() for s in row]
    assert strengths and all(0 <= s <= 1 for s in strengths)
    assert all(0 <= calibration.strength(s) <= 1 for s in (1.2, 2.5, 16.0))
    assert sum(f.stat().st_size for f in directory.iterdir()) < MAX_BYTES


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"'nope'.*shipped: cnn, vit"):
        shipped_path("nope")


@pytest.mark.parametrize(
    "build",
    [
        lambda: ViTArch(2, 32, 2, 2.0, patch_size=7, pool="token").build(),
        lambda: vit(depth=1, embed_dim=16, num_heads=2, mlp_ratio=2.0, patch_size=14, pool="avg"),
    ],
    ids=["zoo-ViTArch", "population-vit"],
)
def test_timm_vits_are_the_vit_family(build):
    assert family_of(build()) == "vit"


def test_conv_and_linear_networks_are_the_cnn_family():
    from torchvision.models import resnet18

    assert family_of(zoo.small_cnn()) == "cnn"
    assert family_of(zoo.mlp(hidden=[8])) == "cnn"
    assert family_of(zoo.cifar_resnet(depth=8, width=4, in_channels=1)) == "cnn"
    assert family_of(resnet18(num_classes=10)) == "cnn"


def test_language_models_and_parameterless_modules_have_no_family():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    assert family_of(LlamaForCausalLM(config)) is None
    assert family_of(nn.Sequential(nn.Linear(4, 4), nn.Embedding(3, 4))) is None
    assert family_of(nn.ReLU()) is None


def test_the_cnn_metanet_rewrites_a_small_cnn_in_place_keeping_shapes():
    metanet = Metanet.from_pretrained(shipped_path("cnn")).eval()
    torch.manual_seed(0)
    model = zoo.small_cnn().eval()
    before = copy.deepcopy(model.state_dict())
    assert metanet.rewrite_(model, (1, 1, 28, 28)) is model
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].shape == before[k].shape for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()
