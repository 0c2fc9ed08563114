"""Rewrite strength per speed-up: the calibration's choice, its interpolation, its file."""

from __future__ import annotations

import json
import math

import pytest

from metaprune import strength as strength_module
from metaprune.strength import CALIBRATION_FILE, Budget, Calibration, calibrate

CALIBRATION = Calibration(
    speedups=(2.0, 8.0),
    strengths=(0.0, 1.0),
    candidates=(0.0, 0.5, 1.0),
    accuracy=((0.9, 0.8, 0.7), (0.3, 0.4, 0.5)),
    budget=Budget(rewrite_steps=10),
)


@pytest.mark.parametrize(("speedup", "expected"), [(1.5, 0.0), (2.0, 0.0), (4.0, 0.5), (8.0, 1.0), (16.0, 1.0)])
def test_strength_is_linear_in_log_speedup_and_flat_outside(speedup: float, expected: float) -> None:
    assert math.isclose(CALIBRATION.strength(speedup), expected, abs_tol=1e-12)


def test_a_calibration_round_trips_through_its_file(tmp_path) -> None:
    assert Calibration.load(tmp_path) is None
    CALIBRATION.save(tmp_path)
    assert Calibration.load(tmp_path) == CALIBRATION
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"speedups": [2.0]}))
    with pytest.raises(ValueError, match=f"{CALIBRATION_FILE}: not a rewrite-strength calibration"):
        Calibration.load(tmp_path)


def test_calibration_keeps_the_most_accurate_strength_per_speedup_and_the_weaker_on_ties(monkeypatch) -> None:
    # accuracy after pruning as a known function of (member, strength, speed-up): the rewrite hurts at 2x,
    # helps at 8x, and strengths 0.5 and 1 tie at 4x
    table = {
        2.0: {0.0: 0.9, 0.5: 0.8, 1.0: 0.7},
        4.0: {0.0: 0.5, 0.5: 0.6, 1.0: 0.6},
        8.0: {0.0: 0.1, 0.5: 0.2, 1.0: 0.3},
    }
    monkeypatch.setattr(strength_module, "rewritten", lambda model, metanet, s, train, budget, seed: (model, s))
    monkeypatch.setattr(
        strength_module,
        "pruned_and_finetuned",
        lambda prepared, speedup, *args, **kwargs: {"finetuned": table[speedup][prepared[1]] + prepared[0]},
    )
    calibration = calibrate(None, [0.0, 0.1], [8.0, 2.0, 4.0], None, None)
    assert calibration.speedups == (2.0, 4.0, 8.0)
    assert calibration.strengths == (0.0, 0.5, 1.0)
    assert calibration.accuracy[0] == pytest.approx((0.95, 0.85, 0.75))
    with pytest.raises(ValueError, match="at least one validation network"):
        calibrate(None, [], [2.0], None, None)
    with pytest.raises(ValueError, match=r"rewrite strengths must be in \[0, 1\]"):
        calibrate(None, [0.0], [2.0], None, None, candidates=(0.0, 2.0))
