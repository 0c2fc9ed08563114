"""Structural pruning to a FLOPs or parameter target with Torch-Pruning's DependencyGraph.

Whole channels (and, for timm ViTs, whole attention heads and MLP channels) are removed physically, so the pruned
network is a smaller dense network that really runs faster. The DependencyGraph keeps coupled layers consistent
(residual adds, BatchNorm, concatenations); this module only chooses how much to prune and by which criterion.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn
from tqdm import tqdm

from .consistency import (
    PrunedModelBrokenError,
    answer_shapes,
    check_answer_shapes,
    naming_breakage,
    parameter_shapes,
    sync_size_attributes,
)
from .conv1d import Magnitude, customized_pruners, pruner_options
from .copying import copy_model
from .finetune import GradHook, finetune
from .measure import count_macs_params
from .token_mixing import Misreadings, is_layer, misreadings
from .tp_quirks import map_chunks, quirks_handled, refresh_split_offsets, unmappable_roots

Method = Literal["group_norm", "l1", "random"]
METHODS: tuple[str, ...] = ("group_norm", "l1", "random")
Counter = Literal["macs", "flops"]
Layers = Sequence[nn.Module | str]
MAX_REPAIRED = 64  # modules kept whole after pruned copies broke in them, before the failure is the user's to see


class ImpossibleTargetError(ValueError):
    """The architecture cannot be pruned to the target: every group keeps a channel and ignored layers stay whole."""

    def __init__(self, target: str, value: float, best: float) -> None:
        super().__init__(
            f"cannot prune to {target} {value:g}x: the best reachable is {best:.3g}x "
            "(each channel group keeps a channel; ignored layers, such as the classifier, and attention heads' "
            "channels stay whole)"
        )
        self.target = target
        self.value = value
        self.best = best


class NonFiniteWeightError(ValueError):
    """A NaN or infinite weight: magnitude importance would be meaningless, so pruning refuses to rank it."""


@dataclass
class PruneResult:
    """The pruned copy and its cost against the original: Torch-Pruning's MACs, and every op's FLOPs when the
    target was counted in FLOPs."""

    model: nn.Module
    method: str
    base_macs: int
    macs: int
    base_params: int
    params: int
    steps: int
    base_flops: int | None = None
    flops: int | None = None
    repaired: tuple[str, ...] = ()  # modules kept whole, with the features they read, after a pruned copy broke there

    @property
    def speedup(self) -> float:
        """The speed-up the target was counted in: FLOPs when counted, else MACs."""
        return self.base_flops / self.flops if self.flops else self.macs_speedup

    @property
    def macs_speedup(self) -> float:
        """Torch-Pruning's count, which hooks modules only (attention matmuls are not in it)."""
        return self.base_macs / self.macs

    @property
    def param_ratio(self) -> float:
        return self.base_params / self.params

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, for JSON reports."""
        return {
            "method": self.method,
            "base_macs": self.base_macs,
            "macs": self.macs,
            "base_flops": self.base_flops,
            "flops": self.flops,
            "base_params": self.base_params,
            "params": self.params,
            "speedup": self.speedup,
            "macs_speedup": self.macs_speedup,
            "param_ratio": self.param_ratio,
            "steps": self.steps,
            "repaired": list(self.repaired),
        }


def importance(method: Method) -> tp.importance.Importance:
    """The channel-ranking criterion of each method.

    ``group_norm`` is DepGraph's L2 norm over every coupled layer of a group; ``l1`` is the classic filter L1 norm
    of the group's first layer (Li et al., 2017); ``random`` is the baseline every criterion must beat. Scores are
    mean-normalized per group so that global pruning can compare layers.
    """
    if method == "group_norm":
        return Magnitude(p=2, group_reduction="mean", normalizer="mean")
    if method == "l1":
        return Magnitude(p=1, group_reduction="first", normalizer="mean")
    if method == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


def prune(
    model: nn.Module,
    example_inputs: Tensor,
    *,
    speedup: float | None = None,
    param_ratio: float | None = None,
    method: Method = "group_norm",
    ignored_layers: Layers | None = None,
    keep: Sequence[str] = (),
    global_pruning: bool = False,
    head_ratio: float = 0.0,
    head_dims: bool = False,
    steps: int = 100,
    counter: Counter = "macs",
    seed: int = 0,
    progress: bool = False,
) -> PruneResult:
    """Prune a copy of ``model`` until it meets every given target; ``model`` itself is left untouched.

    Pruning is progressive (as in DepGraph's benchmarks): the channel pruning ratio of every layer grows by
    ``1 / steps`` per step, importance is re-estimated each step, and pruning stops at the first step whose MACs
    (and parameters) meet the targets, so it overshoots by at most one step.

    When a pruned copy no longer runs, the module it fails in is found (some attention sizes its heads or output
    from its input's width, as MetaFormer's, NesT's and lambda layers do), and pruning starts again with every module
    of that class, and the features they read, kept whole (``PruneResult.repaired`` names them).

    Args:
        model: the network; its parameters must be finite.
        example_inputs: a batch the model accepts, used to trace the dependency graph and count MACs.
        speedup: required ``base / pruned`` cost in ``counter``'s count, at least 1.
        param_ratio: required ``base_params / params``, at least 1.
        method: channel ranking, see :func:`importance`.
        ignored_layers: modules (or their names in ``model``) never pruned; default the classifier (the last
            ``nn.Linear`` or convolution, whose outputs are the logits), token embeddings, and the projections of
            attention layers other than timm's (Hugging Face decoders: their heads, grouped KV and rotary
            embeddings tie q, k, v and o together, so only their MLPs are pruned). A given list replaces the
            default, so it should include the classifier.
        keep: names of modules also kept whole, beside ``ignored_layers`` or the default (a module a failure of
            the pruned model names).
        global_pruning: rank channels across layers instead of pruning every layer by the same fraction.
        head_ratio: for timm ViTs, the fraction of attention heads removed from every attention layer before channel
            pruning (rounded up, at least one head kept).
        head_dims: for timm ViTs, also prune channels inside heads, the same ones in every head of a layer (as
            Torch-Pruning's timm example does), so that attention shrinks with the MLPs; off, heads keep their size.
        steps: granularity of the progressive schedule; with at least as many steps as the widest layer has
            channels, the last step leaves one channel per group, so a target it misses is out of reach.
        counter: what ``speedup`` counts: ``"macs"``, Torch-Pruning's module-hook count, or ``"flops"``, every op
            as :func:`metaprune.flops.count_flops` sees it (attention matmuls included), as users count them.
        seed: seeds random importance; the caller's RNG is left as it was.
        progress: show a progress bar over the schedule's steps (it stops early once the targets are met).

    Raises:
        ImpossibleTargetError: no step of the schedule reaches a target.
        PrunedModelBrokenError: the pruned model no longer runs, and keeping the module it fails in whole did not
            help (the message names the module).
        NonFiniteWeightError: a parameter or buffer of ``model`` holds NaN or infinity.
    """
    targets = {"speedup": speedup, "param_ratio": param_ratio}
    if all(value is None for value in targets.values()):
        raise ValueError("prune needs a target: speedup and/or param_ratio")
    for name, value in targets.items():
        if value is not None and not value >= 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not 0 <= head_ratio < 1:
        raise ValueError(f"head_ratio must be in [0, 1), got {head_ratio}")
    if head_dims and not attention_modules(model):
        raise ValueError("head_dims needs a model with timm-style attention layers (.qkv, .proj and .num_heads)")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    check_finite(model)
    options = dict(
        speedup=speedup,
        param_ratio=param_ratio,
        method=method,
        ignored_layers=ignored_layers,
        keep=keep,
        global_pruning=global_pruning,
        head_ratio=head_ratio,
        head_dims=head_dims,
        steps=steps,
        counter=counter,
        seed=seed,
        progress=progress,
    )
    repaired: list[str] = []
    while True:
        try:
            return _prune_copy(model, example_inputs, repaired=repaired, **options)
        except PrunedModelBrokenError as broken:
            same_kind = [name for name in _same_kind(model, broken.module) if name not in repaired]
            if not same_kind or len(repaired) >= MAX_REPAIRED:
                raise
            repaired += same_kind


def _same_kind(model: nn.Module, name: str | None) -> list[str]:
    """The modules of ``model`` of the same class as the one named ``name``, in the model's order; none when
    ``name`` is None or a layer (a layer fails on inputs that something before it shaped wrongly: keeping every
    layer of its class whole would leave nothing to prune)."""
    if name is None or is_layer(model.get_submodule(name)):
        return []
    kind = type(model.get_submodule(name))
    return [other for other, module in model.named_modules() if type(module) is kind]


def _prune_copy(
    model: nn.Module,
    example_inputs: Tensor,
    *,
    speedup: float | None,
    param_ratio: float | None,
    method: Method,
    ignored_layers: Layers | None,
    keep: Sequence[str],
    global_pruning: bool,
    head_ratio: float,
    head_dims: bool,
    steps: int,
    counter: Counter,
    seed: int,
    progress: bool,
    repaired: Sequence[str],
) -> PruneResult:
    """One attempt of :func:`prune`, with the modules named in ``repaired`` and the feature spaces they read kept
    whole."""
    imp = importance(method)
    pruned = copy_model(model)
    with _without_cache(pruned):
        shapes, answers = parameter_shapes(pruned), answer_shapes(pruned, example_inputs)
        base_macs, base_params = count_macs_params(pruned, example_inputs)
        base_cost = _cost(pruned, example_inputs, counter, base_macs)

        def reached(cost: int, params: int) -> bool:
            return (speedup is None or base_cost >= speedup * cost) and (
                param_ratio is None or base_params >= param_ratio * params
            )

        with torch.random.fork_rng(devices=[]), torch.enable_grad(), quirks_handled():
            torch.manual_seed(seed)
            ignored, chunked = _layers(model, pruned, example_inputs, ignored_layers, keep, repaired)
            if head_ratio > 0:
                _prune_heads(pruned, example_inputs, imp, ignored, head_ratio)
            with _naming_torch_pruning("building the dependency graph"):
                pruner = _pruner(
                    pruned,
                    example_inputs,
                    imp,
                    ignored,
                    chunked,
                    global_pruning=global_pruning,
                    head_dims=head_dims,
                    steps=steps,
                )
            macs, params = count_macs_params(pruned, example_inputs)
            cost = _cost(pruned, example_inputs, counter, macs)
            bar = tqdm(total=steps, desc="prune", disable=not progress, leave=False)
            while not reached(cost, params) and pruner.current_step < steps:
                with _naming_torch_pruning(f"pruning step {pruner.current_step + 1} of {steps}"):
                    pruner.step()
                refresh_split_offsets(pruner.DG)
                if head_dims:  # heads lost channels: their size follows qkv's
                    for attn in attention_modules(pruned):
                        set_num_heads(attn, attn.num_heads)
                shapes = sync_size_attributes(pruned, shapes)
                bar.update()
                with naming_breakage(pruned, example_inputs):
                    macs, params = count_macs_params(pruned, example_inputs)
                    cost = _cost(pruned, example_inputs, counter, macs)
            bar.close()
            check_answer_shapes(pruned, example_inputs, answers)
    pruned.train(model.training)  # tracing leaves the model in eval mode
    if speedup is not None and base_cost < speedup * cost:
        raise ImpossibleTargetError("speedup", speedup, base_cost / cost)
    if param_ratio is not None and base_params < param_ratio * params:
        raise ImpossibleTargetError("param_ratio", param_ratio, base_params / params)
    flops = (base_cost, cost) if counter == "flops" else (None, None)
    return PruneResult(
        pruned, method, base_macs, macs, base_params, params, pruner.current_step, *flops, repaired=tuple(repaired)
    )


def _cost(model: nn.Module, example_inputs: Tensor, counter: Counter, macs: int) -> int:
    """The count a speed-up target is in (``macs``, already counted, or every op's FLOPs)."""
    if counter == "macs":
        return macs
    from .flops import count_flops

    return count_flops(model, example_inputs)


@contextmanager
def _naming_torch_pruning(stage: str) -> Iterator[None]:
    """Say in the traceback of an error raised by Torch-Pruning where it failed and the usual cause; it stays an
    internal error (exit 3), since a layer the dependency graph couples wrongly is a bug to report, not bad input."""
    try:
        yield
    except Exception as err:
        err.add_note(
            f"metaprune: Torch-Pruning failed while {stage}; the usual cause is a layer its dependency graph couples "
            "with channels that do not match (such as a layer applied along a non-feature axis): keep it whole "
            "with ignored_layers, and report the model"
        )
        raise


@contextmanager
def _without_cache(model: nn.Module) -> Iterator[None]:
    """Turn off a Hugging Face model's KV cache while Torch-Pruning traces it (a cache in the outputs breaks the
    trace), and restore the setting after."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if previous is None:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = previous


def sparse_regularizer(
    model: nn.Module,
    example_inputs: Tensor,
    *,
    reg: float = 5e-4,
    alpha: float = 4.0,
    ignored_layers: Layers | None = None,
) -> GradHook:
    """A gradient hook that pushes whole channel groups of ``model`` towards zero (DepGraph's group sparsity).

    Call it between ``backward`` and the optimizer step (``finetune(..., after_backward=hook)``); groups that the
    regularizer shrinks are then the ones ``prune(method="group_norm")`` removes. Within a group, the penalty of a
    channel grows from ``reg`` to ``reg * 2**alpha`` the weaker it is, so weak channels are driven to zero faster.

    Raises (from the hook):
        FloatingPointError: the regularized gradient holds NaN or infinity, naming the parameter.
    """
    was_training = model.training
    with torch.enable_grad(), _without_cache(model), quirks_handled():
        ignored, chunked = _layers(model, model, example_inputs, ignored_layers)
        pruner = tp.pruner.GroupNormPruner(
            model,
            example_inputs,
            importance("group_norm"),
            reg=reg,
            ignored_layers=ignored,
            num_heads=_attention_heads(model),
            in_channel_groups={},
            out_channel_groups=chunked,
            **pruner_options(),
        )
        map_chunks(pruner.DG, chunked)
    model.train(was_training)

    def hook(module: nn.Module) -> None:
        # GroupNormPruner ignores its own ``alpha`` argument and reads regularize's, so pass it here.
        pruner.regularize(module, alpha=2**alpha)
        for name, param in module.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise FloatingPointError(
                    f"sparsity regularization produced a non-finite gradient for {name!r}: Torch-Pruning's penalty "
                    "divides by the spread of a group's channel norms, which is zero when they are all equal "
                    "(e.g. a single-channel group)"
                )

    return hook


def sparse_train(
    model: nn.Module,
    example_inputs: Tensor,
    dataset: torch.utils.data.Dataset,
    *,
    steps: int,
    reg: float = 5e-4,
    ignored_layers: Layers | None = None,
    **finetune_kwargs: Any,
) -> list[float]:
    """Train ``model`` in place with the group sparsity regularizer: the first half of DepGraph's method (b),
    followed by ``prune(method="group_norm")``. Returns the loss curve; other options go to :func:`finetune`."""
    hook = sparse_regularizer(model, example_inputs, reg=reg, ignored_layers=ignored_layers)
    return finetune(model, dataset, steps=steps, after_backward=hook, **finetune_kwargs)


def check_finite(model: nn.Module) -> None:
    """Raise :class:`NonFiniteWeightError` naming the first parameter or buffer that holds NaN or infinity."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in named:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise NonFiniteWeightError(
                    f"{kind} {name!r} has {bad} NaN or infinite value(s) out of {tensor.numel()}; "
                    "repair or retrain the model before pruning"
                )


def _pruner(
    model: nn.Module,
    example_inputs: Tensor,
    imp: tp.importance.Importance,
    ignored: list[nn.Module],
    chunked: dict[nn.Module, int],
    *,
    global_pruning: bool,
    head_dims: bool,
    steps: int,
) -> tp.pruner.BasePruner:
    """A progressive channel pruner; attention heads are registered so that they are never cut apart: their
    channels are left alone, or with ``head_dims`` the same channels go from every head. Fused linears split into
    ``chunked[linear]`` equal chunks lose the same channels from every chunk.

    The group dictionaries are passed fresh: BasePruner's defaults are shared mutable dicts that it writes to.
    """
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs,
        imp,
        pruning_ratio=1.0,
        iterative_steps=steps,
        global_pruning=global_pruning,
        ignored_layers=ignored,
        num_heads=_attention_heads(model),
        prune_num_heads=False,
        prune_head_dims=head_dims,
        in_channel_groups={},
        out_channel_groups=dict(chunked),
        **pruner_options(),
    )
    map_chunks(pruner.DG, chunked)
    return pruner


def _prune_heads(
    model: nn.Module, example_inputs: Tensor, imp: tp.importance.Importance, ignored: list[nn.Module], ratio: float
) -> None:
    """Remove the ``ceil(ratio * heads)`` least important whole heads from every attention layer.

    Heads are ranked and removed through the DependencyGraph directly rather than by BasePruner: its local head
    pruning runs only inside a scope that also prunes channels (``if n_pruned > 0``), and iterative steps apply the
    cumulative ratio to the heads already left, removing at least one head per step.
    """
    layers = [m for m in attention_modules(model) if m.qkv not in ignored and m.proj not in ignored]
    if not layers:
        raise ValueError("head_ratio needs a model with timm-style attention layers (.qkv, .proj and .num_heads)")
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example_inputs, customized_pruners=customized_pruners()
    )
    for attn in layers:
        heads, dim = attn.num_heads, attn.head_dim
        removed = math.ceil(ratio * heads)
        if removed >= heads:
            raise ValueError(f"head_ratio {ratio} would remove all {heads} heads of an attention layer")
        # The output projection's input channels are head-major; the graph maps them onto q, k and v.
        group = graph.get_pruning_group(attn.proj, tp.prune_linear_in_channels, list(range(heads * dim)))
        head_scores = imp(group).view(heads, dim).mean(dim=1)
        drop = torch.topk(head_scores, removed, largest=False).indices.tolist()
        idxs = [head * dim + i for head in sorted(drop) for i in range(dim)]
        graph.get_pruning_group(attn.proj, tp.prune_linear_in_channels, idxs).prune()
        set_num_heads(attn, heads - removed)


def set_num_heads(attn: nn.Module, num_heads: int) -> None:
    """Tell a timm attention layer that its (already resized) ``qkv`` and ``proj`` hold ``num_heads`` heads; their
    size follows. A new head size also sets the softmax scale to ``head_dim ** -0.5``, which is what fused attention
    (``scaled_dot_product_attention``) uses whatever ``scale`` says, so both of timm's paths compute the same.
    Layers that keep no ``head_dim`` (Swin's, which reshape with -1) get it for the record."""
    head_dim = attn.qkv.weight.shape[0] // (3 * num_heads)
    if head_dim != getattr(attn, "head_dim", head_dim) and hasattr(attn, "scale"):
        attn.scale = head_dim**-0.5
    attn.num_heads, attn.head_dim, attn.attn_dim = num_heads, head_dim, num_heads * head_dim


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The timm-style attention layers of ``model`` (see :func:`is_attention`)."""
    return [m for m in model.modules() if is_attention(m)]


def is_attention(module: nn.Module) -> bool:
    """timm-style attention: a fused ``qkv`` Linear split into queries, keys and values of one width, each in
    ``num_heads`` heads, the values merged back by a ``proj`` Linear (not EfficientFormer's, whose values are
    wider than its keys)."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    return (
        isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
        and qkv.out_features == 3 * proj.in_features
        and isinstance(getattr(module, "num_heads", None), int)
        and all(m is qkv or m is proj for m in module.modules() if is_layer(m))
    )


def _kept_by_default(model: nn.Module, misread: Misreadings) -> list[nn.Module | str]:
    """The classifier (the last linear or convolution, whose outputs are the logits), token embeddings (their width
    is the residual stream's) and the projections and convolutions inside the attention modules that are not timm's
    ViT attention (see :func:`metaprune.token_mixing.misreadings`): such layers split and merge heads (and reduce
    tokens, as PVT's ``sr``; mix heads, as CaiT's talking heads; attend across each head's channels, as XCiT's and
    EdgeNeXt's cross-covariance attention; interleave queries, keys and values per head, as TinyViT's) in ways the
    dependency graph cannot follow (CoAtNet's ``Attention2d`` makes it enumerate indices until memory runs out)."""
    modules = dict(model.named_modules())
    classifier = [name for name, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not classifier:
        raise ValueError("found no Linear or convolution to keep as the classifier; pass ignored_layers")
    embeddings = [name for name, module in modules.items() if isinstance(module, nn.Embedding)]
    return [classifier[-1], *embeddings] + [
        layer  # a module, not a name: it may be registered elsewhere first (CoaT shares its positional encodings)
        for name in misread.attention
        if not is_attention(modules[name]) or name in misread.attention_unlike_vit
        for layer in modules[name].modules()
        if is_layer(layer)
    ]


def _attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Torch-Pruning's key for each attention layer's heads: timm's ``qkv``, or ``nn.MultiheadAttention`` itself
    (torchvision's ViT), whose ``embed_dim`` must stay a multiple of its heads."""
    mha = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return {m.qkv: m.num_heads for m in attention_modules(model)} | mha


def _layers(
    original: nn.Module,
    target: nn.Module,
    example_inputs: Tensor,
    layers: Layers | None,
    keep: Sequence[str] = (),
    repaired: Sequence[str] = (),
) -> tuple[list[nn.Module], dict[nn.Module, int]]:
    """The modules of ``target`` kept whole: ``layers`` (default :func:`_kept_by_default`), ``keep``, ``repaired``
    with every layer writing into the feature spaces they read, and, always, those the dependency graph would read
    wrongly or cannot map (see :func:`metaprune.tp_quirks.unmappable_roots`); and its fused linears, by their number
    of equal chunks (see :mod:`metaprune.token_mixing`). Call within ``torch.enable_grad()`` and
    :func:`metaprune.tp_quirks.quirks_handled`."""
    misread = misreadings(original, example_inputs, whole_inputs=repaired)
    if layers is None:
        layers = _kept_by_default(original, misread)
    kept = (layers, misread.kept, list(keep), list(repaired))
    ignored = [m for names in kept for m in _resolve_layers(original, target, names)]
    with _naming_torch_pruning("building the dependency graph"):
        ignored += unmappable_roots(target, example_inputs, ignored, **pruner_options())
    fused = _resolve_layers(original, target, list(misread.chunked))
    return ignored, dict(zip(fused, misread.chunked.values(), strict=True))


def _resolve_layers(original: nn.Module, target: nn.Module, layers: Layers) -> list[nn.Module]:
    """Map modules of ``original`` (or names) onto the same-named modules of ``target`` (a deepcopy or itself)."""
    names = {id(module): name for name, module in original.named_modules()}
    modules = dict(target.named_modules())
    resolved = []
    for layer in layers:
        name = layer if isinstance(layer, str) else names.get(id(layer))
        if name is None or name not in modules:
            raise ValueError(f"{layer!r} is not a submodule of the model, so it cannot be kept whole")
        resolved.append(modules[name])
    return resolved
