"""The data set registry: :data:`DATASETS`, :func:`fetch`, :func:`is_fetched`, :func:`load`.

A real data set is a module (``adult``, ``census_kdd``, ``fashion_mnist``) with ``NAME``,
``FILES`` (the raw files its folder holds), ``ORIGIN``, ``PREPROCESS_VERSION``,
``retrieve(work, stage, progress)`` (get, verify and place ``FILES`` in ``stage``) and
``build(folder) -> GroupedDataset``. ``fetch`` runs ``retrieve`` in a temporary folder next
to the data set's and renames it into place; ``load`` verifies the raw files against the
manifest, then returns the processed cache or builds and caches it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from ceag.app.data import adult, census_kdd, fashion_mnist
from ceag.app.data.core import (
    GroupedDataset,
    cache_key,
    data_dir,
    install_folder,
    is_complete,
    load_cached,
    say,
    store_cache,
    verify_folder,
    write_manifest,
)
from ceag.app.data.images import check_image_options, load_images
from ceag.app.data.synthetic import check_options as check_synthetic_options
from ceag.app.data.synthetic import synthetic
from ceag.app.data.table import check_table_options, load_table

__all__ = ["DATASETS", "fetch", "is_fetched", "load"]

DATASETS: tuple[str, ...] = ("adult", "census-kdd", "fashion-mnist", "synthetic")
#: Not a bundled data set: the user's own CSV / Parquet file (options: load_table's arguments).
TABLE = "table"
#: Not a bundled data set: the user's own image folder (options: load_images' arguments).
IMAGES = "images"
_SOURCES: dict[str, ModuleType] = {m.NAME: m for m in (adult, census_kdd, fashion_mnist)}


def _source(name: str) -> ModuleType | None:
    """The module of a real data set, None for ``synthetic``; ValueError for an unknown name."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return _SOURCES.get(name)


def fetch(name: str, root: str | os.PathLike | None = None, *, force: bool = False, progress: bool = True) -> Path:
    """Download, verify and install data set ``name`` under ``data_dir(root)``; return its folder.

    Idempotent: a data set already fetched (manifest and files present) is left alone unless
    ``force``, which fetches it again and replaces the folder. Everything is written in a
    temporary folder next to the target and renamed into place, so a failed fetch leaves
    nothing behind. ``synthetic`` is generated, not fetched: a no-op returning the folder it
    would have. Raises :class:`DataCorruptError` on a checksum mismatch and
    :class:`DataFetchError` when the download itself fails.
    """
    source = _source(name)
    root_dir = data_dir(root)
    target = root_dir / name
    if source is None:
        return target
    if not force and is_complete(target, name, source.FILES):
        say(f"{name}: already fetched in {target}", progress)
        return target
    root_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-", dir=root_dir))
    try:
        stage = work / name
        stage.mkdir()
        source.retrieve(work, stage, progress)
        write_manifest(stage, name, source.FILES, source.ORIGIN)
        # An incomplete folder (no manifest, a file missing) is replaced, not kept.
        install_folder(stage, target, force=force or not is_complete(target, name, source.FILES))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{name}: ready in {target}", progress)
    return target


def is_fetched(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` is fetched under ``data_dir(root)`` (manifest and files present; not
    hashed, :func:`load` does that). Always True for ``synthetic``."""
    source = _source(name)
    return source is None or is_complete(data_dir(root) / name, name, source.FILES)


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError / TypeError (naming it) for an unknown data set or a bad option,
    before anything is fetched, generated or written. ``"table"`` is the user's own file
    (:func:`ceag.app.data.table.load_table`'s arguments)."""
    if name == TABLE:
        check_table_options(**options)
        return
    if name == IMAGES:
        check_image_options(**options)
        return
    if _source(name) is not None:
        if options:
            raise TypeError(f"load({name!r}) takes no options (only 'synthetic' does); got {sorted(options)}")
        return
    check_synthetic_options(**options)


def load(name: str, root: str | os.PathLike | None = None, **options: Any) -> GroupedDataset:
    """Data set ``name`` as a :class:`GroupedDataset`, read from ``data_dir(root)`` only.

    ``options`` are :func:`synthetic`'s arguments and only valid for ``"synthetic"``. For the
    real data sets the raw files are hashed against the manifest (missing:
    :class:`DataNotFoundError`, naming ``ceag data fetch NAME``; changed:
    :class:`DataCorruptError`); then the preprocessed tensors come from
    ``processed-v<version>-<key>.pt`` in the folder, built and written atomically on first use.
    """
    if name == TABLE:
        return load_table(**options)
    if name == IMAGES:
        return load_images(**options)
    source = _source(name)
    if source is None:
        return synthetic(**options)
    if options:
        raise TypeError(f"load({name!r}) takes no options (only 'synthetic' does); got {sorted(options)}")
    folder = data_dir(root) / name
    digests = verify_folder(folder, name, source.FILES)
    cache = folder / cache_key(source.PREPROCESS_VERSION, digests)
    dataset = load_cached(cache)
    if dataset is None:
        dataset = source.build(folder)
        store_cache(folder, cache, dataset)
    return dataset
