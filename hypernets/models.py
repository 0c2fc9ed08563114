"""Build models from short spec strings, so the command line, recipes and tests name models one way.

Every family is built locally, nothing downloaded: from code and a config (random initialization), from a
Hugging Face directory written by ``save_pretrained`` (``hf:DIR``, its safetensors weights), or by a factory
of the user's own importable from the current directory (``PKG.MODULE:CALLABLE``, as uvicorn names an app).
``weights=`` loads a safetensors file strictly into any of them. No pickle is ever read.
Libraries, torch included, are imported only when a model is built: they take seconds to import, and
the command line reads the spec forms from here to print its help.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

Device = Literal["cpu", "meta"]

DEFAULT_SPEC = "timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2&num_classes=10"

SPEC_FORMS = (
    "timm:NAME[?key=value&...]    any timm model, e.g. timm:vit_tiny_patch16_224?img_size=32&depth=2",
    "gpt2:small|medium|large|xl   Hugging Face GPT2LMHeadModel of that size",
    "gpt2:key=value,...           GPT-2 from config overrides, e.g. gpt2:n_layer=2,n_embd=64,n_head=4",
    "torchvision:NAME[?key=value] a torchvision model, e.g. torchvision:resnet18",
    "zoo:NAME[?key=value]         a hypernets.zoo CNN, e.g. zoo:resnet20, zoo:vgg, zoo:mlp",
    "hf:DIR                       a Hugging Face save_pretrained directory (safetensors), e.g. hf:./my-llama",
    "PKG.MODULE:CALLABLE[?k=v]    your factory, imported from the current directory, e.g. mypkg.nets:make?width=8",
)

# GPT-2 sizes as released by OpenAI; GPT2Config's defaults are "small".
GPT2_SIZES: dict[str, dict[str, int]] = {
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12},
    "medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
    "large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
    "xl": {"n_layer": 48, "n_embd": 1600, "n_head": 25},
}

ZOO_MODELS = ("mlp", "vgg", "cifar_resnet", "resnet20", "resnet56", "small_cnn")


class ModelSpecError(ValueError):
    """A model spec names no known family or model, or its arguments do not build one."""


def spec_family(spec: str) -> str:
    """The family ``spec`` names: ``"timm"``, ``"gpt2"``, ``"torchvision"``, ``"zoo"``, ``"hf"``, or ``"factory"``
    for ``PKG.MODULE:CALLABLE`` (a dotted module path that is no family name)."""
    family, sep, _ = spec.partition(":")
    if sep and (family in _BUILDERS or family == "hf"):
        return family
    if sep and family and all(part.isidentifier() for part in family.split(".")):
        return "factory"
    raise ModelSpecError(_unknown(spec))


def build_model(spec: str, device: Device = "cpu", weights: str | os.PathLike | None = None) -> nn.Module:
    """Build the model ``spec`` names (see ``SPEC_FORMS``) in eval mode, with parameters on ``device``, and
    load the safetensors file ``weights`` into it when given (for ``hf:DIR``, instead of the directory's).

    ``meta`` allocates nothing, which is all graph conversion needs: GPT-2 XL builds in a fraction of a second.
    The weights file is read before the model is built, so a bad path fails before a long build.
    """
    import torch

    if weights is not None and device == "meta":
        raise ValueError("weights cannot be loaded into a model on the meta device")
    family, rest = spec_family(spec), spec.partition(":")[2]
    path = None if weights is None else Path(weights)
    state = None if path is None else _read_weights(path)
    with torch.device(device):
        if family == "hf":
            model = _hf(rest, own_weights=device != "meta" and state is None)
        elif family == "factory":
            model = _factory(spec)
        else:
            model = _BUILDERS[family](rest)
    if path is not None:
        _load_weights(model, state, path)
    return model.eval()


def example_input_shape(spec: str, model: nn.Module) -> tuple[int, ...] | None:
    """The float input to trace ``model`` on where the tracer cannot guess one (timm, GPT-2 and Hugging Face
    models say what they take; a factory's user passes one): torchvision models take ImageNet images, zoo
    models MNIST or CIFAR ones, told apart by the input width of their first layer (1 channel or 784
    features for MNIST)."""
    family = spec_family(spec)
    if family == "torchvision":
        return (1, 3, 224, 224)
    if family == "zoo":
        from hypernets.zoo import input_shape

        return input_shape("mnist" if next(model.parameters()).shape[1] in (1, 28 * 28) else "cifar")
    return None


def _unknown(spec: str, reason: str = "") -> str:
    return f"unknown model spec {spec!r}{reason}; accepted forms:\n  " + "\n  ".join(SPEC_FORMS)


def parse_kwargs(text: str, separator: str) -> dict[str, Any]:
    """``"a=1&b=0.5&c=true&d=x&e=8,16"`` -> ``{"a": 1, "b": 0.5, "c": True, "d": "x", "e": (8, 16)}``: each
    value becomes an int, a float or a bool when it reads as one, a tuple of them when it has commas."""
    kwargs: dict[str, Any] = {}
    for item in filter(None, text.split(separator)):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ModelSpecError(f"expected key=value in model arguments, got {item!r}")
        kwargs[key] = _parse_value(value)
    return kwargs


def _parse_value(text: str) -> Any:
    if "," in text:
        return tuple(_parse_value(part) for part in text.split(","))
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _name_and_kwargs(rest: str) -> tuple[str, dict[str, Any]]:
    name, _, query = rest.partition("?")
    if not name:
        raise ModelSpecError("the model spec names no model; e.g. timm:vit_tiny_patch16_224")
    return name, parse_kwargs(query, "&")


def _call(family: str, name: str, factory: Callable[..., nn.Module], /, **kwargs: Any) -> nn.Module:
    """Run a third-party model factory on the user's arguments: whatever it raises (timm asserts, transformers
    raises its own validation errors) is about those arguments, so it is reported as a spec error."""
    try:
        return factory(**kwargs)
    except Exception as err:
        raise ModelSpecError(f"cannot build {family} model {name!r}: {err}") from err


def _timm(rest: str) -> nn.Module:
    import timm

    name, kwargs = _name_and_kwargs(rest)
    return _call("timm", name, timm.create_model, model_name=name, pretrained=False, **kwargs)


def _torchvision(rest: str) -> nn.Module:
    import torchvision

    name, kwargs = _name_and_kwargs(rest)
    return _call("torchvision", name, torchvision.models.get_model, name=name, weights=None, **kwargs)


def _zoo(rest: str) -> nn.Module:
    from hypernets import zoo

    name, kwargs = _name_and_kwargs(rest)
    if name not in ZOO_MODELS:
        raise ModelSpecError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO_MODELS)}")
    return _call("zoo", name, getattr(zoo, name), **kwargs)


def _gpt2(rest: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    size, _, overrides = rest.partition(",")
    if "=" in size:
        size, overrides = "small", rest
    if size not in GPT2_SIZES:
        raise ModelSpecError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(GPT2_SIZES)}")
    config = {**GPT2_SIZES[size], **parse_kwargs(overrides, ",")}
    return _call("gpt2", rest, lambda **kw: GPT2LMHeadModel(GPT2Config(**kw)), **config)


_BUILDERS: dict[str, Callable[[str], nn.Module]] = {
    "timm": _timm,
    "gpt2": _gpt2,
    "torchvision": _torchvision,
    "zoo": _zoo,
}


def _read_weights(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file, all finite; anything else is the user's to fix, named by path."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from hypernets.checkpoint import check_finite_tensors

    if not path.is_file():
        raise ModelSpecError(f"{path}: no such weights file")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelSpecError(f"{path}: not a readable safetensors file: {err}") from err
    check_finite_tensors(state, str(path), ModelSpecError)
    return state


def _load_weights(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load every tensor strictly; a tied parameter may be stored once (safetensors refuses shared tensors,
    so ``save_pretrained`` and ``hypernets predict`` write one name), and its other names are filled from it."""
    from hypernets.checkpoint import CheckpointError, load_state_strict

    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    state = dict(state)
    for aliases in names.values():
        stored = next((name for name in aliases if name in state), None)
        if stored is not None:
            for name in aliases:
                state.setdefault(name, state[stored])
    try:
        load_state_strict(model, state, path)
    except CheckpointError as err:
        raise ModelSpecError(str(err)) from err


def _hf(directory: str, own_weights: bool) -> nn.Module:
    """The class the config's ``architectures`` names, from the config alone or with the directory's weights
    (safetensors only: a ``.bin`` is a pickle, which can run code when read)."""
    import transformers

    from hypernets.checkpoint import check_finite_tensors

    path = Path(directory)
    if not directory:
        raise ModelSpecError("the model spec hf: names no directory; e.g. hf:./my-llama")
    if not (path / "config.json").is_file():
        what = "has no config.json" if path.is_dir() else "is not a directory"
        raise ModelSpecError(f"hf:{directory}: {what}; expected a directory written by save_pretrained")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise ModelSpecError(f"hf:{directory}: cannot read its config.json: {err}") from err
    cls = _hf_class(config, directory)
    if not own_weights:
        return cls.from_config(config) if cls is transformers.AutoModelForCausalLM else cls(config)
    if not any(path.glob("*.safetensors")):
        found = "only pickled .bin weights, which are never read" if any(path.glob("*.bin")) else "no weights"
        raise ModelSpecError(
            f"hf:{directory}: has {found}; re-save it with save_pretrained(DIR, safe_serialization=True)"
        )
    options = {"local_files_only": True, "use_safetensors": True, "output_loading_info": True}
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(path, **options)
    except Exception as err:
        raise ModelSpecError(f"hf:{directory}: cannot load its weights: {err}") from err
    problems = [f"{kind.replace('_', ' ')}: {_some(info[kind])}" for kind in _HF_PROBLEMS if info[kind]]
    if problems:
        raise ModelSpecError(f"hf:{directory}: its weights do not match its config: {'; '.join(problems)}")
    check_finite_tensors(model.state_dict(), f"hf:{directory}", ModelSpecError)
    return model


_HF_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")


def _some(items: Any, shown: int = 8) -> str:
    names = sorted(map(str, items))
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bar or load report: a mismatch becomes one ModelSpecError, and the CLI prints one line."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _hf_class(config: Any, directory: str) -> Any:
    import transformers

    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return transformers.AutoModelForCausalLM
    cls = getattr(transformers, architectures[0], None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelSpecError(
            f"hf:{directory}: architecture {architectures[0]!r} in config.json is not a model class of "
            f"transformers {transformers.__version__}"
        )
    return cls


def _factory(spec: str) -> nn.Module:
    """``CALLABLE(**kwargs)`` from ``PKG.MODULE``, imported from the current directory
    (:func:`hypernets.factories.call_factory`)."""
    from torch import nn

    from hypernets.factories import call_factory

    target, _, query = spec.partition("?")
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ModelSpecError(f"model spec {spec!r} names no callable; e.g. {module_name}:make")
    model = call_factory(
        target,
        parse_kwargs(query, "&"),
        error=ModelSpecError,
        kind="module",
        missing=lambda cwd: _unknown(
            spec, f": no family and no module {module_name!r} in {cwd} or the installed packages"
        ),
    )
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
