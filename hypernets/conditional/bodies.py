"""Hypernetwork bodies: an encoded condition ``[B, F]`` in, ``[B, N]`` out: every predicted value, tensor after
tensor (the caller splits them).

Outputs are ``head_std`` times order one at init: the caller scales each tensor to its own magnitude.
Heads have a bias only when asked: under MIP ``theta0`` already offsets every tensor, and a head bias would
duplicate it (``hidden + 1`` instead of ``hidden`` weights per predicted value in the MLP body). Two bodies:

- :class:`MLPBody`: a trunk and one linear head over all values (a head per tensor, fused into one matrix
  multiply). The head holds ``hidden x`` the number of predicted values: fine for small targets, 715 M
  weights for the convolutions of torchvision's resnet18 at ``hidden=64`` (hyperlight's README example
  for them, hidden 128, has 1.44 B parameters).
- :class:`ChunkedBody` (von Oswald et al. 2020): one shared head emits fixed-size chunks, each asked for
  by a learned chunk embedding, so the body grows with the number of chunks times the chunk embedding's
  width, not with the number of values: 0.36 M for the same convolutions
  (``recipes/bench/bench_hypernetize.py`` counts all three). It is also the body of the continual
  hypernetworks (:mod:`hypernets.continual.hypernet`): no trunk, chunks over the flat parameter vector, and
  their own heads (an MLP at PyTorch's default init, an LSTM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from itertools import pairwise

import torch
from torch import Tensor, nn

BODIES = ("auto", "mlp", "chunked")
AUTO_MLP_LIMIT = 2**24  # "auto" picks the MLP while its heads hold at most 16 M weights (64 MB in fp32)
NEGATIVE_SLOPE = 0.01  # the trunks' LeakyReLU (PyTorch's default, and hyperlight's)


def leaky_mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of ``sizes``, each followed by a LeakyReLU of slope :data:`NEGATIVE_SLOPE`; He-initialized
    for it, so features keep their scale.

    Leaky rather than ReLU for speed: at init 16-24% of a ReLU trunk's last units are off for every condition,
    so their head weights never get a gradient, and Adam's second moments keep exact zeros there, on which a
    CPU's ``sqrt`` is 2-3x slower (docs/conditional.md: 3.3 ms a step more than hyperlight's in the benchmark)."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.kaiming_normal_(linear.weight, a=NEGATIVE_SLOPE, nonlinearity="leaky_relu")
        layers += [linear, nn.LeakyReLU(NEGATIVE_SLOPE)]
    return nn.Sequential(*layers)


def output_layer(fan_in: int, fan_out: int, bias: bool, std: float) -> nn.Linear:
    """A head whose outputs have ``std`` times the RMS of its inputs, and no offset at init: scales are set per
    tensor by the caller."""
    linear = nn.Linear(fan_in, fan_out, bias=bias)
    nn.init.normal_(linear.weight, std=std * fan_in**-0.5)
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


class MLPBody(nn.Module):
    """``head(trunk(x))``: every tensor's head is the same init, so one matrix holds them all."""

    def __init__(
        self, in_features: int, sizes: Sequence[int], hidden: int, layers: int, bias: bool, head_std: float
    ) -> None:
        super().__init__()
        self.trunk = leaky_mlp([in_features] + [hidden] * layers)
        self.head = output_layer(hidden, sum(sizes), bias, head_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


class ChunkedBody(nn.Module):
    """``head([trunk(x), chunk embedding k]) -> chunk k``, the chunks cut and joined into ``[B, sum(sizes)]``.

    Each of ``sizes`` gets its own ``ceil(size / chunk_size)`` chunks, the last one cut to length: one size per
    tensor keeps chunks from straddling tensors; one size, the flat vector's, is von Oswald et al.'s chunking.
    ``trunk`` lists the LeakyReLU trunk's widths; empty, the features are concatenated to the chunk embeddings as they
    are (von Oswald et al.). ``make_head(fan_in, chunk_size)`` builds the head, which maps the ``[B, chunks,
    fan_in]`` pairs to ``[B, chunks, chunk_size]``: an MLP here, an LSTM over the chunks in the continual RNN
    hypernetwork. Interval bound propagation reuses the pieces: :meth:`pairs`, ``head`` and :meth:`cut`.
    """

    def __init__(
        self,
        in_features: int,
        sizes: Sequence[int],
        trunk: Sequence[int],
        chunk_size: int,
        chunk_dim: int,
        make_head: Callable[[int, int], nn.Module],
    ) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.chunks_per_tensor = [math.ceil(size / chunk_size) for size in sizes]
        self.trunk = leaky_mlp([in_features, *trunk])
        self.chunk_embeddings = nn.Parameter(torch.randn(sum(self.chunks_per_tensor), chunk_dim))
        self.head = make_head((trunk[-1] if trunk else in_features) + chunk_dim, chunk_size)

    def pairs(self, features: Tensor, chunk_embeddings: Tensor) -> Tensor:
        """``[B, W]`` per condition and ``[chunks, C]`` per chunk -> the head's ``[B, chunks, W + C]`` inputs."""
        batch, chunks = len(features), len(chunk_embeddings)
        return torch.cat([features[:, None].expand(-1, chunks, -1), chunk_embeddings.expand(batch, -1, -1)], dim=-1)

    def cut(self, chunks: Tensor) -> Tensor:
        """The head's ``[B, chunks, chunk_size]`` -> ``[B, sum(sizes)]``, each size's last chunk cut to length."""
        parts = chunks.split(self.chunks_per_tensor, dim=1)
        return torch.cat([p.reshape(len(chunks), -1)[:, :size] for p, size in zip(parts, self.sizes, strict=True)], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cut(self.head(self.pairs(self.trunk(x), self.chunk_embeddings)))


def mlp_head(fan_in: int, fan_out: int, *, hidden: int, bias: bool, std: float) -> nn.Sequential:
    """The chunked body's head here: one LeakyReLU layer of ``hidden``, then an :func:`output_layer`."""
    return nn.Sequential(leaky_mlp([fan_in, hidden]), output_layer(hidden, fan_out, bias, std))


def resolve_body(body: str, hidden: int, num_values: int) -> str:
    """``"auto"`` becomes ``"mlp"`` while the MLP's heads stay under :data:`AUTO_MLP_LIMIT`, else ``"chunked"``."""
    if body != "auto":
        return body
    return "mlp" if hidden * num_values <= AUTO_MLP_LIMIT else "chunked"


def build_body(
    body: str,
    in_features: int,
    sizes: Sequence[int],
    *,
    hidden: int,
    layers: int,
    chunk_size: int,
    chunk_dim: int,
    bias: bool,
    head_std: float,
) -> nn.Module:
    """The body ``body`` names (``"mlp"`` or ``"chunked"``; resolve ``"auto"`` first); ``bias``: heads with one;
    ``head_std``: the outputs' scale at init, relative to order one."""
    if body == "mlp":
        return MLPBody(in_features, sizes, hidden, layers, bias, head_std)
    head = partial(mlp_head, hidden=hidden, bias=bias, std=head_std)
    return ChunkedBody(in_features, sizes, [hidden] * layers, chunk_size, chunk_dim, head)
