"""Rewrite strength per speed-up: the calibration's choice, its interpolation, its file."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from metaprune import strength as strength_module
from metaprune.strength import CALIBRATION_FILE, POOLED, Budget, Calibration, calibrate

CALIBRATION = Calibration(
    speedups=(2.0, 8.0),
    candidates=(0.0, 0.5, 1.0),
    strengths={POOLED: (0.0, 1.0), "cifar_resnet": (0.0, 0.5)},
    scores={
        POOLED: (((0.9, 0.8, 0.7), (0.8,) * 3, (0.7,) * 3), ((0.3,) * 3, (0.4,) * 3, (0.5,) * 3)),
        "cifar_resnet": (((0.9, 0.9), (0.8, 0.8), (0.7, 0.7)), ((0.3, 0.3), (0.5, 0.5), (0.4, 0.4))),
    },
    budget=Budget(sparse_steps=10),
)


@pytest.mark.parametrize(("speedup", "expected"), [(1.5, 0.0), (2.0, 0.0), (4.0, 0.5), (8.0, 1.0), (16.0, 1.0)])
def test_strength_is_linear_in_log_speedup_and_flat_outside(speedup: float, expected: float) -> None:
    assert math.isclose(CALIBRATION.strength(speedup), expected, abs_tol=1e-12)
    assert math.isclose(CALIBRATION.strength(speedup, "small_cnn"), expected, abs_tol=1e-12)  # not calibrated
    assert math.isclose(CALIBRATION.strength(speedup, "cifar_resnet"), expected / 2, abs_tol=1e-12)


def test_a_calibration_round_trips_through_its_file(tmp_path) -> None:
    assert Calibration.load(tmp_path) is None
    CALIBRATION.save(tmp_path)
    assert Calibration.load(tmp_path) == CALIBRATION
    assert CALIBRATION.members == {POOLED: 3, "cifar_resnet": 2}
    assert CALIBRATION.accuracy[POOLED][0] == pytest.approx((0.8, 0.8, 0.7))
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    assert data["accuracy"] == json.loads(json.dumps(CALIBRATION.accuracy))  # the means, for a reader
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data | {"budget": {"rewrite_steps": 100}}))
    with pytest.raises(ValueError, match="calibrate again"):  # calibrated for plain steps after the rewrite
        Calibration.load(tmp_path)
    for broken in ({"speedups": [2.0]}, data | {"strengths": [0.0, 1.0]}, data | {"strengths": {"mlp": [0.0, 1.0]}}):
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"{CALIBRATION_FILE}: not a rewrite-strength calibration"):
            Calibration.load(tmp_path)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (((0.90, 0.90, 0.90), (0.95, 0.96, 0.97), (0.95, 0.96, 0.97)), 1),  # steady gain: the weaker of a tie
        (((0.90, 0.90, 0.90), (0.94, 0.86, 0.91), (0.80, 0.80, 0.80)), 0),  # +0.003 mean, SE 0.023: no rewrite
        (((0.90, 0.90, 0.90), (0.89, 0.89, 0.89), (0.93, 0.92, 0.98)), 2),  # +0.043, SE 0.018: kept
        (((0.90, 0.90, 0.90), (0.90, 0.90, 0.90), (0.80, 0.80, 0.80)), 0),  # no gain at all
    ],
)
def test_a_rewrite_is_chosen_only_when_it_beats_none_by_more_than_a_standard_error(row, expected) -> None:
    assert strength_module.choose(row, (0.0, 0.5, 1.0)) == expected
    assert strength_module.choose(row[::-1], (1.0, 0.5, 0.0)) == 2 - expected  # no rewrite found by value


def test_calibration_chooses_per_family_of_two_or_more_and_pooled(monkeypatch) -> None:
    # accuracy after pruning as a known function of (network, strength, speed-up); a network is a number, and
    # its family's networks differ by it: the rewrite costs at 2x, helps every ResNet at 8x, helps the CNNs
    # only on the mean at 8x (+0.05 and -0.01: not more than a standard error)
    table = {2.0: {0.0: 0.9, 1.0: 0.8}, 8.0: {0.0: 0.1, 1.0: 0.3}}
    monkeypatch.setattr(strength_module, "prepared", lambda model, metanet, s, train, budget, seed: (model, s))

    def pruned_and_finetuned(network, speedup, *args, **kwargs):
        member, strength = network
        cnn_gain = {1: 0.05 - 0.2, 2: -0.01 - 0.2}.get(member, 0.0) if strength and speedup == 8.0 else 0.0
        return {"finetuned": table[speedup][strength] + member / 100 + cnn_gain}

    monkeypatch.setattr(strength_module, "pruned_and_finetuned", pruned_and_finetuned)
    members = [("cnn", 1), ("cnn", 2), ("cifar_resnet", 3), ("cifar_resnet", 4), ("mlp", 5)]
    calibration = calibrate(None, members, [8.0, 2.0], None, None, candidates=(0.0, 1.0))
    assert calibration.speedups == (2.0, 8.0)
    assert calibration.strengths == {POOLED: (0.0, 1.0), "cnn": (0.0, 0.0), "cifar_resnet": (0.0, 1.0)}
    assert calibration.members == {POOLED: 5, "cnn": 2, "cifar_resnet": 2}  # one MLP: the pooled strengths
    cnn_8x = calibration.scores["cnn"][1]
    assert cnn_8x[0] == pytest.approx((0.11, 0.12)) and cnn_8x[1] == pytest.approx((0.16, 0.11))
    with pytest.raises(ValueError, match="at least two validation networks"):
        calibrate(None, [("cnn", 1)], [2.0], None, None)
    with pytest.raises(ValueError, match=r"rewrite strengths must be in \[0, 1\] and include 0"):
        calibrate(None, members, [2.0], None, None, candidates=(0.0, 2.0))
    with pytest.raises(ValueError, match="include 0"):
        calibrate(None, members, [2.0], None, None, candidates=(0.5, 1.0))


def test_at_strength_0_the_network_is_prepared_as_depgraph_prepares_it() -> None:
    from metaprune.population import INPUT_SHAPE, build_from_config, mnist, population_specs
    from metaprune.prune import sparse_train

    torch.manual_seed(0)
    model = build_from_config(population_specs(1)[0].config())
    network = strength_module.prepared(model, None, 0.0, mnist("train"), budget=Budget(sparse_steps=3), seed=1)
    reference = copy.deepcopy(model)
    sparse_train(reference, torch.zeros(1, *INPUT_SHAPE[1:]), mnist("train"), steps=3, seed=1, progress=False)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert not torch.equal(next(model.parameters()), next(network.parameters()))  # a copy was trained


def test_a_calibration_file_from_before_global_pruning_holds_for_per_layer_pruning(tmp_path) -> None:
    CALIBRATION.save(tmp_path)
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    del data["budget"]["global_pruning"]
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    assert Calibration.load(tmp_path).budget == Budget(sparse_steps=10, global_pruning=False)


@pytest.mark.parametrize("global_pruning", [False, True])
def test_pruning_in_the_calibration_follows_the_budgets_scope(monkeypatch, global_pruning: bool) -> None:
    class Called(Exception):
        """Stops the pipeline at pruning: the options it was called with are all this test needs."""

    calls = []

    def prune(model, example, **options):
        calls.append(options)
        raise Called

    monkeypatch.setattr(strength_module, "prune", prune)
    with pytest.raises(Called):
        strength_module.pruned_and_finetuned(
            None, 2.0, None, None, method="group_norm", budget=Budget(global_pruning=global_pruning)
        )
    assert calls[0]["global_pruning"] is global_pruning and calls[0]["speedup"] == 2.0


def test_a_budget_is_read_from_options_named_as_its_fields() -> None:
    import argparse

    options = argparse.Namespace(
        sparse_steps=7, finetune_steps=9, lr=0.5, head_ratio=0.25, global_pruning=True, speedup=2.0
    )
    assert Budget.from_options(options) == Budget(
        sparse_steps=7, finetune_steps=9, lr=0.5, head_ratio=0.25, global_pruning=True
    )
    with pytest.raises(AttributeError, match="global_pruning"):
        Budget.from_options(argparse.Namespace(sparse_steps=7, finetune_steps=9, lr=0.5, head_ratio=0.25))
