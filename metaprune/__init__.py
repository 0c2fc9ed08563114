"""Metaprune: a graph metanetwork that rewrites trained networks so whole channels can be pruned away.

``metanet`` rewrites neuron graphs, ``population`` trains the networks it learns from, ``objective``
scores a rewrite (task loss + group lasso over channel groups) and ``metatrain`` fits the metanetwork;
``prune_model`` is the whole pruning step on a user's model and data, ``load_pruned`` reads its output back.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

import hypernets  # noqa: F401  (its import filters torch_geometric's torch.jit.script FutureWarning)

if TYPE_CHECKING:
    from metaprune.metanet import GraphLayout, Metanet, MetanetConfig, graph_state, transformed_state
    from metaprune.metatrain import Member, MetaTrainConfig, train_metanet
    from metaprune.objective import ChannelGroups, ObjectiveConfig, group_norms, group_penalty, objective_terms
    from metaprune.pipeline import Gate, Pruned, prune_model
    from metaprune.population import (
        MemberSpec,
        build_from_config,
        build_population,
        list_members,
        load_member,
        population_specs,
    )
    from metaprune.store import load_pruned, save_pruned

_MODULES = {
    "metanet": ("GraphLayout", "Metanet", "MetanetConfig", "graph_state", "transformed_state"),
    "metatrain": ("Member", "MetaTrainConfig", "train_metanet"),
    "objective": ("ChannelGroups", "ObjectiveConfig", "group_norms", "group_penalty", "objective_terms"),
    "pipeline": ("Gate", "Pruned", "prune_model"),
    "store": ("load_pruned", "save_pruned"),
    "population": (
        "MemberSpec",
        "build_from_config",
        "build_population",
        "list_members",
        "load_member",
        "population_specs",
    ),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
__all__ = [
    "ChannelGroups",
    "Gate",
    "GraphLayout",
    "Member",
    "MemberSpec",
    "MetaTrainConfig",
    "Metanet",
    "MetanetConfig",
    "ObjectiveConfig",
    "Pruned",
    "build_from_config",
    "build_population",
    "graph_state",
    "group_norms",
    "group_penalty",
    "list_members",
    "load_member",
    "load_pruned",
    "objective_terms",
    "population_specs",
    "prune_model",
    "save_pruned",
    "train_metanet",
    "transformed_state",
]


def __getattr__(name: str) -> Any:
    """Import lazily: the command line starts without loading torch and PyG for ``--help``."""
    if name in _HOME:
        return getattr(import_module(f"metaprune.{_HOME[name]}"), name)
    raise AttributeError(f"module 'metaprune' has no attribute {name!r}")
