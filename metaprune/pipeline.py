"""Prune the model a user has in hand, on their data: the whole CI step as one function, which the
``metaprune prune`` command calls.

Optionally rewrite the model with a metanetwork, train it with DepGraph's group-sparsity regularizer, prune
whole channels until the FLOPs (every op counted, as users count them) or the parameters meet the targets,
re-estimate its norms, fine-tune it within a step and time budget, and judge it against the dense model on
the validation data: accuracy for a classifier, next-token loss for a causal language model. With a
metanetwork, DepGraph's recipe alone is run too and the better of the two on the validation data is kept,
so the rewrite can never make the result worse than pruning without it.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hypernets.checkpoint import check_finite_tensors

from .copying import copy_model
from .finetune import Optimizer, finetune, recalibrate_batchnorm
from .measure import Measurement, measure
from .prune import Method, PruneResult, attention_modules, check_finite, prune, sparse_train
from .task import Data, Task, task_loss

if TYPE_CHECKING:
    from .metanet import Metanet

PACKAGES = ("hypernets", "torch", "torch-pruning", "torch-geometric", "timm", "transformers")


class TrainingDiverged(ValueError):
    """Sparsity training left NaN or infinite weights: the learning rate is too high for this model."""


@dataclass(frozen=True)
class Gate:
    """What the pruned model must reach: a NaN fails every check it enters."""

    speedup: float | None = None  # dense / pruned FLOPs
    param_ratio: float | None = None  # dense / pruned parameters
    max_acc_drop: float | None = None  # accuracy points (classification)
    max_loss_increase: float | None = None  # nats per token (causal LM)

    def __post_init__(self) -> None:
        if self.speedup is None and self.param_ratio is None:
            raise ValueError("give a target: speedup and/or param_ratio")


@dataclass
class Pruned:
    """The pruned model (whether or not it passed) and the report that says how it came about."""

    model: nn.Module
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.report["passed"]

    @property
    def reasons(self) -> list[str]:
        return self.report["reasons"]


@dataclass(frozen=True)
class _Recipe:
    """How every candidate is prepared, pruned and trained: the same for the rewrite and DepGraph alone."""

    task: Task
    speedup: float | None
    param_ratio: float | None
    method: Method
    head_ratio: float
    head_dims: bool
    global_pruning: bool
    keep: tuple[str, ...]
    sparse_steps: int
    finetune_steps: int
    lr: float
    optimizer: Optimizer
    batch_size: int
    seed: int
    progress: bool


@dataclass
class _Clock:
    """Wall seconds per phase, for the report: a CI user wants to know where the minutes went."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def prune_model(
    model: nn.Module,
    *,
    train: Data,
    val: Data,
    example_inputs: Tensor,
    task: Task = "classification",
    speedup: float | None = None,
    param_ratio: float | None = None,
    max_acc_drop: float | None = None,
    max_loss_increase: float | None = None,
    method: Method = "group_norm",
    head_ratio: float = 0.0,
    head_dims: bool = False,
    global_pruning: bool | None = None,
    keep: Sequence[str] = (),
    sparse_steps: int = 0,
    metanet: Metanet | None = None,
    rewrite_strength: float = 1.0,
    finetune_steps: int = 300,
    lr: float = 0.01,
    optimizer: Optimizer = "sgd",
    batch_size: int = 128,
    max_minutes: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Pruned:
    """Prune a copy of ``model`` to the targets, fine-tune it, and judge it; ``model`` is left as it was.

    Args:
        model: the trained network; its parameters must be finite.
        train, val: ``(input, target)`` datasets or loaders of batches; ``val`` judges and is never trained on.
        example_inputs: one batch the model accepts (batch size 1 is best), for tracing and counting.
        task: ``"classification"`` (gate: ``max_acc_drop``) or ``"causal_lm"`` (gate: ``max_loss_increase``).
        speedup, param_ratio: the targets, dense / pruned FLOPs and parameters; at least one.
        method, head_ratio, head_dims, global_pruning: how channels are ranked and cut (see
            :func:`metaprune.prune.prune`); ``global_pruning`` defaults to on for models with timm-style attention,
            where ranking channels across layers measured best (docs/benchmarks.md), and off otherwise.
        keep: names of modules never pruned, beside the classifier and the layers kept by default (a module a
            :class:`~metaprune.consistency.PrunedModelBrokenError` names).
        sparse_steps: steps of DepGraph's group-sparsity training before pruning.
        metanet: rewrite the model ``rewrite_strength`` of the way first; DepGraph's recipe alone is run too
            and the better on ``val`` kept.
        finetune_steps, lr, optimizer, batch_size: the training budget after pruning (and of sparsity training).
        max_minutes: wall-clock budget of the whole call: fine-tuning stops early when it would overrun.
        seed: seeds every random choice, so two runs give the same model.
        progress: progress bars with ETAs on stderr; default when stderr is a terminal (in a CI log, the
            report's ``wall_seconds`` says where the time went).

    Raises:
        ValueError: an unreachable target, a bad option, NaN weights (the message names the culprit).
    """
    gate = Gate(speedup, param_ratio, max_acc_drop, max_loss_increase)
    progress = sys.stderr.isatty() if progress is None else progress
    global_pruning = default_global_pruning(model) if global_pruning is None else global_pruning
    if not 0 <= rewrite_strength <= 1:
        raise ValueError(f"rewrite_strength must be in [0, 1], got {rewrite_strength}")
    check_finite(model)
    start, clock = time.monotonic(), _Clock()
    with clock.phase("measure_dense"):
        before = _measure(model, example_inputs, val, task, progress)
    deadline = None
    if max_minutes is not None:  # keep back what measuring the pruned model will take (at most the dense one's)
        deadline = start + 60 * max_minutes - clock.seconds["measure_dense"]
    strengths = [rewrite_strength, 0.0] if metanet is not None and rewrite_strength > 0 else [0.0]
    recipe = _Recipe(
        task,
        speedup,
        param_ratio,
        method,
        head_ratio,
        head_dims,
        global_pruning,
        tuple(keep),
        sparse_steps,
        finetune_steps,
        lr,
        optimizer,
        batch_size,
        seed,
        progress,
    )
    candidates = []
    for index, strength in enumerate(strengths):
        share = None if deadline is None else start + (deadline - start) * (index + 1) / len(strengths)
        candidates.append(_candidate(model, metanet, strength, train, val, example_inputs, clock, share, recipe))
    best = max(candidates, key=lambda c: _goodness(c["after"], task))
    result, pruned, after = best["result"], best["model"], best["after"]
    change = _change(before, after, task)
    failed = _gate(gate, result, pruned, change, task)
    reasons = list(failed.values())
    report = {
        "passed": not reasons,
        "reasons": reasons,
        "failed_gates": failed,
        "task": task,
        "metanet": metanet is not None,
        "rewrite_strength": best["strength"] if metanet is not None else None,
        "candidates": [{"rewrite_strength": c["strength"], **_score(c["after"], task)} for c in candidates],
        "method": method,
        "head_ratio": head_ratio,
        "head_dims": head_dims,
        "global_pruning": global_pruning,
        "keep": list(keep),
        "repaired": list(result.repaired),
        "target": {
            "speedup": speedup,
            "param_ratio": param_ratio,
            "max_acc_drop": max_acc_drop,
            "max_loss_increase": max_loss_increase,
            "counted_in": "flops (torch.utils.flop_counter: every op, attention matmuls included)",
        },
        "speedup": result.speedup,
        "macs_speedup": result.macs_speedup,
        "param_ratio": result.param_ratio,
        "accuracy_drop" if task == "classification" else "loss_increase": change,
        "before": before.to_dict(),
        "after": after.to_dict(),
        **best["training"],
        "seed": seed,
        "max_minutes": max_minutes,
        "wall_seconds": {**clock.seconds, "total": time.monotonic() - start},
        "versions": versions(),
    }
    return Pruned(pruned, report)


def _candidate(
    model: nn.Module,
    metanet: Metanet | None,
    strength: float,
    train: Data,
    val: Data,
    example: Tensor,
    clock: _Clock,
    deadline: float | None,
    recipe: _Recipe,
) -> dict[str, Any]:
    """One preparation (rewrite ``strength`` of the way, then sparsity training) pruned, fine-tuned, measured."""
    train_kwargs = {
        "lr": recipe.lr,
        "optimizer": recipe.optimizer,
        "batch_size": recipe.batch_size,
        "seed": recipe.seed,
        "progress": recipe.progress,
        "loss_fn": partial(task_loss, recipe.task),
    }
    prepared = copy_model(model)
    if strength:
        with clock.phase("rewrite"):
            metanet.rewrite_(prepared, example, strength=strength)
    sparse_losses: list[float] = []
    if recipe.sparse_steps:
        with clock.phase("sparse"):
            sparse_losses = sparse_train(
                prepared, example, train, steps=recipe.sparse_steps, deadline=deadline, desc="sparse", **train_kwargs
            )
        check_finite_tensors(
            prepared.state_dict(),
            f"sparse training diverged ({recipe.sparse_steps} steps); lower the learning rate:",
            TrainingDiverged,
        )
    with clock.phase("prune"):
        result = prune(
            prepared.eval(),
            example,
            speedup=recipe.speedup,
            param_ratio=recipe.param_ratio,
            method=recipe.method,
            head_ratio=recipe.head_ratio,
            head_dims=recipe.head_dims,
            global_pruning=recipe.global_pruning,
            keep=recipe.keep,
            counter="flops",
            seed=recipe.seed,
            progress=recipe.progress,
        )
    pruned = recalibrate_batchnorm(result.model, train, seed=recipe.seed)
    losses: list[float] = []
    if recipe.finetune_steps:
        with clock.phase("finetune"):
            losses = finetune(pruned, train, steps=recipe.finetune_steps, deadline=deadline, **train_kwargs)
    with clock.phase("measure_pruned"):
        after = _measure(pruned.eval(), example, val, recipe.task, recipe.progress)
    training = {
        "sparse": _curve(recipe.sparse_steps, sparse_losses, recipe.lr),
        "finetune": _curve(recipe.finetune_steps, losses, recipe.lr),
    }
    return {"strength": strength, "result": result, "model": pruned, "after": after, "training": training}


def _measure(model: nn.Module, example: Tensor, val: Data, task: Task, progress: bool) -> Measurement:
    return measure(model, example, val, task=task, flops=True, progress=progress)


def _curve(steps: int, losses: list[float], lr: float) -> dict[str, Any]:
    """A training phase in the report: its budget, what was done of it, its first and last loss."""
    return {"steps": steps, "steps_done": len(losses), "lr": lr, "first_loss": losses[:1], "last_loss": losses[-1:]}


def _score(after: Measurement, task: Task) -> dict[str, float | None]:
    return {"accuracy": after.accuracy} if task == "classification" else {"loss": after.loss}


def _goodness(after: Measurement, task: Task) -> float:
    """Higher is better; NaN ranks last."""
    value = after.accuracy if task == "classification" else -after.loss
    return value if math.isfinite(value) else -math.inf


def _change(before: Measurement, after: Measurement, task: Task) -> float:
    """Accuracy points lost, or next-token loss gained: positive is worse."""
    if task == "classification":
        return 100 * (before.accuracy - after.accuracy)
    return after.loss - before.loss


GATES = ("speedup", "param_ratio", "quality", "finite_weights")


def _gate(gate: Gate, result: PruneResult, pruned: nn.Module, change: float, task: Task) -> dict[str, str]:
    """Why the pruned model fails, by gate (see :data:`GATES`), if it does; written so that NaN fails every
    comparison it enters."""
    failed = {}
    for key, name, reached, target in (
        ("speedup", "speed-up", result.speedup, gate.speedup),
        ("param_ratio", "parameter ratio", result.param_ratio, gate.param_ratio),
    ):
        if target is not None and not reached >= target:
            failed[key] = f"{name} {reached:.2f}x is below the target {target:.2f}x"
    bound, what, unit = (
        (gate.max_acc_drop, "accuracy dropped", "points, more than max_acc_drop")
        if task == "classification"
        else (gate.max_loss_increase, "eval loss rose", "nats per token, more than max_loss_increase")
    )
    if not math.isfinite(change):
        failed["quality"] = (
            "the accuracy is not a number" if task == "classification" else "the eval loss is not a number"
        )
    elif bound is not None and not change <= bound:
        failed["quality"] = f"{what} {change:.3g} {unit} {bound}"
    broken = [name for name, value in pruned.state_dict().items() if not torch.isfinite(value).all()]
    if broken:
        failed["finite_weights"] = (
            f"fine-tuning left NaN or infinite values in {len(broken)} tensors ({broken[0]}, ...); lower the "
            "learning rate"
        )
    return failed


def default_global_pruning(model: nn.Module) -> bool:
    """Global ranking for ViTs (timm-style attention), per-layer pruning for everything else."""
    return bool(attention_modules(model))


def versions() -> dict[str, str | None]:
    """The versions a report's numbers came from."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found
