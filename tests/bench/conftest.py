"""Tests of the tools in the repo's bench/ folder.

bench/ is a folder of scripts, not a package: its tools import each other by bare name
(``from load_report import ...``), as they do when run as ``python bench/<tool>.py``. The
``bench_tool`` fixture puts bench/ at the front of ``sys.path`` for the session and imports
a tool by that same name.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def bench_tool() -> Iterator[Callable[[str], ModuleType]]:
    """``bench_tool("load")`` is bench/load.py, imported."""

    def load(name: str) -> ModuleType:
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == BENCH, f"{name} is {module.__file__}, not bench/{name}.py"
        return module

    sys.path.insert(0, str(BENCH))
    try:
        yield load
    finally:
        sys.path.remove(str(BENCH))
