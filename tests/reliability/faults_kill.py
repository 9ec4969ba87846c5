"""Run the ``ceag`` command and SIGKILL it at a chosen point (helper of test_faults.py).

    python faults_kill.py FAULT [ceag arguments...]

FAULT, where the process kills itself with SIGKILL (a real one: no cleanup, no atexit):

    none                   no fault: the plain command
    step:S                 after a training step, once the run's global step is >= S
    save:S:POINT           inside the first checkpoint save at global step >= S, at POINT:
                           fsync   - new temp file written, not yet renamed
                           rotated - last.ckpt moved to prev.ckpt, the new one not in place
                           renamed - new last.ckpt in place, folder not yet synced
    write:NAME:POINT       inside the write of file NAME (metrics.json, results.json, ...,
                           or "dense" for the dense-model cache), POINT fsync or renamed

With $CEAG_FAULT_READY set, that file is created once everything is imported, just before
the command starts (the test times its own external SIGKILLs from it). Linux only (the
fsync hook names its file through /proc/self/fd).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(fault: str) -> None:
    import ceag.train as T

    kind, *arg = fault.split(":")
    if kind == "none":
        return
    if kind == "step":
        first = int(arg[0])
        init = T.Trainer.__init__

        def patched_init(self, *a, **k):
            init(self, *a, **k)
            self.on_batch_end = lambda t: _die() if t.global_step >= first else None

        T.Trainer.__init__ = patched_init
        return

    armed = {"save": False}
    if kind == "save":
        first, point = int(arg[0]), arg[1]
        save = T.Trainer.save

        def patched_save(self, path=None):
            armed["save"] = path is None and self.global_step >= first
            try:
                return save(self, path)
            finally:
                armed["save"] = False

        T.Trainer.save = patched_save

        def target(dst: Path) -> bool:  # the file this point kills in
            return armed["save"] and dst.name == ("prev.ckpt" if point == "rotated" else "last.ckpt")

    elif kind == "write":
        name, point = arg

        def target(dst: Path) -> bool:
            return dst.parent.name == ".dense-cache" if name == "dense" else dst.name == name

    else:
        raise SystemExit(f"faults_kill.py: unknown fault {fault!r}")

    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if point == "fsync":
            tmp = Path(os.readlink(f"/proc/self/fd/{fd}"))
            # ".<name>.<random>.tmp" -> <name>
            if tmp.name.endswith(".tmp") and target(tmp.with_name(tmp.name[1:].rsplit(".", 2)[0])):
                _die()
        return real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        if point in ("rotated", "renamed") and target(Path(dst)):
            _die()

    os.fsync, os.replace = fsync, replace


def main() -> int:
    fault, argv = sys.argv[1], sys.argv[2:]
    _install(fault)
    importlib.import_module("ceag.app.experiment")  # before the ready mark: the slow part (torch)
    from ceag.app.cli import main as ceag_main

    ready = os.environ.get("CEAG_FAULT_READY")
    if ready:
        Path(ready).touch()
    return ceag_main(argv)


if __name__ == "__main__":
    sys.exit(main())
