"""The data an experiment folder ran on: ``data.json`` beside ``config.json``.

The config names the data (a path, a data set, a subset); this record says what it held:
the files' digest (your table or images), the split sizes and the encoded columns. A folder
whose data has changed since is refused, by the runs (a new method would otherwise be
compared with old runs on other rows) and by the audit (which would judge the models on rows
they were not trained on, or on columns in another order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ceag._io import atomic_write
from ceag.app.data.core import GroupedDataset
from ceag.errors import UsageError

__all__ = ["DATA_RECORD", "check_data_record", "data_record", "first_difference", "write_data_record"]

DATA_RECORD = "data.json"


def data_record(data: GroupedDataset) -> dict[str, Any]:
    """What identifies ``data``: digest of its files, split sizes, encoded columns."""
    return {
        "source_digest": data.source_digest,
        "samples": {"train": len(data.train), "test": len(data.test), "val": len(data.val) if data.val is not None else 0},
        "feature_names": list(data.feature_names),
    }


def check_data_record(data: GroupedDataset, folder: Path, *, what: str) -> None:
    """Refuse ``data`` if ``folder`` recorded other data (:class:`UsageError` saying what
    changed, then ``what`` to do); a folder without a record is accepted."""
    path = folder / DATA_RECORD
    now = data_record(data)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            raise UsageError(f"{path} is unreadable ({err}); delete it to accept the data as it is now") from None
        changed = _difference(saved, now, data.name)
        if changed:
            raise UsageError(f"{folder} ran on other data: {changed}. {what}")


def write_data_record(data: GroupedDataset, folder: Path) -> None:
    """Record ``data`` in ``folder`` (atomically)."""
    atomic_write(folder / DATA_RECORD, json.dumps(data_record(data), indent=1).encode())


def _difference(saved: dict[str, Any], now: dict[str, Any], name: str) -> str:
    if saved.get("source_digest", now["source_digest"]) != now["source_digest"]:
        return f"the files of {name} have changed since (their SHA-256 differs)"
    if saved.get("samples", now["samples"]) != now["samples"]:
        return f"its samples per split were {saved['samples']}, now {now['samples']}"
    old, new = saved.get("feature_names", now["feature_names"]), now["feature_names"]
    if old != new:
        return f"its encoded columns differ ({first_difference(old, new)})"
    return ""


def first_difference(old: list[str], new: list[str]) -> str:
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return f"input {i} was {a!r}, now {b!r}"
    return f"{len(old)} columns then, {len(new)} now"
