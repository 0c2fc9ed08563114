"""Fine-tuning with a fixed step budget, so dense, pruned and metapruned networks get exactly the same training.

Budgets are counted in optimizer steps rather than epochs: a benchmark that compares recipes must give each the
same compute, and a seeded data order makes two runs of the same recipe identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .task import Data, endless, logits_of

Optimizer = Literal["sgd", "adamw"]
LossFn = Callable[[Tensor, Tensor], Tensor]
GradHook = Callable[[nn.Module], None]


def finetune(
    model: nn.Module,
    dataset: Data,
    *,
    steps: int,
    lr: float = 0.01,
    optimizer: Optimizer = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    after_backward: GradHook | None = None,
    progress: bool = True,
    deadline: float | None = None,
    desc: str = "fine-tune",
) -> list[float]:
    """Train ``model`` in place for ``steps`` optimizer steps with a cosine learning-rate decay to zero.

    Args:
        model: the network; trained on the device its parameters are on.
        dataset: ``(input, label)`` pairs, reshuffled (seeded) every pass, or a loader of such batches.
        steps: number of optimizer steps, however many passes over the dataset that takes.
        lr: peak learning rate.
        optimizer: ``"sgd"`` (heavy-ball momentum) or ``"adamw"``.
        momentum: SGD momentum; ignored by AdamW.
        weight_decay: decoupled for AdamW, L2 for SGD.
        batch_size: examples per step.
        seed: seeds data order and any randomness in the forward pass (dropout), without disturbing the caller's RNG.
        loss_fn: maps (logits, labels) to a scalar loss (the logits of a Hugging Face output are taken out).
        after_backward: called with the model between ``backward`` and the optimizer step, e.g. to add a sparsity
            regularizer's gradient (see :func:`metaprune.prune.sparse_regularizer`).
        progress: show a tqdm bar (with an ETA).
        deadline: a ``time.monotonic()`` time after which no further step starts: a CI time budget. The
            schedule stays the one for ``steps``, so a stopped run is the start of the full one.
        desc: the progress bar's label.

    Returns:
        The training loss of every step, in order: fewer than ``steps`` when the deadline stopped it.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = next(model.parameters()).device
    opt = _optimizer(model, optimizer, lr, momentum, weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    was_training = model.training
    model.train()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        batches = endless(dataset, batch_size, seed)
        for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            if deadline is not None and time.monotonic() >= deadline:
                break
            inputs, labels = next(batches)
            loss = loss_fn(logits_of(model(inputs.to(device))), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(model)
            opt.step()
            schedule.step()
            losses.append(loss.item())
    model.train(was_training)
    return losses


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, dataset: Data, *, batches: int = 20, batch_size: int = 128, seed: int = 0
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches, weights untouched.

    Removing channels changes what the next layer's norm sees, and its stale statistics alone can drop a
    pruned network to chance; fresh ones show what the pruned weights can do (adaptive BN, as in EagleEye,
    Li et al. 2020). Statistics are plain averages over the batches; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    saved_momentum = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
        norm.train()
    device = next(model.parameters()).device
    for _, (images, _labels) in zip(range(batches), endless(dataset, batch_size, seed), strict=False):
        model(images.to(device))
    for norm, momentum in zip(norms, saved_momentum, strict=True):
        norm.momentum = momentum
    return model.eval()


def _optimizer(
    model: nn.Module, name: Optimizer, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'sgd' or 'adamw'")
