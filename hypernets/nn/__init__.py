"""Building blocks of hypernetworks: the graph encoder, input encodings, decoders, target plans."""

from .decoders import LowRankDecoder, TiledDecoder, VectorDecoder
from .encoder import EncoderConfig, GraphEncoder
from .encoding import encode_shape
from .plan import TargetPlan

__all__ = [
    "EncoderConfig",
    "GraphEncoder",
    "LowRankDecoder",
    "TargetPlan",
    "TiledDecoder",
    "VectorDecoder",
    "encode_shape",
]
