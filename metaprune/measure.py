"""Cost and quality of a network: MACs, FLOPs, parameters, CPU latency and accuracy (or, for a language model, eval
loss), as one JSON-ready record.

Pruning is judged by what it buys (fewer MACs, lower latency) against what it costs (accuracy), so the
benchmark measures all of them the same way before and after pruning.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .copying import copy_model, leaf_caches
from .task import Data, Task, evaluate


@dataclass(frozen=True)
class Measurement:
    """Torch-Pruning's MACs and parameters of one forward pass on the example inputs, with optional complete FLOPs,
    latency, and accuracy (classifiers) or mean next-token loss (language models)."""

    macs: int
    params: int
    latency_ms: float | None = None
    accuracy: float | None = None
    flops: int | None = None
    loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def count_macs_params(model: nn.Module, example_inputs: Tensor) -> tuple[int, int]:
    """Multiply-accumulates per example and parameter count, as Torch-Pruning's counter sees them.

    The counter hooks modules only, so functional ops (e.g. the attention matmuls of timm ViTs) add no MACs:
    speed-up targets are ratios of this count, which is what pruning can change.
    """
    with leaf_caches(model):  # the counter deep-copies the model
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


@torch.inference_mode()
def cpu_latency_ms(
    model: nn.Module, example_inputs: Tensor, *, warmup: int = 5, repeats: int = 30, threads: int = 1
) -> float:
    """Median wall time of one forward pass on the CPU, in milliseconds.

    The thread count is fixed (and restored afterwards) and warm-up runs are discarded, so numbers taken on a
    shared machine are comparable between the dense and the pruned model.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    previous_threads = torch.get_num_threads()
    was_training = model.training
    torch.set_num_threads(threads)
    model.eval()
    try:
        cpu_model = model if _on_cpu(model) else copy_model(model).cpu()
        inputs = example_inputs.cpu()
        for _ in range(warmup):
            cpu_model(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            cpu_model(inputs)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def accuracy(model: nn.Module, data: Data, *, batch_size: int = 256) -> float:
    """Top-1 accuracy over ``(input, label)`` pairs or batches (see :func:`metaprune.task.evaluate`)."""
    return evaluate(model, data, "classification", batch_size=batch_size)


def measure(
    model: nn.Module,
    example_inputs: Tensor,
    dataset: Data | None = None,
    *,
    task: Task = "classification",
    latency: bool = True,
    flops: bool = False,
    threads: int = 1,
    repeats: int = 30,
    progress: bool = False,
) -> Measurement:
    """MACs and parameters, plus CPU latency unless ``latency`` is false, every op's FLOPs when ``flops``, and
    the task's score (accuracy or loss) when data is given (with a progress bar when ``progress``)."""
    from .flops import count_flops

    macs, params = count_macs_params(model, example_inputs)
    score = evaluate(model, dataset, task, progress=progress) if dataset is not None else None
    return Measurement(
        macs=macs,
        params=params,
        latency_ms=cpu_latency_ms(model, example_inputs, threads=threads, repeats=repeats) if latency else None,
        accuracy=score if task == "classification" else None,
        flops=count_flops(model, example_inputs) if flops else None,
        loss=score if task == "causal_lm" else None,
    )


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())
