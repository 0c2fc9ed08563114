"""How much of the metanetwork's rewrite to apply at a given speed-up, measured on networks it never saw.

A full rewrite concentrates a network's weight mass in few channels. At 4x and 8x that is what makes it
prune well; at 2x its cost wins instead: the rewrite changes the function, a short fine-tuning does not
quite restore it, and the pruned ResNets ended 0.3 to 1.4 points behind DepGraph on every seed
(docs/benchmarks.md). So the rewrite is applied partly, ``W + s * (M(W) - W)``, followed by DepGraph's
sparsity training, so that strength 0 is DepGraph's recipe exactly. :func:`calibrate` chooses ``s`` per
speed-up and architecture family on validation networks, and keeps a rewrite only where it beats no rewrite
by more than a standard error across them: a mean gain within the networks' spread is one the next network
may well not see (a small CNN's best strength was a coin toss within 0.2 points). Per family, because the
rewrite does not cost every family alike: pooled over families, the ResNets (where the 2x cost lives) were
outvoted by networks the rewrite hardly changes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from hypernets.checkpoint import read_json, typed_config

from .copying import copy_model
from .finetune import finetune, recalibrate_batchnorm
from .measure import accuracy
from .metanet import Metanet
from .population import INPUT_SHAPE
from .prune import Method, prune, sparse_train

CALIBRATION_FILE = "strengths.json"
STRENGTHS = (0.0, 0.5, 1.0)
POOLED = "all"  # the calibration over every family: what a family without validation networks gets


@dataclass(frozen=True)
class Budget:
    """The training around pruning that a calibration holds for: its strengths answer for this budget."""

    sparse_steps: int = 100  # DepGraph's group-sparsity training between the rewrite and pruning
    finetune_steps: int = 100
    lr: float = 0.01
    head_ratio: float = 0.0
    global_pruning: bool = False  # rank channels across layers (see metaprune.prune.prune)

    @classmethod
    def from_options(cls, options: object) -> Budget:
        """The budget a command runs with, from its parsed options named as the fields are (``metaprune prune``
        and ``bench_prune.py`` share the names, so a calibration check compares like with like)."""
        return cls(**{field.name: getattr(options, field.name) for field in fields(cls)})


@dataclass(frozen=True)
class Calibration:
    """Rewrite strength per family (and :data:`POOLED`) and speed-up, increasing speed-ups.

    ``strengths[family][i]``: the strength at ``speedups[i]``; ``scores[family][i][j]``: the accuracy after
    fine-tuning of each of the family's validation networks at ``speedups[i]`` with strength ``candidates[j]``
    (the same networks, in the same order, in every cell).
    """

    speedups: tuple[float, ...]
    candidates: tuple[float, ...]
    strengths: dict[str, tuple[float, ...]]
    scores: dict[str, tuple[tuple[tuple[float, ...], ...], ...]]
    budget: Budget

    @property
    def accuracy(self) -> dict[str, tuple[tuple[float, ...], ...]]:
        """Mean accuracy per family, speed-up and candidate."""
        return {
            family: tuple(tuple(statistics.mean(cell) for cell in row) for row in rows)
            for family, rows in self.scores.items()
        }

    @property
    def members(self) -> dict[str, int]:
        """Validation networks per family."""
        return {family: len(rows[0][0]) for family, rows in self.scores.items()}

    def strength(self, speedup: float, family: str | None = None) -> float:
        """The calibrated strength for ``family`` (the pooled one when it was not calibrated), linear in log
        speed-up between calibrated speed-ups, the nearest one's outside."""
        strengths = self.strengths.get(family, self.strengths[POOLED])
        points = [math.log(s) for s in self.speedups]
        return float(np.interp(math.log(speedup), points, strengths))  # np.interp holds the end values outside

    def save(self, directory: str | os.PathLike) -> None:
        data = asdict(self) | {"accuracy": self.accuracy}  # the means too, for a reader of the file
        (Path(directory) / CALIBRATION_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Calibration | None:
        """The calibration saved beside a metanetwork, or ``None`` when it has none."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        data = read_json(path, "rewrite-strength calibration", ValueError)
        try:
            calibration = cls(
                speedups=tuple(data["speedups"]),
                candidates=tuple(data["candidates"]),
                strengths={family: tuple(row) for family, row in data["strengths"].items()},
                scores={
                    family: tuple(tuple(map(tuple, row)) for row in rows) for family, rows in data["scores"].items()
                },
                budget=typed_config(Budget, data["budget"], f"{path} (budget)", ignore=()),
            )
            if POOLED not in calibration.strengths:
                raise KeyError(POOLED)
            strengths = [v for row in calibration.strengths.values() for v in row]
            values = [*calibration.speedups, *calibration.candidates, *strengths]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise TypeError("speed-ups, candidates and strengths must be finite numbers")
            if not all(0 <= v <= 1 for v in strengths):
                raise ValueError("strengths must be in [0, 1]")
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"{path}: not a rewrite-strength calibration (calibrate again): {err!r}") from err
        return calibration


def prepared(
    model: nn.Module, metanet: Metanet | None, strength: float, train: Dataset, *, budget: Budget, seed: int = 0
) -> nn.Module:
    """A copy of ``model`` rewritten with ``strength`` (not at all at 0, where ``metanet`` may be ``None``), then
    trained for ``budget.sparse_steps`` with DepGraph's group-sparsity regularizer: the network group-norm
    pruning gets. At strength 0 this is DepGraph's preparation exactly."""
    model = copy_model(model)
    if strength:
        metanet.rewrite_(model, INPUT_SHAPE, strength=strength)
    if budget.sparse_steps:
        example = torch.zeros(1, *INPUT_SHAPE[1:])
        sparse_train(model, example, train, steps=budget.sparse_steps, lr=budget.lr, seed=seed, progress=False)
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
    """Per family of ``members`` (``(family, network)`` pairs the metanetwork was not trained on) with at least
    two networks, and pooled over all of them, the strength to use at each speed-up: see :func:`choose`."""
    if len(members) < 2:
        raise ValueError("calibration needs at least two validation networks: a gain is weighed against its spread")
    if any(not 0 <= c <= 1 for c in candidates) or 0 not in candidates:
        raise ValueError(f"rewrite strengths must be in [0, 1] and include 0 (no rewrite), got {list(candidates)}")
    speedups = sorted(speedups)
    scores: dict[str, list[list[list[float]]]] = {}  # family -> speed-up -> candidate -> accuracies
    for family, model in members:
        for group in (family, POOLED):
            scores.setdefault(group, [[[] for _ in candidates] for _ in speedups])
        for j, strength in enumerate(candidates):
            network = prepared(model, metanet, strength, train, budget=budget, seed=seed)
            for i, speedup in enumerate(speedups):
                result = pruned_and_finetuned(
                    network, speedup, train, eval_set, method="group_norm", budget=budget, seed=seed
                )
                for group in (family, POOLED):
                    scores[group][i][j].append(result["finetuned"])
    scores = {group: rows for group, rows in scores.items() if len(rows[0][0]) >= 2}
    strengths = {group: tuple(candidates[choose(row, candidates)] for row in rows) for group, rows in scores.items()}
    frozen = {group: tuple(tuple(map(tuple, row)) for row in rows) for group, rows in scores.items()}
    return Calibration(tuple(speedups), tuple(candidates), strengths, frozen, budget)


def choose(row: Sequence[Sequence[float]], candidates: Sequence[float]) -> int:
    """The index of the candidate to use, given each candidate's accuracies on the same networks.

    The candidate with the best mean (the weaker on ties), if its gain over no rewrite, paired by network, is
    more than one standard error of that gain; else no rewrite. The rewrite has to earn its place: strength
    0 is DepGraph's recipe, and a mean gain smaller than the networks' spread is not one to count on.
    """
    none = candidates.index(0)
    best = max(range(len(candidates)), key=lambda j: (statistics.mean(row[j]), -candidates[j]))
    gains = [a - b for a, b in zip(row[best], row[none], strict=True)]
    standard_error = statistics.stdev(gains) / math.sqrt(len(gains))
    return best if statistics.mean(gains) > standard_error else none
