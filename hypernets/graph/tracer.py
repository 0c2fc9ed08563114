"""Trace an ``nn.Module`` into a :class:`ModelIR` without computing or allocating anything.

The forward pass runs under ``FakeTensorMode`` (shapes only, so a 774M-parameter GPT-2 Large on
the ``meta`` device traces in about a second) while a ``TorchFunctionMode`` sees every torch
function call and global module hooks keep the stack of modules being run. Data flow is followed
by tensor identity: a tensor is *tracked* when it is a parameter, a model input, or the result of
a recorded op. Calls on untracked tensors (mask construction, position ids) are not recorded,
which is what plain ``torch.fx`` and autograd walks get wrong or right by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from .errors import GraphConversionError, InvalidInputError, UnsupportedModuleError, describe_module
from .inputs import Inputs, normalize_inputs
from .ir import ModelIR, Op, ParamInfo
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
    with _eval_mode(model), torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), recorder.hooks():
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


class _Recorder(TorchFunctionMode):
    """Records ops while the model runs; see the module docstring for the rules."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.param_names = {id(p): name for name, p in model.named_parameters()}
        self.module_names = {id(m): name for name, m in model.named_modules()}
        self.stack: list[tuple[nn.Module, str | None]] = []  # (module, kind if recorded whole)
        self.ops: list[Op] = []
        self.tags: dict[int, tuple[str, Any]] = {}
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
        return any(kind is not None for _, kind in self.stack)

    def _enter(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        kind = None if self._inside_whole_module() else _whole_module_kind(module)
        self.stack.append((module, kind))

    def _exit(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        _, kind = self.stack.pop()
        if kind is None:
            return
        sources = [("input", t, self._tag(t)) for t in _tensors(args)]
        sources = [s for s in sources if s[2] is not None]
        params = {n.rsplit(".", 1)[-1]: self.param_names[id(p)] for n, p in module.named_parameters()}
        op = self._add_op(kind, type(module).__name__, sources, params, output, module)
        self._tag_all(output, (_OP, op.index))

    def current_module(self) -> str:
        module = self.stack[-1][0] if self.stack else self.model
        return describe_module(self.module_names.get(id(module), "?"), type(module).__name__)

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
        result = func(*args, **kwargs)
        if name in PASS_THROUGH:
            self._tag_all(result, sources[0][2])
            return result
        kind = self._kind(name, sources)
        if kind != "embedding" and all(tag[0] == _INDEX for _, _, tag in sources):
            return result  # arithmetic on token ids or positions: not part of the network
        params = _unique_roles((role, tag[1]) for role, _, tag in sources if tag[0] == _PARAM)
        if params and kind not in PARAMETRIC_KINDS:
            module = self.stack[-1][0] if self.stack else self.model
            raise UnsupportedModuleError(
                f"module {self.current_module()} uses parameter(s) {', '.join(params.values())} through "
                f"torch function '{name}', which the graph converter cannot represent. Parameters may be "
                f"read by: {', '.join(sorted(PARAMETRIC_KINDS))}. To convert this module anyway, record it "
                f"as one op: hypernets.graph.register_module({type(module).__name__}, kind='linear')"
            )
        op = self._add_op(kind, name, sources, params, result, None)
        _annotate(op, name, sources, args, kwargs)
        self._tag_all(result, (_OP, op.index))
        return result

    def _kind(self, name: str, sources: list[tuple[str, torch.Tensor, tuple[str, Any]]]) -> str:
        if name in _MATMULS and any(tag[0] == _PARAM for _, _, tag in sources):
            return "linear"
        return FUNCTION_KINDS.get(name, "other")

    # -- building ops ---------------------------------------------------------------------------
    def _new_op(self, kind: str, function: str, path: str, module_type: str) -> Op:
        op = Op(index=len(self.ops), kind=kind, function=function, module_path=path, module_type=module_type)
        self.ops.append(op)
        return op

    def _add_op(self, kind, function, sources, params, result, module: nn.Module | None) -> Op:
        module = module or (self.stack[-1][0] if self.stack else self.model)
        op = self._new_op(kind, function, self.module_names.get(id(module), ""), type(module).__name__)
        for _, tensor, tag in sources:
            if tag[0] != _PARAM:
                if tag[1] not in op.inputs:
                    op.inputs.append(tag[1])
                op.in_shapes.append(tuple(tensor.shape))
        op.params = params
        first = next(_tensors(result), None)
        op.out_shape = tuple(first.shape) if first is not None else ()
        return op

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
            ops.append(op)
        parameters = {name: ParamInfo(name, tuple(p.shape), p.dtype) for name, p in self.model.named_parameters()}
        read = {name for op in ops for name in op.params.values()}
        unused = [name for name in parameters if name not in read]
        return ModelIR(type(self.model).__name__, ops, parameters, sorted({renumber[o] for o in outputs}), unused)


def _ancestors(ops: list[Op], outputs: list[int]) -> set[int]:
    live, frontier = set(outputs), list(outputs)
    while frontier:
        for parent in ops[frontier.pop()].inputs:
            if parent not in live:
                live.add(parent)
                frontier.append(parent)
    return live


def _annotate(op: Op, name: str, sources, args, kwargs) -> None:
    """Attributes the graph views need: weight layout of linears, conv grouping, concat axis."""
    if op.kind == "linear":
        weight_is_second = name == "addmm" or (name in _MATMULS and sources[-1][0] == "weight")
        op.attrs["weight_layout"] = "in_out" if weight_is_second else "out_in"
    elif op.kind == "conv":
        op.attrs["groups"] = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        op.attrs["transposed"] = name.startswith("conv_transpose")
    elif op.kind == "concat":
        op.attrs["dim"] = kwargs.get("dim", args[1] if len(args) > 1 else 0)


def _whole_module_kind(module: nn.Module) -> str | None:
    """Registered modules and parameter-free activation modules are recorded as a single op."""
    for cls in type(module).__mro__:
        if cls in _registered_modules:
            return _registered_modules[cls]
    if next(module.children(), None) is not None or next(module.parameters(), None) is not None:
        return None
    class_name = type(module).__name__.lower()
    return next((kind for key, kind in ACTIVATION_MODULE_KEYWORDS if key in class_name), None)


def _function_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):  # attribute access, e.g. Tensor.shape or Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor argument with its role: named for known parametric functions, else "operand"."""
    if name in _MATMULS:
        roles: tuple[str, ...] = ("input", "weight")
    else:
        roles = ARGUMENT_ROLES.get(name) or ARGUMENT_ROLES.get(FUNCTION_KINDS.get(name, ""), ())
    for i, value in enumerate(args):
        role = roles[i] if i < len(roles) else "operand"
        for tensor in _tensors(value):
            yield role, tensor
    for key, value in kwargs.items():
        for tensor in _tensors(value):
            yield key, tensor


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
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Trace in eval mode (no batch-norm statistics updates, no dropout), then restore each flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
