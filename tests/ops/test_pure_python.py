"""A pure-Python install (``CEAG_BUILD_EXT=0``: no ceag._C) against the compiled one, and the
lazy loading of ceag._C.

The pure-Python subprocess hides ceag._C the way such an install lacks it
(``sys.modules["ceag._C"] = None`` makes its import fail with ModuleNotFoundError), runs every
op family's public op on the default CPU backend, which must fall back to "reference" with one
warning, checks that the compiled backends are refused with an error naming CEAG_BUILD_EXT,
and saves its numbers; this process runs the same calls on "cpp" and compares.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch

import ceag
from ceag import _extension
from ceag.ops._registry import FAMILIES

THIS_FILE = os.path.abspath(__file__)


def _inputs() -> dict[str, tuple]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 12, generator=g, dtype=torch.float64)
    w = torch.randn(9, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(9, 12, generator=g) < 0.3  # sparse: the C++ kernel's CSR path
    b = torch.randn(9, generator=g, dtype=torch.float64)
    logits = torch.randn(20, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 5, (20,), generator=g)
    target[::7] = -100  # ignored samples
    group = torch.randint(0, 3, (20,), generator=g)
    weight = torch.rand(3, generator=g, dtype=torch.float64)
    # Group 1 gets more samples than its k = 4 slots: the ring wraps within one call.
    values = torch.randn(11, generator=g, dtype=torch.float64)
    rb_group = torch.tensor([1, 0, 1, 1, 2, 1, 1, 0, 1, 1, 2])
    return {
        "masked_linear": (x, w, mask, b),
        "compact_linear": (x, w, mask, b),
        "group_cross_entropy": (logits, target, group, weight),
        "replay_buffer": (values, rb_group),
    }


def _outputs(backend: str | None) -> dict[str, dict[str, torch.Tensor]]:
    """Every op family's public op (values and gradients) on CPU tensors and ``backend``."""
    data = _inputs()
    out: dict[str, dict[str, torch.Tensor]] = {}

    x, w, mask, b = (t.clone().requires_grad_(t.is_floating_point()) for t in data["masked_linear"])
    y = ceag.ops.masked_linear(x, w, mask, b, backend=backend)
    y.square().sum().backward()
    out["masked_linear"] = {"y": y.detach(), "grad_x": x.grad, "grad_w": w.grad, "grad_b": b.grad}

    x, w, mask, b = data["compact_linear"]
    layout = ceag.ops.CompactLayout.from_mask(mask)
    x, v, b = (t.clone().requires_grad_() for t in (x, layout.gather(w), b))
    y = ceag.ops.compact_linear(x, v, layout, b, backend=backend)
    y.square().sum().backward()
    out["compact_linear"] = {"y": y.detach(), "grad_x": x.grad, "grad_values": v.grad, "grad_b": b.grad}

    logits, target, group, weight = data["group_cross_entropy"]
    logits = logits.clone().requires_grad_()
    res = ceag.ops.group_cross_entropy(logits, target, group, 3, label_smoothing=0.1, group_weight=weight, backend=backend)
    res.weighted_loss.backward()
    out["group_cross_entropy"] = {
        "loss_sum": res.loss_sum.detach(),
        "correct": res.correct,
        "count": res.count,
        "sample_correct": res.sample_correct,
        "weighted_loss": res.weighted_loss.detach(),
        "grad_logits": logits.grad,
    }

    values, rb_group = data["replay_buffer"]
    buffer = torch.zeros(3, 4, dtype=torch.float64)
    head = torch.zeros(3, dtype=torch.int64)
    fill = torch.zeros(3, dtype=torch.int64)
    for lo, hi in ((0, 3), (3, 11)):
        ceag.ops.replay_buffer_update(buffer, head, fill, rb_group[lo:hi], values[lo:hi], backend=backend)
    out["replay_buffer"] = {"buffer": buffer, "head": head, "fill": fill}
    return out


def _pure_python_main(path: str) -> None:
    """Runs in the subprocess, where ceag._C is hidden."""
    assert not _extension.available() and not _extension.has_cuda_kernels()
    assert not hasattr(torch.ops.ceag, "masked_linear")  # the schemas were never defined
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = _outputs(None)
        again = _outputs(None)
    messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert len(messages) == 1 and "CEAG_BUILD_EXT=0" in messages[0], messages
    reference = _outputs("reference")
    for family, tensors in default.items():
        for name, t in tensors.items():
            assert torch.equal(t, reference[family][name]), (family, name)
            assert torch.equal(t, again[family][name]), (family, name)

    x, w, mask, b = _inputs()["masked_linear"]
    logits, target, group, _weight = _inputs()["group_cross_entropy"]
    buffer, head, fill = torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    explicit = {
        "masked_linear": lambda be: ceag.ops.masked_linear(x, w, mask, b, backend=be),
        "compact_linear": lambda be: ceag.ops.compact_linear(x, w[mask], ceag.ops.CompactLayout.from_mask(mask), b, backend=be),
        "group_cross_entropy": lambda be: ceag.ops.group_cross_entropy(logits, target, group, 3, backend=be),
        "replay_buffer": lambda be: ceag.ops.replay_buffer_update(buffer, head, fill, group[:3], torch.ones(3), backend=be),
    }
    assert set(explicit) == set(FAMILIES)
    for family, call in explicit.items():
        try:
            call("cpp")
        except RuntimeError as exc:
            assert str(exc).startswith("backend='cpp' needs ceag's compiled extension"), (family, exc)
            assert "CEAG_BUILD_EXT=0" in str(exc), (family, exc)
        else:
            raise AssertionError(f"{family}: backend='cpp' ran without the extension")
    os.environ["CEAG_BACKEND"] = "cpp"
    try:
        explicit["masked_linear"](None)
    except RuntimeError as exc:
        assert str(exc).startswith("CEAG_BACKEND='cpp' needs ceag's compiled extension"), exc
    else:
        raise AssertionError("CEAG_BACKEND=cpp ran without the extension")
    del os.environ["CEAG_BACKEND"]
    try:
        _extension.load()
    except ImportError as exc:
        assert "CEAG_BUILD_EXT=0" in str(exc), exc
    else:
        raise AssertionError("_extension.load() succeeded without the extension")

    compiled = torch.compile(lambda *a: ceag.ops.masked_linear(*a), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, w, mask, b), reference["masked_linear"]["y"])
    torch.save(default, path)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CEAG_EXTENSION_PATH", "CEAG_BACKEND")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, check=False)


def test_pure_python_install_runs_every_op_on_the_reference(tmp_path):
    path = tmp_path / "pure.pt"
    code = (
        "import sys; sys.modules['ceag._C'] = None\n"  # what a CEAG_BUILD_EXT=0 install lacks
        f"import runpy; runpy.run_path({THIS_FILE!r})['_pure_python_main']({str(path)!r})\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-4000:]
    pure = torch.load(path)
    compiled = _outputs("cpp")
    assert set(pure) == set(compiled) == set(FAMILIES)
    for family, tensors in compiled.items():
        assert set(pure[family]) == set(tensors)
        for name, want in tensors.items():
            got = pure[family][name]
            if want.is_floating_point():
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{family}.{name}")
            else:
                assert torch.equal(got, want), f"{family}.{name}: {got} != {want}"


def test_extension_loads_on_the_first_compiled_call_not_at_import():
    code = """
import sys, torch, ceag
assert "ceag._C" not in sys.modules, "import ceag loaded the extension"
x, w, m = torch.randn(3, 4), torch.randn(5, 4), torch.rand(5, 4) < 0.5
ref = ceag.ops.masked_linear(x, w, m, backend="reference")
assert "ceag._C" not in sys.modules, "the reference backend loaded the extension"
# The first compiled call comes while Dynamo traces (fullgraph: no graph break allowed).
step = torch.compile(lambda *a: ceag.ops.masked_linear(*a), fullgraph=True, backend="aot_eager")
torch.testing.assert_close(step(x, w, m), ref)
assert "ceag._C" in sys.modules and hasattr(torch.ops.ceag, "masked_linear")
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_registry_record_names_existing_ops(family):
    """Each record's names resolve to registered ops of the same schema, compiled and Triton."""
    record = FAMILIES[family]
    assert record.reference.__module__ == "ceag.ops.reference"
    triton = importlib.util.find_spec("triton") is not None and bool(record.triton)
    if not record.triton:  # a family without Triton kernels says so, naming the fallback
        with pytest.raises(ValueError, match="no Triton kernels; use backend='reference'"):
            record.ops("triton")
    for backend, names in (("cpp", record.compiled), ("triton", record.triton))[: 1 + triton]:
        ops = record.ops(backend)
        assert [op._schema.name for op in ops] == [f"ceag::{name}" for name in names]
        assert ops is record.ops(backend)  # resolved once
    for c, t in zip(record.ops("cpp"), record.ops("triton") if triton else (), strict=triton):
        assert [a.type for a in c._schema.arguments] == [a.type for a in t._schema.arguments]
        assert [r.type for r in c._schema.returns] == [r.type for r in t._schema.returns]
