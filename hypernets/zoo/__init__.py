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

__all__ = [
    "INPUT_SHAPES",
    "VGG_CONFIGS",
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet",
    "input_shape",
    "mlp",
    "resnet20",
    "resnet56",
    "small_cnn",
    "vgg",
]
