"""Bookkeeping of the bad-input campaign (test_bad_input.py).

Every bad input tried goes through the session-scoped ``campaign`` fixture, which checks the
outcome and counts it; the terminal summary reports

    bad-input campaign: N cases (E clear errors, L documented legal results), M distinct error messages

Each test also runs under a watchdog (``faulthandler``): a hang dumps every thread's stack
and ends the run instead of stalling CI (a segfault already ends it, with the same dump).
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest

#: Seconds a single test of this folder may run before the watchdog ends the process.
WATCHDOG_S = int(os.environ.get("CEAG_WATCHDOG_S", "300"))

#: The exception types a bad input may raise (NotImplementedError is a RuntimeError too, but
#: torch's "no data"/"not implemented" messages name no argument, so the name check fails them).
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError)


@dataclass
class Campaign:
    """Counts the cases tried and the distinct error messages (numbers masked as #)."""

    errors: int = 0
    legal: int = 0
    messages: set[str] = field(default_factory=set)

    @property
    def cases(self) -> int:
        return self.errors + self.legal

    def expect_error(self, fn: Callable[[], object], names: str | Iterable[str], *, types=CLEAR_ERRORS) -> str:
        """Call ``fn``; it must raise one of ``types`` whose message names one of ``names``
        (each a regular expression, matched as whole words). Returns the message."""
        names = (names,) if isinstance(names, str) else tuple(names)
        try:
            result = fn()
        except types as exc:
            kind, msg = type(exc).__name__, str(exc)
        else:
            raise AssertionError(f"expected an error naming {names}, got a result: {result!r:.300}")
        first = msg.strip().splitlines()[0] if msg.strip() else ""
        assert first, f"{kind} with an empty message"
        assert any(re.search(rf"(?<![\w.]){n}(?!\w)", msg) for n in names), f"{kind} does not name any of {names}: {msg[:400]!r}"
        self.errors += 1
        self.messages.add(re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", first))
        return msg

    def expect_ok(self, fn: Callable[[], object]):
        """Call ``fn`` (a legal edge case: it does its own checks of the result); count it."""
        out = fn()
        self.legal += 1
        return out


_CAMPAIGN = Campaign()


@pytest.fixture(scope="session")
def campaign() -> Campaign:
    return _CAMPAIGN


def _real_stderr_fd(config) -> int:
    """The terminal's stderr, not pytest's capture file (the dump must outlive the process)."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        return config.stash[fault_handler_stderr_fd_key]
    except Exception:  # pragma: no cover - other pytest versions / faulthandler plugin off
        return sys.__stderr__.fileno()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    fd = _real_stderr_fd(item.config)
    os.write(fd, b"")  # fail here, not in the watchdog thread, if the fd is unusable
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter):
    c = _CAMPAIGN
    if c.cases:
        terminalreporter.write_sep(
            "=",
            f"bad-input campaign: {c.cases} cases ({c.errors} clear errors, {c.legal} documented "
            f"legal results), {len(c.messages)} distinct error messages",
        )
