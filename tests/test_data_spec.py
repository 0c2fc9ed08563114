"""Tests for hypernets.data.spec: every data-spec form against real files the tests write."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from hypernets.data import DATA_FORMS, DataSpecError, TaskData, build_data, encode_bytes, load_mnist, split_slice

# --- mnist ----------------------------------------------------------------------------------------------------


def test_mnist_is_the_embedded_split_the_population_uses():
    data = build_data("mnist")
    train, val = load_mnist("train", normalize=True), load_mnist("eval", normalize=True)
    assert isinstance(data, TaskData) and data.task == "classification" and data.num_classes == 10
    assert (len(data.train.dataset), len(data.val.dataset)) == (8000, 2000)
    assert torch.equal(data.train.dataset.tensors[0], train.images)
    assert torch.equal(data.train.dataset.tensors[1], train.labels)
    images, labels = next(iter(data.val))
    assert torch.equal(images, val.images[:128]) and torch.equal(labels, val.labels[:128])
    assert labels.dtype == torch.int64 and images.dtype == torch.float32
    assert torch.equal(data.example, val.images[:1])
    assert data.description == "mnist: 10 classes, 8,000 train / 2,000 val images of 1x28x28"
    assert len(data.train) == 8000 // 128 and len(data.val) == -(-2000 // 128)  # train drops the ragged batch


def test_mnist_shuffle_repeats_under_a_seed_and_changes_with_it():
    first = [next(iter(build_data("mnist", batch_size=64, seed=seed).train))[1] for seed in (0, 0, 1)]
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], first[2])
    images, labels = next(iter(build_data("mnist", batch_size=64).train))
    train = load_mnist("train", normalize=True)
    row = (train.images.flatten(1) == images[0].flatten()).all(1).nonzero()  # images keep their labels
    assert train.labels[row[0, 0]] == labels[0]


def test_mnist_refuses_a_3_channel_model_and_options_it_does_not_use():
    with pytest.raises(DataSpecError, match="takes 3"):
        build_data("mnist", model=nn.Conv2d(3, 4, 3))
    with pytest.raises(DataSpecError, match="--image-size"):
        build_data("mnist", image_size=32)


# --- imagefolder:DIR ------------------------------------------------------------------------------------------

CLASSES = ("cat", "dog")


def _pixels(label: int, index: int, size: int = 28) -> np.ndarray:
    """A different gradient per image, so resizes and crops change values and images are told apart."""
    ramp = np.add.outer(np.arange(size), np.arange(size)) * 4 + 40 * label + 7 * index
    return (ramp % 256).astype(np.uint8)


def _write_folder(root: Path, classes: dict[str, Sequence[str]] | None = None, per_class: int = 4) -> Path:
    classes = classes or {"train": CLASSES, "val": CLASSES}
    for split, names in classes.items():
        for label, name in enumerate(names):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                Image.fromarray(_pixels(label, index), mode="L").save(root / split / name / f"{index}.png")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "data")


def _gray_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_imagefolder_follows_a_1_channel_model(folder: Path):
    data = build_data(f"imagefolder:{folder}", model=_gray_cnn(), batch_size=4)
    images, labels = next(iter(data.val))
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images[0, 0], torch.from_numpy(_pixels(0, 0)).float() / 255)
    assert data.num_classes == 2 and data.example.shape == (1, 1, 28, 28)
    assert data.description == f"imagefolder:{folder}: 2 classes, 8 train / 8 val images of 1x28x28"
    assert len(data.train) == 2  # 8 images > a batch of 4: full batches only


def test_imagefolder_gives_rgb_to_a_3_channel_model_and_by_default(folder: Path):
    for model in (nn.Conv2d(3, 4, 3), None):
        images, _ = next(iter(build_data(f"imagefolder:{folder}", model=model, batch_size=16).train))
        assert images.shape == (8, 3, 28, 28)  # smaller than a batch: nothing dropped
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


def test_imagefolder_image_size_resizes(folder: Path):
    data = build_data(f"imagefolder:{folder}", model=_gray_cnn(), image_size=16, batch_size=4)
    assert next(iter(data.train))[0].shape == (4, 1, 16, 16) and data.example.shape == (1, 1, 16, 16)


def test_imagefolder_mean_std_normalize(folder: Path):
    data = build_data(f"imagefolder:{folder}", model=_gray_cnn(), mean=(0.5,), std=(0.25,), batch_size=4)
    images, _ = next(iter(data.val))
    value = _pixels(0, 0)[3, 5]  # (3 + 5) * 4 = 32
    assert images[0, 0, 3, 5].item() == pytest.approx((value / 255 - 0.5) / 0.25, abs=1e-6)
    with pytest.raises(DataSpecError, match="3 values but the images have 1 channels"):
        build_data(f"imagefolder:{folder}", model=_gray_cnn(), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


def test_imagefolder_uses_timms_transform_for_a_timm_model(folder: Path):
    import timm
    from timm.data import create_transform

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, in_chans=1, num_classes=2, depth=1
    )
    data = build_data(f"imagefolder:{folder}", model=model, batch_size=4)
    assert data.example.shape == (1, 1, 28, 28)
    expected = create_transform(
        input_size=(1, 28, 28), interpolation="bicubic", mean=(0.5,), std=(0.5,), crop_pct=1.0, is_training=False
    )(Image.open(folder / "val" / "cat" / "0.png"))
    assert torch.allclose(data.example[0], expected)
    plain = torch.from_numpy(_pixels(0, 0)).float() / 255 * 2 - 1
    # Whole images, not timm's ImageNet crop: a 28 x 28 image reaches the model as it is, normalized.
    torch.testing.assert_close(data.example[0, 0], plain, atol=1e-5, rtol=0)
    images, _ = next(iter(data.train))
    assert model.eval()(images).shape == (4, 2)


def test_imagefolder_class_lists_must_match(tmp_path: Path):
    root = _write_folder(tmp_path / "data", {"train": CLASSES, "val": ("bird", "cat")})
    with pytest.raises(DataSpecError, match="classes") as err:
        build_data(f"imagefolder:{root}")
    assert str(root / "train") in str(err.value) and str(root / "val") in str(err.value)


@pytest.mark.parametrize("layout", ["missing", "no_val", "empty", "empty_train", "flat"])
def test_imagefolder_bad_layouts_name_the_folder(tmp_path: Path, layout: str):
    root = tmp_path / "data"
    if layout == "no_val":
        _write_folder(root, {"train": CLASSES})
    elif layout == "empty":
        root.mkdir()
    elif layout == "empty_train":
        _write_folder(root, {"val": CLASSES})
        (root / "train").mkdir()
    elif layout == "flat":  # images straight in train/, no class folders
        _write_folder(root, {"val": CLASSES})
        (root / "train").mkdir()
        Image.fromarray(_pixels(0, 0), mode="L").save(root / "train" / "0.png")
    with pytest.raises(DataSpecError, match=re.escape(str(root))):
        build_data(f"imagefolder:{root}")


def test_imagefolder_mixed_sizes_need_image_size(folder: Path):
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(folder / "train" / "dog" / "big.png")
    with pytest.raises(DataSpecError, match="--image-size"):
        build_data(f"imagefolder:{folder}")
    data = build_data(f"imagefolder:{folder}", image_size=28, batch_size=9)
    assert next(iter(data.train))[0].shape == (9, 3, 28, 28)


# --- PKG.MODULE:CALLABLE --------------------------------------------------------------------------------------

FACTORY_MODULE = "spec_test_factories"
FACTORIES = """
import torch
from torch.utils.data import DataLoader, TensorDataset


class Named(TensorDataset):
    classes = ["a", "b", "c"]


def loaders(n=8, size=4):
    data = Named(torch.randn(n, 1, size, size), torch.randint(0, 3, (n,)))
    return DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4)


def seeded():
    data = TensorDataset(torch.arange(16.0).view(16, 1, 1, 1), torch.arange(16))
    generator = torch.Generator().manual_seed(3)
    # train shuffles with its own generator, val with the global one
    return DataLoader(data, batch_size=4, shuffle=True, generator=generator), DataLoader(data, shuffle=True)


def tokens():
    ids = torch.randint(0, 50, (8, 9))
    data = TensorDataset(ids[:, :-1], ids[:, 1:])
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)


def not_tuple():
    return 3


def single():
    return loaders()[0]


def not_pairs():
    data = TensorDataset(torch.randn(8, 1, 4, 4))
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)


def not_tensors():
    return [([1, 2], [0, 1])], [([1, 2], [0, 1])]


def one_shot():
    return (batch for batch in loaders()[0]), loaders()[1]


def empty():
    return [], []


def uint8_images():
    data = TensorDataset(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.zeros(8, dtype=torch.int64))
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)


def broken():
    raise RuntimeError("no data here")
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(FACTORY_MODULE, None)


def test_factory_loaders_are_used_as_returned(factories: Path):
    path_before = list(sys.path)
    data = build_data(f"{FACTORY_MODULE}:loaders")
    assert sys.path == path_before
    assert data.task == "classification" and data.num_classes == 3 and data.vocab_size is None
    assert isinstance(data.train, DataLoader) and data.train.batch_size == 4
    assert data.example.shape == (1, 1, 4, 4)
    assert data.description == f"{FACTORY_MODULE}:loaders: classification, 2 train / 2 val batches, inputs of 1x4x4"


def test_factory_kwargs_pass_through(factories: Path):
    data = build_data(f"{FACTORY_MODULE}:loaders?n=12&size=5")
    assert len(data.train.dataset) == 12 and data.example.shape == (1, 1, 5, 5)


def test_factory_integer_inputs_are_causal_lm(factories: Path):
    data = build_data(f"{FACTORY_MODULE}:tokens")
    assert data.task == "causal_lm" and data.example.shape == (1, 8) and data.example.dtype == torch.int64


def test_factory_validation_leaves_random_state_alone(factories: Path):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    data = build_data(f"{FACTORY_MODULE}:seeded")
    assert torch.equal(torch.rand(3), expected)
    order = torch.cat([labels for _, labels in data.train])
    fresh = sys.modules[FACTORY_MODULE].seeded()[0]  # the first epoch the user seeded, not a later one
    assert torch.equal(order, torch.cat([labels for _, labels in fresh]))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not_tuple", "returned a int; expected a \\(train_loader, val_loader\\) pair"),
        ("single", "returned a DataLoader; expected"),
        ("not_pairs", "yields 1 items per batch; expected \\(inputs, targets\\) pairs"),
        ("not_tensors", "expected two tensors"),
        ("one_shot", "one-shot iterator"),
        ("empty", "yields no batches"),
        ("uint8_images", "images must be float"),
        ("broken", "raised RuntimeError: no data here"),
        ("missing", "has no attribute 'missing'"),
        ("loaders?colour=red", "raised TypeError"),
    ],
)
def test_factory_bad_returns_fail_naming_the_callable(factories: Path, name: str, message: str):
    with pytest.raises(DataSpecError, match=message) as err:
        build_data(f"{FACTORY_MODULE}:{name}")
    assert FACTORY_MODULE in str(err.value)


def test_factory_module_that_is_not_there(factories: Path):
    with pytest.raises(DataSpecError, match=f"no data module 'nowhere_to_be_found' in {factories}"):
        build_data("nowhere_to_be_found:loaders")


# --- text:FILE ------------------------------------------------------------------------------------------------

SENTENCES = ("the cat sat on the mat", "a dog ran in the park", "the bird sang a song")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"{i}: {SENTENCES[i % 3]}." for i in range(120)), encoding="utf-8")
    return path


def test_text_byte_windows_shift_by_one_and_val_covers_its_split(corpus: Path):
    data = build_data(f"text:{corpus}", block_size=16, batch_size=8)
    tokens = encode_bytes(corpus.read_text(encoding="utf-8"))
    assert data.task == "causal_lm" and data.vocab_size == 256
    x, y = next(iter(data.train))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    val_split = tokens[split_slice(len(tokens), "eval", 0.1)]
    windows = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in data.val])  # rebuild each 17-token window
    assert len(windows) == len(val_split) // 17
    assert torch.equal(windows.flatten(), val_split[: len(windows) * 17])  # consecutive, in order, all of them
    assert torch.equal(data.example, windows[:1, :-1])
    train_split = tokens[split_slice(len(tokens), "train", 0.1)]
    seen = sorted(map(tuple, torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in data.train]).tolist()))
    all_train = sorted(map(tuple, train_split[: len(train_split) // 17 * 17].view(-1, 17).tolist()))
    assert set(seen) <= set(all_train) and len(seen) == len(all_train) // 8 * 8


def test_text_train_shuffle_repeats_under_a_seed(corpus: Path):
    first = [next(iter(build_data(f"text:{corpus}", block_size=8, seed=seed).train))[0] for seed in (0, 0, 1)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def _gpt2(vocab_size: int, n_positions: int = 32) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_layer=1, n_embd=8, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def test_text_block_size_and_vocab_follow_the_model(corpus: Path):
    assert build_data(f"text:{corpus}").example.shape == (1, 128)
    assert build_data(f"text:{corpus}", model=_gpt2(300)).example.shape == (1, 32)
    with pytest.raises(DataSpecError, match=r"vocab_size is 100 .* need 256"):
        build_data(f"text:{corpus}", model=_gpt2(100))
    with pytest.raises(DataSpecError, match="--block-size 64 is longer than the model's 32 positions"):
        build_data(f"text:{corpus}", model=_gpt2(300), block_size=64)


def test_text_too_little_or_missing(tmp_path: Path):
    short = tmp_path / "short.txt"
    short.write_text("x" * 100, encoding="utf-8")
    with pytest.raises(DataSpecError, match="val split has 10 tokens"):
        build_data(f"text:{short}", block_size=16)
    with pytest.raises(DataSpecError, match=r"nothing\.txt"):
        build_data(f"text:{tmp_path / 'nothing.txt'}")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe" * 100)
    with pytest.raises(DataSpecError, match="not UTF-8"):
        build_data(f"text:{binary}")


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    directory = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(directory)
    return directory


def test_text_with_a_saved_tokenizer(corpus: Path, tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    data = build_data(f"text:{corpus}", tokenizer=tokenizer_dir, block_size=4, batch_size=2)
    assert data.vocab_size == len(tokenizer) < 30
    ids = torch.tensor(tokenizer.encode(corpus.read_text(encoding="utf-8"), add_special_tokens=False))
    val_split = ids[split_slice(len(ids), "eval", 0.1)]
    assert torch.equal(data.example[0], val_split[:4])
    assert str(tokenizer_dir) in data.description
    with pytest.raises(DataSpecError, match="vocab_size is 10"):
        build_data(f"text:{corpus}", tokenizer=tokenizer_dir, model=_gpt2(10))


def test_text_tokenizer_that_cannot_load(corpus: Path, tmp_path: Path):
    with pytest.raises(DataSpecError, match=r"tokenizer directory .*absent does not exist"):
        build_data(f"text:{corpus}", tokenizer=tmp_path / "absent")
    (tmp_path / "hollow").mkdir()
    with pytest.raises(DataSpecError, match=r"cannot load a tokenizer from .*hollow"):
        build_data(f"text:{corpus}", tokenizer=tmp_path / "hollow")


# --- the spec itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cifar10", "mnist:train", "imagefolder", "text", "-x:y", ""])
def test_unknown_specs_list_the_forms(spec: str):
    with pytest.raises(DataSpecError) as err:
        build_data(spec)
    assert all(form in str(err.value) for form in DATA_FORMS)


@pytest.mark.parametrize("spec", ["imagefolder:", "text:"])
def test_forms_without_a_path(spec: str):
    with pytest.raises(DataSpecError, match="names no"):
        build_data(spec)


def test_options_a_form_does_not_use_are_refused(corpus: Path, folder: Path):
    with pytest.raises(DataSpecError, match="does not take --tokenizer"):
        build_data(f"imagefolder:{folder}", tokenizer="x")
    with pytest.raises(DataSpecError, match="does not take --image-size, --mean"):
        build_data(f"text:{corpus}", image_size=8, mean=(0.5,))
