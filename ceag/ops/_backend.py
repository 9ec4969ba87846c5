"""Which implementation of an op runs: chosen by device, overridable per call or by env."""

from __future__ import annotations

import os
from typing import Literal

import torch

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
    """
    choice = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    if device.type not in ("cpu", "cuda"):
        # Every backend, "reference" included: a meta tensor (no data) or another device would
        # otherwise fail deep inside a kernel with a message that names no argument.
        raise ValueError(f"ceag ops support CPU and CUDA tensors, got device {device}")
    if choice is None:
        if device.type == "cpu":
            return "cpp"
        from ceag._extension import has_cuda_kernels

        return "cuda" if has_cuda_kernels() else "triton"
    if choice not in BACKENDS:
        source = "backend" if backend is not None else ENV_VAR
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    if choice == "cpp" and device.type != "cpu":
        raise ValueError(f"backend 'cpp' runs on CPU tensors, got device {device}")
    if choice == "cuda":
        from ceag._extension import has_cuda_kernels

        if device.type != "cuda":
            raise ValueError(f"backend 'cuda' runs on CUDA tensors, got device {device}")
        if not has_cuda_kernels():
            raise RuntimeError("backend 'cuda' requested but ceag was built without CUDA kernels")
    if choice == "triton" and device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            f"backend 'triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 "
            "before importing ceag to run the Triton kernels on CPU tensors"
        )
    return choice
