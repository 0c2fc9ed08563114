"""The ``metaprune`` command: prune a trained network as a step of a CI pipeline.

Exit status (docs/cli.md): 0 when the pruned model meets the targets and the accuracy bound, 1 when it
does not (only the report is written, saying why), 2 on input the user can fix (one line; nothing written),
3 on an internal error. torch and PyG are imported by the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypernets.checkpoint import json_text
from hypernets.command import (
    DONE,
    MISSED,
    HelpFormatter,
    Parser,
    UsageError,
    check_input,
    check_output,
    count,
    debug_parent,
    integer,
    number,
    run_command,
    seed,
)

if TYPE_CHECKING:
    from metaprune.strength import Budget

METANET_SPARSE_STEPS = 100  # what a metanetwork's calibration assumes (metaprune.strength.Budget's default)
DEFAULT_MAX_ACC_DROP = 1.0  # points
DEFAULT_MAX_LOSS_INCREASE = 0.1  # nats per token
PRUNE_EXAMPLES = """\
examples:
  # your torchvision model, your trained weights, your image folder (DIR/train, DIR/val), 2x fewer FLOPs:
  metaprune prune --model torchvision:resnet18?num_classes=10 --weights model.safetensors \\
      --data imagefolder:data --speedup 2 --max-acc-drop 1.0 --out pruned/ --summary summary.md --junit junit.xml
  # your own factory (mypkg/nets.py: def make(width): ...), the shipped metanetwork, a 5-minute budget:
  metaprune prune --model mypkg.nets:make?width=32 --weights net.safetensors --data imagefolder:data \\
      --metanet cnn --speedup 4 --max-minutes 5 --out pruned/ --export onnx
  # a Hugging Face causal LM on a text file, gated on the eval loss:
  metaprune prune --model hf:my-llama --data text:corpus.txt --tokenizer my-llama --param-ratio 1.3 \\
      --max-loss-increase 0.2 --out pruned/
  # a population member (model.safetensors + model.json) on the embedded MNIST, DepGraph's recipe for ViTs:
  metaprune prune --model vit/model.safetensors --config vit/model.json --speedup 4 --head-ratio 0.5 \\
      --global-pruning --sparse-steps 100 --out pruned/

model specs:
{models}

data specs (default: mnist, for the built-in zoo and population members only):
{data}

exit status: 0 targets and bound met (pruned/ and the reports written), 1 not met (only the reports are
written, saying why), 2 bad input (a missing or corrupt file, weights that do not fit the model, NaN weights
or data, an unsupported layer, a target the architecture cannot reach, an unwritable output; one line on
stderr, nothing written), 3 internal error (please report). No NaN passes the gate, and no model with a NaN
or infinite parameter is ever written.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaprune`` console script; returns the exit status."""
    from hypernets.checkpoint import CheckpointError
    from hypernets.data.spec import DataSpecError
    from hypernets.graph import GraphConversionError
    from hypernets.models import ModelSpecError

    user_errors = (CheckpointError, DataSpecError, GraphConversionError, ModelSpecError)
    return run_command("metaprune", build_parser(), argv, user_errors)


def build_parser() -> argparse.ArgumentParser:
    from hypernets.data.spec import DATA_FORMS
    from hypernets.models import SPEC_FORMS

    parser = Parser(
        prog="metaprune",
        description="Prune trained networks, optionally after a GNN metanetwork has rewritten them to be easy to "
        "prune. Run 'metaprune COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    prune = commands.add_parser(
        "prune",
        parents=[debug_parent()],
        help="prune a trained model to a FLOPs speed-up or parameter ratio, fine-tune it, check the quality bound",
        description="Rewrite a trained model with a metanetwork (optional), train it with DepGraph's sparsity\n"
        "regularizer (optional), remove whole channels until its FLOPs (every op counted) drop by --speedup\n"
        "and/or its parameters by --param-ratio (Torch-Pruning's dependency graph keeps residuals and norms\n"
        "consistent), fine-tune it within a step and time budget, and compare it with the original on the\n"
        "validation data: accuracy for classifiers, next-token loss for causal language models.",
        epilog=PRUNE_EXAMPLES.format(
            models="\n".join(f"  {form}" for form in SPEC_FORMS), data="\n".join(f"  {form}" for form in DATA_FORMS)
        ),
        formatter_class=HelpFormatter,
    )
    source = prune.add_argument_group("the model and its data")
    source.add_argument(
        "--model",
        required=True,
        metavar="SPEC|FILE",
        help="the trained model: a model spec (below) with --weights, an hf:DIR, or a population member's "
        "model.safetensors with --config",
    )
    source.add_argument("--weights", type=Path, metavar="FILE", help="trained weights (safetensors) for a model spec")
    source.add_argument(
        "--config", type=Path, metavar="JSON", help="a population member's model.json, with --model FILE"
    )
    source.add_argument("--data", metavar="SPEC", help="training and validation data (specs below)")
    source.add_argument("--image-size", type=integer(1, 8192), metavar="N", help="image folders: resize to N x N")
    source.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="image folders: normalize with this mean")
    source.add_argument("--std", type=_floats, metavar="S[,S,S]", help="image folders: normalize with this std")
    source.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="text: a local Hugging Face tokenizer (default bytes)"
    )
    source.add_argument("--block-size", type=integer(1, 1 << 20), metavar="N", help="text: tokens per training window")
    source.add_argument("--batch-size", type=integer(1, 1 << 20), default=128, metavar="N", help="examples per step")

    targets = prune.add_argument_group("targets and the gate")
    targets.add_argument(
        "--speedup", metavar="X", type=number(1, 1e6), help="required FLOPs ratio, dense / pruned (every op counted)"
    )
    targets.add_argument(
        "--param-ratio",
        metavar="X",
        type=number(1, 1e6),
        help="required parameter count ratio, dense / pruned (with --speedup: both)",
    )
    targets.add_argument(
        "--max-acc-drop",
        metavar="POINTS",
        type=number(-100, 100),
        help=f"classifiers: allowed accuracy drop in points; negative demands a gain (default {DEFAULT_MAX_ACC_DROP})",
    )
    targets.add_argument(
        "--max-loss-increase",
        metavar="NATS",
        type=number(-100, 100),
        help=f"language models: allowed rise of the eval loss, nats per token (default {DEFAULT_MAX_LOSS_INCREASE})",
    )

    method = prune.add_argument_group("how to prune")
    method.add_argument(
        "--metanet",
        metavar="NAME|DIR|auto",
        help="rewrite the model with a metanetwork first: a shipped one (cnn, vit), a checkpoint directory, or auto "
        "(the shipped one for the model's kind, no rewrite when none fits; the report says which); DepGraph's "
        "recipe alone is run too and the better kept",
    )
    method.add_argument(
        "--method",
        choices=("group_norm", "l1", "random"),
        default="group_norm",
        help="channel importance: group_norm (the group L2 norm), l1 or random",
    )
    method.add_argument(
        "--head-ratio",
        metavar="R",
        type=number(0, 1, below=True),
        default=0.0,
        help="timm ViTs: fraction of attention heads removed from every layer before channel pruning",
    )
    method.add_argument(
        "--head-dims",
        action="store_true",
        help="timm ViTs: also prune channels inside attention heads, the same ones in every head of a layer",
    )
    method.add_argument(
        "--global-pruning",
        action=argparse.BooleanOptionalAction,
        help="rank channels across layers (DepGraph's global pruning) instead of removing the same fraction of "
        "every layer (default: global for models with timm-style attention, where it measured best; per layer "
        "otherwise)",
    )
    method.add_argument(
        "--keep",
        type=_module_names,
        metavar="NAME[,NAME]",
        help="modules never pruned, by their names in the model (as named_modules() gives them), beside the "
        "classifier and the layers the pruner keeps on its own: for a module an error names after pruning",
    )
    method.add_argument(
        "--sparse-steps",
        type=count,
        metavar="N",
        help="train N steps with DepGraph's group sparsity regularizer before pruning (after the rewrite with "
        f"--metanet): DepGraph's recipe with --method group_norm (default: {METANET_SPARSE_STEPS} with --metanet, "
        "what its calibration assumes; else 0)",
    )
    method.add_argument(
        "--rewrite-strength",
        type=number(0, 1),
        metavar="S",
        help="with --metanet: apply W + S * (rewrite - W), S in [0, 1] (default: the strength the metanetwork's "
        "strengths.json gives this speed-up and the model's family, else 1)",
    )

    budget = prune.add_argument_group("training and time budget")
    budget.add_argument("--finetune-steps", metavar="N", type=count, default=300, help="optimizer steps after pruning")
    budget.add_argument("--lr", type=number(0, 10, above=True), default=0.01, help="peak fine-tuning learning rate")
    budget.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="fine-tuning optimizer")
    budget.add_argument(
        "--max-minutes",
        type=number(0, 1e6, above=True),
        metavar="M",
        help="wall-clock budget: fine-tuning stops early so that the run ends within about M minutes",
    )
    budget.add_argument("--seed", type=seed, default=0, help="seeds data order and fine-tuning")

    out = prune.add_argument_group("outputs")
    out.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the pruned model")
    out.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="write the JSON report here, replacing an earlier one (default: OUT/../report.json)",
    )
    out.add_argument("--summary", type=Path, metavar="MD", help="a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    out.add_argument("--junit", type=Path, metavar="XML", help="a JUnit XML report, one test case per gate")
    out.add_argument(
        "--export", choices=("onnx",), help="also write OUT/model.onnx, checked against the model with onnxruntime"
    )
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    prune.set_defaults(run=run_prune)
    return parser


def _floats(text: str) -> tuple[float, ...]:
    """``0.5`` or ``0.485,0.456,0.406``: finite numbers, one per channel."""
    parse = number()
    return tuple(parse(part) for part in text.split(","))


def _module_names(text: str) -> tuple[str, ...]:
    """``blocks.0.mlp`` or ``stages.1.attn,head``: dotted module names, none empty."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give module names separated by commas, none empty")
    return names


def run_prune(args: argparse.Namespace) -> int:
    """Validate everything first (options, model, data, metanetwork), then prune, then publish together."""
    from hypernets.atomic import Staging
    from metaprune.pipeline import default_global_pruning, prune_model
    from metaprune.report import junit_xml, summary_markdown

    outputs = _check_options(args)
    model, source = _load_model(args)
    data = _load_data(args, model, source)
    if args.global_pruning is None:
        args.global_pruning = default_global_pruning(model)
    gate = _check_gate(args, data.task)
    metanet, strength, notes = _metanet(args, model, data.example, source.get("family"))
    if args.sparse_steps is None:  # no metanetwork after all (--metanet auto found none)
        args.sparse_steps = 0
    try:
        outcome = prune_model(
            model,
            train=data.train,
            val=data.val,
            example_inputs=data.example,
            task=data.task,
            speedup=args.speedup,
            param_ratio=args.param_ratio,
            **gate,
            method=args.method,
            head_ratio=args.head_ratio,
            head_dims=args.head_dims,
            global_pruning=args.global_pruning,
            keep=args.keep or (),
            sparse_steps=args.sparse_steps,
            metanet=metanet,
            rewrite_strength=strength,
            finetune_steps=args.finetune_steps,
            lr=args.lr,
            optimizer=args.optimizer,
            batch_size=args.batch_size,
            max_minutes=args.max_minutes,
            seed=args.seed,
        )
    except ValueError as err:  # an unreachable target, heads to remove from a model without any, a divergence
        raise UsageError(f"{args.config or args.model}: {err}") from err
    report = {
        "model": args.model,
        "weights": str(args.weights) if args.weights else None,
        "config": str(args.config) if args.config else None,
        "data": data.description,
        **outcome.report,
        "metanet": args.metanet,
        "notes": source.get("notes", []) + notes,
        "out": str(args.out) if outcome.passed else None,
    }
    with Staging() as staging:
        if outcome.passed:
            staging.directory(
                args.out, lambda directory: _save(outcome.model, directory, args, source, data), args.overwrite
            )
        staging.file(outputs["report"], lambda temporary: Path(temporary).write_text(json_text(report)))
        if outputs["summary"]:
            staging.file(outputs["summary"], lambda temporary: Path(temporary).write_text(summary_markdown(report)))
        if outputs["junit"]:
            staging.file(outputs["junit"], lambda temporary: Path(temporary).write_text(junit_xml(report)))
    _print_result(report)
    return DONE if outcome.passed else MISSED


def _check_options(args: argparse.Namespace) -> dict[str, Path | None]:
    """Every check that needs no model, before any work; returns the report files' paths."""
    if args.speedup is None and args.param_ratio is None:
        raise UsageError("give a target: --speedup and/or --param-ratio")
    if args.rewrite_strength is not None and not args.metanet:
        raise UsageError("--rewrite-strength needs --metanet: it is about the rewritten network")
    if args.config is not None:
        check_input(args.model, "--model")
        check_input(args.config, "--config")
        if args.weights is not None:
            raise UsageError("--weights is for a model spec; with --config, --model is the weights file")
    elif args.model.endswith((".safetensors", ".json")):
        raise UsageError(f"--model {args.model}: a weights file needs --config (its model.json); or give a model spec")
    if args.weights is not None:
        check_input(args.weights, "--weights")
    if args.tokenizer is not None:
        check_input(args.tokenizer, "--tokenizer", directory=True)
    if args.metanet and args.metanet != "auto" and not _shipped(args.metanet):
        check_input(args.metanet, "--metanet", directory=True)
    check_output(args.out, "--out", directory=True, overwrite=args.overwrite)
    outputs = {"report": args.report or args.out.parent / "report.json", "summary": args.summary, "junit": args.junit}
    for option, path in outputs.items():
        if path is None:
            continue
        if path.resolve().is_relative_to(args.out.resolve()):
            raise UsageError(f"--{option} {path}: inside --out {args.out}, which is replaced as a whole; put it beside")
        check_output(path, f"--{option}", overwrite=True)
    named = [path.resolve() for path in outputs.values() if path is not None]
    if len(set(named)) < len(named):
        raise UsageError("--report, --summary and --junit must name different files")
    return outputs


def _shipped(name: str) -> bool:
    from metaprune.pretrained import SHIPPED

    return name in SHIPPED


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The dense model in eval mode and what it was built from (recorded with the pruned model)."""
    from hypernets.models import build_model, spec_family

    if args.config is not None:
        model, config = _load_member(Path(args.model), args.config)
        return model, {"config": config, "family": config.get("family"), "zoo": True}
    model = build_model(args.model, weights=args.weights)
    family = spec_family(args.model)
    untrained = family != "hf" and args.weights is None
    notes = (
        [f"--model {args.model} was given no --weights: a randomly initialized model was pruned"] if untrained else []
    )
    return model, {"spec": args.model, "family": None, "zoo": family == "zoo", "notes": notes}


def _load_data(args: argparse.Namespace, model, source: dict[str, Any]):
    """The data spec given, or the embedded MNIST for the models that were trained on it."""
    from hypernets.data.spec import build_data

    spec = args.data
    if spec is None:
        if not source["zoo"]:
            raise UsageError(
                f"--model {args.model}: give --data (the data it was trained on); see --help for the forms"
            )
        spec = "mnist"
    unnormalized = args.mean is None and args.std is None and not hasattr(model, "pretrained_cfg")  # timm: its own
    if spec.startswith("imagefolder:") and unnormalized and source.get("spec"):
        source["notes"].append(
            "the images were fed unnormalized, in [0, 1]: pass --mean and --std if your training normalized them"
        )
    return build_data(
        spec,
        model=model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        mean=args.mean,
        std=args.std,
        tokenizer=args.tokenizer,
        block_size=args.block_size,
        seed=args.seed,
    )


def _check_gate(args: argparse.Namespace, task: str) -> dict[str, float | None]:
    """The quality bound of the task, the other one refused."""
    if task == "classification":
        if args.max_loss_increase is not None:
            raise UsageError(
                "--max-loss-increase is for language models; this data is for a classifier: --max-acc-drop"
            )
        drop = DEFAULT_MAX_ACC_DROP if args.max_acc_drop is None else args.max_acc_drop
        return {"max_acc_drop": drop}
    if args.max_acc_drop is not None:
        raise UsageError("--max-acc-drop is for classifiers; a language model is gated by --max-loss-increase")
    increase = DEFAULT_MAX_LOSS_INCREASE if args.max_loss_increase is None else args.max_loss_increase
    return {"max_loss_increase": increase}


def _metanet(args: argparse.Namespace, model, example, family: str | None):
    """The metanetwork, the strength to apply it with, and notes for the report; the neuron graph is built here,
    in the first seconds, so a model the metanetwork cannot read is an exit 2 before any training."""
    from hypernets.checkpoint import CheckpointError
    from hypernets.graph import GraphConversionError, to_neuron_graph
    from metaprune.metanet import Metanet
    from metaprune.pretrained import family_of, shipped_path
    from metaprune.strength import Budget

    if not args.metanet:
        return None, 0.0, []
    name, notes = args.metanet, []
    if name == "auto":
        name = family_of(model)
        if name is None:
            return (
                None,
                0.0,
                ["--metanet auto: no shipped metanetwork reads this kind of model; pruned without a rewrite"],
            )
    try:
        to_neuron_graph(model, example)
    except GraphConversionError as err:
        if args.metanet == "auto":
            return None, 0.0, [f"--metanet auto: the neuron graph cannot be built ({err}); pruned without a rewrite"]
        raise UsageError(f"--metanet {args.metanet}: cannot read --model {args.model}: {err}") from err
    directory = shipped_path(name) if _shipped(name) else Path(name)
    try:
        metanet = Metanet.from_pretrained(directory).eval()
    except CheckpointError as err:
        raise UsageError(str(err)) from err
    if args.metanet == "auto":
        notes.append(f"--metanet auto: used the shipped {name!r} metanetwork")
    if args.sparse_steps is None:
        args.sparse_steps = METANET_SPARSE_STEPS
    budget = Budget.from_options(args)
    strength = _rewrite_strength(directory, args.speedup, family, budget, args.rewrite_strength, notes)
    return metanet, strength, notes


def _gate_note(report: dict[str, Any]) -> str:
    if report["passed"]:
        return "PASSED"
    return "FAILED: " + "; ".join(report["reasons"])


def _print_result(report: dict[str, Any]) -> None:
    """One line of figures and the verdict, for the CI log."""
    before, after = report["before"], report["after"]
    if report["task"] == "classification":
        quality = f"accuracy {100 * before['accuracy']:.2f}% -> {100 * after['accuracy']:.2f}%"
    else:
        quality = f"eval loss {before['loss']:.4f} -> {after['loss']:.4f}"
    target = report["target"]
    print(
        f"speed-up {report['speedup']:.2f}x{_target(target['speedup'])} in FLOPs "
        f"({report['macs_speedup']:.2f}x in Torch-Pruning's MACs), parameters {before['params']:,} -> "
        f"{after['params']:,}{_target(target['param_ratio'])}, {quality}, "
        f"latency {before['latency_ms']:.2f} -> {after['latency_ms']:.2f} ms\n{_gate_note(report)}"
    )
    for note in report["notes"]:
        print(f"note: {note}")


def _save(model, directory: Path, args: argparse.Namespace, source: dict[str, Any], data) -> None:
    """The pruned model's files in the staging directory, and its ONNX export when asked for."""
    from metaprune.store import save_pruned

    extra = {"weights": str(args.weights) if args.weights else None, "task": data.task}
    save_pruned(model, directory, spec=source.get("spec"), config=source.get("config"), extra=extra)
    if args.export == "onnx":
        from metaprune.export import ExportError, export_onnx

        try:
            export_onnx(model, data.example, directory / "model.onnx")
        except ExportError as err:
            raise UsageError(f"--export onnx: {err}") from err


def _target(target: float | None) -> str:
    """The target beside a reached ratio in the summary line, when there is one."""
    return "" if target is None else f" (target {target:.2f}x)"


def _load_member(weights: Path, config_path: Path):
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
    metanet_dir: Path,
    speedup: float | None,
    family: str | None,
    budget: Budget,
    given: float | None,
    notes: list[str],
) -> float:
    """``given``, else the metanetwork's calibrated strength for ``speedup`` and ``family`` (adding a note when it
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
        notes.append(
            f"{metanet_dir / CALIBRATION_FILE} was calibrated for {calibration.budget}, this run is {budget}; "
            "pass --rewrite-strength to choose the strength yourself"
        )
    return calibration.strength(speedup, family)


if __name__ == "__main__":
    sys.exit(main())
