"""The ``hypernets`` command: convert a model into a graph, or predict its parameters with a hypernetwork.

torch, PyG and the model libraries are imported by the commands that use them, so that ``--help``
answers at once instead of after several seconds of imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypernets import pretrained
from hypernets.atomic import atomic_write
from hypernets.checkpoint import json_text
from hypernets.command import (
    HelpFormatter,
    Parser,
    UsageError,
    check_device,
    check_input,
    check_output,
    count,
    debug_parent,
    integer,
    number,
    positive,
    run_command,
    seed,
)
from hypernets.continual.cli import add_continual_parser
from hypernets.models import DEFAULT_SPEC, SPEC_FORMS, ModelSpecError
from hypernets.train.config import FAMILIES

if TYPE_CHECKING:
    import torch
    from torch_geometric.data import Data

    from hypernets.graph import ModelIR

GRAPH_EXAMPLES = """\
examples:
  hypernets graph                                    # a 2-block ViT, in about a second
  hypernets graph gpt2:xl                            # 1.5B parameters on the meta device: nothing allocated
  hypernets graph timm:resnet50 --plot resnet50.png --json resnet50.json
  hypernets graph zoo:resnet20 --view neuron --plot resnet20-neurons.png
  hypernets graph zoo:resnet20 --weights resnet20.safetensors --view neuron   # your trained weights
  hypernets graph torchvision:resnet18 --input-shape 1,3,64,64
"""

PREDICT_EXAMPLES = """\
examples:
  hypernets predict --hypernet hnet/ --model timm:vit_tiny_patch16_224 --out vit.safetensors
  hypernets predict --hypernet gpt2-pydoc --model gpt2:large --format hf --out gpt2-large/

The target is built on the meta device and its parameters are written as they are decoded, so neither
a random init nor the whole model is ever held in memory. Load the result with
  --format safetensors (one file):  hypernets.load_predicted(model, FILE)  (restores tied weights), or
      timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=FILE, num_classes=N))
  --format hf (a directory):        transformers.AutoModelForCausalLM.from_pretrained(DIR)
An existing --out is replaced only with --overwrite. A target wider than anything the hypernetwork was
meta-trained on gets a one-line warning naming its widest tensor.

exit status: 0 written, 2 bad input (a missing or corrupt checkpoint, an unknown model or device, an
unwritable --out; one line on stderr, nothing written), 3 internal error (please report).
"""
DTYPES = ("float32", "bfloat16", "float16")


TRAIN_EXAMPLES = """\
examples:
  hypernets train --family vit --out runs/vit-logah --steps 4000             # ViTs on MNIST, on a CPU
  hypernets train --family vit --out runs/vit-tiled --steps 4000 --decoder tiled --match-params
  hypernets train --family gpt2 --out runs/gpt2-logah --steps 3000 --device cuda
  torchrun --nproc-per-node 2 -m hypernets.cli train --family vit --out runs/vit-ddp

Each step predicts the parameters of --archs-per-step sampled architectures in one hypernetwork call,
runs them on one data batch and backpropagates their mean loss. OUT receives metrics.jsonl, loss.png,
a resumable checkpoint every --checkpoint-every steps and the latest hypernetwork in OUT/hypernet
(for 'hypernets predict' and 'hypernets evaluate'). Run the same command again to resume.
"""

EVALUATE_EXAMPLES = """\
examples:
  hypernets evaluate                                 # the shipped ViT hypernetworks on 4 held-out ViTs
  hypernets evaluate --family gpt2 --finetune-steps 100 --out results/gpt2
  hypernets evaluate --family vit --hypernet LoGAH=runs/vit-logah/hypernet \\
      --hypernet tiled=runs/vit-tiled/hypernet --archs 8 --finetune-steps 100 --out results/vit

Held-out architectures are ones no training step samples: reserved in-range settings, and deeper and
wider networks than any training one. Without --hypernet the shipped ones for the family are compared
(vit: LoGAH=vit-mnist and tiled=vit-mnist-tiled; gpt2: LoGAH=gpt2-pydoc). OUT, if given, receives
results.md, results.json and curves.png.
"""

SHIPPED_FOR_FAMILY = {
    "vit": [("LoGAH", "vit-mnist"), ("tiled", "vit-mnist-tiled")],
    "gpt2": [("LoGAH", "gpt2-pydoc")],
    "gpt2-wide": [("LoGAH", "gpt2-pydoc")],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hypernets`` console script; returns the exit status (docs/cli.md)."""
    from hypernets.checkpoint import CheckpointError
    from hypernets.graph import GraphConversionError
    from hypernets.train.loop import TrainingDiverged

    user_errors = (GraphConversionError, ModelSpecError, CheckpointError, TrainingDiverged)
    return run_command("hypernets", build_parser(), argv, user_errors)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hypernets",
        description="Graph hypernetworks and metanetworks for PyTorch. "
        "Run 'hypernets COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    common = [debug_parent()]
    graph = commands.add_parser(
        "graph",
        parents=common,
        help="convert a model into its op or neuron graph and summarize it",
        description="Trace a model (shapes only, no computation) and summarize its graph: op counts by kind,\n"
        "parameters covered, unused and tied parameters, node and edge counts. Optionally draw the\n"
        "graph and write the traced ops as JSON.",
        epilog="model specs:\n" + "\n".join(f"  {form}" for form in SPEC_FORMS) + "\n\n" + GRAPH_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    graph.add_argument("model", nargs="?", default=DEFAULT_SPEC, help="model spec")
    graph.add_argument(
        "--weights",
        metavar="FILE",
        help="your trained weights (safetensors, e.g. from save_file(model.state_dict())), loaded strictly: the "
        "neuron view then carries their values; the op view reads shapes only but checks that the file fits",
    )
    graph.add_argument(
        "--view",
        choices=("op", "neuron"),
        default="op",
        help="op graph (one node per op, what hypernetworks read) or neuron graph (one node per neuron, "
        "one edge per weight, what metanetworks read; builds real parameters, so keep to small models)",
    )
    graph.add_argument(
        "--input-shape",
        type=_shape,
        metavar="N,C,H,W",
        help="shape of one float example input (default: what the model says it takes: the image size of "
        "timm models, 8 tokens for GPT-2, 224x224 for torchvision, MNIST or CIFAR for the zoo)",
    )
    graph.add_argument(
        "--max-distance",
        type=positive,
        metavar="D",
        help="op view: keep shortest-path pairs up to D hops apart (default: to_op_graph's, 8)",
    )
    graph.add_argument("--plot", metavar="PNG", help="draw the graph to this PNG file")
    graph.add_argument("--json", metavar="FILE", help="write the traced ops and parameters to this JSON file")
    graph.add_argument("--overwrite", action="store_true", help="replace an existing --plot or --json file")
    graph.set_defaults(run=run_graph)

    predict = commands.add_parser(
        "predict",
        parents=common,
        help="predict every parameter of a model with a trained hypernetwork",
        description="Predict every parameter of a model with a hypernetwork checkpoint (a directory written by\n"
        "LoGAH.save_pretrained) and write them to a safetensors file.",
        epilog="model specs:\n" + "\n".join(f"  {form}" for form in SPEC_FORMS) + "\n\n" + PREDICT_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    predict.add_argument(
        "--hypernet",
        required=True,
        metavar="DIR",
        help="checkpoint directory, or a shipped name: " + ", ".join(pretrained.available()),
    )
    predict.add_argument("--model", default=DEFAULT_SPEC, help="model spec")
    predict.add_argument("--out", required=True, metavar="PATH", help="safetensors file (or directory for hf)")
    predict.add_argument(
        "--format",
        choices=("safetensors", "hf"),
        default="safetensors",
        help="one safetensors file, or a Hugging Face save_pretrained directory (HF models)",
    )
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    predict.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written parameters")
    predict.add_argument("--device", default="cpu", help="where the hypernetwork runs, e.g. cpu or cuda")
    predict.add_argument("--input-shape", type=_shape, metavar="N,C,H,W", help="as for 'hypernets graph'")
    predict.set_defaults(run=run_predict)
    add_train_parser(commands, common)
    add_evaluate_parser(commands, common)
    add_continual_parser(commands, common)
    return parser


def add_train_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from hypernets.train.config import HYPERNET_DEFAULTS as hnet
    from hypernets.train.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train = commands.add_parser(
        "train",
        parents=parents,
        help="meta-train a hypernetwork on a family of sampled architectures",
        description="Meta-train a LoGAH (or the tiled GHN-3 baseline) on sampled ViTs (MNIST) or GPT-2\n"
        "models (byte-level text): AdamW, warm-up and cosine decay, gradient clipping, bf16 autocast on\n"
        "CUDA, exact resume, and data parallelism under torchrun.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    train.add_argument("--family", choices=FAMILIES, default=defaults["family"], help="architecture family")
    train.add_argument("--out", required=True, metavar="DIR", help="run directory (resumed if it holds a checkpoint)")
    train.add_argument("--steps", type=positive, default=defaults["steps"], help="total training steps")
    train.add_argument(
        "--archs-per-step",
        type=integer(1, 1024),
        default=defaults["archs_per_step"],
        metavar="N",
        help="architectures per step (and rank)",
    )
    train.add_argument(
        "--batch-size", type=integer(1, 100_000), default=defaults["batch_size"], help="examples per step"
    )
    train.add_argument("--lr", type=number(0, 1, above=True), default=defaults["lr"], help="peak learning rate")
    train.add_argument("--min-lr", type=number(0, 1), default=defaults["min_lr"], help="learning rate at the last step")
    train.add_argument("--warmup", type=count, default=defaults["warmup"], help="linear warm-up steps")
    train.add_argument(
        "--weight-decay", type=number(0, 100), default=defaults["weight_decay"], help="AdamW weight decay"
    )
    train.add_argument(
        "--gain-lr-scale",
        type=number(0, 10_000, above=True),
        default=defaults["gain_lr_scale"],
        metavar="X",
        help="learning-rate multiplier of the MIP gains (one scalar per op kind)",
    )
    train.add_argument(
        "--grad-clip", type=number(0, above=True), default=defaults["grad_clip"], help="max gradient norm"
    )
    train.add_argument(
        "--spectral-penalty",
        type=number(0, 1_000_000),
        default=defaults["spectral_penalty"],
        metavar="X",
        help="weight of a loss term on each predicted matrix's largest singular value past a random init's "
        "(0: off; measured worse for GPT-2 fine-tuning, docs/benchmarks.md)",
    )
    train.add_argument(
        "--stream-penalty",
        type=number(0, 1_000_000),
        default=defaults["stream_penalty"],
        metavar="X",
        help="GPT-2 families: weight of a loss term on each block's residual write past 4x the embeddings' rms "
        "(0: off; 0.3 took fine-tuned GPT-2s of width 768 and 1024 from 0.3 nats behind random init to between "
        "0.1 behind and 0.04 below it, docs/benchmarks.md)",
    )
    train.add_argument(
        "--base-gain-floor",
        type=number(0, 1000),
        default=defaults["base_gain_floor"],
        metavar="X",
        help="keep the MIP base gains (the scale of the full-rank random base under the decoded matrices, 1 at "
        "the start) at or above X (0: free)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=positive,
        default=defaults["checkpoint_every"],
        metavar="STEPS",
        help="steps between checkpoints",
    )
    train.add_argument(
        "--seed", type=seed, default=defaults["seed"], help="seeds the hypernetwork, architectures and data"
    )
    train.add_argument("--device", default=defaults["device"], help="cpu or cuda")
    train.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    train.add_argument("--threads", type=integer(1, 4096), metavar="N", help="CPU threads (tiny models: 1 is fastest)")
    group = train.add_argument_group("hypernetwork")
    group.add_argument("--hidden", type=positive, default=hnet["hidden"], help="node embedding size")
    group.add_argument("--layers", type=positive, default=hnet["layers"], help="graph transformer layers")
    group.add_argument("--heads", type=positive, default=hnet["heads"], help="attention heads")
    group.add_argument("--rank", type=positive, default=hnet["rank"], help="rank of the low-rank decoder")
    group.add_argument("--max-ck", type=positive, default=hnet["max_ck"], help="rows decoded per block")
    group.add_argument("--decoder", choices=("lowrank", "tiled"), default="lowrank", help="LoGAH or GHN-3's")
    group.add_argument("--tile", type=positive, default=64, help="tile of the tiled decoder")
    group.add_argument(
        "--match-params",
        action="store_true",
        help="use the tiled decoder with the tile that gives the hypernetwork as many parameters as the low-rank one",
    )
    group.add_argument(
        "--shape-frequencies",
        type=positive,
        default=hnet["shape_frequencies"],
        metavar="N",
        help="cos/sin frequencies encoding tensor shapes (fewer generalize more smoothly to unseen widths)",
    )
    group.add_argument(
        "--width-scaling",
        choices=("standard", "mup"),
        default="standard",
        help="how decoded matrices shrink with fan-in: 1/sqrt(fan_in), a standard init's scale, or 1/fan_in "
        "(muP: measured better on GPT-2 4x wider than training, worse on ViTs; docs/benchmarks.md)",
    )
    group.add_argument("--no-mip", action="store_true", help="no MIP (constant-norm inputs, residual outputs)")
    train.set_defaults(run=run_train)


def add_evaluate_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        parents=parents,
        help="compare predicted and random initializations of held-out architectures",
        description="Initialize held-out architectures with each hypernetwork and with their own random init,\n"
        "score them (eval accuracy on the embedded MNIST for ViTs, eval loss on the embedded text for GPT-2)\n"
        "at step 0 and, with --finetune-steps, along a short AdamW fine-tuning run; print a markdown table\n"
        "and, with --out, write it with a plot.",
        epilog=EVALUATE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    evaluate.add_argument("--family", choices=FAMILIES, default="vit", help="architecture family")
    evaluate.add_argument(
        "--hypernet",
        type=_named_dir,
        action="append",
        metavar="NAME=DIR",
        help="a hypernetwork checkpoint (or shipped name) and the name its row gets; repeat to compare several "
        "(default: the shipped ones for --family)",
    )
    evaluate.add_argument("--archs", type=integer(1, 1000), default=4, help="held-out architectures to score")
    evaluate.add_argument("--finetune-steps", type=count, default=0, metavar="N", help="AdamW steps per network")
    evaluate.add_argument("--lr", type=number(0, 1, above=True), default=5e-4, help="fine-tuning learning rate")
    evaluate.add_argument("--batch-size", type=integer(1, 100_000), default=64, help="fine-tuning batch size")
    evaluate.add_argument("--seed", type=seed, default=0, help="picks the architectures, random inits and batches")
    evaluate.add_argument("--out", metavar="DIR", help="where results.md, results.json and curves.png go")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    evaluate.add_argument("--threads", type=integer(1, 4096), metavar="N", help="CPU threads")
    evaluate.set_defaults(run=run_evaluate)


def run_graph(args: argparse.Namespace) -> int:
    """The ``graph`` command. The op view builds the model on ``meta`` (on the CPU with ``--weights``, to check
    them); the neuron view needs real weights: the model's random init, or the user's."""
    from hypernets.graph import to_neuron_graph, to_op_graph, trace
    from hypernets.graph.op_graph import DEFAULT_MAX_DISTANCE
    from hypernets.models import build_model, example_input_shape

    for option, path in (("--plot", args.plot), ("--json", args.json)):
        if path:
            check_output(path, option, overwrite=args.overwrite)
    if args.weights:
        check_input(args.weights, "--weights")
    on_meta = args.view == "op" and not args.weights  # shapes only: nothing is allocated
    model = build_model(args.model, device="meta" if on_meta else "cpu", weights=args.weights)
    ir = trace(model, args.input_shape or example_input_shape(args.model, model))
    if args.view == "op":
        max_distance = args.max_distance or DEFAULT_MAX_DISTANCE
        data = to_op_graph(ir, max_distance=max_distance)
        report = describe_op_graph(data, max_distance)
    else:
        data = to_neuron_graph(model, ir=ir)
        report = describe_neuron_graph(data)
    loaded = [f"  weights: {args.weights}, loaded strictly"] if args.weights else []
    print("\n".join([ir.summary(), describe_coverage(ir), *loaded, report]))
    if args.plot:
        atomic_write(args.plot, lambda path: _draw(args.view, data, path))
        print(f"wrote {args.plot}")
    if args.json:
        atomic_write(args.json, lambda path: Path(path).write_text(json_text(ir_to_dict(ir))))
        print(f"wrote {args.json}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """The ``predict`` command: meta-device target in, predictions streamed to a file or an HF directory."""
    import torch

    from hypernets import LoGAH
    from hypernets.logah import WiderThanTrainedWarning
    from hypernets.models import build_model, example_input_shape
    from hypernets.writers import save_prediction

    check_device(args.device)
    check_output(args.out, "--out", directory=args.format == "hf", overwrite=args.overwrite)
    hnet = LoGAH.from_pretrained(args.hypernet, map_location=args.device).eval()
    model = build_model(args.model, device="meta")
    if args.format == "hf" and not hasattr(model, "save_pretrained"):
        raise UsageError(f"--format hf: --model {args.model} is not a Hugging Face model; use --format safetensors")
    inputs = args.input_shape or example_input_shape(args.model, model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WiderThanTrainedWarning)
        try:
            written = save_prediction(
                hnet,
                model,
                args.out,
                inputs,
                getattr(torch, args.dtype),
                args.format,
                progress=sys.stderr.isatty(),
                metadata={"model": args.model, "hypernet": str(args.hypernet)},
            )
        except ValueError as err:
            raise UsageError(f"--dtype {args.dtype}: {err}") from err
    for warning in caught:
        if issubclass(warning.category, WiderThanTrainedWarning):
            print(f"hypernets predict: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(written.summary(args.model))
    print(f"wrote {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """The ``train`` command: settings from the flags, checked in full, then :func:`hypernets.train.train`."""
    import torch

    from hypernets.train import TrainConfig, train
    from hypernets.train.baseline import count_parameters, tiled_baseline
    from hypernets.train.config import hypernet_config

    check_device(args.device)
    check_output(args.out, "--out", directory=True, overwrite=True)  # an existing run directory is resumed
    if args.min_lr > args.lr:
        raise UsageError(f"--min-lr {args.min_lr:g} is above --lr {args.lr:g}")
    if args.stream_penalty and args.family == "vit":
        raise UsageError("--stream-penalty reads GPT-2's residual stream: use it with --family gpt2 or gpt2-wide")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        hypernet = hypernet_config(
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            rank=args.rank,
            max_ck=args.max_ck,
            decoder=args.decoder,
            tile=args.tile,
            mip=not args.no_mip,
            shape_frequencies=args.shape_frequencies,
            width_scaling=args.width_scaling,
        )
    except ValueError as err:
        raise UsageError(f"hypernetwork options: {err}") from err
    if args.match_params:
        hypernet = tiled_baseline(dataclasses.replace(hypernet, decoder="lowrank"))
    config = TrainConfig(
        family=args.family,
        out=args.out,
        steps=args.steps,
        archs_per_step=args.archs_per_step,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        gain_lr_scale=args.gain_lr_scale,
        grad_clip=args.grad_clip,
        spectral_penalty=args.spectral_penalty,
        stream_penalty=args.stream_penalty,
        base_gain_floor=args.base_gain_floor,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        hypernet=hypernet,
    )
    parameters = count_parameters(hypernet)
    check_fits_in_memory(parameters, "the hypernetwork options (--hidden, --layers, --rank, ...)")
    print(f"{hypernet.decoder} hypernetwork, {parameters:,} parameters; writing {args.out}")
    train(config)
    print(f"wrote {args.out}/hypernet, {args.out}/metrics.jsonl and {args.out}/loss.png")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """The ``evaluate`` command: held-out architectures, every hypernetwork and random init, one report."""
    import torch

    from hypernets import LoGAH
    from hypernets.evaluate import RANDOM, compare_inits, markdown_table, write_report
    from hypernets.train import task_for
    from hypernets.zoo import get_family

    args.hypernet = args.hypernet or SHIPPED_FOR_FAMILY[args.family]
    names = [name for name, _ in args.hypernet]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--hypernet: the name {repeated[0]!r} is given twice; give each hypernetwork its own name")
    if RANDOM in names:
        raise UsageError(f"--hypernet: {RANDOM!r} names the baseline row; choose another name")
    if args.out:
        check_output(args.out, "--out", directory=True, overwrite=args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    hypernets = {name: LoGAH.from_pretrained(directory) for name, directory in args.hypernet}
    archs = get_family(args.family).heldout_archs(args.archs, seed=args.seed)
    curves = compare_inits(archs, hypernets, args.family, args.finetune_steps, args.lr, args.batch_size, args.seed)
    metric = task_for(args.family).metric
    if not args.out:
        print(markdown_table(curves, metric))
        return 0
    print(write_report(curves, args.out, metric, overwrite=True))  # --out was checked
    print(f"wrote {args.out}/results.md, {args.out}/results.json and {args.out}/curves.png")
    return 0


def check_fits_in_memory(parameters: int, culprit: str, copies: int = 4) -> None:
    """Refuse a model whose parameters and AdamW state (``copies`` fp32 tensors each) exceed the free memory,
    before anything is allocated."""
    import psutil

    needed, free = 4 * copies * parameters, psutil.virtual_memory().available
    if needed > free:
        raise UsageError(
            f"{culprit}: a hypernetwork of {parameters:,} parameters needs about {needed / 2**30:.1f} GiB to train, "
            f"{free / 2**30:.1f} GiB is free"
        )


def describe_coverage(ir: ModelIR) -> str:
    """How much of the model the graph accounts for: parameters no op reads are missing from every view."""
    unused = set(ir.unused)
    read = [p for name, p in ir.parameters.items() if name not in unused]
    return (
        f"  covered: {len(read)} of {len(ir.parameters)} parameter tensors "
        f"({sum(p.numel for p in read):,} of {ir.num_parameters:,} values)"
    )


def describe_op_graph(data: Data, max_distance: int) -> str:
    return (
        f"op graph: {data.num_nodes} nodes, {data.edge_index.shape[1]} edges, "
        f"{len(data.spd):,} node pairs within {max_distance} hops"
    )


def describe_neuron_graph(data: Data) -> str:
    from hypernets.graph import EDGE_TYPES, NODE_TYPES

    return "\n".join(
        [
            f"neuron graph: {data.num_nodes:,} nodes, {data.edge_index.shape[1]:,} edges",
            "  nodes: " + _count_by_type(data.node_type, NODE_TYPES),
            "  edges: " + _count_by_type(data.edge_type, EDGE_TYPES),
        ]
    )


def _count_by_type(types: torch.Tensor, names: Sequence[str]) -> str:
    counts = types.cpu().bincount(minlength=len(names)).tolist()
    ranked = sorted(((n, name) for name, n in zip(names, counts, strict=True) if n), reverse=True)
    return ", ".join(f"{name} {n:,}" for n, name in ranked)


def ir_to_dict(ir: ModelIR) -> dict[str, Any]:
    """The IR as plain JSON types: ops in topological order, each naming its input ops and parameters."""
    return {
        "model_type": ir.model_type,
        "ops": [_op_to_dict(op) for op in ir.ops],
        "outputs": ir.outputs,
        "parameters": {
            name: {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch.")}
            for name, p in ir.parameters.items()
        },
        "unused": ir.unused,
        "tied": ir.tied(),
    }


def _op_to_dict(op: Any) -> dict[str, Any]:
    """One op as JSON types; the data-moving calls between ops as their function names and arguments."""
    fields = {f.name: getattr(op, f.name) for f in dataclasses.fields(op) if f.name != "views"}
    steps = [None if chain is None else [_view_step(step) for step in chain] for chain in op.views]
    return {**_plain(fields), "views": steps}


def _view_step(step: Any) -> dict[str, Any]:
    name = getattr(step.function, "__name__", str(step.function))
    return {"function": name, "args": _plain(step.args), "kwargs": _plain(step.kwargs), "item": step.item}


def _plain(value: Any) -> Any:
    """Dataclasses, tuples, sizes and slices as JSON types; anything else JSON cannot hold as its repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _draw(view: str, data: Data, path: str) -> None:
    from hypernets.graph.draw import draw_neuron_graph, draw_op_graph  # matplotlib is slow to import

    (draw_op_graph if view == "op" else draw_neuron_graph)(data, path)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, e.g. 1,3,32,32; got {text!r}"
        )
    return shape


def _named_dir(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, e.g. LoGAH=runs/vit/hypernet; got {text!r}")
    return name, directory


if __name__ == "__main__":
    sys.exit(main())
