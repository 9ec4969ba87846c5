"""How the ``ceag`` command fails: one line naming the flag for a user's mistake, exit codes for signals."""

from __future__ import annotations

import argparse
import errno
import re
import sys


def known_errors() -> tuple[type[Exception], ...]:
    """What a user can cause or fix: printed as one line. Anything else is a bug in ceag
    and keeps its traceback."""
    from ceag._io import FolderInUseError
    from ceag.app.data import DataCorruptError, DataFetchError
    from ceag.errors import UsageError
    from ceag.train import CheckpointError, NonFiniteError, OutputError

    return (
        UsageError,
        FileNotFoundError,
        NotADirectoryError,
        DataCorruptError,
        DataFetchError,
        CheckpointError,
        NonFiniteError,
        OutputError,
        FolderInUseError,
    )


#: Write failures reported in one line (disk full, quota, read-only, no permission).
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def fail(parser: argparse.ArgumentParser, err: Exception) -> None:
    hint = ""
    if getattr(err, "errno", None) in OUTPUT_ERRNOS:
        hint = " (free some space, fix the permissions or choose another --output; then re-run the same command to resume)"
    parser.exit(2, f"ceag: error: {err}{hint}\n")


#: A negative number argparse would take for a flag ("-1e-3"; it knows only "-3" and "-.5").
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def negative_values_attached(argv: list[str]) -> list[str]:
    """``--flag -1e-3`` as ``--flag=-1e-3``, so argparse reads the value (then validation
    says what is wrong with it) instead of "expected one argument"."""
    out: list[str] = []
    for token in argv:
        if out and _NEGATIVE_NUMBER.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


class Terminated(Exception):
    """SIGTERM, raised in the main thread so the run stops as after Ctrl-C."""


def on_sigterm(signum, frame) -> None:
    raise Terminated()


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One line per warning, through tqdm so a progress bar is not torn (and no source line)."""
    from tqdm.auto import tqdm

    tqdm.write(f"ceag: warning: {message}", file=sys.stderr)


def stopped(how: str) -> str:
    from ceag.train import last_saved

    saved = last_saved()
    if saved is None:
        return f"ceag: {how}; nothing was checkpointed yet (re-run the same command to start again)\n"
    path, epoch, step = saved
    return f"ceag: {how}; {path} holds the run at epoch {epoch}, step {step} (re-run the same command to resume from there)\n"
