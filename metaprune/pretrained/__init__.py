"""Meta-trained metanetworks shipped with the package, so that a CI pipeline prunes with one without
meta-training first. Each is a directory under this package with what ``metaprune prune --metanet DIR`` reads:
``config.json`` + ``model.safetensors`` (:meth:`metaprune.metanet.Metanet.save_pretrained`), ``strengths.json``
(the rewrite-strength calibration, :mod:`metaprune.strength`), and ``metatrain.json`` + ``recipe.json`` (how it
was trained and calibrated):

- ``cnn``: meta-trained on the ``"cnn"`` population (small CNNs, CIFAR-style ResNets, MLPs on MNIST);
- ``vit``: meta-trained on the ``"vit"`` population (small timm ViTs on MNIST).

``python recipes/train_shipped_metanets.py`` rebuilds both from seeds. :func:`family_of` says which one fits a
model (``--metanet auto``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

HERE = Path(__file__).parent
SHIPPED: tuple[str, ...] = ("cnn", "vit")

# Modules whose parameters a conv/linear network may hold: the layers the "cnn" population is made of, and
# the norms that go with convolutions. Modules without parameters of their own (activations, pooling,
# dropout, flatten, containers) never decide the family.
_CNN_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)


def shipped_path(name: str) -> Path:
    """The directory of the shipped metanetwork ``name`` (one of :data:`SHIPPED`)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped metanetwork named {name!r}; shipped: {', '.join(SHIPPED)}")
    return HERE / name


def family_of(model: nn.Module) -> str | None:
    """Which shipped metanetwork fits ``model``: ``"vit"`` when it has timm-style attention layers
    (:func:`metaprune.prune.is_attention`), ``"cnn"`` when every parameter belongs to a convolution, a linear
    layer or a norm, ``None`` otherwise (a language model's embeddings, other attention, recurrent layers)."""
    from metaprune.prune import is_attention  # torch-pruning is loaded only when a model is asked about

    modules = list(model.modules())
    if any(is_attention(m) for m in modules):
        return "vit"
    owners = [m for m in modules if any(True for _ in m.parameters(recurse=False))]
    if not owners or not any(isinstance(m, _CNN_LAYERS[:4]) for m in owners):
        return None
    if all(isinstance(m, _CNN_LAYERS) for m in owners):
        return "cnn"
    return None
