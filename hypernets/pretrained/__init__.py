"""Small meta-trained hypernetworks shipped with the package, so that predicting an initialization
needs no training run first. Each is a ``LoGAH.save_pretrained`` directory under this package:

- ``vit-mnist``: timm ViTs for 1x28x28 MNIST (1 to 4 blocks, width 32 to 96 in training), LoGAH's
  low-rank decoder;
- ``vit-mnist-tiled``: the same ViTs, GHN-3's tiled decoder at about the same size; it starts the held-out
  ViTs higher (92% against 87%), above all those wider than any it was trained on;
- ``gpt2-pydoc``: byte-level Hugging Face GPT-2 models (1 to 4 layers, width 32 to 96 in training).

How they were trained and what they score on held-out architectures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def available() -> list[str]:
    """Names of the shipped hypernetworks."""
    return sorted(p.name for p in HERE.iterdir() if (p / "model.safetensors").is_file())


def pretrained_dir(name: str) -> Path:
    """The directory of the shipped hypernetwork ``name``."""
    if name not in available():
        raise KeyError(f"no shipped hypernetwork named {name!r}; shipped: {', '.join(available())}")
    return HERE / name
