"""Real data sets that work offline: embedded MNIST, CIFAR-10/100 and image folders from a directory
the user names, and byte-level text (Python's own docs by default). ``build_data`` names any of them, or
the user's own loaders, with one spec string."""

from hypernets.data.base import LabeledTensorDataset, split_slice
from hypernets.data.cifar import load_cifar10, load_cifar100
from hypernets.data.folders import load_image_folder
from hypernets.data.idx import IDXFormatError, read_idx
from hypernets.data.mnist import MNIST_MEAN, MNIST_STD, load_mnist
from hypernets.data.spec import DATA_FORMS, DataSpecError, TaskData, build_data
from hypernets.data.text import VOCAB_SIZE, TokenStream, decode_bytes, encode_bytes, load_text_corpus

__all__ = [
    "DATA_FORMS",
    "MNIST_MEAN",
    "MNIST_STD",
    "VOCAB_SIZE",
    "DataSpecError",
    "IDXFormatError",
    "LabeledTensorDataset",
    "TaskData",
    "TokenStream",
    "build_data",
    "decode_bytes",
    "encode_bytes",
    "load_cifar10",
    "load_cifar100",
    "load_image_folder",
    "load_mnist",
    "load_text_corpus",
    "read_idx",
    "split_slice",
]
