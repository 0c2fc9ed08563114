"""Rewrite strength per speed-up: the calibration's choice, its interpolation, its file."""

from __future__ import annotations

import json
import math

import pytest

from metaprune import strength as strength_module
from metaprune.strength import CALIBRATION_FILE, POOLED, Budget, Calibration, calibrate

CALIBRATION = Calibration(
    speedups=(2.0, 8.0),
    candidates=(0.0, 0.5, 1.0),
    strengths={POOLED: (0.0, 1.0), "cifar_resnet": (0.0, 0.5)},
    accuracy={POOLED: ((0.9, 0.8, 0.7), (0.3, 0.4, 0.5)), "cifar_resnet": ((0.9, 0.8, 0.7), (0.3, 0.5, 0.4))},
    members={POOLED: 3, "cifar_resnet": 1},
    budget=Budget(rewrite_steps=10),
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
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    for broken in ({"speedups": [2.0]}, data | {"strengths": [0.0, 1.0]}, data | {"strengths": {"mlp": [0.0, 1.0]}}):
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"{CALIBRATION_FILE}: not a rewrite-strength calibration"):
            Calibration.load(tmp_path)


def test_calibration_keeps_the_most_accurate_strength_per_family_and_speedup_and_the_weaker_on_ties(
    monkeypatch,
) -> None:
    # accuracy after pruning as a known function of (member, strength, speed-up): the rewrite hurts at 2x,
    # helps at 8x, and strengths 0.5 and 1 tie at 4x; a member is a number added to the table's accuracy
    table = {
        2.0: {0.0: 0.9, 0.5: 0.8, 1.0: 0.7},
        4.0: {0.0: 0.5, 0.5: 0.6, 1.0: 0.6},
        8.0: {0.0: 0.1, 0.5: 0.2, 1.0: 0.3},
    }
    monkeypatch.setattr(strength_module, "rewritten", lambda model, metanet, s, train, budget, seed: (model, s))

    def pruned_and_finetuned(prepared, speedup, *args, **kwargs):
        member, strength = prepared
        bonus = 0.5 if member == "resnet" and speedup == 8.0 and strength == 0.5 else 0.0  # a family of its own
        return {"finetuned": table[speedup][strength] + bonus + (0.1 if member == "resnet" else 0.0)}

    monkeypatch.setattr(strength_module, "pruned_and_finetuned", pruned_and_finetuned)
    members = [("cnn", "cnn"), ("cifar_resnet", "resnet")]
    calibration = calibrate(None, members, [8.0, 2.0, 4.0], None, None)
    assert calibration.speedups == (2.0, 4.0, 8.0)
    assert calibration.strengths == {POOLED: (0.0, 0.5, 0.5), "cnn": (0.0, 0.5, 1.0), "cifar_resnet": (0.0, 0.5, 0.5)}
    assert calibration.accuracy[POOLED][0] == pytest.approx((0.95, 0.85, 0.75))
    assert calibration.accuracy["cifar_resnet"][2] == pytest.approx((0.2, 0.8, 0.4))
    assert calibration.members == {POOLED: 2, "cnn": 1, "cifar_resnet": 1}
    with pytest.raises(ValueError, match="at least one validation network"):
        calibrate(None, [], [2.0], None, None)
    with pytest.raises(ValueError, match=r"rewrite strengths must be in \[0, 1\]"):
        calibrate(None, [("cnn", 0.0)], [2.0], None, None, candidates=(0.0, 2.0))


def test_a_calibration_file_from_before_global_pruning_holds_for_per_layer_pruning(tmp_path) -> None:
    CALIBRATION.save(tmp_path)
    data = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    del data["budget"]["global_pruning"]
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(data))
    assert Calibration.load(tmp_path).budget == Budget(rewrite_steps=10, global_pruning=False)


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
