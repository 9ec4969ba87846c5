"""bench/gpu_check.sh runs every step and exits with the first failed step's status.

The script runs for real, with no GPU: from a scratch folder holding a copy of it (so nothing
is built or written in the checkout), with stubs for python3 (``$PYTHON``), cmake and
nvidia-smi first on ``PATH``. The python3 stub logs its arguments and exits 7 when they
contain ``$STUB_FAIL``, hangs when they contain ``$STUB_HANG``, else exits 0; the cmake stub
exits 5. Each row: what fails, the exit status expected, and each step's status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
STEPS = ("build", "env", "tests", "bench")

PYTHON_STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
if [ -n "${STUB_FAIL:-}" ] && [[ "$*" == *"$STUB_FAIL"* ]]; then echo "stub: failing: $*" >&2; exit 7; fi
if [ -n "${STUB_HANG:-}" ] && [[ "$*" == *"$STUB_HANG"* ]]; then exec sleep 60; fi
echo "stub: ok: $*"
"""

CASES = [
    # id, environment, exit status, status of build, env, tests, bench
    ("all-pass", {}, 0, ("ok", "ok", "ok", "ok")),
    ("tests-fail", {"STUB_FAIL": "-m pytest tests"}, 7, ("ok", "ok", "FAILED (exit 7", "ok")),
    ("bench-fail", {"STUB_FAIL": "bench/bench_gpu.py"}, 7, ("ok", "ok", "ok", "FAILED (exit 7")),
    ("build-fails-then-tests", {"STUB_FAIL": "-m p"}, 5, ("FAILED (exit 5", "ok", "FAILED (exit 7", "FAILED (exit 7")),
    ("tests-hang", {"STUB_HANG": "-m pytest tests", "TEST_TIMEOUT": "1"}, 124, ("ok", "ok", "TIMED OUT after 1 s", "ok")),
]


def _stub(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _run(tmp_path: Path, extra_env: dict[str, str]) -> tuple[subprocess.CompletedProcess, str]:
    work, stubs, out = tmp_path / "checkout", tmp_path / "stubs", tmp_path / "out"
    (work / "bench").mkdir(parents=True)
    stubs.mkdir()
    for name in ("gpu_check.sh", "gpu_steps.sh"):
        shutil.copy(BENCH / name, work / "bench" / name)
    _stub(stubs / "python3", PYTHON_STUB)
    _stub(stubs / "cmake", '#!/usr/bin/env bash\necho "cmake stub: $*" >&2\nexit 5\n')
    _stub(stubs / "nvidia-smi", "#!/usr/bin/env bash\necho 'nvidia-smi stub'\n")
    log = tmp_path / "python3-calls.txt"
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "PYTHON": str(stubs / "python3"),
        "OUT": str(out),
        "STUB_LOG": str(log),
        **extra_env,
    }
    for name in ("STUB_FAIL", "STUB_HANG", "TEST_TIMEOUT", "BENCH_TIMEOUT", "BUILD_TIMEOUT", "CEAG_EXTENSION_PATH"):
        if name not in extra_env:
            env.pop(name, None)
    cmd = ["bash", "bench/gpu_check.sh"]
    proc = subprocess.run(cmd, check=False, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    return proc, log.read_text()


@pytest.mark.parametrize(("extra_env", "exit_status", "statuses"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gpu_check_runs_every_step_and_exits_with_the_first_failure(tmp_path, extra_env, exit_status, statuses):
    proc, calls = _run(tmp_path, extra_env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == exit_status, output[-3000:]
    for step, status in zip(STEPS, statuses):  # every step ran, in order, and says how it went
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"{step} ")), None)
        assert line is not None and line.split(None, 1)[1].startswith(status), (step, line, proc.stdout[-2000:])
        assert (tmp_path / "out" / f"gpu-{step}.log").exists(), step
    # the later steps were really run, after a failure or a time-out before them
    for call in ("-m pip install", "import torch, ceag", "-m pytest tests", "-m pytest bench/bench_gpu.py"):
        assert call in calls, (call, calls)
    assert "================ steps ================" in proc.stdout


def test_gpu_steps_returns_each_status_and_keeps_the_first_failure(tmp_path):
    """The runner alone: statuses 0, 3, 0, 9 give 3 at the end, and every step's output is logged."""
    script = f"""
OUT={tmp_path}
source {BENCH / "gpu_steps.sh"}
run_step a 10 true; echo "a=$?"
run_step b 10 bash -c 'echo b-out; exit 3'; echo "b=$?"
run_step -q c 10 bash -c 'echo c-out'; echo "c=$?"
run_step d 10 bash -c 'exit 9'; echo "d=$?"
steps_finish
"""
    proc = subprocess.run(["bash", "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert [ln for ln in proc.stdout.splitlines() if ln[:2] in ("a=", "b=", "c=", "d=")] == ["a=0", "b=3", "c=0", "d=9"]
    assert "c-out" not in proc.stdout  # -q: to the log only
    assert (tmp_path / "gpu-b.log").read_text() == "b-out\n" and (tmp_path / "gpu-c.log").read_text() == "c-out\n"
    assert "b       FAILED (exit 3" in proc.stdout and "d       FAILED (exit 9" in proc.stdout
