"""Find the linear layers that Torch-Pruning's dependency graph would couple wrongly.

- Linears along tokens: MLP-Mixer's and ResMLP's token mixing and gMLP's spatial gating unit apply an
  ``nn.Linear`` to a transposed sequence. The dependency graph does not follow the transpose: it couples the
  token axis with the channels, so pruning them would cut tokens as if they were channels.
- Fused linears split along their features: Phi-3's ``gate_up_proj`` and timm's ``GluMlp`` chunk one linear's
  output into gate and value on the last axis of ``[batch, tokens, features]``. The dependency graph maps each
  half's channels, but ranks the fused layer's channels as if each stood alone, and indexes past the halves. Split
  into equal chunks, the layer is registered as that many channel groups (the same channels go from every chunk);
  split unequally, it is kept whole.
- Linears read outside their own forward: EVA's attention passes ``qkv.weight`` to ``F.linear`` with a bias it
  assembles, torchvision's Swin its whole attention to a function. The dependency graph learns a layer's channels
  from its forward, so it cuts the features such a linear reads without cutting its weight. Those features stay
  whole: the module that produced them is kept, and so is every layer that writes into the same feature space
  (the residual stream's writers, followed through additions and norms), so that the dependency graph never
  starts a group there (through Swin's window reshapes it enumerates indices until memory runs out).
- The output: its width is the user's (the classes), so the layers writing into it stay whole, wherever the
  model registers them (XLM-R's classification head comes first in its module order, so keeping the last
  registered linear pruned its classes).

This module runs the example input once and follows which axis of every tensor holds the features, so that those
layers can be kept whole.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from .conv1d import is_conv1d
from .task import output_tensors

_SWAPS = {"transpose", "swapaxes", "swapdims"}
_CONVOLUTIONS = {"conv1d", "conv2d", "conv3d"}
_FEATURES_FIRST = _CONVOLUTIONS | {"batch_norm", "group_norm", "instance_norm"}
_SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split"}
_RESHAPES = {"view", "reshape", "pad", "__getitem__"}
_ATTENTION = {"softmax", "scaled_dot_product_attention"}
_CONCATENATIONS = {"cat", "concat", "concatenate"}
_SLICES = {"__getitem__", "narrow"}
_PADS_AND_CROPS = _SLICES | {"pad"}


class _FeatureAxes(TorchFunctionMode):
    """Tracks the feature axis and the feature space of every tensor of one forward pass (where they are known)
    and records what the dependency graph would read wrongly (see the module's docstring)."""

    def __init__(
        self, weights: dict[int, str], writers: dict[int, str], with_layers: set[str], whole_inputs: Collection[str]
    ) -> None:
        super().__init__()
        self.weights = weights  # id of a Linear's weight -> the Linear's name
        self.writers = writers  # id of a Linear's or convolution's weight -> its name
        self.layers = set(writers.values())
        self.with_layers = with_layers  # modules that hold a Linear or convolution (or are one)
        self.whole_inputs = set(whole_inputs)  # modules whose input's feature space stays whole
        self.spaces = _FeatureSpaces()
        self.axes: dict[int, int] = {}  # id of a tensor -> its feature axis, from the front
        self.alive: list[Tensor] = []  # keeps every tracked tensor alive, so that ids are not reused
        self.along_tokens: set[str] = set()
        self.outputs: dict[int, str] = {}  # id of a Linear's output -> the Linear's name
        self.chunks: dict[str, int | None] = {}  # Linears split on their feature axis: equal chunks, or None
        self.running: list[str] = []  # the modules whose forward is running, outermost first (the root not)
        self.producers: dict[int, str] = {}  # id of a module's output -> the innermost module that returned it
        self.read_outside: set[str] = set()  # modules producing the input of a Linear read outside its forward
        self.attention: set[str] = set()  # the innermost modules with layers in which a softmax (or SDPA) runs
        self.off_tokens: set[str] = set()  # those of them normalizing over another length than their input's tokens
        self.tokens: dict[str, int] = {}  # a module's name -> the tokens of its input (``[..., tokens, features]``)
        self.feature_splits: dict[str, tuple[int, ...]] = {}  # a Linear's name -> how its features are first split
        self.multiplied: set[str] = set()  # grouped convolutions with a channel multiplier
        self.shuffled: dict[int, Tensor] = {}  # id of a channel shuffle's intermediate -> the map it shuffles

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _ATTENTION:
            self._note_attention(name, args, kwargs)
        if name in _SPLITS and args and self._axis(args[0]) is not None:
            self._check_split(args, kwargs, out)
        if name in _RESHAPES | {"unflatten"} and args and id(args[0]) in self.outputs and isinstance(out, Tensor):
            self._note_feature_split(self.outputs[id(args[0])], args[0], out)
        if name in _RESHAPES | {"flatten"} and _merges_positions_into_features(args[0], self._axis(args[0]), out):
            self.spaces.keep(args[0])  # Swin's patch merging: the graph maps feature c to 4c..4c+3, not c, C+c, ...
        if name in _SLICES and _slices_features(args[0], self._axis(args[0]), out):
            self.spaces.keep(args[0])  # DPN's residual and dense paths: channel ranges of one convolution's output
        if name == "linear":
            args = tuple(_dims(args, kwargs, ("input", "weight", "bias")))  # F.linear may take them by keyword
            if id(args[1]) in self.weights and isinstance(out, Tensor):
                self.outputs[id(out)] = self.weights[id(args[1])]
                if self.weights[id(args[1])] not in self.running:
                    self.spaces.keep(args[0])
                    if id(args[0]) in self.producers:
                        self.read_outside.add(self.producers[id(args[0])])
        if name in _CONVOLUTIONS:
            self._check_groups(args[0], args[1], _groups(args, kwargs))
            if id(args[1]) not in self.writers and not (self.running and self.running[-1] in self.layers):
                self.spaces.keep(args[0])  # a fixed filter outside any layer (TResNet's anti-aliasing BlurPool)
        if isinstance(out, Tensor):
            axis = self._output_axis(name, args, kwargs, out)
            if axis is not None and 0 <= axis < out.dim():
                self.axes[id(out)] = axis
                self.alive.append(out)
                self._follow_space(name, args, kwargs, out)
            self._follow_shuffle(name, args, out)
        return out

    def _note_feature_split(self, linear: str, source: Tensor, out: Tensor) -> None:
        """The first reshape of ``linear``'s output that splits its features (a ViT's ``qkv`` into
        ``(3, heads, head_dim)``; TinyViT's into ``(heads, 3 * head_dim)``)."""
        kept = source.dim() - 1
        if out.dim() > source.dim() and out.shape[:kept] == source.shape[:kept]:
            self.feature_splits.setdefault(linear, tuple(out.shape[kept:]))

    def enter(self, module: str, args: tuple) -> None:
        """``module``'s forward starts with ``args``: a ``[..., tokens, features]`` input has its tokens noted."""
        self.running.append(module)
        source = args[0] if args else None
        if module in self.whole_inputs and isinstance(source, Tensor):
            self.spaces.keep(source)
        if isinstance(source, Tensor) and source.dim() >= 3 and self._axis(source) == source.dim() - 1:
            self.tokens[module] = source.shape[-2]

    def _follow_shuffle(self, name: str, args: tuple, out: Tensor) -> None:
        """A channels-first map whose channels are split over several axes (see :func:`_splits_channels`): the
        dependency graph cannot follow the regrouped channels, so their space stays whole. ShuffleNet's shuffle
        then transposes the groups and views the map back: that map is in the same space."""
        source = args[0] if args else None
        if name in _RESHAPES and _splits_channels(source, self._axis(source), out):
            self.spaces.keep(source)  # any channel split: the dependency graph follows none
            self.shuffled[id(out)] = source
        elif isinstance(source, Tensor) and id(source) in self.shuffled:
            original = self.shuffled[id(source)]
            if out.shape == original.shape:
                self.axes[id(out)] = self._axis(original)
                self.spaces.join(out, [original])
            else:
                self.shuffled[id(out)] = original
        else:
            return
        self.alive.append(out)

    def _follow_space(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> None:
        """The feature space of ``out``: a layer's own when a Linear or convolution wrote it, else that of the inputs
        it came from (all one space, when an elementwise op joins them: a residual addition)."""
        weight = args[1] if len(args) > 1 else None
        if (name == "linear" or name in _FEATURES_FIRST) and id(weight) in self.writers:
            depthwise = name in _CONVOLUTIONS and _groups(args, kwargs) == weight.shape[0] == args[0].shape[1]
            self.spaces.write(out, self.writers[id(weight)], into=args[0] if depthwise else None)
            return
        if name in _CONCATENATIONS:
            same = [a for a in args[0] if self._axis(a) is not None]
        else:
            same = [a for a in args if self._axis(a) is not None and (a.shape == out.shape or a is args[0])]
        self.spaces.join(out, same)

    def _check_groups(self, source: Tensor, weight: Tensor, groups: int) -> None:
        """A grouped convolution whose groups each make more channels than they read (FastViT's ``conv_kxk``,
        ``groups = in_channels`` and twice as many out): the dependency graph maps its input channels one to one
        onto its outputs, so the features it reads stay whole."""
        if groups > 1 and weight.shape[0] != source.shape[1] and id(weight) in self.writers:
            self.multiplied.add(self.writers[id(weight)])
            self.spaces.keep(source)

    def _note_attention(self, name: str, args: tuple, kwargs: dict) -> None:
        """Note the attention module running; and whether it attends over something else than the tokens it was
        given (XCiT's cross-covariance attention normalizes over each head's channels)."""
        owner = next((module for module in reversed(self.running) if module in self.with_layers), None)
        if owner is None:
            return
        self.attention.add(owner)
        if name == "softmax":
            source, dim = _dims(args, kwargs, ("input", "dim"))
            length = source.shape[-1 if dim is None else dim]
        else:
            length = _dims(args, kwargs, ("query", "key"))[1].shape[-2]
        if owner in self.tokens and length != self.tokens[owner]:
            self.off_tokens.add(owner)

    def _check_split(self, args: tuple, kwargs: dict, parts: tuple[Tensor, ...]) -> None:
        """A split along the features: a fused Linear's chunks (see the module's docstring), or, of any other
        tensor (Res2Net's and CSPNet's convolution outputs), a space kept whole: the dependency graph gives such
        splits one output per consumer, not per chunk, and sizes them from the wrong node."""
        source = args[0]
        dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % source.dim()
        if dim != self._axis(source):
            return
        linear = self.outputs.get(id(source))
        if linear is None:
            self.spaces.keep(source)
            return
        equal = len({part.shape[dim] for part in parts}) == 1 and self.chunks.get(linear, len(parts)) == len(parts)
        self.chunks[linear] = len(parts) if equal else None

    def _axis(self, tensor: Any) -> int | None:
        return self.axes.get(id(tensor)) if isinstance(tensor, Tensor) else None

    def _output_axis(self, name: str, args: tuple, kwargs: dict, out: Tensor) -> int | None:
        if name in _CONCATENATIONS:
            return next((self._axis(a) for a in args[0] if self._axis(a) is not None), None)
        source = args[0] if args else None
        axis = self._axis(source)
        if name == "linear":
            if axis is not None and axis != source.dim() - 1 and id(args[1]) in self.weights:
                self.along_tokens.add(self.weights[id(args[1])])
                return axis  # the features pass through a linear along tokens
            return out.dim() - 1
        if name == "layer_norm":
            return out.dim() - 1
        if name in _FEATURES_FIRST:
            return 1
        if axis is None:
            return next((self._axis(a) for a in args if self._axis(a) is not None and a.shape == out.shape), None)
        if name in _SWAPS:
            first, second = (d % source.dim() for d in _dims(args[1:], kwargs, ("dim0", "dim1")))
            return {first: second, second: first}.get(axis, axis)
        if name == "permute":
            order = kwargs.get("dims") or (args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:])
            return [d % source.dim() for d in order].index(axis)
        if name == "flatten":
            start, end = (d % source.dim() for d in _dims(args[1:], kwargs, ("start_dim", "end_dim"), (0, -1)))
            return axis if axis < start else axis - (end - start) if axis > end else None
        if name in _RESHAPES and axis == source.dim() - 1 and out.shape[-1:] == source.shape[-1:]:
            return out.dim() - 1  # tokens regrouped (Swin's windows, a patch merge's strided slices), features last
        if name in _RESHAPES and out.shape[: axis + 1] == source.shape[: axis + 1]:
            return axis  # positions after the features regrouped (PiT's tokens viewed as a feature map)
        if name in _PADS_AND_CROPS and out.dim() == source.dim() and out.shape[axis] == source.shape[axis]:
            return axis  # a feature map padded or cropped (BlurPool's reflection padding)
        return axis if out.shape == source.shape else None  # elementwise; any other op loses the axis


def _splits_channels(source: Tensor, axis: int | None, out: Any) -> bool:
    """``out`` is a channels-first map ``source`` (``[batch, channels, *spatial]``) with its channel axis split over
    several axes after the batch: a channel shuffle's ``[batch, groups, channels / groups, *spatial]``, or
    EfficientViT's linear attention's ``[batch, heads, 3 * head_dim, positions]``."""
    if axis != 1 or not isinstance(out, Tensor) or source.dim() < 3 or out.shape[0] != source.shape[0]:
        return False
    return any(math.prod(out.shape[1:k]) == source.shape[1] for k in range(3, out.dim() + 1))


def _merges_positions_into_features(source: Any, axis: int | None, out: Any) -> bool:
    """``out`` has the last axes of a features-last ``source`` merged into its features, positions first (timm
    Swin's patch merging, ``[..., 2, 2, C] -> [..., 4 * C]``)."""
    if axis is None or axis != source.dim() - 1 or not isinstance(out, Tensor) or out.dim() >= source.dim():
        return False
    merged = [math.prod(source.shape[k:]) for k in range(source.dim() - 1)]
    return out.shape[-1] > source.shape[-1] and out.shape[-1] in merged


def _slices_features(source: Any, axis: int | None, out: Any) -> bool:
    """``out`` is a range of ``source``'s features and all of its other axes."""
    return (
        axis is not None
        and isinstance(out, Tensor)
        and out.dim() == source.dim()
        and out.shape[axis] < source.shape[axis]
        and all(o == s for i, (o, s) in enumerate(zip(out.shape, source.shape, strict=True)) if i != axis)
    )


def _groups(args: tuple, kwargs: dict) -> int:
    """The ``groups`` of a convolution call."""
    return _dims(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))[-1] or 1


def _dims(args: tuple, kwargs: dict, names: tuple[str, ...], defaults: tuple[int, ...] = ()) -> list[int]:
    """The dimension arguments ``names`` of a call, given by position, keyword or default."""
    defaults = defaults or (None,) * len(names)
    return [args[i] if i < len(args) else kwargs.get(name, defaults[i]) for i, name in enumerate(names)]


class _FeatureSpaces:
    """Which tensors of a forward pass share one space of features (a union-find over spaces), which spaces must
    stay whole, and which layers write into each space."""

    def __init__(self) -> None:
        self.of: dict[int, Hashable] = {}  # id of a tensor -> its space
        self.parent: dict[Hashable, Hashable] = {}
        self.written: dict[str, Hashable] = {}  # a layer's name -> the space its outputs start
        self.kept: list[Hashable] = []

    def write(self, out: Tensor, layer: str, into: Tensor | None = None) -> None:
        """``layer`` wrote ``out``: into a space of its own, or into the space of ``into`` (a depthwise convolution's
        input, whose channels the dependency graph ties one to one to its outputs)."""
        space = self.of.get(id(into), ("written by", layer))
        self.of[id(out)] = self.written.setdefault(layer, space)

    def join(self, out: Tensor, sources: list[Tensor]) -> None:
        spaces = [self.of[id(t)] for t in sources if id(t) in self.of]
        if spaces:
            self.of[id(out)] = spaces[0]
            root = self._root(spaces[0])
            for space in spaces[1:]:
                if self._root(space) != root:
                    self.parent[self._root(space)] = root

    def keep(self, tensor: Tensor) -> None:
        if id(tensor) in self.of:
            self.kept.append(self.of[id(tensor)])

    def writers_of_kept(self) -> set[str]:
        """The layers whose outputs join a space that must stay whole."""
        kept = {self._root(space) for space in self.kept}
        return {layer for layer, space in self.written.items() if self._root(space) in kept}

    def _root(self, space: Hashable) -> Hashable:
        while space in self.parent:
            space = self.parent[space]
        return space


@dataclass(frozen=True)
class Misreadings:
    """What the dependency graph would read wrongly in one model, by module name, in the model's order."""

    along_tokens: list[str]  # linears applied along tokens: kept whole
    chunked: dict[str, int]  # linears split into equal chunks along their features: the number of chunks
    split_unequally: list[str]  # linears split into unequal parts along their features: kept whole
    read_outside: list[str]  # producers of the input of a linear read outside its own forward: kept whole
    multiplied: list[str]  # grouped convolutions whose groups make more channels than they read: kept whole
    stream_writers: list[str]  # layers writing into a space either of the above or the output reads: kept whole
    recurrent: list[str]  # LSTMs, GRUs and RNNs: Torch-Pruning 1.6 cuts an LSTM's hidden units along the wrong
    # axes and counts a bidirectional one's outputs once (Sequencer's), so they are kept whole
    attention: list[str]  # the innermost modules holding layers in whose forward a softmax (or SDPA) runs
    attention_unlike_vit: list[str]  # those of them with a ``qkv`` whose heads are not laid out as a ViT's (see
    # :func:`misreadings`)

    @property
    def kept(self) -> list[str]:
        """The modules pruning keeps whole."""
        return (
            self.along_tokens
            + self.split_unequally
            + self.read_outside
            + self.multiplied
            + self.stream_writers
            + self.recurrent
        )


def misreadings(model: nn.Module, example_inputs: Tensor, whole_inputs: Collection[str] = ()) -> Misreadings:
    """Every kind of misreading in ``model``, found by running ``example_inputs`` once without gradients; the
    feature spaces that the modules named in ``whole_inputs`` read are kept whole too (their writers join
    ``stream_writers``).

    Attention unlike a ViT's: normalized over another length than the tokens it is given (XCiT's cross-covariance
    attention, over each head's channels), or with a ``qkv`` split otherwise than ``(3, heads, head_dim)``."""
    mode = _trace(model, example_inputs, whole_inputs)
    equal = {name: parts for name, parts in mode.chunks.items() if parts is not None}
    return Misreadings(
        along_tokens=_named(model, mode.along_tokens),
        chunked={name: equal[name] for name in _named(model, set(equal))},
        split_unequally=_named(model, set(mode.chunks) - set(equal)),
        read_outside=_named(model, mode.read_outside),
        multiplied=_named(model, mode.multiplied),
        stream_writers=_named(model, mode.spaces.writers_of_kept()),
        recurrent=[name for name, module in model.named_modules() if isinstance(module, nn.RNNBase)],
        attention=_named(model, mode.attention),
        attention_unlike_vit=_named(model, mode.off_tokens | _heads_unlike_vit(mode)),
    )


def _heads_unlike_vit(mode: _FeatureAxes) -> set[str]:
    """Attention modules whose ``qkv`` output is not split as a ViT's, ``(3, heads, head_dim)``: TinyViT's and
    LeViT's lay each head's query, key and value side by side, ``(heads, 3 * head_dim)``."""
    return {owner for owner in mode.attention if mode.feature_splits.get(f"{owner}.qkv", (3,))[0] != 3}


def _trace(model: nn.Module, example_inputs: Tensor, whole_inputs: Collection[str]) -> _FeatureAxes:
    """One forward pass of ``example_inputs`` in eval mode without gradients, the feature axes followed."""
    layers = {name: m for name, m in model.named_modules() if is_layer(m)}
    with_layers = {name for name, m in model.named_modules() if any(is_layer(sub) for sub in m.modules())}
    mode = _FeatureAxes(
        {id(m.weight): name for name, m in layers.items() if isinstance(m, nn.Linear)},
        {id(m.weight): name for name, m in layers.items()},
        with_layers,
        whole_inputs,
    )
    hooks = [hook for name, module in model.named_modules() if name for hook in _record(mode, name, module)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            output = model(example_inputs)
        for tensor in output_tensors(output):
            mode.spaces.keep(tensor)  # the answer's width is the user's: its writers (the classifiers) stay whole
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return mode


def is_layer(module: nn.Module) -> bool:
    """A linear or convolution layer (Hugging Face's ``Conv1D`` included): what pruning cuts channels from."""
    return isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) or is_conv1d(module)


def _record(mode: _FeatureAxes, name: str, module: nn.Module) -> list[RemovableHandle]:
    """Keep ``mode.running`` to the modules whose forward is on the stack, and note ``module`` as the producer of
    its output, unless a module inside it returned the same tensor first."""

    def after(module: nn.Module, args: Any, output: Any) -> None:
        mode.running.pop()
        if isinstance(output, Tensor) and id(output) not in mode.producers:
            mode.producers[id(output)] = name
            mode.alive.append(output)

    return [
        module.register_forward_pre_hook(lambda module, args: mode.enter(name, args)),
        module.register_forward_hook(after),
    ]


def _named(model: nn.Module, found: set[str]) -> list[str]:
    """The modules in ``found``, in the model's order."""
    return [name for name, _ in model.named_modules() if name in found]
