"""Continual learning with task-conditioned hypernetworks (von Oswald et al., 2020).

A hypernetwork maps a learned embedding per task to every parameter of a target network; an output
regularizer keeps its outputs for earlier tasks fixed while it learns new ones. Benchmarks
(Permuted-MNIST, Split-MNIST), baselines (fine-tuning, a network per task) and accuracy-matrix
metrics come with it. See ``docs/continual.md``.
"""

from hypernets.continual.benchmarks import Benchmark, Task, permutation, permuted_mnist, split_mnist
from hypernets.continual.experiment import Experiment, run
from hypernets.continual.hypernet import ChunkedHypernet, LoGAHTaskHypernet, TaskHypernet, target_mlp
from hypernets.continual.learners import FineTuneLearner, HypernetLearner, Learner, SeparateLearner
from hypernets.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    plot_accuracy_matrix,
    summarize,
)
from hypernets.continual.regularizer import OutputRegularizer, adam_step
from hypernets.continual.train import TrainConfig, accuracy, train_continual

__all__ = [
    "Benchmark",
    "ChunkedHypernet",
    "Experiment",
    "FineTuneLearner",
    "HypernetLearner",
    "Learner",
    "LoGAHTaskHypernet",
    "OutputRegularizer",
    "SeparateLearner",
    "Task",
    "TaskHypernet",
    "TrainConfig",
    "accuracy",
    "adam_step",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "permutation",
    "permuted_mnist",
    "plot_accuracy_matrix",
    "run",
    "split_mnist",
    "summarize",
    "target_mlp",
    "train_continual",
]
