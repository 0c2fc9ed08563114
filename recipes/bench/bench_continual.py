"""Benchmark continual learning: the task-conditioned hypernetwork against fine-tuning (forgets) and a
separate network per task (upper bound), on Permuted-MNIST-10 and Split-MNIST, same tasks and loop.

Prints a markdown table of average final accuracy, forgetting and backward transfer, with the command
that produced it. Each run also writes ``metrics.jsonl`` and ``accuracy.png`` under ``--out``.

    python recipes/bench/bench_continual.py
    python recipes/bench/bench_continual.py --benchmarks split --hypernets chunked logah
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from hypernets.continual.experiment import HYPERNETS, Experiment, describe, run

DEFAULT_STEPS = {"permuted": 1000, "split": 500}  # per task


def experiments(
    benchmarks: list[str], hypernets: list[str], lookahead: bool, steps: dict[str, int]
) -> list[Experiment]:
    """Every hypernetwork kind, then both baselines, per benchmark; LoGAH with MIP and residual outputs."""
    runs = []
    for benchmark in benchmarks:
        base = Experiment(benchmark=benchmark, steps=steps[benchmark], lookahead=lookahead)
        for kind in hypernets:
            runs.append(replace(base, hypernet=kind, mip=kind == "logah", residual=kind == "logah"))
        runs += [replace(base, method="finetune"), replace(base, method="separate")]
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", nargs="+", default=["permuted", "split"], choices=["permuted", "split"])
    p.add_argument("--hypernets", nargs="+", default=["chunked"], choices=HYPERNETS)
    p.add_argument("--lookahead", action="store_true", help="regularize at the look-ahead point W + dW")
    p.add_argument("--steps-permuted", type=int, default=DEFAULT_STEPS["permuted"])
    p.add_argument("--steps-split", type=int, default=DEFAULT_STEPS["split"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_continual"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps = {"permuted": args.steps_permuted, "split": args.steps_split}
    rows = []
    for experiment in experiments(args.benchmarks, args.hypernets, args.lookahead, steps):
        label = describe(experiment)
        kind = f"_{experiment.hypernet}" if experiment.method == "hypernet" else ""
        summary = run(experiment, args.out / f"{experiment.benchmark}_{experiment.method}{kind}")
        rows.append(
            f"| {experiment.benchmark} | {label} | {experiment.steps} | {summary['average_accuracy']:.2f} "
            f"| {summary['forgetting']:.2f} | {summary['backward_transfer']:.2f} | {summary['seconds']:.0f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    print(f"`python {shlex.join(sys.argv)}` ({machine})")
    print()
    print("| benchmark | method | steps/task | avg final acc (%) | forgetting (pts) | BWT (pts) | seconds |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
