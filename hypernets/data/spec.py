"""Name the data a command trains, prunes or scores on with one short spec string (see ``DATA_FORMS``).

``build_data`` turns ``mnist``, ``imagefolder:DIR``, ``text:FILE`` or a user's ``PKG.MODULE:CALLABLE`` into a
``TaskData``: train and val loaders of ``(inputs, targets)`` batches, one example input, and a line for
reports. Everything that can be checked is checked here, before the long work starts, and every problem a
user can fix is a ``DataSpecError`` that names the spec or file. torchvision, timm and transformers are
imported only by the form that needs them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hypernets.data.base import split_slice
from hypernets.data.mnist import load_mnist
from hypernets.data.text import EVAL_FRACTION as TEXT_EVAL_FRACTION
from hypernets.data.text import VOCAB_SIZE as BYTE_VOCAB_SIZE
from hypernets.data.text import encode_bytes, load_text_corpus
from hypernets.factories import call_factory

if TYPE_CHECKING:
    from collections.abc import Callable

    from torchvision.datasets import ImageFolder

Task = Literal["classification", "causal_lm"]

DATA_FORMS = (
    "mnist                        the embedded MNIST: 8,000 train / 2,000 val standardised 1x28x28 images",
    "imagefolder:DIR              DIR/train/<class>/<image> and DIR/val/<class>/<image> (torchvision ImageFolder)",
    "text:FILE                    UTF-8 text (or a directory of .txt files), bytes or --tokenizer DIR tokens",
    "PKG.MODULE:CALLABLE[?k=v]    your factory returning (train_loader, val_loader), e.g. mydata:loaders?size=32",
)

DEFAULT_BLOCK_SIZE = 128
SIZE_CHECK_LIMIT = 1000  # image headers read per split to find mixed sizes (~50 us each)


class DataSpecError(ValueError):
    """A data spec names nothing that can be loaded, or what it names is malformed (message names spec/file)."""


@dataclass(frozen=True)
class TaskData:
    """What a data spec gives: loaders of ``(inputs, targets)`` batches and what reports say about them.

    classification: float images ``[B, C, H, W]`` and int64 labels ``[B]``; causal_lm: int64 token ids
    ``[B, T]`` and the int64 next-token ids ``[B, T]``. ``val`` is never shuffled. ``example`` is one val
    input with batch dimension 1, for tracing, counting FLOPs and ONNX export."""

    task: Task
    train: DataLoader
    val: DataLoader
    example: torch.Tensor
    description: str
    num_classes: int | None = None
    vocab_size: int | None = None


def build_data(
    spec: str,
    *,
    model: nn.Module | None = None,
    batch_size: int = 128,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tokenizer: str | os.PathLike | None = None,
    block_size: int | None = None,
    seed: int = 0,
) -> TaskData:
    """The data ``spec`` names (see ``DATA_FORMS``), shaped for ``model`` when given.

    The model decides what it can: image channels (its first convolution), timm's preprocessing, the text
    window length and the largest token id. Options a form does not use are an error rather than silently
    ignored. Train batches are shuffled by a generator seeded with ``seed``, so runs repeat exactly."""
    if batch_size < 1:
        raise DataSpecError(f"batch size must be at least 1, got {batch_size}")
    options = {"image_size": image_size, "mean": mean, "std": std, "tokenizer": tokenizer, "block_size": block_size}
    family, sep, rest = spec.partition(":")
    if spec == "mnist":
        _reject_options(spec, options, allowed=())
        return _mnist(model, batch_size, seed)
    if sep and family == "imagefolder":
        _reject_options(spec, options, allowed=("image_size", "mean", "std"))
        return _image_folder(spec, _nonempty(rest, spec, "DIR"), model, batch_size, image_size, mean, std, seed)
    if sep and family == "text":
        _reject_options(spec, options, allowed=("tokenizer", "block_size"))
        return _text(spec, _nonempty(rest, spec, "FILE"), model, batch_size, tokenizer, block_size, seed)
    if sep and _is_dotted_name(family):
        _reject_options(spec, options, allowed=())
        return _factory(spec)
    raise DataSpecError(f"unknown data spec {spec!r}; accepted forms:\n  " + "\n  ".join(DATA_FORMS))


# --- common pieces --------------------------------------------------------------------------------------------


def _reject_options(spec: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    """A flag the form ignores is a mistake the user should hear about, not a silent no-op."""
    unused = [name for name, value in options.items() if value is not None and name not in allowed]
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise DataSpecError(f"data spec {spec!r} does not take {flags}")


def _nonempty(text: str, spec: str, what: str) -> str:
    if not text:
        raise DataSpecError(f"data spec {spec!r} names no {what}")
    return text


def _is_dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _loaders(train_set: Dataset, val_set: Dataset, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """Seeded shuffled train batches (dropping the ragged last one only when a full batch exists, so a tiny
    split still yields a batch) and val batches in order, all of it kept."""
    train = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(train_set) > batch_size,
        num_workers=0,
    )
    val = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=0)
    return train, val


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(size) for size in tensor.shape)


def _first_conv(model: nn.Module) -> nn.Module | None:
    """The layer that sees the image: the one timm names ``first_conv``, else the first Conv2d registered."""
    cfg = getattr(model, "pretrained_cfg", None)
    name = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(name, str):
        try:
            return model.get_submodule(name)
        except AttributeError:
            pass
    return next((module for module in model.modules() if isinstance(module, nn.Conv2d)), None)


def _input_channels(model: nn.Module | None) -> int | None:
    conv = None if model is None else _first_conv(model)
    channels = getattr(conv, "in_channels", None)
    return channels if isinstance(channels, int) else None


# --- mnist ----------------------------------------------------------------------------------------------------


def _mnist(model: nn.Module | None, batch_size: int, seed: int) -> TaskData:
    """Exactly the tensors the metaprune population is trained and scored on."""
    channels = _input_channels(model)
    if channels not in (None, 1):
        raise DataSpecError(f"data spec 'mnist' is 1x28x28 grayscale, but the model's first layer takes {channels}")
    train_set, val_set = load_mnist("train", normalize=True), load_mnist("eval", normalize=True)
    train, val = _loaders(train_set, val_set, batch_size, seed)
    example = val_set.images[:1]
    description = (
        f"mnist: {len(train_set.classes)} classes, {len(train_set):,} train / {len(val_set):,} val images "
        f"of {_shape(example[0])}"
    )
    return TaskData("classification", train, val, example, description, num_classes=len(train_set.classes))


# --- imagefolder:DIR ------------------------------------------------------------------------------------------


def _image_folder(
    spec: str,
    directory: str,
    model: nn.Module | None,
    batch_size: int,
    image_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    seed: int,
) -> TaskData:
    root = Path(directory)
    if not root.is_dir():
        raise DataSpecError(f"{spec}: image folder {root} does not exist")
    channels = _input_channels(model) or 3
    if channels not in (1, 3):
        raise DataSpecError(f"{spec}: the model takes {channels}-channel images; image folders give 1 or 3")
    if image_size is not None and image_size < 1:
        raise DataSpecError(f"{spec}: image size must be positive, got {image_size}")
    timm_model = model is not None and isinstance(getattr(model, "pretrained_cfg", None), dict)
    if timm_model:
        transform = _timm_transform(spec, model, channels, image_size, mean, std)
    else:
        transform = _plain_transform(spec, channels, image_size, mean, std)
    train_set, val_set = (_open_split(spec, root / split, transform) for split in ("train", "val"))
    if train_set.classes != val_set.classes:
        raise DataSpecError(
            f"{spec}: {root / 'train'} has classes {_class_list(train_set)} but {root / 'val'} has "
            f"{_class_list(val_set)}; both need the same class folders"
        )
    if not timm_model and image_size is None:  # only a resize makes mixed sizes stackable into batches
        _check_one_size(spec, [train_set, val_set])
    example = _load_example(spec, val_set)
    train, val = _loaders(train_set, val_set, batch_size, seed)
    description = (
        f"{spec}: {len(train_set.classes)} classes, {len(train_set):,} train / {len(val_set):,} val images "
        f"of {_shape(example[0])}"
    )
    return TaskData("classification", train, val, example, description, num_classes=len(train_set.classes))


def _plain_transform(
    spec: str, channels: int, image_size: int | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Callable:
    from torchvision import transforms

    steps: list[Callable] = [transforms.Grayscale(1)] if channels == 1 else []
    if image_size is not None:
        steps.append(transforms.Resize((image_size, image_size)))
    steps.append(transforms.ToTensor())
    if mean is not None or std is not None:
        mean = _per_channel(spec, "mean", mean or (0.0,), channels)
        std = _per_channel(spec, "std", std or (1.0,), channels)
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def _timm_transform(
    spec: str,
    model: nn.Module,
    channels: int,
    image_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Callable:
    """timm's eval preprocessing for ``model``. Its pretrained config describes the released weights (3x224x224
    for a ViT built with ``img_size=28, in_chans=1`` too), so the size and channels come from the model."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    config = resolve_data_config({}, model=model)
    size = (image_size, image_size) if image_size is not None else _timm_image_size(model, config)
    config["input_size"] = (channels, *size)
    config["mean"] = _per_channel(spec, "mean", mean or _to_channels(config["mean"], channels), channels)
    config["std"] = _per_channel(spec, "std", std or _to_channels(config["std"], channels), channels)
    # The config's crop_pct (resize larger, then centre-crop) is how the released ImageNet weights were scored;
    # a model built at another size and trained by the user saw whole images, so they are resized whole.
    config["crop_pct"] = 1.0
    transform = create_transform(**config, is_training=False)
    if channels == 1:
        transform = transforms.Compose([transforms.Grayscale(1), *getattr(transform, "transforms", [transform])])
    return transform


def _timm_image_size(model: nn.Module, config: dict[str, Any]) -> tuple[int, int]:
    """A patch-embedding model only takes the size it was built for; others take the config's."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(side, int) for side in size):
        return (size[0], size[1])
    return tuple(config["input_size"][1:])


def _to_channels(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """RGB statistics for a grayscale model: their average, the grayscale image's own statistic."""
    values = tuple(float(value) for value in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


def _per_channel(spec: str, name: str, values: Sequence[float], channels: int) -> tuple[float, ...]:
    """One value for every channel, or one for all: a 3-value mean on 1-channel images would broadcast them
    into 3 channels instead of failing."""
    values = tuple(float(value) for value in values)
    if len(values) not in (1, channels):
        raise DataSpecError(f"{spec}: --{name} has {len(values)} values but the images have {channels} channels")
    if name == "std" and min(values) <= 0:
        raise DataSpecError(f"{spec}: --std values must be positive, got {values}")
    return values * channels if len(values) == 1 else values


def _open_split(spec: str, folder: Path, transform: Callable) -> ImageFolder:
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise DataSpecError(f"{spec}: {folder} does not exist; expected {folder}/<class>/<image>")
    try:
        return ImageFolder(folder, transform=transform)
    except FileNotFoundError as err:  # no class folders, or class folders without images
        raise DataSpecError(f"{spec}: {folder} is not laid out as {folder}/<class>/<image>: {err}") from err


def _class_list(dataset: ImageFolder) -> str:
    shown = ", ".join(dataset.classes[:8])
    return f"[{shown}{', ...' if len(dataset.classes) > 8 else ''}] ({len(dataset.classes)})"


def _check_one_size(spec: str, datasets: Sequence[ImageFolder]) -> None:
    """Batches stack images, so without a resize they must all be one size. Reading a few hundred headers
    finds a mixed folder now instead of at some batch in the middle of training."""
    from PIL import Image

    first: tuple[Path, tuple[int, int]] | None = None
    for dataset in datasets:
        step = max(1, len(dataset.samples) // SIZE_CHECK_LIMIT)
        for path, _ in dataset.samples[::step]:
            try:
                with Image.open(path) as image:
                    size = image.size
            except OSError as err:
                raise DataSpecError(f"{spec}: cannot read image {path}: {err}") from err
            if first is None:
                first = (Path(path), size)
            elif size != first[1]:
                raise DataSpecError(
                    f"{spec}: images differ in size ({first[0]} is {first[1][0]}x{first[1][1]}, {path} is "
                    f"{size[0]}x{size[1]}); pass --image-size N to resize them all to NxN"
                )


def _load_example(spec: str, dataset: ImageFolder) -> torch.Tensor:
    """The first val image through the full transform: proves the pipeline works before training starts."""
    try:
        image, _ = dataset[0]
    except Exception as err:
        raise DataSpecError(f"{spec}: loading {dataset.samples[0][0]} failed: {type(err).__name__}: {err}") from err
    return image.unsqueeze(0)


# --- text:FILE ------------------------------------------------------------------------------------------------


class TokenWindows(Dataset):
    """Consecutive non-overlapping windows of ``block_size + 1`` tokens as ``(x, y)``, ``y`` being ``x`` one
    token ahead. Windows are views of one tensor, so the corpus is held once, not once per input and target."""

    def __init__(self, tokens: torch.Tensor, block_size: int) -> None:
        count = len(tokens) // (block_size + 1)
        self.windows = tokens[: count * (block_size + 1)].view(count, block_size + 1)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.windows[index]
        return window[:-1], window[1:]


def _text(
    spec: str,
    source: str,
    model: nn.Module | None,
    batch_size: int,
    tokenizer: str | os.PathLike | None,
    block_size: int | None,
    seed: int,
) -> TaskData:
    text = _read_text(spec, source)
    if tokenizer is None:
        tokens, vocab_size, token_kind = encode_bytes(text), BYTE_VOCAB_SIZE, "byte-level"
    else:
        tokens, vocab_size = _tokenize(spec, text, Path(tokenizer))
        token_kind = f"{tokenizer} tokenizer"
    config = getattr(model, "config", None)
    model_vocab = getattr(config, "vocab_size", None)
    if isinstance(model_vocab, int) and model_vocab < vocab_size:
        raise DataSpecError(
            f"{spec}: the model's vocab_size is {model_vocab} but the {token_kind} tokens need {vocab_size}; "
            "use a model with a larger vocabulary or a matching --tokenizer"
        )
    block_size = _block_size(spec, block_size, _context_length(config))
    splits = {name: tokens[split_slice(len(tokens), name, TEXT_EVAL_FRACTION)] for name in ("train", "eval")}
    for name, split in splits.items():
        if len(split) < block_size + 1:
            raise DataSpecError(
                f"{spec}: the {'val' if name == 'eval' else name} split has {len(split):,} tokens, too few for "
                f"one window of {block_size} + 1 ({len(tokens):,} tokens in all); give more text or a smaller "
                "--block-size"
            )
    train_set, val_set = TokenWindows(splits["train"], block_size), TokenWindows(splits["eval"], block_size)
    train, val = _loaders(train_set, val_set, batch_size, seed)
    example = val_set[0][0].unsqueeze(0)
    description = (
        f"{spec}: {len(tokens):,} {token_kind} tokens (vocab {vocab_size:,}), {len(train_set):,} train / "
        f"{len(val_set):,} val windows of {block_size}"
    )
    return TaskData("causal_lm", train, val, example, description, vocab_size=vocab_size)


def _read_text(spec: str, source: str) -> str:
    try:
        return load_text_corpus(source)
    except FileNotFoundError as err:
        raise DataSpecError(f"{spec}: {err}") from err
    except UnicodeDecodeError as err:
        raise DataSpecError(f"{spec}: {source} is not UTF-8 text: {err}") from err


def _tokenize(spec: str, text: str, directory: Path) -> tuple[torch.Tensor, int]:
    """Token ids from a tokenizer saved with ``save_pretrained``, read offline; its size counts added tokens."""
    if not directory.is_dir():
        raise DataSpecError(f"{spec}: tokenizer directory {directory} does not exist")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:
        raise DataSpecError(f"{spec}: cannot load a tokenizer from {directory}: {type(err).__name__}: {err}") from err
    ids = tok.encode(text, add_special_tokens=False, verbose=False)  # verbose: no "longer than max length" warning
    return torch.tensor(ids, dtype=torch.int64), len(tok)


def _context_length(config: Any) -> int | None:
    """The most positions a Hugging Face model embeds (GPT-2 names it ``n_positions``, most others not)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _block_size(spec: str, block_size: int | None, context: int | None) -> int:
    if block_size is None:
        return min(DEFAULT_BLOCK_SIZE, context) if context else DEFAULT_BLOCK_SIZE
    if block_size < 1:
        raise DataSpecError(f"{spec}: block size must be positive, got {block_size}")
    if context is not None and block_size > context:
        raise DataSpecError(f"{spec}: --block-size {block_size} is longer than the model's {context} positions")
    return block_size


# --- PKG.MODULE:CALLABLE --------------------------------------------------------------------------------------


def _factory(spec: str) -> TaskData:
    """The user's loaders, used as they are; only checked to yield what the task needs."""
    from hypernets.models import ModelSpecError, parse_kwargs

    target, _, query = spec.partition("?")
    module_name, _, attribute = target.partition(":")
    if not _is_dotted_name(attribute):
        raise DataSpecError(f"data spec {spec!r}: {attribute!r} is not a callable's name; e.g. {module_name}:loaders")
    try:
        kwargs = parse_kwargs(query, "&")
    except ModelSpecError as err:
        raise DataSpecError(f"data spec {spec!r}: {err}") from err
    result = call_factory(
        target,
        kwargs,
        error=DataSpecError,
        kind="data module",
        missing=lambda cwd: (
            f"no data module {module_name!r} in {cwd} or the installed packages; accepted forms:\n  "
            + "\n  ".join(DATA_FORMS)
        ),
    )
    if not (isinstance(result, tuple) and len(result) == 2):
        got = f"a {len(result)}-tuple" if isinstance(result, tuple) else f"a {type(result).__name__}"
        raise DataSpecError(f"{target} returned {got}; expected a (train_loader, val_loader) pair")
    train, val = result
    train_inputs, _ = _first_batch(target, "train", train)
    val_inputs, _ = _first_batch(target, "val", val)
    task, val_task = _task_of(train_inputs), _task_of(val_inputs)
    if task != val_task:
        raise DataSpecError(f"{target}: train batches are {task} inputs but val batches are {val_task} inputs")
    example = val_inputs[:1].clone()  # not a view that keeps the whole batch alive
    dataset = getattr(train, "dataset", None)
    classes, vocab_size = getattr(dataset, "classes", None), getattr(dataset, "vocab_size", None)
    description = f"{target}: {task}, {_count(train)} train / {_count(val)} val batches, inputs of {_shape(example[0])}"
    return TaskData(
        task,
        train,
        val,
        example,
        description,
        num_classes=len(classes) if isinstance(classes, Sequence) else None,
        vocab_size=vocab_size if isinstance(vocab_size, int) else None,
    )


def _first_batch(target: str, split: str, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``(inputs, targets)`` batch, checked. Peeking leaves the random state as it was, so the first
    epoch is still the one the user seeded."""
    where = f"{target}: the {split} loader"
    if not isinstance(loader, Iterable):
        raise DataSpecError(f"{where} is a {type(loader).__name__}, not an iterable of (inputs, targets) batches")
    if isinstance(loader, Iterator):
        raise DataSpecError(f"{where} is a one-shot iterator; return a DataLoader (or a re-iterable) for every epoch")
    generators = _generators(loader)
    states = [generator.get_state() for generator in generators]
    try:
        with torch.random.fork_rng(devices=[]):
            batch = next(iter(loader))
    except StopIteration:
        raise DataSpecError(f"{where} yields no batches") from None
    except Exception as err:
        raise DataSpecError(f"{where} raised {type(err).__name__}: {err}") from err
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        got = f"{len(batch)} items" if isinstance(batch, (tuple, list)) else f"a {type(batch).__name__}"
        raise DataSpecError(f"{where} yields {got} per batch; expected (inputs, targets) pairs")
    inputs, targets = batch
    if not (isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        raise DataSpecError(
            f"{where} yields ({type(inputs).__name__}, {type(targets).__name__}) batches; expected two tensors"
        )
    _check_batch(where, inputs, targets)
    return inputs, targets


def _check_batch(where: str, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if inputs.ndim < 2 or targets.ndim < 1 or len(targets) != len(inputs):
        raise DataSpecError(
            f"{where} yields inputs of shape {list(inputs.shape)} with targets of shape {list(targets.shape)}; "
            "both need the batch dimension first"
        )
    if _task_of(inputs) == "causal_lm" and (inputs.ndim != 2 or targets.shape != inputs.shape):
        raise DataSpecError(
            f"{where} yields integer inputs of shape {list(inputs.shape)} and targets of shape "
            f"{list(targets.shape)}: integer inputs are token ids [B, T] with next-token targets [B, T] "
            "(images must be float)"
        )


def _task_of(inputs: torch.Tensor) -> Task:
    return "classification" if inputs.is_floating_point() else "causal_lm"


def _generators(loader: Any) -> list[torch.Generator]:
    """The generators a DataLoader's shuffling draws from (its own and its sampler's), each once."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not seen for seen in found):
            found.append(generator)
    return found


def _count(loader: Any) -> str:
    try:
        return f"{len(loader):,}"
    except TypeError:
        return "?"
