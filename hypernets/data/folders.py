"""ImageNet-style image folders (``root/<class_name>/<image>.png|jpg``), via torchvision's ImageFolder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder


def load_image_folder(root: str | os.PathLike, image_size: int = 224, transform: Callable | None = None) -> ImageFolder:
    """A dataset of (float32 ``[3, image_size, image_size]`` image in [0, 1], class index) pairs.

    Classes are the sub-folder names in sorted order (``dataset.classes``), so indices are the same
    on every machine. ``transform`` replaces the default resize-and-to-tensor (``image_size`` is then
    unused)."""
    # Imported here: torchvision takes seconds to import and no other loader needs it.
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    transform = transform or transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    try:
        return ImageFolder(root, transform=transform)
    except FileNotFoundError as err:  # no class folders, or a class folder without images
        raise FileNotFoundError(f"{root} is not laid out as root/<class>/<image>: {err}") from err
