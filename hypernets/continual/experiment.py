"""One continual-learning run from flat settings: build the benchmark and learner, train, summarize.

Shared by ``hypernets continual`` (:mod:`hypernets.continual.cli`), the two recipes and the benchmark
script, so every method runs on the same tasks, loop and step budget.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from hypernets.continual.benchmarks import PIXELS, Benchmark, load_benchmark
from hypernets.continual.consolidation import EWC, SI
from hypernets.continual.hypernet import ChunkedHypernet, LoGAHTaskHypernet, target_cnn, target_mlp
from hypernets.continual.hypernetized import HypernetizedTaskHypernet
from hypernets.continual.interval import HyperIntervalLearner, IntervalHypernet
from hypernets.continual.learners import HypernetLearner, Learner, SeparateLearner, SingleNetworkLearner
from hypernets.continual.metrics import plot_accuracy_matrix, summarize
from hypernets.continual.names import FULL_LENGTH, NEGATIVES, SETTINGS
from hypernets.continual.negatives import OutlierExposure
from hypernets.continual.rnn import RNNHypernet
from hypernets.continual.train import TrainConfig, train_continual

METHODS = ("hypernet", "hyperinterval", "finetune", "separate", "ewc", "si")
HYPERNETS = ("chunked", "logah", "hypernetize", "rnn")
TARGETS = ("mlp", "cnn")
LOGAH_OPTIONS = dict(hidden=64, layers=2, heads=4, rank=16, max_ck=128)  # a small LoGAH: the target has 6 tensors


@dataclass(frozen=True)
class Experiment:
    benchmark: str = "split"  # "permuted", "split" or "rotated"
    setting: str = "task"  # "task" (task id given at test time) or "class" (not given)
    method: str = "hypernet"  # one of METHODS
    hypernet: str = "chunked"  # one of HYPERNETS
    target: str = "mlp"  # "mlp" (784-H-H-classes) or "cnn" (target_cnn); LoGAH reads the MLP only
    beta: float = 0.01  # hypernet: output regularizer strength
    lookahead: bool = False
    embedding_dim: int = 32
    mip: bool = False
    residual: bool = False
    ewc_lambda: float = 1e4  # EWC: penalty strength
    si_c: float = 100.0  # SI: penalty strength
    perturbation: float = 10.0  # hyperinterval: eps, each task's embedding interval has radius eps / embedding_dim
    universal: bool = False  # hyperinterval: predict with the universal embedding's one network (task setting)
    multihead: bool = False  # hyperinterval: a 2-way output block per task, picked by the task id (else one shared)
    chained: bool = True  # hypernet rnn: carry the LSTM state from chunk to chunk (False: the ablation without)
    negatives: str = "none"  # hypernet, separate: outlier exposure on these negatives of each batch (NEGATIVES)
    outlier_weight: float = 1.0  # its weight beside the task's cross-entropy
    target_hidden: int = 100  # width of the target MLP's two hidden layers
    chunk_size: int = 4096
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 128
    num_tasks: int = 0  # 0: the benchmark's full length (10 Permuted/Rotated, 5 Split)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("benchmark", self.benchmark, tuple(FULL_LENGTH)),
            ("setting", self.setting, SETTINGS),
            ("method", self.method, METHODS),
            ("hypernet", self.hypernet, HYPERNETS),
            ("target", self.target, TARGETS),
            ("negatives", self.negatives, NEGATIVES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.universal and self.method != "hyperinterval":
            raise ValueError("universal: the universal embedding is hyperinterval's")
        if self.multihead and self.method != "hyperinterval":
            raise ValueError("multihead: a head per task is hyperinterval's switch (the others choose their own)")
        if self.universal and self.setting != "task":
            raise ValueError(f"setting {self.setting}: the universal embedding names a digit from its task, task only")
        if self.target == "cnn" and self.method == "hypernet" and self.hypernet == "logah":
            raise ValueError("target cnn: the LoGAH hypernetwork reads the MLP's op graph only; use target mlp")
        if self.negatives != "none" and self.method not in ("hypernet", "separate"):
            raise ValueError(f"negatives {self.negatives}: outlier exposure is for hypernet and separate")
        if self.target == "cnn" and self.method == "hyperinterval":
            raise ValueError("target cnn: hyperinterval bounds Linear and ReLU layers only; use target mlp")


def build_learner(experiment: Experiment, benchmark: Benchmark) -> Learner:
    """The learner ``experiment`` names, initialized from its seed."""
    torch.manual_seed(experiment.seed)
    if experiment.target == "mlp":
        build = partial(target_mlp, hidden=(experiment.target_hidden,) * 2, inputs=PIXELS)
    else:
        build = target_cnn
    classes = [task.classes for task in benchmark.tasks]
    exposure = None
    if experiment.negatives != "none":
        exposure = OutlierExposure(experiment.negatives, experiment.outlier_weight)
    if experiment.method == "separate":
        return SeparateLearner(build, classes, experiment.lr, exposure)
    if experiment.method == "hyperinterval":
        target = build(benchmark.num_classes * (len(benchmark) if experiment.multihead else 1))
        hypernet = IntervalHypernet(
            target,
            len(benchmark),
            experiment.embedding_dim,
            chunk_size=experiment.chunk_size,
            perturbation=experiment.perturbation,
            nesting=experiment.universal,  # as the reference: nested for the universal embedding, else free
        )
        return HyperIntervalLearner(
            hypernet,
            target,
            classes,
            experiment.steps,
            experiment.beta,
            lr=experiment.lr,
            universal=experiment.universal,
            multihead=experiment.multihead,
        )
    if experiment.method != "hypernet":
        consolidation = None
        if experiment.method == "ewc":
            consolidation = EWC(experiment.ewc_lambda)
        elif experiment.method == "si":
            consolidation = SI(experiment.si_c)
        return SingleNetworkLearner(build, classes, experiment.setting == "class", experiment.lr, consolidation)
    target = build(benchmark.num_classes)
    tasks = len(benchmark)
    options = dict(embedding_dim=experiment.embedding_dim, mip=experiment.mip, residual=experiment.residual)
    if experiment.hypernet == "chunked":
        hypernet = ChunkedHypernet(target, tasks, chunk_size=experiment.chunk_size, **options)
    elif experiment.hypernet == "rnn":
        hypernet = RNNHypernet(target, tasks, chunk_size=experiment.chunk_size, chained=experiment.chained, **options)
    elif experiment.hypernet == "hypernetize":
        hypernet = HypernetizedTaskHypernet(
            target,
            tasks,
            body="chunked",
            hidden=100,
            chunk_size=experiment.chunk_size,
            embedding_dim=experiment.embedding_dim,
            mip=experiment.mip,
        )
    else:
        hypernet = LoGAHTaskHypernet(target, tasks, (1, PIXELS), **LOGAH_OPTIONS, **options)
    return HypernetLearner(hypernet, target, classes, experiment.beta, experiment.lr, experiment.lookahead, exposure)


def _json_rows(matrix: Tensor) -> list[list[float | None]]:
    """A matrix as strict JSON: NaN (tasks not seen yet) as null."""
    return [[None if math.isnan(v) else round(v, 2) for v in row] for row in matrix.tolist()]


def as_matrix(rows: list[list[float | None]]) -> Tensor:
    """The inverse of the summary's JSON rows: null back to NaN."""
    return torch.tensor([[math.nan if v is None else v for v in row] for row in rows])


def run(
    experiment: Experiment,
    log: Callable[[dict], None] = lambda record: None,
    advance: Callable[[int], None] = lambda steps: None,
) -> dict:
    """Train and evaluate, passing every log record to ``log`` and every step to ``advance``; returns the
    summary (metrics, accuracy and task-inference matrices, settings, seconds), also logged last."""
    benchmark = load_benchmark(experiment.benchmark, experiment.num_tasks, experiment.seed)
    learner = build_learner(experiment, benchmark)
    config = TrainConfig(experiment.steps, experiment.batch_size, seed=experiment.seed, setting=experiment.setting)
    start = time.perf_counter()
    matrix, inference = train_continual(learner, benchmark, config, log, advance)
    inferred = inference[-1]
    summary = {
        **summarize(matrix),
        "task_inference": None if inferred.isnan().all() else inferred.mean().item(),
        "matrix": _json_rows(matrix),
        "task_inference_matrix": None if inference.isnan().all() else _json_rows(inference),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": asdict(experiment),
    }
    log({"summary": summary})
    return summary


def run_to(experiment: Experiment, out: Path, log: Callable[[dict], None] = lambda record: None) -> dict:
    """:func:`run`, appending every record to ``out/metrics.jsonl`` as it happens (so a long run can be
    followed with ``tail -f``) as well as passing it to ``log``, and drawing ``out/accuracy.png`` at the end."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") as f:

        def write(record: dict) -> None:
            print(json.dumps(record), file=f, flush=True)
            log(record)

        summary = run(experiment, write)
    plot_accuracy_matrix(as_matrix(summary["matrix"]), out / "accuracy.png", describe(experiment))
    return summary


def describe(experiment: Experiment) -> str:
    """Short label for tables and plot titles: benchmark, setting, method."""
    method = experiment.method
    exposure = ""
    if experiment.negatives != "none":
        exposure = f"outlier exposure on {experiment.negatives}, weight {experiment.outlier_weight:g}"
    if method == "hypernet":
        extras = [experiment.hypernet, f"beta={experiment.beta:g}"]
        extras += ["MIP"] if experiment.hypernet == "hypernetize" and experiment.mip else []
        extras += ["look-ahead"] if experiment.lookahead else []
        extras += ["entropy task inference"] if experiment.setting == "class" else []
        extras += [exposure] if exposure else []
        method = f"hypernet ({', '.join(extras)})"
    elif method == "hyperinterval":
        extras = [f"eps={experiment.perturbation:g}", f"beta={experiment.beta:g}"]
        extras += ["universal embedding"] if experiment.universal else []
        extras += ["a head per task"] if experiment.multihead else []
        extras += ["entropy task inference"] if experiment.setting == "class" else []
        method = f"HyperInterval ({', '.join(extras)})"
    elif method == "separate" and (experiment.setting == "class" or exposure):
        extras = ["entropy task inference"] if experiment.setting == "class" else []
        method = f"separate ({', '.join(extras + ([exposure] if exposure else []))})"
    target = ", CNN target" if experiment.target == "cnn" else ""
    return f"{experiment.benchmark}, {experiment.setting}-incremental: {method}{target}"


def print_task_progress(num_tasks: int) -> Callable[[dict], None]:
    """A log callback that prints one line to stderr as each task is learned and evaluated."""
    start = time.perf_counter()
    row: list[float] = []

    def log(record: dict) -> None:
        if "after_task" not in record:
            return
        row.append(record["accuracy"])
        if record["task"] == record["after_task"]:
            print(
                f"task {record['after_task'] + 1}/{num_tasks} learned: mean accuracy on tasks so far "
                f"{sum(row) / len(row):.2f}% ({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            row.clear()

    return log


def parser(defaults: Experiment, description: str | None = None) -> argparse.ArgumentParser:
    """Command-line flags for every :class:`Experiment` field but ``benchmark``, with ``defaults`` as defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = {"setting": SETTINGS, "method": METHODS, "hypernet": HYPERNETS, "target": TARGETS, "negatives": NEGATIVES}
    for field in fields(Experiment):
        if field.name == "benchmark":
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help="default: %(default)s")
        else:
            help = "default: %(default)s" + (" (the full benchmark)" if field.name == "num_tasks" else "")
            p.add_argument(flag, type=type(default), default=default, choices=choices.get(field.name), help=help)
    p.add_argument("--out", type=Path, default=None, help="directory for metrics.jsonl and accuracy.png")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small nets: more threads only contend)")
    return p


def main(defaults: Experiment, description: str | None = None, argv: Sequence[str] | None = None) -> dict:
    """Parse flags over ``defaults``, run with a line of progress per task, and print the summary."""
    args = vars(parser(defaults, description).parse_args(argv))
    out = args.pop("out")
    torch.set_num_threads(args.pop("threads"))
    experiment = Experiment(benchmark=defaults.benchmark, **args)
    num_tasks = experiment.num_tasks or FULL_LENGTH[experiment.benchmark]
    progress = print_task_progress(num_tasks)
    summary = run(experiment, progress) if out is None else run_to(experiment, out, log=progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}))
    return summary
