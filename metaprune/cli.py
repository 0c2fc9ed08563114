"""The ``metaprune`` command: prune a trained network as a step of a CI pipeline.

Exit status: 0 when the pruned model meets the speed-up target and the accuracy bound, 1 when it does
not (the report says why), 2 on bad input (nothing is written). torch and PyG are imported by the
commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metaprune.strength import Budget

PASSED, FAILED, BAD_INPUT = 0, 1, 2
METANET_SPARSE_STEPS = 100  # what a metanetwork's calibration assumes (metaprune.strength.Budget's default)
PRUNE_EXAMPLES = """\
examples:
  metaprune prune --model net/model.safetensors --config net/model.json --metanet metanet/ \\
      --speedup 2.0 --finetune-steps 300 --max-acc-drop 1.0 --out pruned/ --report report.json
  metaprune prune --model net/model.safetensors --config net/model.json --speedup 4 --method l1 --out pruned/
  metaprune prune --model net/model.safetensors --config net/model.json --param-ratio 3 --out pruned/
  metaprune prune --model vit/model.safetensors --config vit/model.json --speedup 4 --head-ratio 0.5 \\
      --global-pruning --sparse-steps 100 --out pruned/      # DepGraph's recipe, the best measured for ViTs

exit status: 0 target and accuracy bound met (pruned/ and the report written), 1 not met (only the
report is written, saying why), 2 bad input (a missing or corrupt file, a model that does not match its
config, NaN weights, an unsupported layer, a speed-up the architecture cannot reach; nothing written).
"""


class BadInput(ValueError):
    """An input the command cannot work with: exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaprune`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    try:
        return args.run(args)
    except BadInput as err:
        print(f"metaprune: error: {err}", file=sys.stderr)
        return BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaprune",
        description="Prune trained networks, optionally after a GNN metanetwork has rewritten them to be easy to "
        "prune. Run 'metaprune COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    prune = commands.add_parser(
        "prune",
        help="prune a trained model to a FLOPs speed-up or parameter ratio, fine-tune it, check the accuracy bound",
        description="Rewrite a trained model with a metanetwork (optional), train it with DepGraph's sparsity\n"
        "regularizer (optional), remove whole channels until its FLOPs drop by --speedup and/or its parameters\n"
        "by --param-ratio (Torch-Pruning's dependency graph keeps residuals and BatchNorm consistent), fine-tune\n"
        "it for a fixed budget on the embedded MNIST, and compare its accuracy with the original's.",
        epilog=PRUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prune.add_argument("--model", required=True, type=Path, metavar="FILE", help="trained weights (safetensors)")
    prune.add_argument("--config", required=True, type=Path, metavar="JSON", help="the model's config (model.json)")
    prune.add_argument("--metanet", type=Path, metavar="DIR", help="metanetwork checkpoint; without it, prune as is")
    prune.add_argument("--speedup", type=float, help="required FLOPs (MACs) ratio, dense / pruned")
    prune.add_argument(
        "--param-ratio", type=float, help="required parameter count ratio, dense / pruned (with --speedup: both)"
    )
    prune.add_argument(
        "--method",
        choices=("group_norm", "l1", "random"),
        default="group_norm",
        help="channel importance (default: group_norm, the group L2 norm)",
    )
    prune.add_argument(
        "--head-ratio",
        type=float,
        default=0.0,
        help="ViTs: fraction of attention heads removed from every layer before channel pruning (default 0)",
    )
    prune.add_argument(
        "--global-pruning",
        action="store_true",
        help="rank channels across layers (DepGraph's global pruning) instead of removing the same fraction of "
        "every layer",
    )
    prune.add_argument(
        "--sparse-steps",
        type=int,
        metavar="N",
        help="train N steps with DepGraph's group sparsity regularizer before pruning (after the rewrite with "
        f"--metanet): DepGraph's recipe with --method group_norm (default: {METANET_SPARSE_STEPS} with --metanet, "
        "what its calibration assumes; else 0)",
    )
    prune.add_argument(
        "--rewrite-strength",
        type=float,
        metavar="S",
        help="with --metanet: apply W + S * (rewrite - W), S in [0, 1] (default: the strength the metanetwork's "
        "strengths.json gives this speed-up and the model's family, else 1)",
    )
    prune.add_argument("--finetune-steps", type=int, default=300, help="optimizer steps after pruning (default 300)")
    prune.add_argument("--lr", type=float, default=0.01, help="peak fine-tuning learning rate, SGD (default 0.01)")
    prune.add_argument("--max-acc-drop", type=float, default=1.0, help="allowed accuracy drop in points (default 1.0)")
    prune.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the pruned model")
    prune.add_argument(
        "--report", type=Path, metavar="JSON", help="write the report here (default: OUT/../report.json)"
    )
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    prune.add_argument("--seed", type=int, default=0, help="seeds fine-tuning (default 0)")
    prune.set_defaults(run=run_prune)
    return parser


def run_prune(args: argparse.Namespace) -> int:
    """Validate everything first, then prune and fine-tune, then write the outputs all at once."""
    import torch

    from metaprune.finetune import finetune, recalibrate_batchnorm
    from metaprune.measure import measure
    from metaprune.population import INPUT_SHAPE, mnist
    from metaprune.prune import prune, sparse_train
    from metaprune.store import pruned_files, write_directory
    from metaprune.strength import Budget

    report_path = args.report or args.out.parent / "report.json"
    if args.out.exists() and not args.overwrite:
        raise BadInput(f"{args.out} already exists; pass --overwrite to replace it")
    targets = {"--speedup": args.speedup, "--param-ratio": args.param_ratio}
    if all(target is None for target in targets.values()):
        raise BadInput("give a target: --speedup and/or --param-ratio")
    for name, target in targets.items():
        if target is not None and not target >= 1:
            raise BadInput(f"{name} must be at least 1, got {target}")
    if args.rewrite_strength is not None and not args.metanet:
        raise BadInput("--rewrite-strength needs --metanet: it is about the rewritten network")
    if args.rewrite_strength is not None and not 0 <= args.rewrite_strength <= 1:
        raise BadInput(f"--rewrite-strength must be in [0, 1], got {args.rewrite_strength}")
    if args.sparse_steps is None:
        args.sparse_steps = METANET_SPARSE_STEPS if args.metanet else 0
    for name, steps in (("--sparse-steps", args.sparse_steps), ("--finetune-steps", args.finetune_steps)):
        if steps < 0:
            raise BadInput(f"{name} must be at least 0, got {steps}")
    if not 0 <= args.head_ratio < 1:
        raise BadInput(f"--head-ratio must be in [0, 1), got {args.head_ratio}")
    model, config = _load_model(args.model, args.config)
    example = torch.zeros(1, *INPUT_SHAPE[1:])
    train, eval_set = mnist("train"), mnist("eval")
    before = measure(model, example, eval_set)
    sparse_losses, strength = [], None
    if args.metanet:
        budget = Budget.from_options(args)
        strength = _rewrite_strength(args.metanet, args.speedup, config.get("family"), budget, args.rewrite_strength)
        model = _rewrite(model, args.metanet, strength)
    if args.sparse_steps:
        sparse_losses = sparse_train(model, example, train, steps=args.sparse_steps, lr=args.lr, seed=args.seed)
        model.eval()
    try:
        result = prune(
            model,
            example,
            speedup=args.speedup,
            param_ratio=args.param_ratio,
            method=args.method,
            head_ratio=args.head_ratio,
            global_pruning=args.global_pruning,
            seed=args.seed,
        )
    except ValueError as err:  # an unreachable speed-up, or heads to remove from a model that has none
        raise BadInput(f"{args.config}: {err}") from err
    pruned = recalibrate_batchnorm(result.model, train, seed=args.seed)
    losses = (
        finetune(pruned, train, steps=args.finetune_steps, lr=args.lr, seed=args.seed) if args.finetune_steps else []
    )
    training = {
        "sparse": (args.sparse_steps, sparse_losses),
        "finetune": (args.finetune_steps, losses),
    }
    after = measure(pruned.eval(), example, eval_set)
    drop = 100 * (before.accuracy - after.accuracy)
    reasons = []
    for name, reached, target in (
        ("speed-up", result.speedup, args.speedup),
        ("parameter ratio", result.param_ratio, args.param_ratio),
    ):
        if target is not None and reached < target:
            reasons.append(f"{name} {reached:.2f}x is below the target {target:.2f}x")
    if drop > args.max_acc_drop:
        reasons.append(f"accuracy dropped {drop:.2f} points, more than --max-acc-drop {args.max_acc_drop}")
    report = _report(args, result, before, after, drop, training, reasons, strength)
    if not reasons:
        write_directory(args.out, pruned_files(pruned, config), overwrite=args.overwrite)
    _write_report(report_path, report)
    verdict = "PASSED" if not reasons else "FAILED: " + "; ".join(reasons)
    print(
        f"speed-up {result.speedup:.2f}x{_target(args.speedup)}, parameters {before.params:,} -> "
        f"{after.params:,}{_target(args.param_ratio)}, "
        f"accuracy {100 * before.accuracy:.2f}% -> {100 * after.accuracy:.2f}%, "
        f"latency {before.latency_ms:.2f} -> {after.latency_ms:.2f} ms\n{verdict}"
    )
    return FAILED if reasons else PASSED


def _target(target: float | None) -> str:
    """The target beside a reached ratio in the summary line, when there is one."""
    return "" if target is None else f" (target {target:.2f}x)"


def _load_model(weights: Path, config_path: Path):
    """The dense model from its two files; any problem with them is bad input, named by file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hypernets.checkpoint import load_state_strict
    from metaprune.population import build_from_config
    from metaprune.prune import check_finite

    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BadInput(f"{config_path}: not a readable model config: {err}") from err
    try:
        state = load_file(weights)
    except (OSError, SafetensorError) as err:
        raise BadInput(f"{weights}: not a readable safetensors file: {err}") from err
    try:
        model = build_from_config(config, config_path)  # errors name the config file
        load_state_strict(model, state, weights)  # errors name the weights file and the tensors
        check_finite(model)
    except ValueError as err:
        named = str(weights) in str(err) or str(config_path) in str(err)
        raise BadInput(str(err) if named else f"{weights}: {err}") from err
    return model.eval(), config


def _rewrite_strength(
    metanet_dir: Path, speedup: float | None, family: str | None, budget: Budget, given: float | None
) -> float:
    """``given``, else the metanetwork's calibrated strength for ``speedup`` and ``family`` (with a note when it
    was calibrated for another training budget), else the full rewrite."""
    from metaprune.strength import CALIBRATION_FILE, Calibration

    if given is not None:
        return given
    try:
        calibration = Calibration.load(metanet_dir)
    except ValueError as err:
        raise BadInput(str(err)) from err
    if calibration is None:
        return 1.0
    if speedup is None:
        raise BadInput(
            f"{metanet_dir / CALIBRATION_FILE} gives the rewrite strength per speed-up: add --speedup, or choose "
            "the strength with --rewrite-strength"
        )
    if calibration.budget != budget:
        print(
            f"note: {metanet_dir / CALIBRATION_FILE} was calibrated for {calibration.budget}, this run is "
            f"{budget}; pass --rewrite-strength to choose the strength yourself",
            file=sys.stderr,
        )
    return calibration.strength(speedup, family)


def _rewrite(model, metanet_dir: Path, strength: float):
    """The model with the metanetwork's rewritten weights loaded in, ``strength`` of the way."""
    from hypernets.checkpoint import CheckpointError
    from hypernets.graph import GraphConversionError
    from metaprune.metanet import Metanet
    from metaprune.population import INPUT_SHAPE

    try:
        return Metanet.from_pretrained(metanet_dir).eval().rewrite_(model, INPUT_SHAPE, strength=strength)
    except (CheckpointError, GraphConversionError) as err:
        raise BadInput(str(err)) from err


def _report(
    args,
    result,
    before,
    after,
    drop: float,
    training: dict[str, tuple[int, list[float]]],
    reasons: list[str],
    strength: float | None,
) -> dict[str, Any]:
    """What was asked, what came out, and the first and last loss of each training phase."""
    return {
        "passed": not reasons,
        "reasons": reasons,
        "model": str(args.model),
        "config": str(args.config),
        "metanet": str(args.metanet) if args.metanet else None,
        "rewrite_strength": strength,
        "method": args.method,
        "head_ratio": args.head_ratio,
        "global_pruning": args.global_pruning,
        "target": {"speedup": args.speedup, "param_ratio": args.param_ratio, "max_acc_drop": args.max_acc_drop},
        "speedup": result.speedup,
        "param_ratio": result.param_ratio,
        "accuracy_drop": drop,
        "before": before.to_dict(),
        "after": after.to_dict(),
        **{
            phase: {"steps": steps, "lr": args.lr, "first_loss": losses[:1], "last_loss": losses[-1:]}
            for phase, (steps, losses) in training.items()
        },
        "out": str(args.out) if not reasons else None,
    }


def _write_report(path: Path, report: dict[str, Any]) -> None:
    from hypernets.checkpoint import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(report, indent=2) + "\n"))


if __name__ == "__main__":
    sys.exit(main())
