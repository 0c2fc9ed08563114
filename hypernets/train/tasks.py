"""What a family's networks are trained and scored on: MNIST digits for ViTs, bytes of text for GPT-2.

A task serves batches from an explicit generator (so a resumed run draws the same ones), computes the
loss of a network under given parameters (``functional_call``, so the loss is differentiable in the
predicted parameters) and scores a network on a fixed eval set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Batch = tuple[Tensor, Tensor]


class ImageTask:
    """MNIST classification: the metric is eval accuracy in percent (higher is better)."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self) -> None:
        from hypernets.data import load_mnist

        self.train_x, self.train_y = load_mnist("train").tensors
        self.eval_x, self.eval_y = load_mnist("eval").tensors

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        index = torch.randint(len(self.train_y), (size,), generator=generator)
        return self.train_x[index], self.train_y[index]

    def logits(self, model: nn.Module, params: dict[str, Tensor] | None, x: Tensor) -> Tensor:
        return model(x) if params is None else functional_call(model, params, (x,))

    def loss(self, model: nn.Module, params: dict[str, Tensor] | None, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.logits(model, params, x).float(), y)

    @torch.no_grad()
    def score(self, model: nn.Module, params: dict[str, Tensor] | None = None, chunk: int = 500) -> float:
        device = _device(model, params)
        correct = 0
        for x, y in zip(self.eval_x.split(chunk), self.eval_y.split(chunk), strict=True):
            correct += (self.logits(model, params, x.to(device)).argmax(-1).cpu() == y).sum().item()
        return 100.0 * correct / len(self.eval_y)


class TextTask:
    """Next-byte prediction on the embedded text corpus: the metric is eval loss in nats (lower is better),
    measured on a fixed set of eval windows."""

    metric = "loss"
    higher_is_better = False

    def __init__(self, block_size: int = 64, eval_windows: int = 64) -> None:
        from hypernets.data.text import TokenStream, load_text_corpus

        self.block_size = block_size
        self.stream = TokenStream.from_text(load_text_corpus())
        self.eval_x, self.eval_y = self.stream.batch(
            eval_windows, block_size, torch.Generator().manual_seed(0), split="eval"
        )

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        return self.stream.batch(size, self.block_size, generator)

    def logits(self, model: nn.Module, params: dict[str, Tensor] | None, x: Tensor) -> Tensor:
        kwargs = {"input_ids": x, "use_cache": False}
        out = model(**kwargs) if params is None else functional_call(model, params, (), kwargs)
        return out.logits

    def loss(self, model: nn.Module, params: dict[str, Tensor] | None, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.logits(model, params, x).float().flatten(0, 1), y.flatten())

    @torch.no_grad()
    def score(self, model: nn.Module, params: dict[str, Tensor] | None = None) -> float:
        device = _device(model, params)
        return self.loss(model, params, (self.eval_x.to(device), self.eval_y.to(device))).item()


def task_for(family: str) -> ImageTask | TextTask:
    """The task a family's networks are trained and scored on (``"gpt2-wide"`` is GPT-2's)."""
    from hypernets.zoo import get_family

    tasks = {"vit": ImageTask, "gpt2": TextTask}
    return tasks[get_family(family).arch.family]()


def _device(model: nn.Module, params: dict[str, Tensor] | None) -> torch.device:
    tensor = next(iter(params.values())) if params else next(model.parameters())
    return tensor.device
