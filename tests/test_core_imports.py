"""The core library (ops, nn, prune, metrics, methods, train) needs torch and cooper only: it
imports, trains and checkpoints with the application's dependencies uninstalled."""

from __future__ import annotations

import subprocess
import sys
import textwrap

APP_ONLY = ("pandas", "matplotlib", "tqdm", "sklearn", "pyarrow")

# Makes the app-only packages unimportable, as on a machine with `pip install ceag` alone
# (None in sys.modules: `import` raises ModuleNotFoundError, `find_spec` returns None).
HIDE = f"import sys\nsys.modules.update(dict.fromkeys({APP_ONLY!r}))\n"


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_core_imports_nothing_from_the_app_extra(tmp_path):
    code = (
        "import sys, torch, cooper\n"
        "before = set(sys.modules)\n"
        "import ceag, ceag.ops, ceag.nn, ceag.prune, ceag.metrics, ceag.methods, ceag.train\n"
        f"new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {APP_ONLY!r})\n"
        "assert not new, new\n"
        "assert not any(m.startswith('ceag.app') for m in sys.modules)\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr


def test_core_trains_and_resumes_without_the_app_extra(tmp_path):
    code = HIDE + textwrap.dedent(
        """
        import torch
        from torch.utils.data import TensorDataset
        from ceag.train import TrainConfig, Trainer
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 5, generator=g); y = (x[:, 0] > 0).long(); grp = torch.arange(64) % 3
        data = TensorDataset(x, y, grp)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        cfg = TrainConfig(num_groups=3, pruning_epochs=1, mitigation_epochs=1, batch_size=16, min_count=1,
                          output_dir="out", progress=True)
        t = Trainer(cfg, model, data, data); t.fit()
        assert len(t.history) == 2 and t.checkpoint_path.exists()
        assert (t.output_dir / "history.csv").read_text().startswith("epoch,phase,step,")
        print("ok")
        """
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_app_names_the_missing_extra(tmp_path):
    out = _python(HIDE + "import ceag.app.cli\n", tmp_path)
    assert out.returncode != 0
    assert "pip install ceag[app]" in out.stderr and "pandas" in out.stderr


def test_import_and_help_load_neither_dynamo_nor_the_table_stack(tmp_path):
    """`import ceag` once imported torch._dynamo (3.7 s, as long as torch itself, through
    torch.compiler.assume_constant_result) and `ceag --help` pandas (0.8 s); issue 22, part 3.
    Speed is a benchmark's (bench/bench_startup.py); this checks the modules stay unloaded."""
    code = (
        "import sys\n"
        "sys.argv = ['ceag', '--help']\n"
        "import ceag.app.cli\n"
        "try:\n    ceag.app.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch._dynamo', 'pandas', 'sklearn', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr


def test_constant_result_marks_a_function_as_torch_does():
    """ceag._extension.constant_result sets the marker torch.compiler.assume_constant_result
    sets (so a torch that changes how Dynamo marks constants fails here, not silently)."""
    import torch

    from ceag._extension import constant_result

    def ours():
        return 1

    def theirs():
        return 1

    constant_result(ours)
    torch.compiler.assume_constant_result(theirs)
    marks = {k: v for k, v in vars(theirs).items()}
    assert marks and marks == vars(ours)


def test_kernels_import_nothing_from_the_op_layer():
    """ceag/kernels (Triton) sits below ceag/ops: it once imported register_*_autograd back from
    ceag.ops (a hidden cycle; issue 25). The op families register every backend's ops now."""
    import ast
    from pathlib import Path

    import ceag

    for path in sorted((Path(ceag.__file__).parent / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n == "ceag.ops" or n.startswith("ceag.ops.") for n in names), f"{path.name} imports {names}"
