"""Hypernetworks at GPT-2's real widths: byte-level GPT-2 shapes of width 768 to 1600 (GPT-2 S, M, L, XL),
predicted by each hypernetwork, against Hugging Face's random init, at step 0 and along fine-tuning.

Targets are named like ``l12-w768`` (12 layers, width 768, width / 64 heads, context 64, vocabulary 256);
the score is ``TextTask().score``, eval loss in nats per byte on 64 fixed windows of the embedded text
(lower is better; a uniform guess scores ln 256 = 5.545). Random init is scored over ``--seeds``; a
prediction does not depend on a seed. Fine-tuning runs AdamW at one learning rate for every
initialization, chosen first on a separate configuration (``--lr-config``) from ``--lr-grid``, and
fine-tunes each initialization of each ``--finetune`` target on the same batches per seed.

Writes ``OUT/results.json`` and ``OUT/widths.png`` (width / widest trained against predicted minus random)
and prints the tables of docs/benchmarks.md.

    python recipes/bench/bench_gpt2_widths.py --hypernet LoGAH=gpt2-pydoc \\
        --targets l12-w768 l24-w1024 l36-w1280 l48-w1600 --finetune l2-w768 l2-w1024 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from hypernets import LoGAH
from hypernets.evaluate import finetune, initialize
from hypernets.logah import largest_dim
from hypernets.train.tasks import TextTask
from hypernets.zoo import GPT2Arch

HEAD_DIM = 64  # GPT-2's at every size
CONTEXT = 64


def target(name: str) -> GPT2Arch:
    """``l12-w768`` as the byte-level GPT-2 with 12 layers of width 768 and 12 heads."""
    match = re.fullmatch(r"l(\d+)-w(\d+)", name)
    if not match:
        raise argparse.ArgumentTypeError(f"{name!r}: name targets like l12-w768")
    layers, width = int(match[1]), int(match[2])
    return GPT2Arch(layers, width, max(1, width // HEAD_DIM), CONTEXT)


def named_hypernet(text: str) -> tuple[str, str]:
    name, _, where = text.partition("=")
    if not where:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=DIR or NAME=SHIPPED, e.g. LoGAH=gpt2-pydoc")
    return name, where


def short(arch: GPT2Arch) -> str:
    return f"l{arch.n_layer}-w{arch.n_embd}"


def step0(archs: list[GPT2Arch], hypernets: dict[str, LoGAH], seeds: list[int], task: TextTask) -> list[dict]:
    """Eval loss of every initialization of every target, before any training."""
    rows = []
    for arch in archs:
        start = time.perf_counter()
        random = [task.score(initialize(arch, None, seed)) for seed in seeds]
        row = {"target": short(arch), "parameters": 0, "random": random}
        for name, hypernet in hypernets.items():
            model = initialize(arch, hypernet, 0)
            row[name] = task.score(model)
            row["parameters"] = sum(p.numel() for p in model.parameters())
            row[f"{name} width ratio"] = largest_dim(model) / hypernet.config.trained_max_dim
            del model
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def finetuned(
    arch: GPT2Arch, hypernets: dict[str, LoGAH], seeds: list[int], steps: int, lr: float, batch: int, task: TextTask
) -> dict[str, list[float]]:
    """Per initialization, the eval loss after ``steps`` of AdamW, one value per seed."""
    results: dict[str, list[float]] = {}
    for seed in seeds:
        for name, hypernet in {**hypernets, "random": None}.items():
            model = initialize(arch, hypernet, seed)
            _, scores = finetune(model, task, steps, lr, batch, seed, points=1)
            results.setdefault(name, []).append(scores[-1])
    return results


def choose_lr(
    arch: GPT2Arch, hypernets: dict[str, LoGAH], grid: list[float], steps: int, batch: int, task: TextTask
) -> tuple[float, dict[float, float]]:
    """The rate of ``grid`` with the lowest loss after fine-tuning, averaged over the initializations."""
    means = {}
    for lr in grid:
        scores = finetuned(arch, hypernets, [0], steps, lr, batch, task)
        means[lr] = statistics.mean(s[0] for s in scores.values())
        print(f"lr {lr:g} on {short(arch)}: mean eval loss {means[lr]:.3f} after {steps} steps", flush=True)
    return min(means, key=means.get), means


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def step0_table(rows: list[dict], names: list[str]) -> str:
    lines = [
        "| target | parameters | random init | " + " | ".join(names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for row in rows:
        cells = [f"**{row[n]:.3f}**" if row[n] < min(row["random"]) else f"{row[n]:.3f}" for n in names]
        lines.append(f"| {row['target']} | {row['parameters'] / 1e6:.0f}M | {spread(row['random'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finetune_table(results: dict[str, dict[str, list[float]]], names: list[str]) -> str:
    lines = ["| target | random init | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for arch, scores in results.items():
        lines.append(f"| {arch} | {spread(scores['random'])} | " + " | ".join(spread(scores[n]) for n in names) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], names: list[str], path: Path) -> None:
    """Predicted minus random against how many times wider than training the target is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ratio = [r[f"{name} width ratio"] for r in rows]
        ax.plot(ratio, [r[name] - statistics.mean(r["random"]) for r in rows], marker="o", label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="widest tensor dimension / widest seen in meta-training",
        ylabel="eval loss, predicted - random init (nats)",
        title="GPT-2 at step 0 (below 0: better than random)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernet", type=named_hypernet, action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--targets", type=target, nargs="+", default=[target(t) for t in ("l12-w768", "l24-w1024")])
    parser.add_argument("--finetune", type=target, nargs="*", default=[], help="targets to fine-tune")
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8, help="windows of 64 bytes per fine-tuning step")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--lr-config", type=target, default=target("l1-w512"), help="where the rate is chosen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-gpt2-widths"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hypernets = {name: LoGAH.from_pretrained(where).eval() for name, where in args.hypernet}
    names = list(hypernets)
    task = TextTask()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads")
    rows = step0(args.targets, hypernets, args.seeds, task)
    results: dict = {"step0": rows, "hypernets": dict(args.hypernet)}
    if args.finetune:
        lr, grid = choose_lr(args.lr_config, hypernets, args.lr_grid, args.finetune_steps, args.batch_size, task)
        results |= {"lr": lr, "lr_grid": grid, "finetune_steps": args.finetune_steps, "finetune": {}}
        for arch in args.finetune:
            results["finetune"][short(arch)] = finetuned(
                arch, hypernets, args.seeds, args.finetune_steps, lr, args.batch_size, task
            )
            print(json.dumps({short(arch): results["finetune"][short(arch)]}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(rows, names, args.out / "widths.png")
    print("\nEval loss at step 0 (nats per byte; bold: below every random seed)\n")
    print(step0_table(rows, names))
    if args.finetune:
        print(f"\nAfter {args.finetune_steps} fine-tuning steps (AdamW, lr {lr:g}, batch {args.batch_size}), seeds {args.seeds}\n")
        print(finetune_table(results["finetune"], names))
    print(f"\nwrote {args.out}/results.json and {args.out}/widths.png")


if __name__ == "__main__":
    main()
