"""How much of the metanetwork's rewrite to apply at a given speed-up, measured on networks it never saw.

A full rewrite concentrates a network's weight mass in few channels. At 4x and 8x that is what makes it
prune well; at 2x its cost wins instead: the rewrite changes the function, a short fine-tuning does not
quite restore it, and the pruned ResNets ended 0.3 to 1.4 points behind DepGraph on every seed
(docs/benchmarks.md). So the rewrite is applied partly, ``W + s * (M(W) - W)``, with a strength ``s``
chosen per speed-up and architecture family by :func:`calibrate` on validation networks: the strength whose
pruned and fine-tuned networks end most accurate on average. Per family, because the rewrite does not cost
every family alike: pooled over families, the ResNets (where the 2x cost lives) were outvoted by networks
the rewrite hardly changes.
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
POOLED = "all"  # the calibration over every family: what a family without validation networks gets


@dataclass(frozen=True)
class Budget:
    """The training around pruning that a calibration holds for: its strengths answer for this budget."""

    rewrite_steps: int = 100
    finetune_steps: int = 100
    lr: float = 0.01
    head_ratio: float = 0.0
    global_pruning: bool = False  # rank channels across layers (see metaprune.prune.prune)


@dataclass(frozen=True)
class Calibration:
    """Rewrite strength per family (and :data:`POOLED`) and speed-up, increasing speed-ups.

    ``strengths[family][i]``: the strength at ``speedups[i]``; ``accuracy[family][i][j]``: mean accuracy after
    fine-tuning at ``speedups[i]`` with strength ``candidates[j]``, over ``members[family]`` networks.
    """

    speedups: tuple[float, ...]
    candidates: tuple[float, ...]
    strengths: dict[str, tuple[float, ...]]
    accuracy: dict[str, tuple[tuple[float, ...], ...]]
    members: dict[str, int]
    budget: Budget

    def strength(self, speedup: float, family: str | None = None) -> float:
        """The calibrated strength for ``family`` (the pooled one when it was not calibrated), linear in log
        speed-up between calibrated speed-ups, the nearest one's outside."""
        strengths = self.strengths.get(family, self.strengths[POOLED])
        points = [math.log(s) for s in self.speedups]
        return float(np.interp(math.log(speedup), points, strengths))  # np.interp holds the end values outside

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
            calibration = cls(
                speedups=tuple(data["speedups"]),
                candidates=tuple(data["candidates"]),
                strengths={family: tuple(row) for family, row in data["strengths"].items()},
                accuracy={family: tuple(map(tuple, rows)) for family, rows in data["accuracy"].items()},
                members=dict(data["members"]),
                budget=Budget(**data["budget"]),
            )
            if POOLED not in calibration.strengths:
                raise KeyError(POOLED)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a rewrite-strength calibration (calibrate again): {err!r}") from err
        return calibration


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
    result = prune(
        model,
        example,
        speedup=speedup,
        method=method,
        head_ratio=budget.head_ratio,
        global_pruning=budget.global_pruning,
        seed=seed,
    )
    pruned = recalibrate_batchnorm(result.model, train, seed=seed)
    pruned_accuracy = accuracy(pruned, eval_set)
    if budget.finetune_steps:
        finetune(pruned, train, steps=budget.finetune_steps, lr=budget.lr, seed=seed, progress=False)
    return {"speedup": result.speedup, "pruned": pruned_accuracy, "finetuned": accuracy(pruned.eval(), eval_set)}


def calibrate(
    metanet: Metanet,
    members: Sequence[tuple[str, nn.Module]],
    speedups: Sequence[float],
    train: Dataset,
    eval_set: Dataset,
    *,
    candidates: Sequence[float] = STRENGTHS,
    budget: Budget = Budget(),
    seed: int = 0,
) -> Calibration:
    """Per family of ``members`` (``(family, network)`` pairs the metanetwork was not trained on), and pooled
    over all of them, the candidate strength with the best mean accuracy after pruning and fine-tuning at each
    speed-up (ties go to the weaker rewrite)."""
    if not members:
        raise ValueError("calibration needs at least one validation network")
    if any(not 0 <= c <= 1 for c in candidates):
        raise ValueError(f"rewrite strengths must be in [0, 1], got {list(candidates)}")
    speedups = sorted(speedups)
    scores: dict[str, list[list[list[float]]]] = {}  # family -> speed-up -> candidate -> accuracies
    for family, model in members:
        for group in (family, POOLED):
            scores.setdefault(group, [[[] for _ in candidates] for _ in speedups])
        for j, strength in enumerate(candidates):
            prepared = rewritten(model, metanet, strength, train, budget=budget, seed=seed)
            for i, speedup in enumerate(speedups):
                result = pruned_and_finetuned(
                    prepared, speedup, train, eval_set, method="group_norm", budget=budget, seed=seed
                )
                for group in (family, POOLED):
                    scores[group][i][j].append(result["finetuned"])
    accuracy = {group: tuple(tuple(statistics.mean(s) for s in row) for row in rows) for group, rows in scores.items()}
    strengths = {
        group: tuple(candidates[max(range(len(candidates)), key=lambda j: (row[j], -candidates[j]))] for row in means)
        for group, means in accuracy.items()
    }
    counts = {group: len(rows[0][0]) for group, rows in scores.items()}
    return Calibration(tuple(speedups), tuple(candidates), strengths, accuracy, counts, budget)
