"""Your own images: a folder of class subfolders with a CSV of each file's group attributes.

    photos/                       attributes.csv
      cat/001.png                   file,skin,age
      cat/002.png                   cat/001.png,dark,30
      dog/003.jpg                   ...

    load_images("photos", "attributes.csv", groups="skin,age:bins=40")

- **Layout.** torchvision's ImageFolder: one subfolder per class (sorted names are the
  classes), image files inside (png, jpg, jpeg, bmp, gif, webp).
- **Attributes.** A CSV with a ``file`` column (the path relative to the folder) and the
  attribute columns. ``groups`` names them as for tables (intersections, ``bins=``); the
  special column ``class`` makes the class the group (as CIFAR-100 in the paper). Every
  image needs a row, and every row an image: either mismatch is an error naming a file.
- **Pixels.** Images are read with Pillow, converted to RGB (or to greyscale when all are
  greyscale; 16-bit greyscale keeps its depth, scaled by 65535), resized to ``image_size``
  (default: the first image's size), scaled to [0, 1] and standardised per channel with the
  training images' mean and std.
- **Split.** ``test`` (a second folder with the same classes, its files in the same CSV),
  or ``test_fraction`` of every group drawn with ``seed``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ceag.app.data.core import GroupedDataset
from ceag.app.data.table import (
    DEFAULT_TEST_FRACTION,
    _check_group_count,
    _group_values,
    _read,
    _split,
    check_known_and_required,
    parse_group_columns,
)
from ceag.errors import UsageError

__all__ = ["IMAGE_SUFFIXES", "check_image_options", "image_digest", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CLASS_COLUMN = "class"


def _files(root: Path, what: str) -> tuple[list[str], list[str]]:
    """(relative file paths, class names) of an ImageFolder tree, sorted."""
    if not root.is_dir():
        raise UsageError(f"{what} {root} is not a folder of class subfolders")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{what} {root} has no class subfolders (expected {root}/<class>/<image>)")
    files = [
        f"{c}/{p.relative_to(root / c).as_posix()}"
        for c in classes
        for p in sorted((root / c).rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UsageError(f"{what} {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    empty = [c for c in classes if not any(f.startswith(f"{c}/") for f in files)]
    if empty and what == "image folder":  # a class without images could never be learned
        raise UsageError(f"{what} {root}: class folder {empty[0]!r} holds no images; remove it or add images")
    return files, classes


#: Pillow modes of greyscale images; the wide ones hold more than 8 bits per pixel.
_GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
_WIDE_GREY = {"I": 65535.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "F": 1.0}


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise UsageError(f"image {path} is too large to read safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"image {path} cannot be read: {err}") from None


def _all_grey(roots_and_files: Sequence[tuple[Path, Sequence[str]]]) -> bool:
    """True when every image is greyscale (one colour image makes them all RGB)."""
    for root, files in roots_and_files:
        for f in files:
            with _open(root / f) as im:  # the header only: Pillow reads pixels lazily
                if im.mode not in _GREY_MODES:
                    return False
    return True


def _to_array(im, grey: bool, size: tuple[int, int]) -> np.ndarray:
    """[0, 1] pixels, (H, W) grey or (H, W, 3) RGB; 16-bit grey keeps its depth (not clipped at 255)."""
    peak = _WIDE_GREY.get(im.mode) if grey else None
    im = im.convert("F" if peak else "L" if grey else "RGB")
    if (im.height, im.width) != size:
        im = im.resize((size[1], size[0]))
    return np.asarray(im, dtype=np.float32) / (peak or 255.0)


#: The most memory the decoded images may take (float32), before a resize is asked for.
MAX_PIXEL_BYTES = 4 * 2**30


def _check_memory(n: int, grey: bool, size: tuple[int, int], from_first: bool) -> None:
    need = n * (1 if grey else 3) * size[0] * size[1] * 4
    if need > MAX_PIXEL_BYTES:
        where = "the first image's size" if from_first else "--image-size"
        raise UsageError(
            f"{n} images at {size[0]}x{size[1]} ({where}) would take {need / 2**30:.1f} GiB as float32; "
            "give a smaller --image-size H,W"
        )


def _pixels(root: Path, files: Sequence[str], size: tuple[int, int], grey: bool) -> np.ndarray:
    out = []
    for f in files:
        with _open(root / f) as im:
            try:
                a = _to_array(im, grey, size)
            except (OSError, ValueError) as err:
                raise UsageError(f"image {root / f} cannot be read: {err}") from None
        out.append(a[None] if grey else a.transpose(2, 0, 1))
    return np.stack(out)


def _attribute_rows(attributes, columns, wanted: list[str]):
    """The attributes CSV indexed by file, with the ``class`` column; one row per image in
    ``wanted`` and no other, every group column present (each error names the file)."""
    table = _read(attributes, "attributes file")
    if "file" not in table.columns:
        raise UsageError(f"attributes file {attributes} has no 'file' column (each image's path relative to the folder)")
    for col in columns:
        if col.name != CLASS_COLUMN and col.name not in table.columns:
            raise UsageError(f"attributes file {attributes} has no column {col.name!r}; its columns are {list(table.columns)}")
    table["file"] = table["file"].astype(str).str.replace("\\\\", "/", regex=False)
    if table["file"].duplicated().any():
        raise UsageError(f"attributes file {attributes}: {table['file'][table['file'].duplicated()].iloc[0]!r} has two rows")
    table = table.set_index("file")
    missing = [f for f in wanted if f not in table.index]
    if missing:
        raise UsageError(f"attributes file {attributes} has no row for {len(missing)} image(s), e.g. {missing[0]!r}")
    extra = sorted(set(table.index) - set(wanted))
    if extra:
        raise UsageError(f"attributes file {attributes} names {len(extra)} file(s) not in the folder(s), e.g. {extra[0]!r}")
    table[CLASS_COLUMN] = [f.split("/", 1)[0] for f in table.index]
    return table


def _standardised_pixels(splits, size):
    """(train, test) pixels standardised per channel with the training images' mean and std,
    and the size used (the first training image's when ``size`` is None)."""
    (root, train_files), (test_root, test_files) = splits
    grey = _all_grey(splits)
    from_first = size is None
    if from_first:
        with _open(root / train_files[0]) as im:
            size = (im.height, im.width)
    _check_memory(len(train_files) + len(test_files), grey, size, from_first)
    x_train = _pixels(root, train_files, size, grey)
    x_test = _pixels(test_root, test_files, size, grey) if test_files else np.zeros((0, *x_train.shape[1:]), np.float32)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = np.maximum(x_train.std(axis=(0, 2, 3), keepdims=True), 1e-6)
    return tuple(((x - mean) / std).astype(np.float32) for x in (x_train, x_test)), size


def load_images(
    path: str | os.PathLike,
    attributes: str | os.PathLike,
    groups: str | Sequence[str],
    *,
    test: str | os.PathLike | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    image_size: Sequence[int] | None = None,
    missing_groups: str = "level",
    seed: int = 0,
) -> GroupedDataset:
    """The image folder at ``path`` as a :class:`GroupedDataset` (see the module docstring)."""
    check_image_options(
        path=path,
        attributes=attributes,
        groups=groups,
        test=test,
        test_fraction=test_fraction,
        image_size=image_size,
        missing_groups=missing_groups,
        seed=seed,
    )
    root = Path(path)
    files, classes = _files(root, "image folder")
    test_files: list[str] = []
    if test is not None:
        test_files, test_classes = _files(Path(test), "test folder")
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UsageError(f"test folder {test} has classes the image folder lacks: {unknown}")
    columns = parse_group_columns(groups)
    table = _attribute_rows(attributes, columns, files + test_files)

    names = _group_values(table.loc[files].reset_index(), columns, missing_groups, f"attributes file {attributes}")
    if test is None:
        _check_group_count(names, columns)
        is_test = _split(names, test_fraction, seed)
        train_files = [f for f, t in zip(files, is_test) if not t]
        test_files = [f for f, t in zip(files, is_test) if t]
        train_names = [n for n, t in zip(names, is_test) if not t]
        test_names = [n for n, t in zip(names, is_test) if t]
        test_root = root
    else:
        train_files, train_names = files, names
        test_names = _group_values(table.loc[test_files].reset_index(), columns, missing_groups, f"attributes file {attributes}")
        test_root = Path(test)
    _check_group_count([*train_names, *test_names], columns)
    group_names = tuple(sorted(set(train_names) | set(test_names)))
    gid = {n: i for i, n in enumerate(group_names)}
    cid = {c: i for i, c in enumerate(classes)}

    size = tuple(int(s) for s in image_size) if image_size is not None else None
    (x_train, x_test), size = _standardised_pixels([(root, train_files), (test_root, test_files)], size)

    def split(x, fs, ns):
        return TensorDataset(
            torch.from_numpy(x),
            torch.tensor([cid[f.split("/", 1)[0]] for f in fs], dtype=torch.int64),
            torch.tensor([gid[n] for n in ns], dtype=torch.int64),
        )

    if len(classes) < 2:
        raise UsageError(f"image folder {root} has one class ({classes[0]!r}): nothing to classify")
    return GroupedDataset(
        name=root.name,
        train=split(x_train, train_files, train_names),
        test=split(x_test, test_files, test_names),
        num_classes=len(classes),
        num_groups=len(group_names),
        group_names=group_names,
        class_names=tuple(classes),
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        description=(
            f"{root.name}: {len(classes)} classes, groups {'/'.join(str(c) for c in columns)}, "
            f"{len(train_files)} train and {len(test_files)} test images of {x_train.shape[1]}x{size[0]}x{size[1]}"
        ),
        source_digest=image_digest({"path": path, "attributes": attributes, "test": test}),
    )


def check_image_options(**options: Any) -> None:
    """:func:`load_images`' arguments checked without reading images (UsageError naming one)."""
    allowed = {"path", "attributes", "groups", "test", "test_fraction", "image_size", "missing_groups", "seed"}
    check_known_and_required(
        "images", options, allowed, ("path", "attributes", "groups"), "--data DIR, --attributes FILE, --groups"
    )
    for name in ("path", "test"):
        p = options.get(name)
        if p is not None and not Path(p).is_dir():
            raise UsageError(f"{'image' if name == 'path' else 'test'} folder {p} does not exist")
    if not Path(options["attributes"]).is_file():
        raise UsageError(f"attributes file {options['attributes']} does not exist")
    fraction = options.get("test_fraction", DEFAULT_TEST_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise UsageError(f"test_fraction must be in (0, 1), got {fraction!r}")
    size = options.get("image_size")
    if size is not None and (len(size) != 2 or any(not isinstance(s, int) or s < 4 for s in size)):
        raise UsageError(f"image_size must be two integers >= 4 (height, width), got {size!r}")


def image_digest(options: dict[str, Any]) -> str:
    """SHA-256 over the attributes file and every image's path and bytes (the dense-model cache key)."""
    h = hashlib.sha256(Path(options["attributes"]).read_bytes())
    for name in ("path", "test"):
        if options.get(name) is None:
            continue
        root = Path(options[name])
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()
