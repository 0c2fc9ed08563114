"""One continual-learning run from flat settings: build the benchmark and learner, train, and write
``metrics.jsonl`` (training log, accuracy matrix rows, summary) and ``accuracy.png`` (the heat map).

Shared by the two recipes and the benchmark script, so all methods run on the same tasks and loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch

from hypernets.continual.benchmarks import BENCHMARKS, PIXELS, Benchmark
from hypernets.continual.hypernet import ChunkedHypernet, LoGAHTaskHypernet, target_mlp
from hypernets.continual.learners import FineTuneLearner, HypernetLearner, Learner, SeparateLearner
from hypernets.continual.metrics import plot_accuracy_matrix, summarize
from hypernets.continual.train import TrainConfig, train_continual

METHODS = ("hypernet", "finetune", "separate")
HYPERNETS = ("chunked", "logah")
LOGAH_OPTIONS = dict(hidden=64, layers=2, heads=4, rank=16, max_ck=128)  # a small LoGAH: the target has 6 tensors


@dataclass(frozen=True)
class Experiment:
    benchmark: str = "split"  # "permuted" or "split"
    method: str = "hypernet"  # "hypernet", "finetune" or "separate"
    hypernet: str = "chunked"  # "chunked" or "logah"
    beta: float = 0.01
    lookahead: bool = False
    embedding_dim: int = 32
    mip: bool = False
    residual: bool = False
    target_hidden: int = 100  # width of the target MLP's two hidden layers
    chunk_size: int = 4096
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 128
    num_tasks: int = 10  # Permuted-MNIST only; Split-MNIST has 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("benchmark", self.benchmark, tuple(BENCHMARKS)),
            ("method", self.method, METHODS),
            ("hypernet", self.hypernet, HYPERNETS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def load_benchmark(experiment: Experiment) -> Benchmark:
    if experiment.benchmark == "permuted":
        return BENCHMARKS["permuted"](experiment.num_tasks, experiment.seed)
    return BENCHMARKS["split"]()


def build_learner(experiment: Experiment, benchmark: Benchmark) -> Learner:
    """The learner ``experiment`` names, initialized from its seed."""
    torch.manual_seed(experiment.seed)
    build = partial(target_mlp, hidden=(experiment.target_hidden,) * 2, inputs=PIXELS)
    tasks, classes = len(benchmark), benchmark.num_classes
    if experiment.method == "finetune":
        return FineTuneLearner(build, tasks, classes, experiment.lr)
    if experiment.method == "separate":
        return SeparateLearner(build, classes, experiment.lr)
    target = build(classes)
    options = dict(embedding_dim=experiment.embedding_dim, mip=experiment.mip, residual=experiment.residual)
    if experiment.hypernet == "chunked":
        hypernet = ChunkedHypernet(target, tasks, chunk_size=experiment.chunk_size, **options)
    else:
        hypernet = LoGAHTaskHypernet(target, tasks, (1, PIXELS), **LOGAH_OPTIONS, **options)
    return HypernetLearner(hypernet, target, experiment.beta, experiment.lr, experiment.lookahead)


def run(experiment: Experiment, out: str | Path | None = None) -> dict:
    """Train and evaluate; returns the summary (metrics, accuracy matrix, settings, seconds).

    With ``out``, every log record is appended to ``metrics.jsonl`` as it happens, so a long run can
    be followed (``tail -f``) and a killed one keeps what it did.
    """
    benchmark = load_benchmark(experiment)
    learner = build_learner(experiment, benchmark)
    config = TrainConfig(steps=experiment.steps, batch_size=experiment.batch_size, seed=experiment.seed)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") if out else contextlib.nullcontext() as f:
        log = (lambda record: print(json.dumps(record), file=f, flush=True)) if f else (lambda record: None)
        start = time.perf_counter()
        matrix = train_continual(learner, benchmark, config, log)
        summary = {
            **summarize(matrix),
            "matrix": [[None if math.isnan(v) else round(v, 2) for v in row] for row in matrix.tolist()],  # no NaN
            "seconds": round(time.perf_counter() - start, 1),
            "settings": asdict(experiment),
        }
        log({"summary": summary})
    if out:
        plot_accuracy_matrix(matrix, out / "accuracy.png", f"{benchmark.name}: {describe(experiment)}")
    return summary


def describe(experiment: Experiment) -> str:
    """Short method label for tables and plot titles."""
    if experiment.method != "hypernet":
        return experiment.method
    return f"hypernet ({experiment.hypernet}, beta={experiment.beta:g}{', look-ahead' if experiment.lookahead else ''})"


def parser(defaults: Experiment, description: str | None = None) -> argparse.ArgumentParser:
    """Command-line flags for every :class:`Experiment` field, with ``defaults`` as defaults."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in fields(Experiment):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help="default: %(default)s")
        else:
            choices = {"benchmark": tuple(BENCHMARKS), "method": METHODS, "hypernet": HYPERNETS}.get(field.name)
            p.add_argument(flag, type=type(default), default=default, choices=choices, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=None, help="directory for metrics.jsonl and accuracy.png")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (small nets: more threads only contend)")
    return p


def main(defaults: Experiment, description: str | None = None, argv: Sequence[str] | None = None) -> dict:
    """Parse flags over ``defaults``, run, and print the summary."""
    args = vars(parser(defaults, description).parse_args(argv))
    out = args.pop("out")
    torch.set_num_threads(args.pop("threads"))
    summary = run(Experiment(**args), out)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=None))
    return summary
