"""Benchmark graph conversion: wall time and memory of ``to_op_graph`` and ``to_neuron_graph`` on GPT-2
small/medium/large and ViT-B/16.

Every measurement runs in a fresh Python process, so the process's peak resident set
(``ru_maxrss``) belongs to that one model and conversion; the table shows it next to the resident
set just before the first conversion, and their difference is what the conversion added. Time is
the wall clock of the conversion call alone (tracing included), the median of ``--repeats`` runs
after one warm-up.

Op graphs are built from ``meta``-device models: they need shapes only. Neuron graphs carry every
weight, so they are built from CPU models with real (random) weights; on ``meta`` the same call
gives the graph's structure without values, which is also how the script decides whether a CPU
neuron graph fits in memory before attempting it.

    python recipes/bench/bench_convert.py
    python recipes/bench/bench_convert.py --models gpt2-large --views op
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch
from torch import nn

if TYPE_CHECKING:
    from torch_geometric.data import Data

GPT2_SIZES = {  # n_layer, n_embd, n_head
    "gpt2-small": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
}
MODELS = (*GPT2_SIZES, "vit-b")
VIEWS = ("op", "neuron")
CPU_NEURON_MODELS = ("gpt2-small", "vit-b")  # larger CPU models add nothing but minutes
TARGET_MODEL, TARGET_SECONDS, TARGET_PEAK_MB = "gpt2-large", 5.0, 1024
MEMORY_HEADROOM = 0.5  # a neuron graph is attempted only if its tensors fit in this share of free memory
MB = 2**20


@dataclass(frozen=True)
class Task:
    """One measurement: a model, the graph view to build and the device the model lives on."""

    model: str
    view: str
    device: str


@dataclass(frozen=True)
class Result:
    """What one task measured; NaN where nothing was run."""

    task: Task
    parameters: int = 0
    nodes: int = 0
    edges: int = 0
    edge_width: int = 0  # columns of edge_attr (neuron graph)
    seconds: float = float("nan")
    rss_before_mb: float = float("nan")
    peak_mb: float = float("nan")
    note: str = ""

    @property
    def graph_mb(self) -> float:
        """Size of the neuron graph's tensors with values: edge_index, edge_type (int64), edge_attr (float32)."""
        return self.edges * (3 * 8 + 4 * self.edge_width) / MB


# -- inside the worker process ------------------------------------------------------------------------
# Libraries are imported where they are used, so that a worker's resident set holds only what its model needs.


def build(model: str, device: str) -> nn.Module:
    """The model with default (random) initialization; on ``meta`` nothing is allocated."""
    with torch.device(device):
        if model in GPT2_SIZES:
            from transformers import GPT2Config, GPT2LMHeadModel

            n_layer, n_embd, n_head = GPT2_SIZES[model]
            return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head)).eval()
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False).eval()


def convert(view: str, model: nn.Module) -> Data:
    from hypernets.graph import to_op_graph

    if view == "op":
        return to_op_graph(model)
    from hypernets.graph import to_neuron_graph

    return to_neuron_graph(model)


def run_worker(task: Task, repeats: int) -> Result:
    """Build the model, then time the conversion: one warm-up and ``repeats`` measured calls."""
    model = build(task.model, task.device)
    gc.collect()
    rss_before = psutil.Process().memory_info().rss / MB
    graph = convert(task.view, model)
    times = []
    for _ in range(repeats):
        del graph
        gc.collect()
        start = time.perf_counter()
        graph = convert(task.view, model)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    edge_attr = getattr(graph, "edge_attr", None)
    return Result(
        task=task,
        parameters=sum(p.numel() for p in model.parameters()),
        nodes=graph.num_nodes,
        edges=graph.edge_index.shape[1],
        edge_width=edge_attr.shape[1] if edge_attr is not None else 0,
        seconds=statistics.median(times),
        rss_before_mb=rss_before,
        peak_mb=peak,
        note="structure only: tensors on meta, no values" if task.view == "neuron" and task.device == "meta" else "",
    )


# -- in the parent process ----------------------------------------------------------------------------


def measure(task: Task, repeats: int) -> Result:
    """Run one task in a fresh interpreter and read its result (the last line of its output)."""
    command = [sys.executable, __file__, "--worker", task.model, task.view, task.device, "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return Result(task, note=f"failed: {reason}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(**{**fields, "task": task})


def neuron_graph_available() -> bool:
    try:
        from hypernets.graph import to_neuron_graph  # noqa: F401
    except ImportError:
        return False
    return True


def plan(models: Sequence[str], views: Sequence[str]) -> list[Task]:
    """Op graphs on meta; neuron graphs on meta (counts) and, for the small models, on CPU."""
    tasks = []
    for model in models:
        if "op" in views:
            tasks.append(Task(model, "op", "meta"))
        if "neuron" in views:
            tasks.append(Task(model, "neuron", "meta"))
            if model in CPU_NEURON_MODELS:
                tasks.append(Task(model, "neuron", "cpu"))
    return tasks


def run_all(tasks: list[Task], repeats: int) -> list[Result]:
    """Measure every task; a CPU neuron graph runs only when its meta twin shows it fits in memory."""
    results: dict[Task, Result] = {}
    has_neuron_graph = any(task.view == "neuron" for task in tasks) and neuron_graph_available()
    for task in tasks:
        if task.view == "neuron" and not has_neuron_graph:
            result = Result(task, note="n/a: hypernets.graph.to_neuron_graph is not importable")
        elif task.view == "neuron" and task.device == "cpu":
            result = too_large(results.get(replace(task, device="meta"))) or measure(task, repeats)
        else:
            result = measure(task, repeats)
        results[task] = result
        seconds = _number(result.seconds, ".2f")
        print(f"  {task.model:12} {task.view:7} {task.device:5} {seconds:>8} s  {result.note}", flush=True)
    return list(results.values())


def too_large(meta: Result | None) -> Result | None:
    """An n/a result when the meta-device structure shows the CPU neuron graph cannot fit in memory."""
    if meta is None or meta.note.startswith(("n/a", "failed")):
        return None
    available = psutil.virtual_memory().available / MB
    if meta.graph_mb <= MEMORY_HEADROOM * available:
        return None
    task = replace(meta.task, device="cpu")
    return Result(
        task,
        parameters=meta.parameters,
        nodes=meta.nodes,
        edges=meta.edges,
        edge_width=meta.edge_width,
        note=f"n/a: its tensors alone take {meta.graph_mb / 1024:.0f} GiB ({meta.edges:,} edges x "
        f"{meta.edge_width} float32 edge_attr columns); {available / 1024:.0f} GiB free",
    )


def machine_info() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return (
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}\n"
        f"CPU: {cpu or platform.processor()}, {os.cpu_count()} logical cores "
        f"({len(os.sched_getaffinity(0))} usable), torch threads {torch.get_num_threads()}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    )


def table(results: list[Result], repeats: int) -> str:
    header = (
        "| model | view | device | parameters | nodes | edges | time (s) | RSS before (MB) | process peak (MB) "
        "| added by conversion (MB) | note |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        numbers = [r.seconds, r.rss_before_mb, r.peak_mb, r.peak_mb - r.rss_before_mb]
        measured = [_number(x, ".2f" if i == 0 else ".0f") for i, x in enumerate(numbers)]
        rows.append(
            f"| {r.task.model} | {r.task.view} | {r.task.device} | {r.parameters / 1e6:.0f}M | {r.nodes:,} "
            f"| {r.edges:,} | {' | '.join(measured)} | {r.note} |"
        )
    return "\n".join(rows) + f"\n\nTime: median of {repeats} runs after one warm-up, conversion call only."


def _number(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def target_verdict(results: list[Result]) -> str | None:
    """PASS/FAIL for the GPT-2 Large op graph: under the time and process-peak-memory targets."""
    target = next((r for r in results if r.task == Task(TARGET_MODEL, "op", "meta")), None)
    if target is None:
        return None
    verdict = "PASS" if target.seconds < TARGET_SECONDS and target.peak_mb < TARGET_PEAK_MB else "FAIL"
    return (
        f"{verdict}: {TARGET_MODEL} op graph {target.seconds:.2f} s (target < {TARGET_SECONDS:.0f} s), "
        f"process peak {target.peak_mb:.0f} MB (target < {TARGET_PEAK_MB} MB)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to convert")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS), help="graph views to build")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per conversion (after a warm-up)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "VIEW", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(Task(*args.worker), args.repeats)
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "task"}))
        return 0
    print(machine_info(), flush=True)
    results = run_all(plan(args.models, args.views), args.repeats)
    print()
    print(table(results, args.repeats))
    verdict = target_verdict(results)
    if verdict:
        print(f"\n{verdict}")
    return 0 if verdict is None or verdict.startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
