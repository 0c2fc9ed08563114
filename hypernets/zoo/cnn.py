"""Small reference networks for MNIST (1x28x28) and CIFAR (3x32x32): an MLP, VGG, the CIFAR ResNet
of He et al. (2016) and a tiny CNN for quick tests.

All are plain ``nn.Module`` trees of standard layers, so every graph view (op graph, neuron graph)
can convert them, and the convolutional ones end in a global pooling or a 1x1 map, so one network
accepts both MNIST and CIFAR sized images. :func:`input_shape` gives the example input to trace them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (1, 1, 28, 28),
    "cifar": (1, 3, 32, 32),
    "cifar10": (1, 3, 32, 32),
    "cifar100": (1, 3, 32, 32),
}

# Simonyan & Zisserman (2015) configurations A, B, D and E: output channels of each 3x3 conv, "M" a 2x2 max-pool.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def input_shape(dataset: str) -> tuple[int, ...]:
    """Shape of one example batch, (1, channels, height, width), for ``"mnist"`` or ``"cifar"``
    (``"cifar10"`` and ``"cifar100"`` are accepted too): what ``trace(model, inputs=...)`` needs."""
    try:
        return INPUT_SHAPES[dataset.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(INPUT_SHAPES)}") from None


def mlp(in_features: int = 784, hidden: Sequence[int] = (256, 128), num_classes: int = 10) -> nn.Sequential:
    """A multilayer perceptron on flattened images: Flatten, then Linear-ReLU per hidden layer, then a
    linear classifier.

    Args:
        in_features: size of the flattened input (784 for MNIST, 3072 for CIFAR).
        hidden: width of each hidden layer, input side first; empty for a linear classifier.
        num_classes: number of output logits.
    """
    widths = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for d_in, d_out in pairwise(widths):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


def vgg(
    cfg: str | Sequence[int | str] = "vgg11", in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True
) -> nn.Sequential:
    """A VGG network: stacks of 3x3 convolutions (each followed by batch norm if enabled and ReLU)
    separated by 2x2 max-pools, then global average pooling, Flatten and a linear classifier.

    The pools round up (``ceil_mode``), so the five pools of the standard configurations reduce 28x28
    MNIST images to 1x1 just as they do 32x32 CIFAR ones, instead of failing on a 0x0 map; the global
    pooling makes configurations with fewer pools work at any input size.

    Args:
        cfg: a name from :data:`VGG_CONFIGS` or a sequence of conv output channels and ``"M"`` for a
            max-pool; it must contain at least one conv.
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        num_classes: number of output logits.
        batch_norm: insert ``BatchNorm2d`` after every conv (the conv then has no bias).
    """
    spec = VGG_CONFIGS[cfg] if isinstance(cfg, str) else tuple(cfg)
    convs = [item for item in spec if item != "M"]
    if not convs or not all(isinstance(c, int) and c > 0 for c in convs):
        raise ValueError(f"a VGG config is positive channel counts and 'M', with at least one conv; got {spec}")
    layers: list[nn.Module] = []
    channels = in_channels
    for item in spec:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            continue
        layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU())
        channels = item
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``.

    The shortcut ``s`` is the identity when the shape is unchanged and otherwise a strided 1x1 conv
    with batch norm (option B of He et al.), so the block has no parameter-free padding tricks.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The ResNet of He et al. (2016, section 4.2) for 32x32 images: a 3x3 stem conv, three stages of
    ``(depth - 2) / 6`` basic blocks with ``width``, ``2 * width`` and ``4 * width`` channels (the
    last two stages halve the resolution in their first block), global average pooling and a linear
    classifier. Built by :func:`cifar_resnet`."""

    def __init__(self, depth: int, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = _stage(width, width, blocks_per_stage, stride=1)
        self.layer2 = _stage(width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = _stage(2 * width, 4 * width, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)
        _he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _stage(in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride)]
    blocks += [BasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def _he_init(model: nn.Module) -> None:
    """Kaiming-normal convolutions and unit batch norms, as in the paper: PyTorch's default conv init
    is scaled for leaky ReLUs and trains deep plain stacks more slowly."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def cifar_resnet(depth: int = 20, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """The CIFAR ResNet of He et al. (2016) with projection shortcuts (option B).

    Args:
        depth: number of weighted layers, ``6n + 2``: 20, 32, 44, 56 or 110 in the paper.
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        num_classes: number of output logits.
        width: channels of the first stage; the second and third stages have twice and four times as many.
    """
    return CifarResNet(depth, in_channels, num_classes, width)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (0.27M parameters on CIFAR-10): :func:`cifar_resnet` with ``depth=20``."""
    return cifar_resnet(20, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (0.86M parameters on CIFAR-10): :func:`cifar_resnet` with ``depth=56``."""
    return cifar_resnet(56, in_channels, num_classes)


def small_cnn(in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (16, 32)) -> nn.Sequential:
    """A few conv3x3-ReLU-maxpool layers, global average pooling and a linear classifier: trains in
    seconds on a CPU, for smoke tests and examples.

    Args:
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        num_classes: number of output logits.
        channels: output channels of each conv layer, two or three of them for inputs of 28 or 32 pixels.
    """
    if not channels:
        raise ValueError("small_cnn needs at least one conv layer")
    widths = [in_channels, *channels]
    layers: list[nn.Module] = []
    for d_in, d_out in pairwise(widths):
        layers += [nn.Conv2d(d_in, d_out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))
