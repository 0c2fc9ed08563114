"""Continual learning with task-conditioned hypernetworks (von Oswald et al., 2020) and the methods
they are compared against.

A hypernetwork maps a learned embedding per task to every parameter of a target network; an output
regularizer keeps its outputs for earlier tasks fixed while it learns new ones, and with the task
unknown the most confident task's network answers (entropy task inference, sharpened by outlier
exposure on negatives made from each task's own batch). Benchmarks
(Permuted-, Split-, Rotated-MNIST; task- and class-incremental), baselines (fine-tuning, EWC, SI, a
network per task) and accuracy-matrix metrics come with it. See ``docs/continual.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Benchmark": "benchmarks",
    "Task": "benchmarks",
    "load_benchmark": "benchmarks",
    "permutation": "benchmarks",
    "permuted_mnist": "benchmarks",
    "rotated_mnist": "benchmarks",
    "split_mnist": "benchmarks",
    "EWC": "consolidation",
    "SI": "consolidation",
    "fisher_diagonal": "consolidation",
    "Experiment": "experiment",
    "run": "experiment",
    "ChunkedHypernet": "hypernet",
    "LoGAHTaskHypernet": "hypernet",
    "TaskHypernet": "hypernet",
    "target_mlp": "hypernet",
    "entropy": "inference",
    "infer_task": "inference",
    "HyperIntervalLearner": "interval",
    "IntervalHypernet": "interval",
    "HypernetLearner": "learners",
    "Learner": "learners",
    "Prediction": "learners",
    "SeparateLearner": "learners",
    "SingleNetworkLearner": "learners",
    "OutlierExposure": "negatives",
    "average_accuracy": "metrics",
    "backward_transfer": "metrics",
    "forgetting": "metrics",
    "plot_accuracy_matrix": "metrics",
    "summarize": "metrics",
    "OutputRegularizer": "regularizer",
    "adam_step": "regularizer",
    "RNNHypernet": "rnn",
    "TrainConfig": "train",
    "accuracy": "train",
    "evaluate": "train",
    "train_continual": "train",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Import lazily: ``hypernets continual``'s parser loads this package, and ``hypernets --help`` should
    not wait for PyG and LoGAH."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"hypernets.continual.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'hypernets.continual' has no attribute {name!r}")
