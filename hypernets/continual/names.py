"""The benchmarks, settings and methods the ``hypernets continual`` command offers, importable without
torch so that ``hypernets --help`` stays instant."""

from __future__ import annotations

FULL_LENGTH = {"permuted": 10, "split": 5, "rotated": 10}  # tasks per benchmark
SETTINGS = ("task", "class")  # task id given at test time, or not
NEGATIVES = ("none", "patches", "splice", "mixup", "rotate")  # outlier exposure's self-generated negatives
GRID_METHODS: dict[str, dict] = {  # method name -> Experiment settings
    "hypernet": dict(method="hypernet"),
    "hypernet-logah": dict(method="hypernet", hypernet="logah", mip=True, residual=True),
    "hypernetize": dict(method="hypernet", hypernet="hypernetize", mip=True),
    "hypernet-rnn": dict(method="hypernet", hypernet="rnn"),
    "hyperinterval": dict(method="hyperinterval", perturbation=1.0),  # the reference's task-incremental eps
    # one network for all tasks, the task id only picks its 2-way head; eps chosen on seed 0 (docs/continual.md)
    "hyperinterval-universal": dict(method="hyperinterval", universal=True, multihead=True, perturbation=0.1),
    # the reference's nested run as it is: one shared 2-way head, so no task id at all (domain-incremental)
    "hyperinterval-universal-shared": dict(method="hyperinterval", universal=True),
    "ewc": dict(method="ewc"),
    "si": dict(method="si"),
    "finetune": dict(method="finetune"),
    "separate": dict(method="separate"),
}
