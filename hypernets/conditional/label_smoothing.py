"""The hyperparameter-conditioned task that the recipe and the benchmark share: a small CNN on the embedded
MNIST trained with label smoothing ``MAX_SMOOTHING * c`` for a condition ``c`` in [0, 1].

Label smoothing moves calibration a lot and accuracy little, so a sweep of ``c`` traces a curve that a
model trained once has to get right at every point, not only on average.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hypernets.data import LabeledTensorDataset

MAX_SMOOTHING = 0.5  # c = 1 smooths half the target mass over the other classes
ECE_BINS = 15


def small_cnn() -> nn.Sequential:
    """Two strided convolutions and a linear classifier: 20.5 k parameters, milliseconds a step on a CPU."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1500
    lr: float = 2e-3
    batch_size: int = 128
    seed: int = 0  # the batches; every model trained with one seed sees the same batches in the same order


def logits(model: nn.Module, images: Tensor, condition: float) -> Tensor:
    """A conditioned model (one whose ``forward`` takes ``condition``: a Hypernetized one, or another library's
    hypernetwork in the benchmark) reads the condition; a plain one was trained at a single value and ignores it."""
    takes_condition = "condition" in inspect.signature(model.forward).parameters
    return model(images, condition=condition) if takes_condition else model(images)


def smoothed_loss(model: nn.Module, images: Tensor, labels: Tensor, condition: float) -> Tensor:
    """The training objective at condition ``c``: cross-entropy with label smoothing ``MAX_SMOOTHING * c``."""
    return F.cross_entropy(logits(model, images, condition), labels, label_smoothing=MAX_SMOOTHING * condition)


def train(
    model: nn.Module,
    data: LabeledTensorDataset,
    settings: TrainSettings,
    condition: float | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> None:
    """Adam on ``model``. ``condition=None`` trains a hypernetized model on a fresh uniform ``c`` each step;
    a number trains at that condition alone. ``callback(step, loss)`` runs after every step."""
    batches = torch.Generator().manual_seed(settings.seed)
    conditions = torch.Generator().manual_seed(settings.seed + 1)  # apart, so both kinds see the same batches
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    for step in range(1, settings.steps + 1):
        index = torch.randint(len(data.labels), (settings.batch_size,), generator=batches)
        c = torch.rand((), generator=conditions).item() if condition is None else condition
        loss = smoothed_loss(model, data.images[index], data.labels[index], c)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if callback is not None:
            callback(step, loss.item())


@torch.no_grad()
def evaluate(model: nn.Module, data: LabeledTensorDataset, condition: float) -> dict[str, float]:
    """Accuracy and expected calibration error, both in percent, at condition ``condition``."""
    probabilities = logits(model, data.images, condition).softmax(-1)
    return {
        "accuracy": 100 * (probabilities.argmax(-1) == data.labels).float().mean().item(),
        "ece": 100 * expected_calibration_error(probabilities, data.labels),
    }


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """``sum_b n_b / n * |accuracy_b - confidence_b|`` over equal-width bins of the top-class confidence
    (Guo et al. 2017): 0 when a model that says 80% is right 80% of the time."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).float()
    which = (confidence * bins).long().clamp(max=bins - 1)
    gaps = torch.bincount(which, weights=correct - confidence, minlength=bins)  # per bin: n_b * (acc_b - conf_b)
    return (gaps.abs().sum() / len(labels)).item()
