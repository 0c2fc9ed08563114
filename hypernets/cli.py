"""The ``hypernets`` command: convert a model into a graph, or predict its parameters with a hypernetwork.

torch, PyG and the model libraries are imported by the commands that use them, so that ``--help``
answers at once instead of after several seconds of imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hypernets.models import DEFAULT_SPEC, SPEC_FORMS, ModelSpecError

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
  hypernets graph torchvision:resnet18 --input-shape 1,3,64,64
"""

PREDICT_EXAMPLES = """\
examples:
  hypernets predict --hypernet hnet/ --model timm:vit_tiny_patch16_224 --out vit.safetensors
  hypernets predict --hypernet hnet/ --model gpt2:large --dtype bfloat16 --out gpt2-large.safetensors

The target is built on the meta device, so no random initialization is ever allocated; the file
holds every parameter by name (tied parameters once), ready for model.load_state_dict(...).
"""
DTYPES = ("float32", "bfloat16", "float16")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hypernets`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    # torch_geometric calls the deprecated torch.jit.script on import: noise for users of the command.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    from hypernets.checkpoint import CheckpointError
    from hypernets.graph import GraphConversionError

    try:
        return args.run(args)
    except (GraphConversionError, ModelSpecError, CheckpointError, OSError) as err:
        print(f"hypernets: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypernets",
        description="Graph hypernetworks and metanetworks for PyTorch. "
        "Run 'hypernets COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    graph = commands.add_parser(
        "graph",
        help="convert a model into its op or neuron graph and summarize it",
        description="Trace a model (shapes only, no computation) and summarize its graph: op counts by kind,\n"
        "parameters covered, unused and tied parameters, node and edge counts. Optionally draw the\n"
        "graph and write the traced ops as JSON.",
        epilog="model specs:\n" + "\n".join(f"  {form}" for form in SPEC_FORMS) + "\n\n" + GRAPH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    graph.add_argument("model", nargs="?", default=DEFAULT_SPEC, help=f"model spec (default: {DEFAULT_SPEC})")
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
        type=_positive_int,
        metavar="D",
        help="op view: keep shortest-path pairs up to D hops apart (default: to_op_graph's, 8)",
    )
    graph.add_argument("--plot", metavar="PNG", help="draw the graph to this PNG file")
    graph.add_argument("--json", metavar="FILE", help="write the traced ops and parameters to this JSON file")
    graph.set_defaults(run=run_graph)

    predict = commands.add_parser(
        "predict",
        help="predict every parameter of a model with a trained hypernetwork",
        description="Predict every parameter of a model with a hypernetwork checkpoint (a directory written by\n"
        "LoGAH.save_pretrained) and write them to a safetensors file.",
        epilog="model specs:\n" + "\n".join(f"  {form}" for form in SPEC_FORMS) + "\n\n" + PREDICT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("--hypernet", required=True, metavar="DIR", help="hypernetwork checkpoint directory")
    predict.add_argument("--model", default=DEFAULT_SPEC, help=f"model spec (default: {DEFAULT_SPEC})")
    predict.add_argument("--out", required=True, metavar="FILE", help="safetensors file to write")
    predict.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written parameters")
    predict.add_argument("--device", default="cpu", help="where the hypernetwork runs, e.g. cpu or cuda")
    predict.add_argument("--input-shape", type=_shape, metavar="N,C,H,W", help="as for 'hypernets graph'")
    predict.set_defaults(run=run_predict)
    return parser


def run_graph(args: argparse.Namespace) -> int:
    """The ``graph`` command. The op view builds the model on ``meta``; the neuron view needs real weights."""
    from hypernets.graph import to_neuron_graph, to_op_graph, trace
    from hypernets.graph.op_graph import DEFAULT_MAX_DISTANCE
    from hypernets.models import build_model, example_input_shape

    model = build_model(args.model, device="meta" if args.view == "op" else "cpu")
    ir = trace(model, args.input_shape or example_input_shape(args.model, model))
    if args.view == "op":
        max_distance = args.max_distance or DEFAULT_MAX_DISTANCE
        data = to_op_graph(ir, max_distance=max_distance)
        report = describe_op_graph(data, max_distance)
    else:
        data = to_neuron_graph(model, ir=ir)
        report = describe_neuron_graph(data)
    print("\n".join([ir.summary(), describe_coverage(ir), report]))
    if args.plot:
        _write_atomically(args.plot, lambda path: _draw(args.view, data, path))
        print(f"wrote {args.plot}")
    if args.json:
        _write_atomically(args.json, lambda path: _write_json(ir_to_dict(ir), path))
        print(f"wrote {args.json}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """The ``predict`` command: meta-device target in, one safetensors file of predictions out."""
    import time

    import torch

    from hypernets import LoGAH
    from hypernets.checkpoint import save_tensors
    from hypernets.models import build_model, example_input_shape

    hnet = LoGAH.from_pretrained(args.hypernet, map_location=args.device).eval()
    model = build_model(args.model, device="meta")
    start = time.perf_counter()
    params = hnet.predict(model, args.input_shape or example_input_shape(args.model, model), getattr(torch, args.dtype))
    seconds = time.perf_counter() - start
    save_tensors(args.out, params, metadata={"model": args.model, "hypernet": str(args.hypernet)})
    values = sum(p.numel() for p in params.values())
    print(f"predicted {len(params)} tensors ({values:,} values) of {args.model} in {seconds:.2f} s")
    print(f"wrote {args.out}")
    return 0


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
        "ops": [dataclasses.asdict(op) for op in ir.ops],
        "outputs": ir.outputs,
        "parameters": {
            name: {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch.")}
            for name, p in ir.parameters.items()
        },
        "unused": ir.unused,
        "tied": ir.tied(),
    }


def _draw(view: str, data: Data, path: str) -> None:
    from hypernets.graph.draw import draw_neuron_graph, draw_op_graph  # matplotlib is slow to import

    (draw_op_graph if view == "op" else draw_neuron_graph)(data, path)


def _write_json(value: Any, path: str) -> None:
    with open(path, "w") as file:
        json.dump(value, file, indent=1)


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Write through a temporary file beside ``path``, so that a reader never sees half a file."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
