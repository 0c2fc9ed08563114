"""How much of the metanetwork's rewrite to apply at a given speed-up, measured on networks it never saw.

A full rewrite concentrates a network's weight mass in few channels. At 4x and 8x that is what makes it
prune well; at 2x its cost wins instead: the rewrite changes the function, a short fine-tuning does not
quite restore it, and the pruned ResNets ended 0.3 to 1.4 points behind DepGraph on every seed
(docs/benchmarks.md). So the rewrite is applied partly, ``W + s * (M(W) - W)``, with a strength ``s``
chosen per speed-up by :func:`calibrate` on validation networks: the strength whose pruned and
fine-tuned networks end most accurate on average.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .finetune import finetune, recalibrate_batchnorm
from .measure import accuracy
from .metanet import Metanet
from .population import INPUT_SHAPE
from .prune import Method, prune

CALIBRATION_FILE = "strengths.json"
STRENGTHS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class Budget:
    """The training around pruning that a calibration holds for: its strengths answer for this budget."""

    rewrite_steps: int = 100
    finetune_steps: int = 100
    lr: float = 0.01
    head_ratio: float = 0.0


@dataclass(frozen=True)
class Calibration:
    """Rewrite strength per speed-up, increasing speed-ups; ``accuracy[i][j]``: mean accuracy after fine-tuning
    at ``speedups[i]`` with strength ``candidates[j]``."""

    speedups: tuple[float, ...]
    strengths: tuple[float, ...]
    candidates: tuple[float, ...]
    accuracy: tuple[tuple[float, ...], ...]
    budget: Budget

    def strength(self, speedup: float) -> float:
        """The calibrated strength, linear in log speed-up between calibrated ones, the nearest one outside."""
        points = [math.log(s) for s in self.speedups]
        return float(np.interp(math.log(speedup), points, self.strengths))  # np.interp holds the end values outside

    def save(self, directory: str | os.PathLike) -> None:
        (Path(directory) / CALIBRATION_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Calibration | None:
        """The calibration saved beside a metanetwork, or ``None`` when it has none."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(
                speedups=tuple(data["speedups"]),
                strengths=tuple(data["strengths"]),
                candidates=tuple(data["candidates"]),
                accuracy=tuple(tuple(row) for row in data["accuracy"]),
                budget=Budget(**data["budget"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a rewrite-strength calibration: {err}") from err


def rewritten(
    model: nn.Module, metanet: Metanet, strength: float, train: Dataset, *, budget: Budget, seed: int = 0
) -> nn.Module:
    """A copy of ``model`` rewritten with ``strength``, then fine-tuned for ``budget.rewrite_steps``."""
    model = copy.deepcopy(model)
    metanet.rewrite_(model, INPUT_SHAPE, strength=strength)
    if budget.rewrite_steps:
        finetune(model, train, steps=budget.rewrite_steps, lr=budget.lr, seed=seed, progress=False)
    return model.eval()


def pruned_and_finetuned(
    model: nn.Module,
    speedup: float,
    train: Dataset,
    eval_set: Dataset,
    *,
    method: Method,
    budget: Budget,
    seed: int = 0,
) -> dict[str, float]:
    """Prune a copy of ``model`` to ``speedup``, re-estimate its norms, fine-tune it: the speed-up reached and
    the accuracy right after pruning and after fine-tuning."""
    example = torch.zeros(1, *INPUT_SHAPE[1:])
    result = prune(model, example, speedup=speedup, method=method, head_ratio=budget.head_ratio, seed=seed)
    pruned = recalibrate_batchnorm(result.model, train, seed=seed)
    pruned_accuracy = accuracy(pruned, eval_set)
    if budget.finetune_steps:
        finetune(pruned, train, steps=budget.finetune_steps, lr=budget.lr, seed=seed, progress=False)
    return {"speedup": result.speedup, "pruned": pruned_accuracy, "finetuned": accuracy(pruned.eval(), eval_set)}


def calibrate(
    metanet: Metanet,
    members: Sequence[nn.Module],
    speedups: Sequence[float],
    train: Dataset,
    eval_set: Dataset,
    *,
    candidates: Sequence[float] = STRENGTHS,
    budget: Budget = Budget(),
    seed: int = 0,
) -> Calibration:
    """Per speed-up, the candidate strength with the best mean accuracy after pruning and fine-tuning
    ``members`` (networks the metanetwork was not trained on; ties go to the weaker rewrite)."""
    if not members:
        raise ValueError("calibration needs at least one validation network")
    if any(not 0 <= c <= 1 for c in candidates):
        raise ValueError(f"rewrite strengths must be in [0, 1], got {list(candidates)}")
    speedups = sorted(speedups)
    scores = [[[] for _ in candidates] for _ in speedups]
    for model in members:
        for j, strength in enumerate(candidates):
            prepared = rewritten(model, metanet, strength, train, budget=budget, seed=seed)
            for i, speedup in enumerate(speedups):
                result = pruned_and_finetuned(
                    prepared, speedup, train, eval_set, method="group_norm", budget=budget, seed=seed
                )
                scores[i][j].append(result["finetuned"])
    means = tuple(tuple(statistics.mean(s) for s in row) for row in scores)
    best = tuple(candidates[max(range(len(candidates)), key=lambda j: (row[j], -candidates[j]))] for row in means)
    return Calibration(tuple(speedups), best, tuple(candidates), means, budget)
