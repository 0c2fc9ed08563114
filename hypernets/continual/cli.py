"""``hypernets continual``: a grid of continual-learning runs, methods x benchmarks x settings x seeds, with
a table of mean ± std over seeds. The parser imports no torch (``--help`` stays instant)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

from hypernets.command import HelpFormatter, UsageError, check_output, integer, number, positive, seed
from hypernets.continual.names import FULL_LENGTH, GRID_METHODS, NEGATIVES, SETTINGS

EXAMPLES = """\
examples:
  hypernets continual --method hypernet,ewc,si,finetune --benchmark split --setting class --out runs/split-class
  hypernets continual --method hypernet,separate --benchmark permuted,rotated --steps 1000 --out runs/perm
  hypernets continual --method ewc --benchmark split --seeds 0 --steps 50      # a quick look, nothing written

Every run uses the same tasks, loop and --steps per task. In the class setting the task is not given at
test time: methods with a network per task (hypernet, separate) pick the task whose network is most
confident (lowest predictive entropy), the others answer with one head over all classes. OUT receives
runs/ROW-seedS.jsonl (training log, accuracy matrix, summary), heatmaps/ROW.png (mean accuracy matrix),
results.md and results.json; it is written whole at the end, or not at all.
"""


def names(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """A comma-separated list of distinct names from ``allowed``."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",")]
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
        if len(set(items)) < len(items):
            raise argparse.ArgumentTypeError(f"{text!r} names a {what} twice")
        return items

    return parse


def seeds(text: str) -> list[int]:
    """A comma-separated list of distinct seeds, e.g. ``0,1,2``."""
    values = [seed(item) for item in text.split(",")]
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed")
    return values


def add_continual_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``hypernets continual`` with the other subcommands."""
    p = commands.add_parser(
        "continual",
        parents=parents,
        help="compare continual-learning methods on MNIST task sequences over seeds",
        description="Train each method on each benchmark's tasks in order, over several seeds, and report final\n"
        "average accuracy, backward transfer, forgetting and (class setting) task-inference accuracy as\n"
        "mean ± std over seeds, with the accuracy matrices as heat maps.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--method",
        type=names(tuple(GRID_METHODS), "method"),
        default="hypernet,ewc,si,finetune",
        metavar="A,B",
        help=f"methods: {', '.join(GRID_METHODS)}",
    )
    p.add_argument(
        "--benchmark",
        type=names(tuple(FULL_LENGTH), "benchmark"),
        default="split",
        metavar="A,B",
        help="permuted (Permuted-MNIST-10), split (Split-MNIST, 5 digit pairs), rotated "
        "(Rotated-MNIST-10, 0-162 degrees)",
    )
    p.add_argument(
        "--setting",
        type=names(SETTINGS, "setting"),
        default="task",
        metavar="A,B",
        help="task (task id given at test time) or class (not given)",
    )
    p.add_argument(
        "--target",
        choices=("mlp", "cnn"),
        default="mlp",
        help="the network every method trains (or the hypernetworks generate): the 784-100-100 MLP, or a "
        "two-stage 5x5 CNN (every method but hypernet-logah and hyperinterval, which read MLPs only)",
    )
    p.add_argument("--seeds", type=seeds, default="0,1,2", metavar="S,T", help="seeds")
    p.add_argument("--steps", type=positive, default=500, help="optimizer steps per task")
    p.add_argument("--batch-size", type=integer(1, 100_000), default=128, help="examples per step")
    p.add_argument("--lr", type=number(0, 1, above=True), default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--num-tasks",
        type=integer(0, 100),
        default=0,
        metavar="N",
        help="first N tasks of each benchmark; 0: all (10 permuted and rotated, 5 split)",
    )
    p.add_argument("--beta", type=number(0), default=0.01, help="hypernet output regularizer")
    p.add_argument(
        "--negatives",
        choices=NEGATIVES,
        default="none",
        help="hypernet and separate methods: outlier exposure, pushing each task's network toward uniform "
        "predictions on negatives made from its own batch (patches: 7x7 patches shuffled; splice: top half "
        "over another class's bottom half; mixup: two classes blended; rotate: quarter turns); none: off",
    )
    p.add_argument(
        "--outlier-weight", type=number(0), default=1.0, help="weight of the outlier-exposure term (--negatives)"
    )
    p.add_argument("--ewc-lambda", type=number(0), default=1e4, help="EWC penalty strength")
    p.add_argument("--si-c", type=number(0), default=100.0, help="SI penalty strength")
    p.add_argument(
        "--threads",
        type=integer(1, 4096),
        default=1,
        metavar="N",
        help="torch CPU threads (these networks are small: more threads only contend)",
    )
    p.add_argument("--out", metavar="DIR", help="directory for the runs, heat maps and results")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.set_defaults(run=run_continual)


def canonical_command(args: argparse.Namespace) -> str:
    """The command with every setting spelled out, so a results file says exactly how it was made."""
    words = [
        "hypernets",
        "continual",
        "--method",
        ",".join(args.method),
        "--benchmark",
        ",".join(args.benchmark),
        "--setting",
        ",".join(args.setting),
        "--seeds",
        ",".join(map(str, args.seeds)),
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        f"{args.lr:g}",
        "--beta",
        f"{args.beta:g}",
        "--ewc-lambda",
        f"{args.ewc_lambda:g}",
        "--si-c",
        f"{args.si_c:g}",
        "--target",
        args.target,
    ]
    if args.negatives != "none":
        words += ["--negatives", args.negatives, "--outlier-weight", f"{args.outlier_weight:g}"]
    if args.num_tasks:
        words += ["--num-tasks", str(args.num_tasks)]
    return shlex.join(words + (["--out", args.out] if args.out else []))


def run_continual(args: argparse.Namespace) -> int:
    """The ``continual`` command: checks first, then the grid under a progress bar, then the table."""
    import torch
    from tqdm.auto import tqdm

    from hypernets.atomic import write_directory
    from hypernets.continual.experiment import Experiment
    from hypernets.continual.grid import markdown_table, rows, run_grid, total_steps

    for benchmark in args.benchmark:
        if args.num_tasks > FULL_LENGTH[benchmark]:
            raise UsageError(f"--num-tasks {args.num_tasks}: {benchmark} has {FULL_LENGTH[benchmark]} tasks")
    if args.out:
        check_output(args.out, "--out", directory=True, overwrite=args.overwrite)
    torch.set_num_threads(args.threads)
    base = Experiment(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        beta=args.beta,
        ewc_lambda=args.ewc_lambda,
        si_c=args.si_c,
        target=args.target,
        num_tasks=args.num_tasks,
        negatives=args.negatives,
        outlier_weight=args.outlier_weight,
    )
    grid = rows(args.method, args.benchmark, args.setting)
    for row in grid:  # every combination checked before anything runs; a field's option is --FIELD
        try:
            row.experiments(base, args.seeds[:1])
        except ValueError as err:
            raise UsageError(f"--method {row.method} with --{err}") from err
    command = canonical_command(args)
    total = total_steps(grid, base, args.seeds)
    with tqdm(total=total, desc="continual", unit="step", disable=not sys.stderr.isatty()) as bar:

        def grid_into(folder):
            return run_grid(
                grid, base, args.seeds, folder, command, bar.update, lambda line: bar.write(line, sys.stderr)
            )

        if args.out:
            results = []
            write_directory(args.out, lambda folder: results.extend(grid_into(folder)), overwrite=args.overwrite)
        else:
            results = grid_into(None)
    print(f"`{command}`\n\n{markdown_table(results)}")
    if args.out:
        print(f"wrote {args.out}/results.md, results.json, runs/ and heatmaps/")
    return 0
