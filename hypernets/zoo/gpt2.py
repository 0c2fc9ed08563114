"""Small Hugging Face GPT-2 models over bytes (vocabulary 256): the GPT-2 architecture family."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hypernets.data.text import VOCAB_SIZE

from .families import Family


@dataclass(frozen=True)
class GPT2Arch:
    """One byte-level GPT-2 with ``n_layer`` blocks of width ``n_embd`` and a context of ``n_positions``."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    family = "gpt2"

    @property
    def depth(self) -> int:
        return self.n_layer

    @property
    def width(self) -> int:
        return self.n_embd

    @property
    def name(self) -> str:
        return f"gpt2-l{self.n_layer}-w{self.n_embd}-h{self.n_head}-c{self.n_positions}"

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """``GPT2LMHeadModel`` with dropout off (deterministic meta-training) and HF's own random init."""
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            n_positions=self.n_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        with torch.device(device):
            model = GPT2LMHeadModel(config)
        return model.eval()


GPT2_FAMILY = Family(
    name="gpt2",
    arch=GPT2Arch,
    train={"n_layer": (1, 2, 3, 4), "n_embd": (32, 48, 64, 96), "n_head": (2, 4), "n_positions": (64, 128)},
    heldout={
        "n_layer": (1, 2, 3, 4, 5, 6),
        "n_embd": (32, 48, 64, 96, 128),
        "n_head": (2, 4),
        "n_positions": (64, 128),
    },
    valid=lambda a: a.n_embd % a.n_head == 0,
)

# Wider widths at shallow depth and short context, where a width-384 GPT-2 is still cheap to meta-train on:
# the range that lets a hypernetwork hold at GPT-2 small to XL widths (docs/benchmarks.md).
GPT2_WIDE_FAMILY = Family(
    name="gpt2-wide",
    arch=GPT2Arch,
    train={
        "n_layer": (1, 2, 3, 4),
        "n_embd": (32, 48, 64, 96, 128, 192, 256, 384),
        "n_head": (2, 4, 8),
        "n_positions": (64,),
    },
    heldout={
        "n_layer": (1, 2, 3, 4, 5, 6),
        "n_embd": (32, 48, 64, 96, 128, 192, 256, 384, 512, 768),
        "n_head": (2, 4, 8),
        "n_positions": (64,),
    },
    valid=lambda a: a.n_embd % a.n_head == 0 and (a.n_embd <= 96 or a.n_layer <= 2),
)
