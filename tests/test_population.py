"""Population: a tiny one builds, reloads exactly, is reproducible, resumes, and errors name the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from metaprune import population
from metaprune.population import (
    MemberSpec,
    accuracy,
    build_from_config,
    build_population,
    list_members,
    load_member,
    mnist,
    population_specs,
    train_member,
)

SPECS = [
    MemberSpec("mlp", "mlp", {"hidden": [16]}, seed=0, train_steps=40),
    MemberSpec("cnn", "small_cnn", {"channels": [4, 8]}, seed=1, train_steps=10),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("population")
    build_population(root, SPECS, progress=False)
    return root


def test_members_are_saved_with_a_config_that_rebuilds_them(root) -> None:
    assert [p.name for p in list_members(root)] == ["cnn", "mlp"]
    config = json.loads((root / "mlp" / "model.json").read_text())
    assert config["family"] == "mlp" and config["kwargs"] == {"hidden": [16]} and config["train_steps"] == 40
    model, _ = load_member(root / "mlp")
    saved = load_file(root / "mlp" / "model.safetensors")
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert not list(root.glob("*/.*.tmp"))  # no temporary file left behind


def test_accuracy_is_above_chance_and_recorded(root) -> None:
    model, config = load_member(root / "mlp")
    images, labels = mnist("eval").tensors
    assert config["eval_accuracy"] == accuracy(model, images, labels)
    assert config["eval_accuracy"] > 0.5  # 10 classes: chance is 0.1


def test_same_spec_gives_bit_identical_weights(root) -> None:
    retrained, score = train_member(SPECS[1], mnist("train"), mnist("eval"))
    loaded, config = load_member(root / "cnn")
    assert score == config["eval_accuracy"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, retrained.state_dict()[key]), key


def test_resume_skips_finished_members(root, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a finished member was retrained")

    monkeypatch.setattr(population, "train_member", fail)
    assert build_population(root, SPECS, progress=False) == [root / "mlp", root / "cnn"]


def test_a_different_spec_under_a_finished_name_is_an_error(root) -> None:
    changed = MemberSpec("mlp", "mlp", {"hidden": [16]}, seed=5, train_steps=40)
    with pytest.raises(ValueError, match=r"mlp/model.json holds a different member"):
        build_population(root, [changed], progress=False)


def test_bad_configs_name_the_file() -> None:
    with pytest.raises(ValueError, match=r"nets/a/model.json: unknown family 'transformer'"):
        build_from_config({"family": "transformer", "kwargs": {}}, "nets/a/model.json")
    with pytest.raises(ValueError, match=r"nets/b/model.json: bad kwargs .*'mlp'.*depth"):
        build_from_config({"family": "mlp", "kwargs": {"depth": 3}}, "nets/b/model.json")
    with pytest.raises(ValueError, match=r"nets/c/model.json: a member config is a JSON object"):
        build_from_config([], "nets/c/model.json")


def test_default_specs_cycle_families_with_distinct_seeds() -> None:
    specs = population_specs(9, train_steps=5, seed=10)
    assert [s.family for s in specs[:3]] == ["small_cnn", "cifar_resnet", "mlp"]
    assert [s.seed for s in specs] == list(range(10, 19))
    assert len({s.name for s in specs}) == 9
    for spec in specs:
        assert build_from_config(spec.config(), spec.name) is not None


def test_vit_population_builds_timm_vits_with_their_own_rate() -> None:
    specs = population_specs(3, train_steps=5, population="vit")
    assert [s.family for s in specs] == ["vit"] * 3 and all(s.lr == 1e-3 for s in specs)
    model = build_from_config(specs[1].config(), specs[1].name)
    assert [b.attn.num_heads for b in model.blocks] == [4, 4] and model.embed_dim == 48
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown population 'rnn'; choose one of cnn, vit"):
        population_specs(1, population="rnn")
