"""Fused ragged low-rank decoding of hypernetwork outputs into one flat parameter buffer.

``decode`` turns packed low-rank factors (and raw 1-D outputs) for a whole target model into one buffer in a
single launch on GPU; ``split`` gives per-tensor views of it.  See ``docs/kernels.md``.
"""

from hypernets.kernels.dispatch import decode
from hypernets.kernels.layout import DecodeLayout, split
from hypernets.kernels.reference import accumulate_decoded_

__all__ = ["DecodeLayout", "accumulate_decoded_", "decode", "split"]
