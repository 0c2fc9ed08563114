"""Tests for hypernets.data: embedded MNIST, CIFAR pickles, image folders and byte-level text."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hypernets.data
from hypernets.data import (
    MNIST_MEAN,
    MNIST_STD,
    VOCAB_SIZE,
    IDXFormatError,
    TokenStream,
    decode_bytes,
    encode_bytes,
    load_cifar10,
    load_cifar100,
    load_image_folder,
    load_mnist,
    load_text_corpus,
    read_idx,
)

PACKAGE_DIR = Path(hypernets.data.__file__).parent
MNIST_DIR = PACKAGE_DIR / "mnist"
MNIST_MD5 = {  # published checksums of the official MNIST test split
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGES_GZ, LABELS_GZ = MNIST_MD5


def _raw_mnist(name: str) -> bytes:
    return gzip.decompress((MNIST_DIR / name).read_bytes())


# ----------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("name", sorted(MNIST_MD5))
def test_embedded_mnist_matches_published_md5(name):
    assert hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest() == MNIST_MD5[name]


def test_package_code_never_reads_the_shared_checkout():
    for source in PACKAGE_DIR.glob("*.py"):
        assert "shared" not in source.read_text(), source


def test_mnist_shapes_dtypes_and_ranges():
    data = load_mnist("all")
    x, y = data.tensors
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert set(y.tolist()) == set(range(10)) and data.classes == [str(d) for d in range(10)]


def test_mnist_split_sizes_disjoint_and_deterministic():
    train, eval_, everything = load_mnist("train"), load_mnist("eval"), load_mnist("all")
    assert (len(train), len(eval_)) == (8000, 2000)
    for split, other in ((train, load_mnist("train")), (eval_, load_mnist("eval"))):
        assert all(torch.equal(a, b) for a, b in zip(split.tensors, other.tensors, strict=True))
    # Train then eval is exactly the whole file, so the splits cannot overlap.
    assert torch.equal(torch.cat([train.images, eval_.images]), everything.images)
    assert torch.equal(torch.cat([train.labels, eval_.labels]), everything.labels)


def test_mnist_known_values_from_the_raw_files():
    images, labels = _raw_mnist(IMAGES_GZ), _raw_mnist(LABELS_GZ)
    assert struct.unpack(">4I", images[:16]) == (2051, 10_000, 28, 28)
    pixel_sum = lambda i: sum(images[16 + 784 * i : 16 + 784 * (i + 1)])
    train, eval_ = load_mnist("train"), load_mnist("eval")
    assert train.labels[0] == labels[8] == 7
    assert eval_.labels[0] == labels[8 + 8000]
    assert round(train.images[0].sum().item() * 255) == pixel_sum(0)
    assert round(eval_.images[0].sum().item() * 255) == pixel_sum(8000)


def test_mnist_normalize_flag():
    plain, normalized = load_mnist("eval").images, load_mnist("eval", normalize=True).images
    torch.testing.assert_close(normalized * MNIST_STD + MNIST_MEAN, plain)


def test_mnist_from_a_user_directory(tmp_path):
    for name in MNIST_MD5:
        shutil.copy(MNIST_DIR / name, tmp_path / name)
    gz = load_mnist("eval", root=tmp_path)
    (tmp_path / IMAGES_GZ).unlink()  # uncompressed files work as well
    (tmp_path / IMAGES_GZ.removesuffix(".gz")).write_bytes(_raw_mnist(IMAGES_GZ))
    raw = load_mnist("eval", root=tmp_path)
    assert torch.equal(gz.images, load_mnist("eval").images) and torch.equal(raw.images, gz.images)


def test_mnist_missing_file_names_it(tmp_path):
    shutil.copy(MNIST_DIR / IMAGES_GZ, tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(root=tmp_path)


def test_mnist_label_count_mismatch(tmp_path):
    shutil.copy(MNIST_DIR / IMAGES_GZ, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 3) + bytes([1, 2, 3]))
    with pytest.raises(IDXFormatError, match="3 labels"):
        load_mnist(root=tmp_path)


def test_read_idx_multibyte_big_endian(tmp_path):
    path = tmp_path / "ints.idx"
    header = bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 3)  # int32, 2 dims: 2 x 3
    path.write_bytes(header + struct.pack(">6i", -1, 2, 3, 4, 5, 70000))
    np.testing.assert_array_equal(read_idx(path), [[-1, 2, 3], [4, 5, 70000]])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: b"\x00\x00\x99\x03" + raw[4:], "bad IDX magic"),
        (lambda raw: b"\x12\x34" + raw[2:], "bad IDX magic"),
        (lambda raw: raw[:10], "truncated IDX header"),
        (lambda raw: raw[:-100], "truncated or corrupt"),
        (lambda raw: raw + b"\x00", "truncated or corrupt"),
        (lambda raw: (MNIST_DIR / IMAGES_GZ).read_bytes()[:-500], "damaged gzip"),
        (lambda raw: b"", "empty file"),
    ],
)
def test_corrupt_idx_raises_naming_the_file(tmp_path, corrupt, message):
    path = tmp_path / "broken-idx3-ubyte.gz"
    path.write_bytes(corrupt(_raw_mnist(IMAGES_GZ)))
    with pytest.raises(IDXFormatError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------- CIFAR

# Hand-set pixels of image 0: (channel, row, col) -> value. The official row layout is 1024 red,
# then 1024 green, then 1024 blue bytes, each plane row-major 32x32.
PIXELS = {(0, 1, 2): 200, (1, 3, 4): 100, (2, 31, 0): 50}


def _batch(n: int, rng: np.random.Generator) -> np.ndarray:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    for (channel, row, col), value in PIXELS.items():
        data[0, channel * 1024 + row * 32 + col] = value
    return data


def _dump(path: Path, obj: object, protocol: int) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _write_cifar10(root: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    rng = np.random.default_rng(0)
    names = b"airplane automobile bird cat deer dog frog horse ship truck".split()
    _dump(root / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    for i, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        batch = {b"batch_label": name.encode(), b"data": _batch(3, rng), b"labels": [i, 9, 0]}
        _dump(root / name, batch, protocol)


def _write_cifar100(root: Path) -> None:
    rng = np.random.default_rng(1)
    meta = {
        b"fine_label_names": [b"f%d" % i for i in range(100)],
        b"coarse_label_names": [b"c%d" % i for i in range(20)],
    }
    _dump(root / "meta", meta, pickle.DEFAULT_PROTOCOL)
    for name, n in (("train", 4), ("test", 2)):
        labels = {b"fine_labels": [99, *range(n - 1)], b"coarse_labels": [19, *range(n - 1)]}
        batch = {b"data": _batch(n, rng), **labels}
        _dump(root / name, batch, pickle.DEFAULT_PROTOCOL)


def _assert_hand_set_pixels(images: torch.Tensor) -> None:
    for (channel, row, col), value in PIXELS.items():
        assert round(images[0, channel, row, col].item() * 255) == value


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10(tmp_path, protocol):
    _write_cifar10(tmp_path, protocol)
    train, test = load_cifar10(tmp_path, "train"), load_cifar10(tmp_path, "test")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.float32
    assert test.images.shape == (3, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == [0, 9, 0, 1, 9, 0, 2, 9, 0, 3, 9, 0, 4, 9, 0]
    assert test.labels.tolist() == [5, 9, 0]
    assert train.classes[:2] == ["airplane", "automobile"] and len(train.classes) == 10
    _assert_hand_set_pixels(train.images)
    _assert_hand_set_pixels(test.images)


def test_cifar100_fine_and_coarse(tmp_path):
    _write_cifar100(tmp_path)
    fine, coarse = load_cifar100(tmp_path, "train"), load_cifar100(tmp_path, "test", labels="coarse")
    assert fine.images.shape == (4, 3, 32, 32) and coarse.images.shape == (2, 3, 32, 32)
    assert fine.labels.tolist() == [99, 0, 1, 2] and coarse.labels.tolist() == [19, 0]
    assert len(fine.classes) == 100 and coarse.classes[19] == "c19"
    _assert_hand_set_pixels(fine.images)


def test_cifar_missing_file_is_named(tmp_path):
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        load_cifar10(tmp_path)
    load_cifar10(tmp_path, "test")  # the test split does not need it


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.mkdir, (str(self.target),)


def test_cifar_refuses_pickles_with_other_classes(tmp_path):
    _write_cifar10(tmp_path)
    target = tmp_path / "pwned"
    _dump(tmp_path / "test_batch", {b"data": _Exploit(target), b"labels": []}, pickle.DEFAULT_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch.*refusing to load (posix|nt)\.mkdir"):
        load_cifar10(tmp_path, "test")
    assert not target.exists()


def test_cifar_rejects_wrong_shapes(tmp_path):
    _write_cifar10(tmp_path)
    _dump(tmp_path / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 4)
    with pytest.raises(ValueError, match="shape"):
        load_cifar10(tmp_path, "test")


# ---------------------------------------------------------------------------------- image folder


def test_image_folder(tmp_path):
    colors = {"cat": [(255, 0, 0), (0, 0, 255)], "ant": [(0, 255, 0)]}  # "ant" sorts first
    for name, fills in colors.items():
        (tmp_path / name).mkdir()
        for i, fill in enumerate(fills):
            Image.new("RGB", (5, 7), fill).save(tmp_path / name / f"{i}.png")
    data = load_image_folder(tmp_path, image_size=8)
    assert data.classes == ["ant", "cat"] and len(data) == 3
    image, label = data[1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and label == 1
    torch.testing.assert_close(image.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]))
    assert [label for _, label in data] == [0, 1, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="class folder"):
        load_image_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no valid file for the classes cat"):
        load_image_folder(tmp_path)


# ------------------------------------------------------------------------------------------ text


def test_default_corpus_is_large_and_deterministic():
    text = load_text_corpus()
    assert len(text) > 400_000 and text == load_text_corpus()


def test_bytes_round_trip():
    text = "Graph hypernetworks — prédire ✓\n" + load_text_corpus()[:5000]
    tokens = encode_bytes(text)
    assert tokens.dtype == torch.int64 and tokens.min() >= 0 and tokens.max() < VOCAB_SIZE
    assert decode_bytes(tokens) == text


def test_token_stream_batches():
    stream = TokenStream.from_text(load_text_corpus())
    x, y = stream.batch(8, 64, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = stream.batch(8, 64, torch.Generator().manual_seed(0))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])


def test_token_stream_split_is_disjoint():
    stream = TokenStream(torch.tensor([0] * 90 + [1] * 10))
    assert len(stream.split("train")) == 90 and len(stream.split("eval")) == 10
    gen = torch.Generator().manual_seed(0)
    assert stream.batch(16, 9, gen, split="eval")[0].eq(1).all()
    assert stream.batch(16, 9, gen)[1].eq(0).all()  # train windows never reach into eval
    with pytest.raises(ValueError, match="too few"):
        stream.batch(1, 10, split="eval")


def test_user_text_file_and_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, text in {"b.txt": "B", "a.txt": "A", "sub/c.txt": "C", "skip.md": "X"}.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert load_text_corpus(tmp_path / "b.txt") == "B"
    assert load_text_corpus(tmp_path) == "A\n\nB\n\nC"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.txt files"):
        load_text_corpus(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_corpus(tmp_path / "missing.txt")


def _saved_hf_dataset(tmp_path: Path) -> Path:
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    return tmp_path


def test_hf_dataset_without_datasets_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_text_corpus(_saved_hf_dataset(tmp_path))


def test_hf_dataset_dict_is_read_split_by_split(tmp_path, monkeypatch):
    fake = types.ModuleType("datasets")
    fake.DatasetDict = type("DatasetDict", (dict,), {})
    saved = fake.DatasetDict(test={"text": ["c"]}, train={"text": ["a", "b"]})
    fake.load_from_disk = lambda path: saved if path == str(tmp_path) else None
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert load_text_corpus(_saved_hf_dataset(tmp_path)) == "c\n\na\n\nb"
