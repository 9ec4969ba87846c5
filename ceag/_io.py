"""Files: the one atomic writer, temp-file clean-up, and locks on run folders and cache entries.

Permission policy: every file ceag writes (checkpoints, metrics, configs, histories, plots,
the data cache) is created with mode ``0o666`` filtered by the process umask, as ``open()``
would create it; nothing is made private or world-writable behind the user's back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, for ``json.dumps(...,
    allow_nan=False)``: JSON has no NaN (RFC 8259), and strict readers (JavaScript, jq, Go)
    reject the ``NaN`` Python writes by default. :func:`nan_for_null` reads it back."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def nan_for_null(obj: Any) -> Any:
    """The reverse of :func:`json_ready` for numeric data: every None becomes NaN."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_for_null(v) for v in obj]
    return obj


try:  # POSIX advisory locks; elsewhere locking is a no-op
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CEAG_CHECKPOINT_MAGIC",
    "LOCK_NAME",
    "CorruptFileError",
    "FolderInUseError",
    "OutputError",
    "atomic_write",
    "check_output_dir",
    "lock",
    "read_verified",
    "remove_temp_files",
    "write_verified",
]

#: First line of a ceag checkpoint (then a SHA-256 header: :func:`write_verified`).
CEAG_CHECKPOINT_MAGIC = b"CEAGCKPT1\n"
#: The lock file :func:`lock` keeps in a locked folder (holds the owner's PID).
LOCK_NAME = ".ceag.lock"


class OutputError(OSError):
    """Output cannot be written: the folder is not writable, the disk is full, or a write failed.

    ``errno`` is that of the underlying error (e.g. ``errno.ENOSPC``), where there is one.
    """


class CorruptFileError(RuntimeError):
    """A file written by :func:`write_verified` is truncated, corrupted, foreign or tampered with."""


class FolderInUseError(RuntimeError):
    """Another process holds the lock on a run folder (``pid``: its process id, or None)."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


def output_error(message: str, err: OSError | None = None) -> OutputError:
    out = OutputError(message)
    out.errno = err.errno if err is not None else None
    return out


def check_output_dir(folder: str | os.PathLike, need_bytes: int = 0) -> None:
    """Raise :class:`OutputError` unless ``folder`` (created if missing) takes a probe file
    (written and removed) and has at least ``need_bytes`` free."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise output_error(f"output folder {folder} is a link to {os.readlink(folder)}, which does not exist")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ceag-probe.", suffix=".tmp", dir=folder)
        try:
            os.write(fd, b"ceag")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise output_error(f"output folder {folder} is not writable: {err.strerror or err}", err) from err
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise output_error(
            f"not enough free space for {folder}: {free / 2**20:.1f} MiB free, about "
            f"{need_bytes / 2**20:.1f} MiB needed for checkpoints"
        )


def atomic_write(path: str | os.PathLike, *chunks: bytes | Iterable[bytes], backup: str | os.PathLike | None = None) -> Path:
    """Write ``chunks`` to ``path`` atomically: temp file in the same folder, fsync, rename,
    then fsync the folder so the rename itself is durable.

    Each chunk is bytes-like, or an iterable of bytes written as it yields (a large file need
    not be built in memory). A crash leaves the old or the new file, never a mix (a killed
    process may leave a ``.<name>.*.tmp`` file: :func:`remove_temp_files`). ``backup``: rename
    the old ``path`` to it just before the new file takes its place. The file's mode follows
    the umask. A failed write raises :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                if isinstance(chunk, (bytes, bytearray, memoryview)):
                    f.write(chunk)
                else:
                    for piece in chunk:
                        f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise output_error(f"cannot write {path}: {err.strerror or err}", err) from err
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def write_verified(obj: Any, path: str | os.PathLike, *, magic: bytes, backup: str | os.PathLike | None = None) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, as ``magic``, a JSON header line (payload
    length and SHA-256), then the payload; read it back with :func:`read_verified`.

    ``obj`` must hold only tensors and plain Python values (dicts, lists, tuples, str, numbers,
    None): the reader unpickles nothing else.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    with buf.getbuffer() as payload:  # the serialized bytes in place (getvalue() would copy them)
        header = json.dumps({"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}).encode() + b"\n"
        return atomic_write(path, magic, header, payload, backup=backup)


def read_verified(
    path: str | os.PathLike,
    *,
    magic: bytes,
    what: str = "file",
    error: type[CorruptFileError] = CorruptFileError,
    map_location: Any = "cpu",
) -> Any:
    """Read a file of :func:`write_verified`, checking ``magic``, length and SHA-256; ``error``
    (naming ``path`` and calling it ``what``) when any check fails.

    The checksum catches corruption, not tampering: a file in a shared folder could hold a
    pickle that runs code, so only tensors and plain Python values are unpickled
    (``weights_only=True``); anything else is refused with ``error``.
    """
    path = Path(path)
    with path.open("rb") as f:  # magic, header line, then the payload read once (no copies)
        if f.read(len(magic)) != magic:
            raise error(f"{path}: not a ceag {what} (bad magic; truncated or foreign file?)")
        line = f.readline(1 << 16)
        if not line.endswith(b"\n"):
            raise error(f"{path}: truncated {what} (no header)")
        try:
            header = json.loads(line[:-1])
            length, digest = int(header["length"]), str(header["sha256"])
        except (ValueError, KeyError, TypeError) as e:
            raise error(f"{path}: corrupted {what} header ({e})") from None
        payload = f.read()
    if len(payload) != length:
        raise error(f"{path}: truncated or corrupted {what}: payload is {len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise error(f"{path}: corrupted {what}: SHA-256 mismatch")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise error(
            f"{path}: refused to load: the {what} holds objects other than tensors and plain Python values "
            f"({unpickling_refusal(e)}); it was not written by this version of ceag, or was tampered with"
        ) from None


def unpickling_refusal(err: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words: torch's message is a
    page of advice that ends by suggesting ``weights_only=False``, which would run the file's code."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return f"it holds objects other than tensors; it names {found.group(1)}" if found else "it holds an unsupported type"


def _legacy_numpy_globals() -> list:
    """What a uint32 numpy array needs to unpickle: checkpoints written before numpy's RNG
    state was stored as a tensor hold one. These build plain arrays only; any other global
    (a function to call, a class to instantiate) is still refused."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def remove_temp_files(folder: str | os.PathLike, name: str = "*", older_than: float = 0.0) -> None:
    """Remove the temp files :func:`atomic_write` leaves when killed (``.<name>.*.tmp``),
    those last modified more than ``older_than`` seconds ago. Call it only while holding the
    folder's :func:`lock`: a live writer's temp file is young, but not always younger than
    ``older_than``."""
    import time

    now = time.time()
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()


# Locks this process holds: lock file → depth, so nested ``lock()`` calls on one file (an
# experiment's run calling Trainer.fit) do not deadlock on themselves.
_held: dict[Path, int] = {}


@contextlib.contextmanager
def lock(path: str | os.PathLike, *, what: str, wait: bool = False, on_wait=None) -> Iterator[None]:
    """Hold an exclusive lock on the lock file ``path`` (created if missing) while inside.

    ``what`` names the locked thing in the error (e.g. "run folder runs/x"). A lock held by
    another process raises :class:`FolderInUseError` naming its PID; with ``wait=True`` this
    waits for it instead, calling ``on_wait(pid)`` once first. The lock is the kernel's
    (``flock``): a killed process releases it, so a stale lock file never blocks anyone.
    """
    path = Path(path).absolute()
    if fcntl is None or path in _held:
        _held[path] = _held.get(path, 0) + 1
        try:
            yield
        finally:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            if not wait:
                raise FolderInUseError(
                    f"{what} is in use by PID {pid if pid is not None else '?'} (another ceag process); "
                    "wait for it to finish or choose another --name",
                    pid,
                ) from None
            if on_wait is not None:
                on_wait(pid)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
    finally:
        os.close(fd)  # releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
