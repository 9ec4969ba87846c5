"""The portable build: every CPU kernel is compiled for the baseline, AVX2 and AVX-512 and the
widest one the CPU runs is registered at load; $CEAG_CPU_CAPABILITY asks for a narrower one.
Every variant must give the results of the one chosen here (to float rounding: wider vectors
sum in another order)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ceag

THIS_FILE = os.path.abspath(__file__)
LEVELS = ("default", "avx2", "avx512")


def _outputs() -> dict[str, torch.Tensor]:
    """Every CPU op family on fixed inputs: values and gradients (float32 and float64)."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(70, 130, generator=g, dtype=dtype, requires_grad=True)
        w = torch.randn(45, 130, generator=g, dtype=dtype, requires_grad=True)
        mask = torch.rand(45, 130, generator=g) < 0.2
        y = ceag.ops.masked_linear(x, w, mask, backend="cpp")
        gx, gw = torch.autograd.grad(y.square().sum(), (x, w))
        out.update({f"masked_y_{dtype}": y.detach(), f"masked_gx_{dtype}": gx, f"masked_gw_{dtype}": gw})
        layout = ceag.ops.CompactLayout.from_mask(mask)
        v = layout.gather(w.detach()).requires_grad_()
        y = ceag.ops.compact_linear(x, v, layout, backend="cpp")
        gx, gv = torch.autograd.grad(y.square().sum(), (x, v))
        out.update({f"compact_y_{dtype}": y.detach(), f"compact_gx_{dtype}": gx, f"compact_gv_{dtype}": gv})
        logits = torch.randn(300, 37, generator=g, dtype=dtype, requires_grad=True)
        target, group = torch.randint(0, 37, (300,), generator=g), torch.randint(0, 11, (300,), generator=g)
        res = ceag.ops.group_cross_entropy(logits, target, group, 11, label_smoothing=0.1, backend="cpp")
        (gl,) = torch.autograd.grad(res.loss_sum.sum(), logits)
        out.update({f"gce_loss_{dtype}": res.loss_sum.detach(), f"gce_grad_{dtype}": gl, f"gce_correct_{dtype}": res.correct})
    buffer, head, fill = torch.zeros(5, 4), torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    ceag.ops.replay_buffer_update(buffer, head, fill, torch.randint(0, 5, (40,), generator=g), torch.rand(40, generator=g))
    out.update({"rb_buffer": buffer, "rb_head": head, "rb_fill": fill})
    return out


def _in_subprocess(level: str, path: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CEAG_EXTENSION_PATH"}
    env.update(CEAG_CPU_CAPABILITY=level, OMP_NUM_THREADS="1")
    code = (
        f"import runpy, torch, ceag; m = runpy.run_path({THIS_FILE!r}); "
        f"torch.save((ceag.ops.cpu_capability(), m['_outputs']()), {path!r})"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_the_chosen_capability_is_named():
    assert ceag.ops.cpu_capability() in LEVELS


@pytest.mark.skipif(bool(os.environ.get("CEAG_EXTENSION_PATH")), reason="another build (sanitizer) is loaded")
@pytest.mark.parametrize("level", LEVELS)
def test_every_variant_gives_the_same_results(level, tmp_path):
    here = LEVELS.index(ceag.ops.cpu_capability())
    proc = _in_subprocess(level, str(tmp_path / "out.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran, theirs = torch.load(tmp_path / "out.pt")
    if LEVELS.index(level) > here:  # wider than this CPU runs: refused, with a warning
        assert ran == LEVELS[here] and "not supported by this CPU" in proc.stderr
        return
    assert ran == level
    ours = _outputs()
    for name, t in ours.items():
        if t.is_floating_point():
            tol = 1e-12 if t.dtype == torch.float64 else 2e-5
            torch.testing.assert_close(theirs[name], t, rtol=tol, atol=tol, msg=f"{level}: {name}")
        else:
            assert torch.equal(theirs[name], t), f"{level}: {name}"


def test_an_unknown_capability_warns_and_uses_the_best(tmp_path):
    proc = _in_subprocess("sse9", str(tmp_path / "out.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is not one of default, avx2, avx512" in proc.stderr
    assert torch.load(tmp_path / "out.pt")[0] == ceag.ops.cpu_capability()


def test_each_variant_holds_its_instruction_set_path():
    """The library says which hand-written paths each variant was built with (nothing runs,
    so this holds on any CPU). The portable build once compiled its AVX-512 variant without
    the AVX-512 group cross-entropy (``#pragma GCC target`` does not define __AVX512F__):
    results were right, the speed was gone, and no test noticed (issue 22)."""
    ceag.ops.cpu_capability()  # loads the library
    paths = {level: str(torch.ops.ceag.cpu_kernel_paths(level)) for level in LEVELS}
    if paths["avx512"] == "not built":  # a native (-march=native) or non-x86 build: one variant
        assert paths["avx2"] == "not built" and paths["default"].startswith("group_cross_entropy=")
        return
    assert paths == {
        "default": "group_cross_entropy=scalar",
        "avx2": "group_cross_entropy=scalar",
        "avx512": "group_cross_entropy=avx512",
    }
    with pytest.raises(RuntimeError, match="must be default, avx2 or avx512"):
        torch.ops.ceag.cpu_kernel_paths("sse9")
