"""Reference networks to train, convert and predict parameters for."""

from .cnn import (
    INPUT_SHAPES,
    VGG_CONFIGS,
    BasicBlock,
    CifarResNet,
    cifar_resnet,
    input_shape,
    mlp,
    resnet20,
    resnet56,
    small_cnn,
    vgg,
)
from .families import ArchSampler, Family, all_families, arch_from_json, arch_to_json, get_family
from .gpt2 import GPT2_FAMILY, GPT2_WIDE_FAMILY, GPT2Arch
from .vit import VIT_FAMILY, ViTArch

__all__ = [
    "GPT2_FAMILY",
    "GPT2_WIDE_FAMILY",
    "INPUT_SHAPES",
    "VGG_CONFIGS",
    "VIT_FAMILY",
    "ArchSampler",
    "BasicBlock",
    "CifarResNet",
    "Family",
    "GPT2Arch",
    "ViTArch",
    "all_families",
    "arch_from_json",
    "arch_to_json",
    "cifar_resnet",
    "get_family",
    "input_shape",
    "mlp",
    "resnet20",
    "resnet56",
    "small_cnn",
    "vgg",
]
