"""The GHN-3 style baseline LoGAH is compared with: a tiled decoder of (about) the same parameter count."""

from __future__ import annotations

from dataclasses import replace

import torch

from hypernets.logah import LoGAH, LoGAHConfig


def count_parameters(config: LoGAHConfig) -> int:
    with torch.device("meta"):  # sizes only: nothing allocated
        return sum(p.numel() for p in LoGAH(config).parameters())


def tiled_baseline(config: LoGAHConfig) -> LoGAHConfig:
    """``config`` with the tiled decoder, its tile chosen so that the whole hypernetwork has as many
    parameters as ``config``'s: a fair comparison gives both the same budget."""
    target = count_parameters(config)
    size = lambda tile: count_parameters(replace(config, decoder="tiled", tile=tile))
    low, high = 1, config.max_ck  # the count grows with the tile: bisect for the first one at or above target
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if size(middle) < target else (low, middle)
    tile = min((max(low - 1, 1), low), key=lambda t: abs(size(t) - target))
    return replace(config, decoder="tiled", tile=tile)
