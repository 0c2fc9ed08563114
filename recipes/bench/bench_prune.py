"""Does a metanetwork make networks easier to prune? Four pruning pipelines on held-out trained networks.

At each FLOPs speed-up, every held-out member of the population is pruned four ways, then fine-tuned
with the same budget:

  (a) metanet:    the meta-trained metanetwork rewrites it, with the strength calibrated for the speed-up and
                  the member's family on --validation members (0: no rewrite, 1: all of it; metaprune.strength),
                  then (b): `metaprune prune --metanet`
  (b) group_norm: Torch-Pruning's GroupNormPruner sparse regularization for --sparse-steps, then
                  group-norm pruning (DepGraph's recipe: `metaprune prune --sparse-steps`)
  (c) l1:         plain magnitude (L1) pruning
  (d) random:     random channels

With ``--population vit`` the members are small timm ViTs: every pipeline first removes ``--head-ratio`` of the
heads of each attention layer (ranked by its own criterion), then MLP and embedding channels; the metanetwork's
group lasso covers whole heads and MLP channels.

Every pruned network's BatchNorm statistics are re-estimated on training batches (no weight changes)
before it is scored. It prints a table of mean eval accuracy right after pruning and after fine-tuning, and writes
``results.jsonl``, ``table.md`` and ``accuracy_vs_speedup.png`` to --out. The population and the
metanetwork are built (and cached) under --work when missing, so the first run trains them.

    python recipes/bench/bench_prune.py                       # defaults: 2x, 4x, 8x; 100 fine-tuning steps
    python recipes/bench/bench_prune.py --speedups 2 4 --finetune-steps 300 --held-out 4
    python recipes/bench/bench_prune.py --population vit --speedups 1.5 2 3
    python recipes/bench/bench_prune.py --seeds 0 1 2 --penalty group_lasso   # gains with standard errors
    python recipes/bench/bench_prune.py --population vit --global-pruning     # rank channels across layers
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from metaprune.measure import accuracy
from metaprune.metanet import Metanet
from metaprune.metatrain import TRAIN_CONFIG_FILE, MetaTrainConfig, train_metanet
from metaprune.objective import PENALTIES, ObjectiveConfig
from metaprune.population import POPULATIONS, build_population, load_member, mnist, population_specs
from metaprune.prune import ImpossibleTargetError
from metaprune.strength import CALIBRATION_FILE, POOLED, Budget, Calibration, calibrate, prepared, pruned_and_finetuned

METHODS = ("metanet", "group_norm", "l1", "random")
HELD_OUT_SEED = 1000  # held-out members are seeded far from the training ones
VALIDATION_SEED = 2000  # and the validation members that calibrate the rewrite strength from both
HEAD_RATIO = {"cnn": 0.0, "vit": 0.5}  # default --head-ratio: CNNs have no heads


def network_to_prune(
    method: str, model: torch.nn.Module, metanet: Metanet, train, *, strength: float | None, budget: Budget, seed: int
) -> torch.nn.Module:
    """What each pipeline prunes: for (a) and (b) the network rewritten ``strength`` of the way (not at all for
    (b)) and sparsity-trained, for the others the network as it is."""
    if method == "metanet":
        return prepared(model, metanet, strength, train, budget=budget, seed=seed)
    if method == "group_norm":
        return prepared(model, None, 0.0, train, budget=budget, seed=seed)
    return copy.deepcopy(model).eval()


def rewrite_strengths(args: argparse.Namespace, metanet: Metanet, metanet_dir: Path, budget: Budget, train, eval_set):
    """(speed-up, family) -> rewrite strength of (a): --rewrite-strength, else calibrated on validation members
    (cached beside the metanetwork, and checked to hold for this budget)."""
    if args.rewrite_strength is not None:
        return lambda speedup, family: args.rewrite_strength
    calibration = Calibration.load(metanet_dir)
    if calibration is None:
        validation = build_population(
            args.work / "validation",
            population_specs(args.validation, args.train_steps, seed=VALIDATION_SEED, population=args.population),
        )
        print(f"calibrating the rewrite strength on {len(validation)} validation members")
        members = [(config["family"], model) for model, config in map(load_member, validation)]
        calibration = calibrate(metanet, members, args.speedups, train, eval_set, budget=budget)
        calibration.save(metanet_dir)
    if calibration.budget != budget:
        raise SystemExit(
            f"{metanet_dir / CALIBRATION_FILE} was calibrated for {calibration.budget}, not {budget}; "
            "delete it to calibrate again, or pass --rewrite-strength"
        )
    print(calibration_table(calibration))
    return calibration.strength


def calibration_table(calibration: Calibration) -> str:
    """Mean validation accuracy (%) after pruning and fine-tuning, per family, speed-up and candidate strength."""
    header = "| family | speed-up | " + " | ".join(f"strength {c:g}" for c in calibration.candidates) + " | chosen |"
    lines = [header, "|---|---|" + "---:|" * (len(calibration.candidates) + 1)]
    for family, rows in calibration.accuracy.items():
        if family == POOLED and len(calibration.accuracy) == 2:
            continue  # one family: the pooled rows are its own
        label = f"{family} ({calibration.members[family]})"
        for speedup, row, chosen in zip(calibration.speedups, rows, calibration.strengths[family], strict=True):
            cells = " | ".join(f"{100 * a:.2f}" for a in row)
            lines.append(f"| {label} | {speedup:g}x | {cells} | {chosen:g} |")
    return "\n".join(lines)


def check_cached_objective(metanet_dir: Path, objective: ObjectiveConfig) -> None:
    """A cached metanetwork meta-trained with another penalty or weight would answer a different question."""
    trained = {"penalty": "group_lasso"}  # metanetworks trained before the choice existed
    trained |= json.loads((metanet_dir / TRAIN_CONFIG_FILE).read_text())["objective"]
    for name in ("penalty", "group_weight"):
        if trained[name] != getattr(objective, name):
            raise SystemExit(
                f"{metanet_dir} was meta-trained with {name}={trained[name]!r}, not {getattr(objective, name)!r}; "
                "pass the same settings or use another --work"
            )


def run(args: argparse.Namespace) -> list[dict]:
    work = args.work
    train_pop = build_population(
        work / "population", population_specs(args.size, args.train_steps, population=args.population)
    )
    held_out = build_population(
        work / "held_out",
        population_specs(args.held_out, args.train_steps, seed=HELD_OUT_SEED, population=args.population),
    )
    metanet_dir = work / "metanet"
    objective = ObjectiveConfig(penalty=args.penalty, group_weight=args.group_weight)
    if not (metanet_dir / "model.safetensors").is_file():
        train_metanet(
            work / "population", metanet_dir, MetaTrainConfig(steps=args.metatrain_steps, objective=objective)
        )
    check_cached_objective(metanet_dir, objective)
    metanet = Metanet.from_pretrained(metanet_dir).eval()
    train, eval_set = mnist("train"), mnist("eval")
    budget = Budget.from_options(args)
    strength_at = rewrite_strengths(args, metanet, metanet_dir, budget, train, eval_set)
    rows = []
    print(f"{len(train_pop)} training members, {len(held_out)} held out")
    for seed, directory in itertools.product(args.seeds, held_out):
        dense, config = load_member(directory)
        dense_accuracy = accuracy(dense, eval_set)
        for method in METHODS:
            importance = "group_norm" if method in ("metanet", "group_norm") else method
            models = {}  # what this method prunes, by rewrite strength (one for the methods without a rewrite)
            for speedup in args.speedups:
                strength = strength_at(speedup, config["family"]) if method == "metanet" else None
                if strength not in models:
                    models[strength] = network_to_prune(
                        method, dense, metanet, train, strength=strength, budget=budget, seed=seed
                    )
                try:
                    result = pruned_and_finetuned(
                        models[strength], speedup, train, eval_set, method=importance, budget=budget, seed=seed
                    )
                except ImpossibleTargetError as err:
                    print(f"  {directory.name} {method} {speedup}x: {err}")
                    continue
                row = {
                    "seed": seed,
                    "member": directory.name,
                    "family": config["family"],
                    "method": method,
                    "target": speedup,
                }
                rows.append(row | {"strength": strength, "dense": dense_accuracy} | result)
                scores = f"{result['pruned']:.3f} -> {result['finetuned']:.3f}"
                print(f"  seed {seed} {directory.name} {method:10} {speedup}x: {scores}")
    return rows


def table(rows: list[dict], speedups: list[float]) -> str:
    """Mean accuracy (%) right after pruning / after fine-tuning, per method and speed-up (over members and
    seeds), then the metanetwork's gain over DepGraph after fine-tuning, with its standard error over seeds."""
    header = "| method | " + " | ".join(f"{s:g}x pruned | {s:g}x fine-tuned" for s in speedups) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(speedups))]
    for method in METHODS:
        cells = []
        for speedup in speedups:
            chosen = [r for r in rows if r["method"] == method and r["target"] == speedup]
            for key in ("pruned", "finetuned"):
                cells.append(f"{100 * statistics.mean(r[key] for r in chosen):.2f}" if chosen else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    gains = [f"{s:g}x {_gain(rows, s)}" for s in speedups]
    strengths = {(r["family"], r["target"]): r["strength"] for r in rows if r["method"] == "metanet"}
    families = sorted({family for family, _ in strengths})
    chosen = [
        f"{family} " + ", ".join(f"{s:g}x {strengths[family, s]:.2f}" for s in speedups if (family, s) in strengths)
        for family in families
    ]
    dense = statistics.mean({r["member"]: r["dense"] for r in rows}.values())
    seeds = len({r["seed"] for r in rows})
    return "\n".join(
        [
            *lines,
            "",
            f"metanet - group_norm after fine-tuning ({seeds} seed(s)): " + ", ".join(gains),
            "rewrite strength of (a): " + "; ".join(chosen),
            f"dense accuracy (mean over held-out members): {100 * dense:.2f}%",
        ]
    )


def _gain(rows: list[dict], speedup: float) -> str:
    """Mean of the per-seed differences (a) - (b), in points, and their standard error when there are seeds to
    compare: pairing by seed removes what the members and batches share."""
    per_seed = []
    for seed in sorted({r["seed"] for r in rows}):
        score = {
            method: [r["finetuned"] for r in rows if (r["seed"], r["method"], r["target"]) == (seed, method, speedup)]
            for method in ("metanet", "group_norm")
        }
        if all(score.values()):
            per_seed.append(100 * (statistics.mean(score["metanet"]) - statistics.mean(score["group_norm"])))
    if not per_seed:
        return "n/a"
    if len(per_seed) == 1:
        return f"{per_seed[0]:+.2f}"
    return f"{statistics.mean(per_seed):+.2f} ± {statistics.stdev(per_seed) / len(per_seed) ** 0.5:.2f}"


def plot(rows: list[dict], speedups: list[float], path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        means = [
            100 * statistics.mean([r["finetuned"] for r in rows if r["method"] == method and r["target"] == s] or [0])
            for s in speedups
        ]
        axes.plot(speedups, means, "o-", label=method)
    axes.set(xscale="log", xlabel="FLOPs speed-up", ylabel="eval accuracy after fine-tuning (%)")
    axes.set_xticks(speedups, [f"{s:g}x" for s in speedups])
    axes.minorticks_off()  # the log axis would label 3x and 6x as powers of ten
    axes.legend()
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", choices=tuple(POPULATIONS), default="cnn", help="which networks to prune")
    parser.add_argument("--work", type=Path, help="population and metanet cache (default runs/prune/POPULATION)")
    parser.add_argument("--out", type=Path, help="results directory (default WORK/bench)")
    parser.add_argument("--size", type=int, default=16, help="training members of the population")
    parser.add_argument("--held-out", type=int, default=3, help="held-out members to prune")
    parser.add_argument("--train-steps", type=int, default=600, help="training steps of each member")
    parser.add_argument("--metatrain-steps", type=int, default=400, help="meta-training steps of the metanet")
    parser.add_argument(
        "--penalty", choices=PENALTIES, default="concentration", help="group penalty of the meta-training objective"
    )
    parser.add_argument("--group-weight", type=float, default=1.0, help="weight of the group penalty (lambda)")
    parser.add_argument("--speedups", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--finetune-steps", type=int, default=100, help="identical for every method")
    parser.add_argument(
        "--sparse-steps",
        type=int,
        default=100,
        help="GroupNormPruner regularization steps of (a) and (b) before pruning",
    )
    parser.add_argument(
        "--rewrite-strength",
        type=float,
        help="fraction of the rewrite (a) applies at every speed-up (default: calibrated per speed-up and family on "
        "--validation members and cached beside the metanetwork)",
    )
    parser.add_argument(
        "--validation",
        type=int,
        default=9,
        help="members that calibrate the rewrite strength (9: 4 small CNNs, 3 ResNets, 2 MLPs)",
    )
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--head-ratio", type=float, help="attention heads removed per layer (default: 0.5 for ViTs)")
    parser.add_argument(
        "--global-pruning",
        action="store_true",
        help="every method ranks channels across layers instead of pruning each layer by the same fraction",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of the training before pruning, pruning and fine-tuning",
    )
    args = parser.parse_args()
    args.work = args.work or Path("runs/prune") / args.population
    args.out = args.out or args.work / "bench"
    args.head_ratio = HEAD_RATIO[args.population] if args.head_ratio is None else args.head_ratio
    torch.set_num_threads(1)  # small networks: one thread is fastest and timings stay comparable
    start = time.perf_counter()
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "results.jsonl").open("w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    text = table(rows, args.speedups)
    (args.out / "table.md").write_text(text + "\n")
    title = f"pruning held-out MNIST networks ({args.population})"
    plot(rows, args.speedups, args.out / "accuracy_vs_speedup.png", title)
    print(f"\nmachine: {platform.machine()}, 1 thread; {time.perf_counter() - start:.0f} s in all\n\n{text}")
    print(f"\nwrote {args.out / 'table.md'}, {args.out / 'accuracy_vs_speedup.png'}")


if __name__ == "__main__":
    main()
