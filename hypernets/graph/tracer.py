"""Trace an ``nn.Module`` into a :class:`ModelIR` without computing or allocating anything.

The forward pass runs under ``FakeTensorMode`` (shapes only, so a 774M-parameter GPT-2 Large on
the ``meta`` device traces in about a second) while a ``TorchFunctionMode`` sees every torch
function call and global module hooks keep the stack of modules being run. Data flow is followed
by tensor identity: a tensor is *tracked* when it is a parameter, a model input, or the result of
a recorded op. Calls on untracked tensors (mask construction, position ids) are not recorded,
which is what plain ``torch.fx`` and autograd walks get wrong or right by accident.

Calls that only move data (view, permute, split, indexing, ...) are not ops; each op records, for every
activation it reads, the op that made it and those calls in between (``Op.views``), which the neuron
graph replays to follow fused and shuffled layouts. Attention may read one parameter, as its mask
(BEiT's relative position bias table).

Two patterns become one op whatever their spelling: a leaf module that normalizes by the root mean
square (``rms_norm``) and a rotary position embedding (``rotary_embedding``). Whatever the forward
writes to the model (caches, buffers, attributes) is undone, so that later real forwards are unchanged.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import types
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode

from .errors import GraphConversionError, InvalidInputError, UnsupportedModuleError, describe_module
from .inputs import Inputs, normalize_inputs
from .ir import ModelIR, Op, ParamInfo, ViewStep
from .vocab import (
    ACTIVATION_MODULE_KEYWORDS,
    ARGUMENT_ROLES,
    FUNCTION_KINDS,
    OP_KINDS,
    PARAMETRIC_KINDS,
    PASS_THROUGH,
)

# Calls that return metadata, never activations: skipped before any bookkeeping.
_METADATA = frozenset(
    {
        "size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "stride", "is_contiguous",
        "ndim", "requires_grad", "is_cuda", "data_ptr", "element_size", "__len__", "__bool__", "__format__",
        "__repr__", "item", "tolist", "grad", "layout",
    }
)  # fmt: skip
_MATMULS = frozenset({"matmul", "mm", "bmm", "__matmul__", "__rmatmul__"})
_POWERS = frozenset({"pow", "__pow__", "square"})
# Pass-through calls that may swap the two axes of a matrix (``W.T``, ``W.transpose(0, 1)``, ...).
_TRANSPOSES = frozenset({"t", "T", "mT", "transpose", "swapaxes", "swapdims", "permute", "movedim"})
# Python-level torch functions that dispatch to a mode as one call but are built from vocabulary ops:
# the recorder runs their body under the mode so that their linears and attention are recorded.
_COMPOSITES = frozenset({"multi_head_attention_forward"})


def _addcmul(input: torch.Tensor, tensor1: torch.Tensor, tensor2: torch.Tensor, *, value: float = 1) -> torch.Tensor:
    product = tensor1 * tensor2
    return input + (product if value == 1 else product * value)


# Fused arithmetic that reads parameters (timm ResMLP's Affine is ``addcmul(beta, alpha, x)``): run as the
# vocabulary ops it fuses, so that each parameter is an operand of its own ``mul`` or ``add``.
_DECOMPOSITIONS = {"addcmul": _addcmul}

# Functions that centre their input: a module using one is not an RMS norm (a LayerNorm written by hand).
_SUBTRACTIONS = frozenset({"sub", "sub_", "__sub__", "__rsub__", "__isub__", "var", "var_mean", "std"})
# Mutable containers of module state that tracing may write to and that are put back afterwards.
_CONTAINERS = (dict, OrderedDict, defaultdict, list, set)
# The function name of a rotary position embedding collapsed into one op (see ``_Recorder._rotary_source``).
ROTARY = "rotary_embedding"
# Data-moving calls that leave every element where it was (dtype, device, copies, dropout): no view step.
_SAME_LAYOUT = frozenset(
    {
        "to", "float", "half", "bfloat16", "double", "type", "type_as", "detach", "clone", "contiguous", "dropout",
        "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "data", "requires_grad_",
    }
)  # fmt: skip
# ``x.view_as(y)`` and friends replay as the call with ``y``'s shape.
_AS_SHAPE = {"view_as": torch.Tensor.view, "reshape_as": torch.Tensor.reshape, "expand_as": torch.Tensor.expand}

# A tag says where a tracked tensor comes from.
_OP, _PARAM, _INDEX = "op", "param", "index"

_registered_modules: dict[type, str] = {}


def register_module(module_class: type[nn.Module], kind: str) -> None:
    """Record every call of ``module_class`` as one op of ``kind``, owning all its parameters.

    This is how a module the tracer cannot see through (custom kernels, einsum with parameters)
    becomes convertible: its inputs, output and parameters are taken at the module boundary.
    """
    if kind not in OP_KINDS:
        raise ValueError(f"unknown op kind {kind!r}; choose one of {', '.join(OP_KINDS)}")
    _registered_modules[module_class] = kind


def trace(model: nn.Module, inputs: Inputs = None) -> ModelIR:
    """Trace ``model`` on example ``inputs`` (see :func:`normalize_inputs`) into a :class:`ModelIR`.

    Works for models on any device including ``meta``; parameters are never read or copied.
    """
    args, kwargs = normalize_inputs(model, inputs)
    recorder = _Recorder(model)
    recorder.add_inputs(args, kwargs)
    quiet = _quiet_fake_tensor_log()  # it logs a traceback for every failed op; the error below says it once
    with quiet, _untouched(model), torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), recorder.hooks():
        try:
            with recorder:
                output = model(*args, **kwargs)
        except GraphConversionError:
            raise
        except Exception as err:
            raise InvalidInputError(
                f"{type(model).__name__} failed on the example inputs ({_describe_inputs(args, kwargs)}) "
                f"in module {recorder.current_module()}: {type(err).__name__}: {err}"
            ) from err
    return recorder.finish(output)


@contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Recorder(TorchFunctionMode):
    """Records ops while the model runs; see the module docstring for the rules."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.param_names = {id(p): name for name, p in model.named_parameters()}
        self.param_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self.module_names = {id(m): name for name, m in model.named_modules()}
        self.stack: list[tuple[nn.Module, str | None, int]] = []  # (module, kind if recorded whole, first op inside)
        self.ops: list[Op] = []
        self.tags: dict[int, tuple[str, Any]] = {}
        self.flipped: set[int] = set()  # ids of tensors that are transposed views of a matrix parameter
        self.chains: dict[int, tuple[ViewStep, ...] | None] = {}  # view steps from the op output a tensor is a view of
        self.alive: list[torch.Tensor] = []  # keeps tagged tensors alive so that ids stay unique

    # -- module stack ---------------------------------------------------------------------------
    @contextmanager
    def hooks(self) -> Iterator[None]:
        pre = nn.modules.module.register_module_forward_pre_hook(self._enter)
        post = nn.modules.module.register_module_forward_hook(self._exit)
        try:
            yield
        finally:
            pre.remove()
            post.remove()

    def _inside_whole_module(self) -> bool:
        return any(kind is not None for _, kind, _ in self.stack)

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        kind = None if self._inside_whole_module() else _whole_module_kind(module)
        self.stack.append((module, kind, len(self.ops)))

    def _exit(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        _, kind, first = self.stack.pop()
        inside = self.ops[first:]
        rms_norm = kind is None and _is_rms_norm(module, inside, output)
        if rms_norm:  # one op; its pow/mean/rsqrt/mul ops stay behind, read by nothing, and are dropped
            kind = "rms_norm"
        if kind is None:
            return
        sources = [("input", t, self._tag(t)) for t in _tensors(args)]
        sources = [s for s in sources if s[2] is not None]
        params = {n: self.param_names[id(p)] for n, p in module.named_parameters()}
        if rms_norm:
            params = {"weight": next(iter(params.values()))}  # whatever the module calls its scale
        op = self._add_op(kind, type(module).__name__, sources, params, output, module)
        if rms_norm and any(o.kind == "add" and o.params and not o.inputs for o in inside):
            op.attrs["weight_offset"] = True  # scales by a constant plus the weight: Gemma's (1 + weight)
        self._tag_all(output, (_OP, op.index))

    def _innermost(self) -> nn.Module:
        """The innermost running module that is part of the model: ops of a wrapper outside it
        (transformers' ``kernels`` hub ``Func`` around ``apply_rotary_pos_emb``) belong to its caller."""
        return next((m for m, _, _ in reversed(self.stack) if id(m) in self.module_names), self.model)

    def current_module(self) -> str:
        module = self._innermost()
        return describe_module(self.module_names[id(module)], type(module).__name__)

    # -- tagging --------------------------------------------------------------------------------
    def add_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """One "input" op per example tensor; integer inputs (token ids) may only reach embeddings."""
        named = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        for name, value in named:
            for tensor in _tensors(value):
                op = self._new_op("input", "input", "", type(self.model).__name__)
                op.out_shape = tuple(tensor.shape)
                op.attrs["argument"] = name
                tag = _OP if tensor.is_floating_point() else _INDEX
                self._tag_all(tensor, (tag, op.index))

    def _tag(self, tensor: torch.Tensor) -> tuple[str, Any] | None:
        name = self.param_names.get(id(tensor))
        if name is not None:
            return (_PARAM, name)
        return self.tags.get(id(tensor))

    def _tag_all(self, value: Any, tag: tuple[str, Any]) -> None:
        for tensor in _tensors(value):
            self.tags[id(tensor)] = tag
            self.chains.pop(id(tensor), None)  # an in-place op's result is its input, now a new op's output
            self.alive.append(tensor)

    # -- the function hook ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _function_name(func)
        if name in _METADATA or self._inside_whole_module():
            return func(*args, **kwargs)
        sources = [(role, t, tag) for role, t in _arguments(name, args, kwargs) if (tag := self._tag(t))]
        if not sources:
            return func(*args, **kwargs)
        if name in _MATMULS:  # whichever side it is on, a parameter operand is the weight
            sources = [("weight" if tag[0] == _PARAM else "input", t, tag) for _, t, tag in sources]
        if name in _COMPOSITES or name in _DECOMPOSITIONS:
            with self:
                body = _DECOMPOSITIONS[name] if name in _DECOMPOSITIONS else _without_dispatch(func)
                return body(*args, **kwargs)
        result = func(*args, **kwargs)
        if name in PASS_THROUGH:
            self._pass_through(func, name, sources[0], result, args, kwargs)
            return result
        kind = self._kind(name, sources)
        if kind != "embedding" and all(tag[0] == _INDEX for _, _, tag in sources):
            return result  # arithmetic on token ids or positions: not part of the network
        params = _unique_roles((role, tag[1]) for role, _, tag in sources if tag[0] == _PARAM)
        if params and kind not in PARAMETRIC_KINDS and not (kind == "attention" and set(params) == {"attn_mask"}):
            module = self._innermost()
            raise UnsupportedModuleError(
                f"module {self.current_module()} uses parameter(s) {', '.join(params.values())} through "
                f"torch function '{name}', which the graph converter cannot represent. Parameters may be "
                f"read by: {', '.join(sorted(PARAMETRIC_KINDS))}. To convert this module anyway, record it "
                f"as one op: hypernets.graph.register_module({type(module).__name__}, kind='linear')"
            )
        rotary = self._rotary_source(sources) if kind == "add" else None
        if rotary is not None:  # x * cos + rotate(x) * sin: one op on x (cos and sin are not tracked)
            op = self._rotary_op(*rotary, result)
        else:
            op = self._add_op(kind, name, sources, params, result, None)
            _annotate(op, name, args, kwargs)
        if kind == "linear":
            op.attrs["weight_layout"] = self._weight_layout(name, sources, args)
            if name in _MATMULS and (args[0] is _weight(sources)) != (name == "__rmatmul__"):
                op.attrs["feature_axis"] = -2  # W @ x: features run along x's rows, and the output's
        elif kind == "attention":
            op.attrs["roles"] = [role for role, _, tag in sources if tag[0] != _PARAM]
        elif kind == "concat" and params:
            op.attrs["pieces"] = self._pieces(args[0] if args else kwargs["tensors"], op.attrs["dim"])
        self._tag_all(result, (_OP, op.index))
        return result

    def _rotary_source(self, sources: list[tuple[str, torch.Tensor, tuple[str, Any]]]) -> tuple[int, str] | None:
        """When ``sources`` are the two terms of a rotary position embedding ``x * cos + rotate(x) * sin``,
        the op computing ``x * cos`` and how ``rotate`` pairs features, else None: "halves" for
        ``cat(-x2, x1)`` of the two halves (HF Llama, Mistral, Qwen2, Gemma, GPT-NeoX, Phi, Falcon),
        "interleaved" for ``stack(-x_odd, x_even)`` flattened (GPT-J, timm EVA)."""
        if len(sources) != 2 or any(tag[0] != _OP for _, _, tag in sources):
            return None
        first, second = (tag[1] for _, _, tag in sources)
        for times_cos, times_sin in ((first, second), (second, first)):
            x, rotated = self._times_constant(times_cos), self._times_constant(times_sin)
            if x is None or rotated is None:
                continue
            cat = self.ops[rotated]
            halves = [self.ops[i] for i in cat.inputs]
            if (
                cat.function in ("cat", "stack")
                and cat.attrs.get("dim") in (-1, len(cat.out_shape) - 1)
                and [op.function in ("neg", "__neg__") for op in halves] == [True, False]
                and halves[0].inputs == [x]
                and cat.inputs[1] == x
            ):
                return times_cos, "halves" if cat.function == "cat" else "interleaved"
        return None

    def _rotary_op(self, times_cos: int, pairs: str, result: torch.Tensor) -> Op:
        """One op reading ``x`` as ``x * cos`` reads it."""
        read = self.ops[times_cos]
        op = self._add_op("other", ROTARY, [], {}, result, None)
        op.inputs, op.in_shapes, op.sources, op.views = (
            list(read.inputs),
            list(read.in_shapes),
            [*read.sources],
            [*read.views],
        )
        op.attrs["pairs"] = pairs
        return op

    def _times_constant(self, index: int) -> int | None:
        """The op of ``x`` when op ``index`` multiplies ``x`` by an untracked tensor or number, else None."""
        op = self.ops[index]
        return op.inputs[0] if op.kind == "mul" and not op.params and len(op.in_shapes) == 1 else None

    def _pieces(self, tensors: Any, dim: int) -> list[tuple[str | None, int]]:
        """Each concatenated tensor as (parameter name or None, its length along ``dim``)."""
        pieces = []
        for tensor in _tensors(tensors):
            tag = self._tag(tensor)
            pieces.append((tag[1] if tag and tag[0] == _PARAM else None, tensor.shape[dim] if tensor.dim() else 1))
        return pieces

    def _pass_through(self, func, name: str, source, result: Any, args: tuple[Any, ...], kwargs) -> None:
        """The result carries its source's identity, and the view steps from the op output it is a view of;
        a view of a matrix parameter also whether it is transposed."""
        _, tensor, tag = source
        chain = self.chains.get(id(tensor), ())
        self._tag_all(result, tag)
        if tag[0] == _OP:
            for item, view in enumerate(_tensors(result)):
                step = None if chain is None else _view_step(func, name, tensor, args, kwargs, result, item)
                self.chains[id(view)] = chain if step == () else None if step is None else (*chain, step)
        if tag[0] != _PARAM:
            return
        flipped = (id(tensor) in self.flipped) != (name in _TRANSPOSES and _swaps_axes(name, tensor, args, kwargs))
        for view in _tensors(result):
            if flipped:
                self.flipped.add(id(view))
            else:
                self.flipped.discard(id(view))

    def _weight_layout(self, name: str, sources, args: tuple[Any, ...]) -> str:
        """Which axis of the stored weight contracts with the input: its second for "out_in".

        ``F.linear(x, W)`` and ``W @ x`` contract the second axis of their argument, ``x @ W`` and
        ``addmm`` the first; a transposed view of the parameter (``x @ W.T``) swaps the answer.
        """
        weight = _weight(sources)
        weight_first = (args[0] is weight) != (name == "__rmatmul__")
        contracts_second = weight_first if name in _MATMULS else name == "linear"
        return "out_in" if contracts_second != (id(weight) in self.flipped) else "in_out"

    def _kind(self, name: str, sources: list[tuple[str, torch.Tensor, tuple[str, Any]]]) -> str:
        if name in _MATMULS and any(tag[0] == _PARAM for _, _, tag in sources):
            return "linear"
        if name in _POWERS and len(sources) == 1 and sources[0][2][0] != _PARAM:
            return "activation"  # a constant power of one activation (StarReLU's squared ReLU)
        return FUNCTION_KINDS.get(name, "other")

    # -- building ops ---------------------------------------------------------------------------
    def _new_op(self, kind: str, function: str, path: str, module_type: str) -> Op:
        op = Op(index=len(self.ops), kind=kind, function=function, module_path=path, module_type=module_type)
        self.ops.append(op)
        return op

    def _add_op(self, kind, function, sources, params, result, module: nn.Module | None) -> Op:
        module = module or self._owning_module(params, self._innermost())
        op = self._new_op(kind, function, self.module_names.get(id(module), ""), type(module).__name__)
        for _, tensor, tag in sources:
            if tag[0] != _PARAM:
                if tag[1] not in op.inputs:
                    op.inputs.append(tag[1])
                op.in_shapes.append(tuple(tensor.shape))
                op.sources.append(tag[1])
                op.views.append(self.chains.get(id(tensor), ()))
        op.params = params
        read = [(tag[1], tensor) for _, tensor, tag in sources if tag[0] == _PARAM]
        sliced = [name for name, tensor in read if tensor.numel() < math.prod(self.param_shapes[name])]
        if sliced:
            op.attrs["sliced"] = sliced  # reads part of a parameter (a split of a fused projection)
        reshaped = {name: tuple(t.shape) for name, t in read if tuple(t.shape) != self.param_shapes[name]}
        if reshaped:
            op.attrs["read_shapes"] = reshaped  # ``b[:, None]``: which axes of the activation a parameter spans
        first = next(_tensors(result), None)
        op.out_shape = tuple(first.shape) if first is not None else ()
        return op

    def _owning_module(self, params: dict[str, str], module: nn.Module) -> nn.Module:
        """The submodule of ``module`` holding all of ``params``, else ``module``: a weight read without
        calling its module (``self_attn.out_proj`` inside ``F.multi_head_attention_forward``) is
        attributed to the module it belongs to."""
        owners = {name.rpartition(".")[0] for name in params.values()}
        prefix = self.module_names.get(id(module), "")
        owner = owners.pop() if len(owners) == 1 else prefix
        if owner == prefix or not owner.startswith(f"{prefix}." if prefix else ""):
            return module
        return self.model.get_submodule(owner)

    def finish(self, output: Any) -> ModelIR:
        """Keep the ops that reach an output, renumber them, and report unread parameters."""
        outputs = [tag[1] for t in _tensors(output) if (tag := self.tags.get(id(t))) and tag[0] == _OP]
        if not outputs:
            raise InvalidInputError(
                f"{type(self.model).__name__} returned no tensor computed from its inputs or parameters"
            )
        live = _ancestors(self.ops, outputs)
        renumber = {old: new for new, old in enumerate(sorted(live))}
        ops = []
        for old in sorted(live):
            op = self.ops[old]
            op.index = renumber[old]
            op.inputs = [renumber[i] for i in op.inputs]
            op.sources = [renumber[i] for i in op.sources]
            ops.append(op)
        parameters = {name: ParamInfo(name, tuple(p.shape), p.dtype) for name, p in self.model.named_parameters()}
        read = {name for op in ops for name in op.params.values()}
        unused = [name for name in parameters if name not in read]
        return ModelIR(type(self.model).__name__, ops, parameters, sorted({renumber[o] for o in outputs}), unused)


def _weight(sources) -> torch.Tensor | None:
    """The tensor read as a weight (None: an untracked weight)."""
    return next((t for role, t, _ in sources if role == "weight"), None)


def _ancestors(ops: list[Op], outputs: list[int]) -> set[int]:
    live, frontier = set(outputs), list(outputs)
    while frontier:
        for parent in ops[frontier.pop()].inputs:
            if parent not in live:
                live.add(parent)
                frontier.append(parent)
    return live


def _annotate(op: Op, name: str, args, kwargs) -> None:
    """Attributes the graph views need: conv grouping, stride and padding, concat axis."""
    if op.kind == "conv":
        op.attrs["groups"] = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        op.attrs["transposed"] = name.startswith("conv_transpose")
        rank = (args[1] if len(args) > 1 else kwargs["weight"]).dim() - 2
        for position, key, default in ((3, "stride", 1), (4, "padding", 0)):
            op.attrs[key] = _per_axis(kwargs.get(key, args[position] if len(args) > position else default), rank)
    elif op.kind == "concat":
        op.attrs["dim"] = kwargs.get("dim", args[1] if len(args) > 1 else 0)


def _view_step(func, name: str, tensor: torch.Tensor, args, kwargs, result: Any, item: int) -> ViewStep | tuple | None:
    """How to replay data-moving call ``name`` on ``tensor`` to get element ``item`` of its result:
    ``()`` when it moves nothing, None when it cannot be replayed (it reads another activation, or
    values only the traced run had)."""
    if name in _SAME_LAYOUT:
        return ()
    if not args or args[0] is not tensor:
        return None
    rest = args[1:]
    if name in _AS_SHAPE:
        return ViewStep(_AS_SHAPE[name], (tuple(rest[0].shape),))
    if any(isinstance(t, FakeTensor) or t.is_meta for t in _tensors((list(rest), kwargs))):
        return None
    if name == "pad":  # padded positions hold no feature: -1, never a node id
        rest, kwargs = rest[:1], {"mode": kwargs.get("mode", rest[1] if len(rest) > 1 else "constant"), "value": -1}
        if kwargs["mode"] != "constant":
            return None
    return ViewStep(func, tuple(rest), dict(kwargs), item if isinstance(result, list | tuple) else None)


def _per_axis(value: Any, rank: int) -> tuple[int, ...] | str:
    """A conv's stride or padding as one int per spatial axis (padding may also be "same" or "valid")."""
    if isinstance(value, str):
        return value
    return (value,) * rank if isinstance(value, int) else tuple(value)


def _whole_module_kind(module: nn.Module) -> str | None:
    """Registered modules and parameter-free activation modules are recorded as a single op."""
    for cls in type(module).__mro__:
        if cls in _registered_modules:
            return _registered_modules[cls]
    if next(module.children(), None) is not None or next(module.parameters(), None) is not None:
        return None
    class_name = type(module).__name__.lower()
    return next((kind for key, kind in ACTIVATION_MODULE_KEYWORDS if key in class_name), None)


def _is_rms_norm(module: nn.Module, ops: list[Op], output: Any) -> bool:
    """Whether a leaf module with one vector parameter normalized by the root mean square.

    Read from the ops it ran, not its class name, so every spelling matches (HF Llama, Mistral,
    Qwen2 and Gemma ``RMSNorm``, ``T5LayerNorm``, timm ``RmsNorm``): a mean of squares and a
    (reciprocal) square root, or a vector norm, and nothing that centres (a hand-written LayerNorm).
    """
    params = list(module.parameters())
    first = next(_tensors(output), None)
    if next(module.children(), None) is not None or len(params) != 1 or first is None or first.dim() == 0:
        return False
    if params[0].dim() != 1 or params[0].numel() != first.shape[-1]:
        return False
    functions = {op.function for op in ops}
    mean_square = "mean" in functions and functions & {"pow", "square"} and functions & {"rsqrt", "sqrt"}
    return bool(mean_square or functions & {"norm", "normalize", "vector_norm"}) and not functions & _SUBTRACTIONS


def _function_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):  # attribute access, e.g. Tensor.shape or Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor argument with its role: named for known parametric functions, else "operand"."""
    roles = ARGUMENT_ROLES.get(name) or ARGUMENT_ROLES.get(FUNCTION_KINDS.get(name, ""), ())
    for i, value in enumerate(args):
        role = roles[i] if i < len(roles) else "operand"
        for tensor in _tensors(value):
            yield role, tensor
    for key, value in kwargs.items():
        for tensor in _tensors(value):
            yield key, tensor


def _swaps_axes(name: str, tensor: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether transpose-like call ``name`` on ``tensor`` exchanges the two axes of a matrix."""
    if tensor.dim() != 2:
        return False
    if name in ("t", "T", "mT"):
        return True
    dims = [d % 2 for d in _integers((*args[1:], *kwargs.values()))]
    if name == "permute":
        return dims[:1] == [1]
    return len(dims) >= 2 and dims[0] != dims[1]


def _integers(values: Any) -> Iterator[int]:
    for value in values:
        if isinstance(value, int):
            yield value
        elif isinstance(value, list | tuple | torch.Size):
            yield from _integers(value)


@functools.cache
def _without_dispatch(func: Any) -> Any:
    """A copy of Python torch function ``func`` whose own ``has_torch_function`` check is off.

    ``func`` hands itself to the active mode whole; its copy runs its body instead, so every torch
    call inside it (linear, attention, ...) reaches the mode and is recorded.
    """
    namespace = {**func.__globals__, "has_torch_function": lambda _: False}
    copy = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    return copy


def _unique_roles(pairs) -> dict[str, str]:
    params: dict[str, str] = {}
    for role, name in pairs:
        key, n = role, 1
        while key in params:
            key, n = f"{role}{n}", n + 1
        params[key] = name
    return params


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _describe_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [f"arg{i}: {_shape_of(a)}" for i, a in enumerate(args)]
    parts += [f"{k}: {_shape_of(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) or "none"


def _shape_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}".replace("torch.", "")
    return type(value).__name__


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Trace in eval mode (no batch-norm statistics updates, no dropout) and leave the model as it was.

    The traced forward is a real forward on fake tensors: a module that caches in eval mode (timm
    LeViT's attention biases), sets a buffer or records anything in an attribute would keep a
    FakeTensor and compute with it from then on. Every module attribute, and the contents of every
    dict, list and set reachable from them (``_parameters``, ``_buffers``, caches), is put back.
    """
    saved: dict[int, tuple[Any, Any]] = {}
    for module in model.modules():
        _snapshot(vars(module), saved)
    model.eval()
    try:
        yield
    finally:
        for container, content in saved.values():
            container.clear()
            (container.extend if isinstance(container, list) else container.update)(content)


def _snapshot(value: Any, saved: dict[int, tuple[Any, Any]]) -> None:
    """A shallow copy of ``value`` and of each container inside it, keyed by identity."""
    if id(value) in saved:
        return
    if type(value) in _CONTAINERS:
        saved[id(value)] = (value, copy.copy(value))
    elif not isinstance(value, tuple):
        return
    for item in value.values() if isinstance(value, dict) else value:
        _snapshot(item, saved)
