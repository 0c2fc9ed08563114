"""Architecture families: seeded sampling, JSON round trip, held-out splits that training never sees."""

from __future__ import annotations

import json

import pytest
import torch

from hypernets.graph import to_op_graph
from hypernets.zoo import ArchSampler, GPT2Arch, ViTArch, arch_from_json, arch_to_json, get_family


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_sampler_is_reproducible_and_seed_dependent(name):
    family = get_family(name)
    first, again, other = (ArchSampler(family, seed).sample(20) for seed in (0, 0, 1))
    assert first == again
    assert first != other
    assert all(family.in_train_space(a) for a in first)


def test_sampler_state_restores_the_sequence():
    sampler = ArchSampler(get_family("vit"), seed=3)
    sampler.sample(5)
    state = sampler.generator.get_state()
    expected = sampler.sample(4)
    sampler.generator.set_state(state)
    assert sampler.sample(4) == expected


@pytest.mark.parametrize(
    "arch", [ViTArch(2, 64, 4, 3.0, 7, "avg"), GPT2Arch(n_layer=3, n_embd=48, n_head=2, n_positions=64)]
)
def test_arch_round_trips_through_json(arch):
    text = arch_to_json(arch)
    assert json.loads(text)["family"] == arch.family
    assert arch_from_json(text) == arch
    assert arch_from_json(json.loads(text)) == arch
    with pytest.raises(ValueError, match="unknown architecture family"):
        arch_from_json({**json.loads(text), "family": "resnet"})


@pytest.mark.parametrize("name", ["vit", "gpt2"])
def test_heldout_is_disjoint_from_training_and_reaches_beyond_it(name):
    family = get_family(name)
    train = set(ArchSampler(family, 0).choices)
    heldout = family.heldout_archs(8, seed=0)
    assert len(set(heldout)) == 8 and not train & set(heldout)
    assert family.heldout_archs(8, seed=0) == heldout
    max_depth, max_width = max(a.depth for a in train), max(a.width for a in train)
    assert (max_depth, max_width) == (4, 96)
    assert any(a.depth == 6 for a in heldout) and any(a.width == 128 for a in heldout)
    assert any(a.depth > max_depth and a.width > max_width for a in heldout)
    assert any(a.depth <= max_depth and a.width <= max_width for a in heldout)  # reserved in-range settings
    assert len(train) > 50


def test_vit_builds_for_mnist_with_the_sampled_shape():
    arch = ViTArch(depth=2, embed_dim=48, num_heads=4, mlp_ratio=2.0, patch_size=7, pool="token")
    model = arch.build()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert len(model.blocks) == 2 and model.cls_token.shape == (1, 1, 48)
    assert model.patch_embed.proj.weight.shape == (48, 1, 7, 7)
    assert model.blocks[0].mlp.fc1.weight.shape == (96, 48)
    assert to_op_graph(arch.build("meta")).num_nodes > 10


def test_gpt2_builds_over_bytes():
    model = GPT2Arch(n_layer=2, n_embd=32, n_head=2, n_positions=64).build()
    logits = model(input_ids=torch.zeros(2, 10, dtype=torch.long)).logits
    assert logits.shape == (2, 10, 256)
    assert model.transformer.wpe.weight.shape == (64, 32) and len(model.transformer.h) == 2
