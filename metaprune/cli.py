"""The ``metaprune`` command: prune a trained network as a step of a CI pipeline.

Exit status (docs/cli.md): 0 when the pruned model meets the targets and the accuracy bound, 1 when it
does not (only the report is written, saying why), 2 on input the user can fix (one line; nothing written),
3 on an internal error. torch and PyG are imported by the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypernets.checkpoint import json_text
from hypernets.command import (
    DONE,
    MISSED,
    Parser,
    UsageError,
    check_input,
    check_output,
    count,
    debug_parent,
    number,
    run_command,
    seed,
)

if TYPE_CHECKING:
    from metaprune.strength import Budget

METANET_SPARSE_STEPS = 100  # what a metanetwork's calibration assumes (metaprune.strength.Budget's default)
PRUNE_EXAMPLES = """\
examples:
  metaprune prune --model net/model.safetensors --config net/model.json --metanet metanet/ \\
      --speedup 2.0 --finetune-steps 300 --max-acc-drop 1.0 --out pruned/ --report report.json
  metaprune prune --model net/model.safetensors --config net/model.json --speedup 4 --method l1 --out pruned/
  metaprune prune --model net/model.safetensors --config net/model.json --param-ratio 3 --out pruned/
  metaprune prune --model vit/model.safetensors --config vit/model.json --speedup 4 --head-ratio 0.5 \\
      --global-pruning --sparse-steps 100 --out pruned/      # DepGraph's recipe, the best measured for ViTs

exit status: 0 targets and accuracy bound met (pruned/ and the report written), 1 not met (only the
report is written, saying why), 2 bad input (a missing or corrupt file, a model that does not match its
config, NaN weights or data, an unsupported layer, a target the architecture cannot reach, an
unwritable output; one line on stderr, nothing written), 3 internal error (please report).
No NaN passes the gate, and no model with a NaN or infinite parameter is ever written.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaprune`` console script; returns the exit status."""
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    from hypernets.checkpoint import CheckpointError
    from hypernets.graph import GraphConversionError

    return run_command("metaprune", build_parser(), argv, (CheckpointError, GraphConversionError))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="metaprune",
        description="Prune trained networks, optionally after a GNN metanetwork has rewritten them to be easy to "
        "prune. Run 'metaprune COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    prune = commands.add_parser(
        "prune",
        parents=[debug_parent()],
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
    prune.add_argument("--speedup", type=number(1, 1e6), help="required FLOPs (MACs) ratio, dense / pruned")
    prune.add_argument(
        "--param-ratio",
        type=number(1, 1e6),
        help="required parameter count ratio, dense / pruned (with --speedup: both)",
    )
    prune.add_argument(
        "--method",
        choices=("group_norm", "l1", "random"),
        default="group_norm",
        help="channel importance (default: group_norm, the group L2 norm)",
    )
    prune.add_argument(
        "--head-ratio",
        type=number(0, 1, below=True),
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
        type=count,
        metavar="N",
        help="train N steps with DepGraph's group sparsity regularizer before pruning (after the rewrite with "
        f"--metanet): DepGraph's recipe with --method group_norm (default: {METANET_SPARSE_STEPS} with --metanet, "
        "what its calibration assumes; else 0)",
    )
    prune.add_argument(
        "--rewrite-strength",
        type=number(0, 1),
        metavar="S",
        help="with --metanet: apply W + S * (rewrite - W), S in [0, 1] (default: the strength the metanetwork's "
        "strengths.json gives this speed-up and the model's family, else 1)",
    )
    prune.add_argument("--finetune-steps", type=count, default=300, help="optimizer steps after pruning (default 300)")
    prune.add_argument(
        "--lr", type=number(0, 10, above=True), default=0.01, help="peak fine-tuning learning rate, SGD (default 0.01)"
    )
    prune.add_argument(
        "--max-acc-drop",
        type=number(-100, 100),
        default=1.0,
        help="allowed accuracy drop in points; negative demands a gain (default 1.0)",
    )
    prune.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the pruned model")
    prune.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="write the report here, replacing an earlier one (default: OUT/../report.json)",
    )
    prune.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    prune.add_argument("--seed", type=seed, default=0, help="seeds fine-tuning (default 0)")
    prune.set_defaults(run=run_prune)
    return parser


def run_prune(args: argparse.Namespace) -> int:
    """Validate everything first, then prune and fine-tune, then publish the outputs together."""
    import torch

    from hypernets.atomic import Staging
    from hypernets.checkpoint import check_finite_tensors
    from metaprune.finetune import finetune, recalibrate_batchnorm
    from metaprune.measure import measure
    from metaprune.population import INPUT_SHAPE, mnist
    from metaprune.prune import prune, sparse_train
    from metaprune.store import save_pruned
    from metaprune.strength import Budget

    report_path = _check_options(args)
    model, config = _load_model(args.model, args.config)
    example = torch.zeros(1, *INPUT_SHAPE[1:])
    train, eval_set = mnist("train"), mnist("eval")
    for name, data in (("training data", train), ("evaluation data", eval_set)):
        check_finite_tensors(dict(zip(("inputs", "labels"), data.tensors, strict=False)), name, UsageError)
    before = measure(model, example, eval_set)
    sparse_losses, strength = [], None
    if args.metanet:
        budget = Budget.from_options(args)
        strength = _rewrite_strength(args.metanet, args.speedup, config.get("family"), budget, args.rewrite_strength)
        model = _rewrite(model, args.metanet, strength)
    if args.sparse_steps:
        sparse_losses = sparse_train(model, example, train, steps=args.sparse_steps, lr=args.lr, seed=args.seed)
        model.eval()
        check_finite_tensors(
            model.state_dict(), f"sparse training diverged ({args.sparse_steps} steps); lower --lr:", UsageError
        )
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
        raise UsageError(f"{args.config}: {err}") from err
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
    reasons = _gate(args, result, pruned, drop)
    report = _report(args, result, before, after, drop, training, reasons, strength)
    with Staging() as staging:
        if not reasons:
            staging.directory(args.out, lambda directory: save_pruned(pruned, config, directory), args.overwrite)
        staging.file(report_path, lambda temporary: Path(temporary).write_text(json_text(report)))
    verdict = "PASSED" if not reasons else "FAILED: " + "; ".join(reasons)
    print(
        f"speed-up {result.speedup:.2f}x{_target(args.speedup)}, parameters {before.params:,} -> "
        f"{after.params:,}{_target(args.param_ratio)}, "
        f"accuracy {100 * before.accuracy:.2f}% -> {100 * after.accuracy:.2f}%, "
        f"latency {before.latency_ms:.2f} -> {after.latency_ms:.2f} ms\n{verdict}"
    )
    return MISSED if reasons else DONE


def _check_options(args: argparse.Namespace) -> Path:
    """Every check that needs no model, before any work; returns the report's path."""
    targets = {"--speedup": args.speedup, "--param-ratio": args.param_ratio}
    if all(target is None for target in targets.values()):
        raise UsageError("give a target: --speedup and/or --param-ratio")
    if args.rewrite_strength is not None and not args.metanet:
        raise UsageError("--rewrite-strength needs --metanet: it is about the rewritten network")
    if args.sparse_steps is None:
        args.sparse_steps = METANET_SPARSE_STEPS if args.metanet else 0
    check_input(args.model, "--model")
    check_input(args.config, "--config")
    if args.metanet:
        check_input(args.metanet, "--metanet", directory=True)
    check_output(args.out, "--out", directory=True, overwrite=args.overwrite)
    report_path = args.report or args.out.parent / "report.json"
    if report_path.resolve().is_relative_to(args.out.resolve()):
        raise UsageError(
            f"--report {report_path}: inside --out {args.out}, which is replaced as a whole; put it beside"
        )
    check_output(report_path, "--report", overwrite=True)
    return report_path


def _gate(args: argparse.Namespace, result, pruned, drop: float) -> list[str]:
    """Why the pruned model fails, if it does. Written so that NaN fails every comparison it enters."""
    import torch

    reasons = []
    for name, reached, target in (
        ("speed-up", result.speedup, args.speedup),
        ("parameter ratio", result.param_ratio, args.param_ratio),
    ):
        if target is not None and not reached >= target:
            reasons.append(f"{name} {reached:.2f}x is below the target {target:.2f}x")
    if not math.isfinite(drop):
        reasons.append("the accuracy is not a number")
    elif not drop <= args.max_acc_drop:
        reasons.append(f"accuracy dropped {drop:.2f} points, more than --max-acc-drop {args.max_acc_drop}")
    broken = [name for name, value in pruned.state_dict().items() if not torch.isfinite(value).all()]
    if broken:
        reasons.append(
            f"fine-tuning left NaN or infinite values in {len(broken)} tensors ({broken[0]}, ...); lower --lr"
        )
    return reasons


def _target(target: float | None) -> str:
    """The target beside a reached ratio in the summary line, when there is one."""
    return "" if target is None else f" (target {target:.2f}x)"


def _load_model(weights: Path, config_path: Path):
    """The dense model from its two files; any problem with them is bad input, named by file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hypernets.checkpoint import load_state_strict, read_json
    from metaprune.population import build_from_config
    from metaprune.prune import check_finite

    config = read_json(config_path, "model config", UsageError)
    try:
        state = load_file(weights)
    except (OSError, SafetensorError) as err:
        raise UsageError(f"{weights}: not a readable safetensors file: {err}") from err
    try:
        model = build_from_config(config, config_path)  # errors name the config file
        load_state_strict(model, state, weights)  # errors name the weights file and the tensors
        check_finite(model)
    except ValueError as err:
        named = str(weights) in str(err) or str(config_path) in str(err)
        raise UsageError(str(err) if named else f"{weights}: {err}") from err
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
        raise UsageError(str(err)) from err
    if calibration is None:
        return 1.0
    if speedup is None:
        raise UsageError(
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
        raise UsageError(str(err)) from err


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


if __name__ == "__main__":
    sys.exit(main())
