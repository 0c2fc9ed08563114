"""A reproducible population of small networks trained on the embedded MNIST, for meta-training.

Each member is a directory ``NAME/`` with ``model.safetensors`` and ``model.json``, the config that
rebuilds it (``{"family", "kwargs", "seed", "train_steps", "eval_accuracy", ...}``, read by
:func:`build_from_config`). Members are trained from a seed alone (init and batch order), so the same
spec gives bit-identical weights; both files are written atomically and ``model.json`` last, so an
interrupted run resumes by skipping the members whose ``model.json`` exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from hypernets import zoo
from hypernets.atomic import atomic_write
from hypernets.checkpoint import load_state_strict, save_tensors
from hypernets.data import load_mnist
from hypernets.zoo.vit import ViTArch

CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
INPUT_SHAPE = zoo.input_shape("mnist")


def vit(**settings: Any) -> nn.Module:
    """A timm ViT for MNIST, from :class:`hypernets.zoo.ViTArch` settings (depth, embed_dim, ...)."""
    return ViTArch(**settings).build()


FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "mlp": zoo.mlp,
    "small_cnn": zoo.small_cnn,
    "cifar_resnet": zoo.cifar_resnet,
    "vit": vit,
}


def _vit(depth: int, embed_dim: int, num_heads: int, mlp_ratio: float, pool: str) -> tuple[str, dict[str, Any]]:
    """A population entry: a ViT on 4 x 4 patches of 7 x 7 pixels."""
    return "vit", asdict(ViTArch(depth, embed_dim, num_heads, mlp_ratio, patch_size=7, pool=pool))


# The architectures each population cycles through; member i gets seed + i.
POPULATIONS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "cnn": (
        ("small_cnn", {"channels": [16, 32]}),
        ("cifar_resnet", {"depth": 8, "width": 8, "in_channels": 1}),
        ("mlp", {"hidden": [128]}),
        ("small_cnn", {"channels": [32, 64]}),
        ("cifar_resnet", {"depth": 8, "width": 16, "in_channels": 1}),
        ("mlp", {"hidden": [256, 128]}),
        ("small_cnn", {"channels": [16, 32, 64]}),
        ("cifar_resnet", {"depth": 14, "width": 8, "in_channels": 1}),
    ),
    "vit": (  # whole heads and MLP channels to prune
        _vit(2, 32, 2, 2.0, "avg"),
        _vit(2, 48, 4, 3.0, "token"),
        _vit(3, 32, 4, 4.0, "avg"),
        _vit(2, 64, 4, 2.0, "token"),
        _vit(3, 48, 2, 3.0, "avg"),
        _vit(4, 32, 2, 2.0, "token"),
    ),
}
# Adam's rate where it differs from MemberSpec's 3e-3: ViTs get the lower rate usual for transformers.
TRAIN_LR: dict[str, float] = {"vit": 1e-3}


@dataclass(frozen=True)
class MemberSpec:
    """Everything that determines a member's weights."""

    name: str
    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    train_steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3

    def config(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "kwargs": self.kwargs,
            "seed": self.seed,
            "train_steps": self.train_steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "dataset": "mnist",
            "normalize": True,
        }


def population_specs(size: int, train_steps: int = 300, seed: int = 0, population: str = "cnn") -> list[MemberSpec]:
    """``size`` members cycling through ``POPULATIONS[population]``, seeded ``seed``, ``seed + 1``, ..."""
    if population not in POPULATIONS:
        raise ValueError(f"unknown population {population!r}; choose one of {', '.join(POPULATIONS)}")
    architectures = POPULATIONS[population]
    specs = []
    for i in range(size):
        family, kwargs = architectures[i % len(architectures)]
        lr = TRAIN_LR.get(family, MemberSpec.lr)
        specs.append(MemberSpec(f"{i:03d}-{family}", family, kwargs, seed + i, train_steps, lr=lr))
    return specs


def build_from_config(config: dict[str, Any], source: str | os.PathLike = "<config>") -> nn.Module:
    """The untrained architecture a ``model.json`` describes; errors name ``source``."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: a member config is a JSON object, got {type(config).__name__}")
    family, kwargs = config.get("family"), config.get("kwargs", {})
    if family not in FAMILIES:
        raise ValueError(f"{source}: unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{source}: 'kwargs' must be an object, got {type(kwargs).__name__}")
    try:
        return FAMILIES[family](**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad kwargs {kwargs} for family {family!r}: {err}") from err


def load_member(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A trained member (in eval mode) and its config."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a readable member config: {err}") from err
    model = build_from_config(config, config_path)
    load_state_strict(model, load_file(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
    return model.eval(), config


def list_members(root: str | os.PathLike) -> list[Path]:
    """Finished member directories under ``root``, by name."""
    return sorted(path.parent for path in Path(root).glob(f"*/{CONFIG_FILE}"))


def mnist(split: str) -> TensorDataset:
    """The data every member is trained and scored on: standardised embedded MNIST."""
    return load_mnist(split, normalize=True)


def train_member(spec: MemberSpec, train: TensorDataset, eval_set: TensorDataset) -> tuple[nn.Module, float]:
    """Adam on seeded batches; returns the model in eval mode and its eval accuracy."""
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's generator
        torch.manual_seed(spec.seed)
        model = build_from_config(spec.config(), spec.name)
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    images, labels = train.tensors
    model.train()
    for _ in range(spec.train_steps):
        index = torch.randint(len(labels), (spec.batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return model, accuracy(model, *eval_set.tensors)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` as it is (call ``.eval()`` first for batch-norm statistics)."""
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(labels), batch_size)
    )
    return correct / len(labels)


def build_population(root: str | os.PathLike, specs: Sequence[MemberSpec], progress: bool = True) -> list[Path]:
    """Train and save every member of ``specs`` that ``root`` does not hold yet; returns their directories.

    A finished member whose ``model.json`` describes a different spec is an error, never overwritten.
    """
    root = Path(root)
    train, eval_set = mnist("train"), mnist("eval")
    directories = []
    bar = tqdm(specs, desc="population", unit="net", disable=not progress)
    for spec in bar:
        directory = root / spec.name
        directories.append(directory)
        if _finished(directory, spec):
            continue
        model, score = train_member(spec, train, eval_set)
        bar.set_postfix(member=spec.name, eval_accuracy=f"{score:.3f}")
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / WEIGHTS_FILE, model.state_dict())
        text = json.dumps({**spec.config(), "eval_accuracy": score}, indent=2) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda path, text=text: Path(path).write_text(text))
    return directories


def _finished(directory: Path, spec: MemberSpec) -> bool:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        return False
    saved = json.loads(config_path.read_text())
    expected = spec.config()
    if {k: saved.get(k) for k in expected} != expected:
        raise ValueError(f"{config_path} holds a different member than spec {spec.name}; move it away or rename")
    return True
