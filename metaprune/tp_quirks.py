"""Workarounds for Torch-Pruning 1.6's dependency graph, each for a model family it misreads.

- ``refresh_split_offsets``: its ``SplitPruner`` updates a split's sizes but stores the new offsets on itself, not
  on the split, so the next step of progressive pruning would cut chunks at the dense offsets (fused gated MLPs).
- ``map_chunks``: it turns off the index mapping of every split downstream of a 3-d parameter it does not know (a
  ViT's ``pos_embed``), meant for the class token's concatenation; a fused linear's split is on its features.
- ``quirks_handled``, around everything that builds or walks its graph:
  - it warns, on every graph it builds, about each parameter no module of a type it knows owns (a ViT's
    ``cls_token`` and ``pos_embed``), telling the caller to pass ``unwrapped_parameters``; a metaprune user has no
    such option, and a model that such a parameter breaks is caught by the pruned model's checks, so the warning
    is kept out of their logs, as is its "Maximum recursive depth reached!" from shape inference on deep graphs
    (DenseNet, TNT), which says nothing a user can act on;
  - it divides by the width it infers after a reshape, which is 0 where it cannot follow the channels
    (ShuffleNet's shuffle feeding a split): such a reshape gets no index mapping instead of a
    ``ZeroDivisionError``; its channels are kept whole (``metaprune.token_mixing``);
  - it sums the sizes of a concatenation's inputs before it checks that it could infer them all, a ``TypeError``
    where it could not (TNT's class token joined to its patch tokens); it means to map nothing there, and does not;
  - it cuts a convolution's weight and bias, but not the other parameters a subclass keeps per output channel (the
    gain of NFNet's weight-standardized convolutions): those lose the same channels;
  - it cuts a group norm's bias even where there is none (timm's ``GroupNorm1NoBias`` in PoolFormer v2): a missing
    parameter stays missing;
  - it reads every 5-d ``expand`` as grouped-query attention's repeated heads, and divides by the repeat, which is 0
    where the expand repeats no channels (GC ViT's global query): such an expand gets no mapping.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

__all__ = ["map_chunks", "quirks_handled", "refresh_split_offsets", "unmappable_roots"]

MAX_MAPPED_INDICES = 1 << 20  # a channel group whose reshapes map more indices than this has been misread
MAX_VISITS = 16  # a channel group that reaches one layer's channels more often than this goes round a cycle


def refresh_split_offsets(graph: tp.DependencyGraph) -> None:
    """Move the offsets of every split in ``graph`` to its pruned sizes."""
    for node in graph.module2node.values():
        sizes = node.module.split_sizes if node.type == tp.ops.OPTYPE.SPLIT else None
        if sizes is not None and None not in sizes:  # sizes it could not infer: channels kept whole
            node.module.offsets = [0, *itertools.accumulate(sizes)]


def map_chunks(graph: tp.DependencyGraph, chunked: dict[nn.Module, int]) -> None:
    """Turn back on the index mapping of the splits of the fused linears in ``chunked``."""
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.SPLIT and any(source.module in chunked for source in node.inputs):
            node.enable_index_mapping = True


@contextmanager
def quirks_handled() -> Iterator[None]:
    """Within, Torch-Pruning's graph and pruning functions have the workarounds the module's docstring lists."""
    reshape_mapping = index_mapping.update_reshape_index_mapping
    expand_mapping = index_mapping.update_expand_index_mapping
    concat_mapping = index_mapping.update_concat_index_mapping

    def guarded_reshape(graph: tp.DependencyGraph, node: tp.Node) -> None:
        with suppress(ZeroDivisionError):  # a width inferred as 0: no mapping, and the channels are kept whole
            reshape_mapping(graph, node)

    def guarded_concat(graph: tp.DependencyGraph, node: tp.Node) -> None:
        with suppress(TypeError):  # a size it could not infer, summed before it checks for one: no mapping
            concat_mapping(graph, node)

    def guarded_expand(graph: tp.DependencyGraph, node: tp.Node) -> None:
        expand_mapping(graph, node)
        _drop_empty_repeats(node)

    def prune_out_channels(pruner: tp.pruner.function.ConvPruner, layer: nn.Module, idxs: list[int]) -> nn.Module:
        kept = sorted(set(range(layer.out_channels)) - set(idxs))
        for name, parameter in _channel_parameters(layer):
            setattr(layer, name, pruner._prune_parameter_and_grad(parameter, kept, 0))
        return conv_out_channels(pruner, layer, idxs)

    def prune_parameter(pruner: tp.pruner.BasePruningFunc, weight: nn.Parameter | None, *args: object) -> object:
        return None if weight is None else cut_parameter(pruner, weight, *args)

    conv_pruner = tp.pruner.function.ConvPruner
    conv_out_channels = conv_pruner.prune_out_channels
    base_pruner = tp.pruner.BasePruningFunc
    cut_parameter = base_pruner._prune_parameter_and_grad
    index_mapping.update_reshape_index_mapping = guarded_reshape
    index_mapping.update_expand_index_mapping = guarded_expand
    index_mapping.update_concat_index_mapping = guarded_concat
    conv_pruner.prune_out_channels = prune_out_channels
    base_pruner._prune_parameter_and_grad = prune_parameter
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
            yield
    finally:
        index_mapping.update_reshape_index_mapping = reshape_mapping
        index_mapping.update_expand_index_mapping = expand_mapping
        index_mapping.update_concat_index_mapping = concat_mapping
        conv_pruner.prune_out_channels = conv_out_channels
        base_pruner._prune_parameter_and_grad = cut_parameter


def _channel_parameters(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """A convolution's own parameters beside its weight and bias with one entry per output channel (the gain of
    NFNet's ``ScaledStdConv2d``)."""
    return [
        (name, parameter)
        for name, parameter in layer.named_parameters(recurse=False)
        if name not in ("weight", "bias") and parameter.dim() > 0 and parameter.shape[0] == layer.out_channels
    ]


class _MappingBlewUp(RuntimeError):
    """An index mapping produced more indices than any layer holds."""


def unmappable_roots(
    model: nn.Module,
    example_inputs: object,
    ignored: list[nn.Module],
    customized_pruners: dict[type[nn.Module], tp.pruner.BasePruningFunc],
    root_module_types: list[type[nn.Module]],
) -> list[nn.Module]:
    """The layers (of ``root_module_types``, not in ``ignored``) whose channel group Torch-Pruning cannot map: it
    indexes past a layer, multiplies indices through reshapes it misreads (NesT's and Lambda-ResNet's blocks,
    where it would enumerate indices until memory runs out), or goes round a cycle adding dependencies without end
    (FocalNet's modulation, where one gate channel sliced off a linear multiplies all of a map's channels). Kept
    whole, no group starts there. Call within :func:`quirks_handled`."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs, customized_pruners=customized_pruners)
    kinds = tuple(root_module_types)
    roots = [m for m in model.modules() if isinstance(m, kinds) and m in graph.module2node and m not in ignored]
    flatten = index_mapping._FlattenIndexMapping.__call__

    mapped = [0]  # indices mapped for the group being built

    def capped(mapping: index_mapping._FlattenIndexMapping, idxs: list) -> list:
        mapped[0] += len(idxs) * (1 if mapping.reverse else mapping._stride)  # forward, each becomes ``stride``
        if mapped[0] > MAX_MAPPED_INDICES:
            raise _MappingBlewUp
        return flatten(mapping, idxs)

    add_dep = tp.dependency.Group.add_dep
    visits: Counter = Counter()  # (layer, pruning function) -> how often the group being built reached it

    def bounded(group: tp.dependency.Group, dep: tp.Dependency, idxs: list) -> None:
        visits[dep.target, dep.handler] += 1
        if visits[dep.target, dep.handler] > MAX_VISITS:
            raise _MappingBlewUp
        add_dep(group, dep, idxs)

    unmappable = []
    index_mapping._FlattenIndexMapping.__call__ = capped
    tp.dependency.Group.add_dep = bounded
    try:
        for root in roots:
            prune_out, mapped[0] = graph.get_pruner_of_module(root).prune_out_channels, 0
            visits.clear()
            try:
                graph.get_pruning_group(root, prune_out, idxs=list(range(graph.get_out_channels(root))))
            except (_MappingBlewUp, IndexError):
                unmappable.append(root)
    finally:
        index_mapping._FlattenIndexMapping.__call__ = flatten
        tp.dependency.Group.add_dep = add_dep
    return unmappable


def _drop_empty_repeats(node: tp.Node) -> None:
    """Remove the grouped-query mappings that Torch-Pruning gives every 5-d ``expand`` (Hugging Face's repeated
    key/value heads) where the expand repeats no channels (GC ViT's global query, expanded over windows): their
    repeat is 0, and mapping an index through them divides by it."""
    dependencies = [*node.dependencies, *(d for source in node.inputs for d in source.dependencies if d.target == node)]
    for dependency in dependencies:
        mapping = dependency.index_mapping[0]
        if isinstance(mapping, index_mapping._GQAIndexMapping) and mapping.repeat < 1:
            dependency.index_mapping[0] = tp.dependency.constants.INDEX_MAPPING_PLACEHOLDER
