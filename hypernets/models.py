"""Build models from short spec strings, so the command line, recipes and tests name models one way.

Every family is built locally from code and a config (random initialization, nothing downloaded).
Libraries, torch included, are imported only when a model is built: they take seconds to import, and
the command line reads the spec forms from here to print its help.
"""

from __future__ import annotations

from collections.abc import Callable
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


def build_model(spec: str, device: Device = "cpu") -> nn.Module:
    """Build the model ``spec`` names (see ``SPEC_FORMS``) in eval mode, with parameters on ``device``.

    ``meta`` allocates nothing, which is all graph conversion needs: GPT-2 XL builds in a fraction of a second.
    """
    import torch

    family, sep, rest = spec.partition(":")
    builder = _BUILDERS.get(family)
    if not sep or builder is None:
        raise ModelSpecError(f"unknown model spec {spec!r}; accepted forms:\n  " + "\n  ".join(SPEC_FORMS))
    with torch.device(device):
        model = builder(rest)
    return model.eval()


def example_input_shape(spec: str, model: nn.Module) -> tuple[int, ...] | None:
    """The float input to trace ``model`` on where the tracer cannot guess one (timm and GPT-2 models say
    what they take): torchvision models take ImageNet images, zoo models MNIST or CIFAR ones, told apart by
    the input width of their first layer (1 channel or 784 features for MNIST)."""
    family = spec.partition(":")[0]
    if family == "torchvision":
        return (1, 3, 224, 224)
    if family == "zoo":
        from hypernets.zoo import input_shape

        return input_shape("mnist" if next(model.parameters()).shape[1] in (1, 28 * 28) else "cifar")
    return None


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
