"""The history files of a run: ``history.json`` (every field) and ``history.csv`` (scalars)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ceag._io import atomic_write, json_ready


def history_json(config: dict[str, Any], history: Sequence[dict[str, Any]]) -> Iterator[bytes]:
    """``{"config": ..., "history": [...]}`` as JSON, one history row per line, encoded a row
    at a time (a row holds G multipliers: the text of the whole history is never built)."""
    yield b'{"config": ' + json.dumps(json_ready(config), allow_nan=False).encode() + b',\n "history": ['
    for i, row in enumerate(history):  # NaN (e.g. no ψ before pruning) is written as null
        yield (b"\n  " if i == 0 else b",\n  ") + json.dumps(json_ready(row), allow_nan=False).encode()
    yield b"\n ]\n}"


def history_csv(history: Sequence[dict[str, Any]]) -> bytes:
    """The rows' scalar fields as CSV: columns in order of first appearance, a missing or NaN
    value as an empty cell (lists, e.g. the G multipliers, are left to the JSON file)."""
    columns: dict[str, None] = {}
    for row in history:
        columns.update((k, None) for k, v in row.items() if not isinstance(v, list))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in history:
        writer.writerow(_cell(row.get(k)) for k in columns)
    return out.getvalue().encode()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_history(out: Path, config: dict[str, Any], history: Sequence[dict[str, Any]]) -> None:
    """``history.json`` (one row per line, written a row at a time) and ``history.csv`` in
    ``out`` (atomic)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "history.json", history_json(config, history))
    atomic_write(out / "history.csv", history_csv(history))
