"""Fashion-MNIST: 60,000 train + 10,000 test 28×28 grey images of 10 clothing classes.

Source: the Debian package ``dataset-fashion-mnist`` (the four ``*-ubyte.gz`` IDX files under
``/usr/share/datasets/fashion-mnist``, SHA-256 of each pinned below). ``fetch`` copies them
from there when the package is installed, else runs ``apt-get download`` (no root needed) and
unpacks the ``.deb`` with ``dpkg-deb -x``.

- Label: the class (T-shirt/top, Trouser, ..., Ankle boot).
- Groups: the class again (10 groups), as CIFAR-100's classes are the groups in the paper.
- x: pixels / 255, then ``(x - 0.2860) / 0.3530`` (mean and standard deviation of all train
  pixels), float32 of shape (1, 28, 28).
"""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ceag.app.data import download
from ceag.app.data.core import DataCorruptError, DataFetchError, GroupedDataset, check_sha256, say, sha256_file

NAME = "fashion-mnist"
DEB_PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = "usr/share/datasets/fashion-mnist"  # where the package puts the files
SYSTEM_DIR = Path("/") / PACKAGE_DIR
FILE_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FILES = tuple(FILE_SHA256)
ORIGIN = f"Fashion-MNIST, from the Debian package {DEB_PACKAGE}"
PREPROCESS_VERSION = 1

MEAN, STD = 0.2860, 0.3530
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = f"apt-get update && apt-get install {DEB_PACKAGE}"

DESCRIPTION = (  # .format(train, test)
    "Fashion-MNIST (Zalando; the IDX files of the Debian package dataset-fashion-mnist): "
    "{train:,} train and {test:,} test 28x28 grey images, 10 classes. Groups are the classes "
    "(10 groups), as CIFAR-100's classes are in the paper. x = (pixel/255 - 0.2860) / 0.3530, "
    "the train pixel mean and standard deviation; shape (1, 28, 28)."
)


def _system_files_ok() -> bool:
    return all((SYSTEM_DIR / f).is_file() and sha256_file(SYSTEM_DIR / f) == h for f, h in FILE_SHA256.items())


def retrieve(work: Path, stage: Path, progress: bool) -> None:
    """Copy the four pinned IDX files into ``stage``, from :data:`SYSTEM_DIR` or a downloaded .deb."""
    if _system_files_ok():
        say(f"{NAME}: copying the files of the installed package {DEB_PACKAGE} from {SYSTEM_DIR}", progress)
        source = SYSTEM_DIR
    else:
        say(f"{NAME}: {SYSTEM_DIR} lacks the files; apt-get download {DEB_PACKAGE}", progress)
        try:
            root = download.apt_download(DEB_PACKAGE, work / "deb", progress=progress)
        except DataFetchError as exc:
            raise DataFetchError(
                f"{exc}\nInstall the package as root with `{INSTALL_HINT}`, then run `ceag data fetch {NAME}`."
            ) from exc
        source = root / PACKAGE_DIR
        missing = [f for f in FILES if not (source / f).is_file()]
        if missing:
            raise DataFetchError(f"{NAME}: the package {DEB_PACKAGE} lacks {missing}; install it as root with `{INSTALL_HINT}`")
    for f, h in FILE_SHA256.items():
        check_sha256(source / f, h, f"{NAME}: {source / f}", NAME)
        shutil.copyfile(source / f, stage / f)


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes (magic 0x00000801 or 0x00000803) as a uint8 array."""
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataCorruptError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(dims):
        raise DataCorruptError(f"{path}: {len(data) - header} data bytes for dimensions {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _split(folder: Path, prefix: str) -> TensorDataset:
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
        raise DataCorruptError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise DataCorruptError(f"{folder}: {prefix} label {int(labels.max())} outside 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y, y.clone())


def build(folder: Path) -> GroupedDataset:
    """Decode and normalize the fetched IDX files in ``folder``."""
    train, test = _split(folder, "train"), _split(folder, "t10k")
    return GroupedDataset(
        name=NAME,
        train=train,
        test=test,
        num_classes=10,
        num_groups=10,
        group_names=CLASS_NAMES,
        class_names=CLASS_NAMES,
        input_shape=(1, 28, 28),
        description=DESCRIPTION.format(train=len(train), test=len(test)),
    )
