"""Errors raised while turning a module into a graph: each names the module or input at fault."""

from __future__ import annotations


class GraphConversionError(ValueError):
    """Base class: the module or its example inputs cannot be converted."""


class UnsupportedModuleError(GraphConversionError):
    """A module uses a parameter in a way no op kind of the vocabulary represents."""


class InvalidInputError(GraphConversionError):
    """The example inputs are missing, malformed, or the model fails to run on them."""


def describe_module(path: str, module_type: str) -> str:
    """How errors name a module: its dotted path in the model (or <root>) and its class."""
    return f"'{path or '<root>'}' ({module_type})"
