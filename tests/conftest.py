"""Shared test set-up: which (backend, device) pairs this machine can run.

Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; the
variable must be set before any Triton kernel module is imported, hence here.
"""

from __future__ import annotations

import importlib.util
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import ceag  # noqa: E402,F401
from ceag._extension import has_cuda_kernels  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None


def backend_devices() -> list[tuple[str, str]]:
    """Every (backend, device) pair to test against the reference on this machine."""
    pairs = [("cpp", "cpu")]
    if HAS_TRITON:
        pairs.append(("triton", "cuda" if HAS_CUDA else "cpu"))
    if HAS_CUDA and has_cuda_kernels():
        pairs.append(("cuda", "cuda"))
    return pairs


@pytest.fixture(params=backend_devices(), ids=lambda p: f"{p[0]}-{p[1]}")
def backend_device(request) -> tuple[str, str]:
    """(backend, device) pair; Triton on CPU means the interpreter: keep its shapes small."""
    return request.param
