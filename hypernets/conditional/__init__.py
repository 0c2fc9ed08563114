"""Conditioned hypernetworks for modules users already have: :func:`hypernetize` turns chosen parameters of
any ``nn.Module`` into outputs of a small hypernetwork that reads a condition (a hyperparameter in [0, 1],
a task id), with Magnitude Invariant Parametrization (MIP, Ortiz et al. 2023) on by default.

    model = hypernetize(cnn, params=["features.*.weight"], condition="scalar")
    logits = model(images, condition=0.3)  # one condition for the batch
    logits = model(images, condition=torch.rand(len(images)))  # one per example, through torch.vmap
"""

from hypernets.conditional.model import CHECKPOINT_KIND, HypernetizeConfig, Hypernetized, hypernetize

__all__ = ["CHECKPOINT_KIND", "HypernetizeConfig", "Hypernetized", "hypernetize"]
