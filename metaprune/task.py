"""What a network is trained on and judged by: an image classifier by top-1 accuracy, a causal language model
by its mean next-token loss on held-out text.

Data comes either as a map-style ``Dataset`` of ``(input, target)`` pairs (the embedded MNIST, the population)
or as the user's own iterable of batches (a ``DataLoader``); both are read through :func:`batches`, so
fine-tuning and evaluation take whatever the user has.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

Task = Literal["classification", "causal_lm"]


class NonFiniteDataError(ValueError):
    """A batch holds NaN or infinite inputs: nothing trained or scored on it would mean anything."""


TASKS: tuple[str, ...] = ("classification", "causal_lm")
Batch = tuple[Tensor, Tensor]
Data = Dataset | Iterable[Batch]


def logits_of(output: Any) -> Tensor:
    """The logits of a forward pass: Hugging Face models return an output object, most others a tensor."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(
        f"cannot find logits in a model output of type {type(output).__name__}: metaprune needs a model that returns "
        "logits (a classifier, or a causal LM with its head)"
    )


def output_tensors(output: Any) -> list[Tensor]:
    """Every tensor a forward pass returns: the tensor itself, a tuple's, or a Hugging Face output's fields."""
    leaves = tree_leaves(dict(output) if isinstance(output, Mapping) else output)
    return [leaf for leaf in leaves if isinstance(leaf, Tensor)]


def task_loss(task: Task, logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over classes, or over the vocabulary at every position of a causal LM (``functools.partial``
    it on the task for :func:`metaprune.finetune.finetune`'s ``loss_fn``)."""
    if task == "causal_lm":
        return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten())
    return F.cross_entropy(logits, targets)


def batches(data: Data, batch_size: int = 256) -> Iterable[Batch]:
    """One pass over ``data`` in order: a map-style dataset in batches of ``batch_size``, a loader as it is."""
    return DataLoader(data, batch_size=batch_size) if isinstance(data, Dataset) else data


def endless(data: Data, batch_size: int, seed: int) -> Iterator[Batch]:
    """Training batches, pass after pass, so a step budget need not divide the data; the same ``seed`` gives the
    same batches, so every phase (and every pipeline compared on the same data) sees the same order.

    A dataset is reshuffled every pass, its short last batch dropped unless the dataset is smaller than one
    batch (a noisy step, and a BatchNorm fails on a batch of one). A loader is replayed as it is, its own
    generator (if it has one) reseeded with ``seed``; without one it shuffles with the caller's RNG.
    """
    if isinstance(data, Dataset):
        size = len(data)  # type: ignore[arg-type]
        if size == 0:
            raise ValueError("training needs a non-empty dataset")
        generator = torch.Generator().manual_seed(seed)
        data = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=size > batch_size, generator=generator)
    elif isinstance(getattr(data, "generator", None), torch.Generator):
        data.generator.manual_seed(seed)
    while True:
        empty = True
        for batch in data:
            empty = False
            yield _finite(batch, "training data")
        if empty:
            raise ValueError("the training data yielded no batches")


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: Data, task: Task = "classification", *, batch_size: int = 256, progress: bool = False
) -> float:
    """Top-1 accuracy in [0, 1] for a classifier, mean next-token loss (nats per token) for a causal LM,
    in eval mode, the model's mode restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = count = 0.0
    try:
        checked = map(partial(_finite, what="validation data"), batches(data, batch_size))
        for inputs, targets in tqdm(checked, desc="evaluate", disable=not progress, leave=False):
            logits = logits_of(model(inputs.to(device))).cpu()
            if task == "causal_lm":
                total += float(task_loss(task, logits, targets)) * targets.numel()
                count += targets.numel()
            else:
                total += int((logits.argmax(dim=-1) == targets).sum())
                count += len(targets)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation needs non-empty data")
    return total / count


def _finite(batch: Batch, what: str) -> Batch:
    inputs = batch[0]
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        bad = int((~torch.isfinite(inputs)).sum())
        raise NonFiniteDataError(f"the {what} holds NaN or infinite inputs ({bad:,} values in one batch)")
    return batch
