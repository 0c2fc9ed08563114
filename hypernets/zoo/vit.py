"""Small timm ViTs for MNIST (1x28x28, 10 classes): the ViT architecture family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .families import Family

MNIST_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ViTArch:
    """One ViT: ``depth`` blocks of width ``embed_dim``, ``pool`` ``"token"`` (class token) or ``"avg"``."""

    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    pool: str
    family = "vit"

    @property
    def width(self) -> int:
        return self.embed_dim

    @property
    def name(self) -> str:
        return (
            f"vit-d{self.depth}-w{self.embed_dim}-h{self.num_heads}-m{self.mlp_ratio:g}-p{self.patch_size}-{self.pool}"
        )

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The timm model, in eval mode (no dropout in these configs), with timm's own random init."""
        import timm

        with torch.device(device):
            model = timm.create_model(
                "vit_tiny_patch16_224",
                pretrained=False,
                img_size=MNIST_SHAPE[1],
                in_chans=MNIST_SHAPE[0],
                num_classes=10,
                depth=self.depth,
                embed_dim=self.embed_dim,
                num_heads=self.num_heads,
                mlp_ratio=self.mlp_ratio,
                patch_size=self.patch_size,
                class_token=self.pool == "token",
                global_pool=self.pool,
            )
        return model.eval()


VIT_FAMILY = Family(
    name="vit",
    arch=ViTArch,
    train={
        "depth": (1, 2, 3, 4),
        "embed_dim": (32, 48, 64, 96),
        "num_heads": (2, 4),
        "mlp_ratio": (2.0, 3.0, 4.0),
        "patch_size": (4, 7, 14),
        "pool": ("token", "avg"),
    },
    heldout={
        "depth": (1, 2, 3, 4, 5, 6),
        "embed_dim": (32, 48, 64, 96, 128),
        "num_heads": (2, 4),
        "mlp_ratio": (2.0, 3.0, 4.0),
        "patch_size": (4, 7, 14),
        "pool": ("token", "avg"),
    },
    valid=lambda a: a.embed_dim % a.num_heads == 0,
)
