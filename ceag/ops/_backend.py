"""Which implementation of an op runs: chosen by device, overridable per call or by env."""

from __future__ import annotations

import os
import warnings
from typing import Literal

import torch

from ceag import _extension

Backend = Literal["cpp", "triton", "cuda", "reference"]
BACKENDS: tuple[str, ...] = ("cpp", "triton", "cuda", "reference")
ENV_VAR = "CEAG_BACKEND"


def triton_interpreted() -> bool:
    """True when Triton kernels run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Return the backend to run on tensors of ``device``.

    Precedence: the ``backend`` argument, then ``$CEAG_BACKEND``, then the device default
    ("cpp" on CPU; "cuda" on CUDA when the extension has CUDA kernels, else "triton").

    Without the compiled extension (a ``CEAG_BUILD_EXT=0`` install) the CPU default is
    "reference", with a one-time warning, and asking for "cpp" or "cuda" is a RuntimeError
    that names CEAG_BUILD_EXT.
    """
    choice = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    if device.type not in ("cpu", "cuda"):
        # Every backend, "reference" included: a meta tensor (no data) or another device would
        # otherwise fail deep inside a kernel with a message that names no argument.
        raise ValueError(f"ceag ops support CPU and CUDA tensors, got device {device}")
    if choice is None:
        if device.type == "cpu":
            if _extension.available():
                return "cpp"
            _warn_pure_python_once()
            return "reference"
        return "cuda" if _extension.has_cuda_kernels() else "triton"
    source = "backend" if backend is not None else ENV_VAR
    if choice not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    if choice == "cpp" and device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs on CPU tensors, got device {device}")
    if choice == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda' runs on CUDA tensors, got device {device}")
    if choice in ("cpp", "cuda") and not _extension.available():
        raise RuntimeError(
            f"{source}={choice!r} needs ceag's compiled extension, which this install lacks (built "
            f"with {_extension.BUILD_ENV_VAR}=0, or never built): use backend='reference' (or "
            "'triton' on CUDA), or reinstall without CEAG_BUILD_EXT=0: "
            "`pip install --no-build-isolation -e .`"
        )
    if choice == "cuda" and not _extension.has_cuda_kernels():
        raise RuntimeError("backend 'cuda' requested but ceag was built without CUDA kernels")
    if choice == "triton" and device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            f"backend 'triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 "
            "before importing ceag to run the Triton kernels on CPU tensors"
        )
    return choice


_warned = False


@_extension.constant_result  # under torch.compile: warn at trace time, no graph break
def _warn_pure_python_once() -> bool:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"ceag was installed without its compiled extension ({_extension.BUILD_ENV_VAR}=0, or "
            "ceag._C never built): ops on CPU tensors run their plain-PyTorch references (slow). "
            "Reinstall with `pip install --no-build-isolation -e .` for the C++ kernels.",
            RuntimeWarning,
            stacklevel=5,  # the caller of the public op
        )
    return True


def cpu_capability() -> str | None:
    """The CPU kernel variant the compiled extension runs: "default" (portable), "avx2" or
    "avx512", chosen at load by the CPU (``$CEAG_CPU_CAPABILITY`` may ask for a narrower one);
    None in a build without the extension (``CEAG_BUILD_EXT=0``)."""
    from ceag import _extension

    if not _extension.available():
        return None
    _extension.load()
    return str(torch.ops.ceag.cpu_capability())
