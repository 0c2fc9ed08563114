"""Task inference for class-incremental use (von Oswald et al. 2020, HNET+ENT): with the task unknown,
run every task's network and trust the one whose prediction is most confident (lowest entropy)."""

from __future__ import annotations

from torch import Tensor


def entropy(logits: Tensor) -> Tensor:
    """Predictive entropy (nats) of the softmax over the last dimension."""
    log_p = logits.log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def infer_task(logits: Tensor) -> Tensor:
    """``logits[t]`` is ``[n, classes]`` from task ``t``'s network: per example, the task of lowest entropy."""
    return entropy(logits).argmin(0)
