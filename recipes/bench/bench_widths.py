"""Hypernetworks far wider than they were meta-trained on: predicted parameters against the library's own
random init, at step 0 and after fine-tuning, for byte-level GPT-2 at GPT-2 S to XL widths and MNIST ViTs.

GPT-2 targets are named like ``l12-w768`` (12 layers, width 768, width / 64 heads, context 64, vocabulary
256), scored by eval loss in nats per byte on 64 fixed windows of the embedded text (lower is better; a
uniform guess scores ln 256 = 5.545). ViT targets are named like ``d6-w384`` (6 blocks, width 384,
width / 64 heads, MLP ratio 4, 14 x 14 patches, class token), scored by accuracy on the embedded MNIST
eval split. Random init is scored over ``--seeds``; a prediction does not depend on a seed. Fine-tuning
runs AdamW at one learning rate for every initialization, chosen first on a separate configuration
(``--lr-config``) from ``--lr-grid``, and fine-tunes each initialization of each ``--finetune`` target on
the same batches per seed.

Writes ``OUT/results.json`` and ``OUT/widths.png`` (how many times wider than training the target is,
against predicted minus random and the first hypernetwork minus the second) and prints the tables of
docs/benchmarks.md.

    python recipes/bench/bench_widths.py --hypernet LoGAH=gpt2-pydoc --hypernet tiled=runs/tiled/hypernet \\
        --targets l12-w768 l24-w1024 l36-w1280 l48-w1600 --finetune l2-w768 l2-w1024 --seeds 0 1
    python recipes/bench/bench_widths.py --family vit --hypernet LoGAH=vit-mnist \\
        --hypernet tiled=vit-mnist-tiled --targets d6-w192 d6-w256 d6-w384
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
from hypernets.train.tasks import ImageTask, TextTask, task_for
from hypernets.zoo import GPT2Arch, ViTArch

HEAD_DIM = 64  # GPT-2's at every size, and timm's ViT-S/B
CONTEXT = 64
Arch = GPT2Arch | ViTArch
Task = ImageTask | TextTask


def target(name: str) -> Arch:
    """``l12-w768``: byte-level GPT-2 with 12 layers of width 768 and 12 heads; ``d6-w384``: a 6-block MNIST
    ViT of width 384 with 6 heads."""
    match = re.fullmatch(r"([ld])(\d+)-w(\d+)", name)
    if not match:
        raise argparse.ArgumentTypeError(f"{name!r}: name targets like l12-w768 (GPT-2) or d6-w384 (ViT)")
    depth, width = int(match[2]), int(match[3])
    heads = max(2, width // HEAD_DIM)
    if match[1] == "l":
        return GPT2Arch(depth, width, heads, CONTEXT)
    return ViTArch(depth, width, heads, 4.0, 14, "token")


def named_hypernet(text: str) -> tuple[str, str]:
    name, _, where = text.partition("=")
    if not where:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=DIR or NAME=SHIPPED, e.g. LoGAH=gpt2-pydoc")
    return name, where


def short(arch: Arch) -> str:
    return f"{'l' if arch.family == 'gpt2' else 'd'}{arch.depth}-w{arch.width}"


def step0(archs: list[Arch], hypernets: dict[str, LoGAH], seeds: list[int], task: Task) -> list[dict]:
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
    arch: Arch, hypernets: dict[str, LoGAH], seeds: list[int], steps: int, lr: float, batch: int, task: Task
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
    arch: Arch, hypernets: dict[str, LoGAH], grid: list[float], steps: int, batch: int, task: Task
) -> tuple[float, dict[float, float]]:
    """The rate of ``grid`` with the best score after fine-tuning, averaged over the initializations."""
    means = {}
    for lr in grid:
        scores = finetuned(arch, hypernets, [0], steps, lr, batch, task)
        means[lr] = statistics.mean(s[0] for s in scores.values())
        print(f"lr {lr:g} on {short(arch)}: mean eval {task.metric} {means[lr]:.3f} after {steps} steps", flush=True)
    return (max if task.higher_is_better else min)(means, key=means.get), means


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def step0_table(rows: list[dict], names: list[str], task: Task) -> str:
    def better(score: float, random: list[float]) -> bool:
        return score > max(random) if task.higher_is_better else score < min(random)

    lines = [
        "| target | parameters | random init | " + " | ".join(names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for row in rows:
        cells = [f"**{row[n]:.3f}**" if better(row[n], row["random"]) else f"{row[n]:.3f}" for n in names]
        size = f"{row['parameters'] / 1e6:.1f}M"
        lines.append(f"| {row['target']} | {size} | {spread(row['random'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finetune_table(results: dict[str, dict[str, list[float]]], names: list[str]) -> str:
    lines = ["| target | random init | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for arch, scores in results.items():
        lines.append(f"| {arch} | {spread(scores['random'])} | " + " | ".join(spread(scores[n]) for n in names) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], names: list[str], task: Task, path: Path) -> None:
    """Predicted minus random, and the first hypernetwork minus the second, against how many times wider
    than training the target is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if len(names) > 1 else 1, figsize=(11 if len(names) > 1 else 6, 4), squeeze=False)
    better = "above" if task.higher_is_better else "below"
    xlabel = "widest tensor dimension / widest seen in meta-training"
    for name in names:
        ratio = [r[f"{name} width ratio"] for r in rows]
        axes[0, 0].plot(ratio, [r[name] - statistics.mean(r["random"]) for r in rows], marker="o", label=name)
    axes[0, 0].set(ylabel=f"eval {task.metric}, predicted - random init", title=f"at step 0 ({better} 0: better)")
    axes[0, 0].legend()
    if len(names) > 1:
        first, second = names[:2]
        ratio = [r[f"{first} width ratio"] for r in rows]
        axes[0, 1].plot(ratio, [r[first] - r[second] for r in rows], marker="o", color="C2")
        axes[0, 1].set(ylabel=f"eval {task.metric}, {first} - {second}", title=f"{better} 0: {first} better")
    for ax in axes[0]:
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xscale="log", xlabel=xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("gpt2", "vit"), default="gpt2", help="what the targets are scored on")
    parser.add_argument("--hypernet", type=named_hypernet, action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--targets", type=target, nargs="+", default=[target(t) for t in ("l12-w768", "l24-w1024")])
    parser.add_argument("--finetune", type=target, nargs="*", default=[], help="targets to fine-tune")
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8, help="examples (64-byte windows, images) per step")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument(
        "--lr-config", type=target, help="where the rate is chosen (default: l1-w512 for GPT-2, d2-w256 for ViTs)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-widths"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hypernets = {name: LoGAH.from_pretrained(where).eval() for name, where in args.hypernet}
    names = list(hypernets)
    task = task_for(args.family)
    args.lr_config = args.lr_config or target("l1-w512" if args.family == "gpt2" else "d2-w256")
    if any(a.family != args.family for a in [*args.targets, *args.finetune, args.lr_config]):
        example = "l12-w768" if args.family == "gpt2" else "d6-w384"
        parser.error(f"--family {args.family}: name every target like {example}")
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
    plot(rows, names, task, args.out / "widths.png")
    print(f"\nEval {task.metric} at step 0 (bold: better than every random seed)\n")
    print(step0_table(rows, names, task))
    if args.finetune:
        settings = f"AdamW, lr {lr:g}, batch {args.batch_size}, seeds {args.seeds}"
        print(f"\nAfter {args.finetune_steps} fine-tuning steps ({settings})\n")
        print(finetune_table(results["finetune"], names))
    print(f"\nwrote {args.out}/results.json and {args.out}/widths.png")


if __name__ == "__main__":
    main()
