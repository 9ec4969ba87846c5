"""Loads the compiled extension, which registers the torch.ops.ceag kernels.

``$CEAG_EXTENSION_PATH`` points at another build of the library to load instead of the
installed ``ceag._C`` (handy for sanitizer builds and side-by-side development builds).
"""

from __future__ import annotations

import os

import torch

_override = os.environ.get("CEAG_EXTENSION_PATH")
if _override:
    try:
        torch.ops.load_library(_override)
    except OSError as exc:  # name the variable: the loader's message names only the file
        raise ImportError(
            f"CEAG_EXTENSION_PATH={_override!r} cannot be loaded ({exc}); point it at a ceag "
            "extension built against this torch, or unset it to use the installed build"
        ) from None
else:
    try:
        from ceag import _C  # noqa: F401  (importing registers the ops)
    except ImportError as exc:  # pragma: no cover - only without a build
        raise ImportError(
            "ceag's compiled extension (ceag._C) is missing. Build it against the installed "
            "torch with `pip install --no-build-isolation -e .` (or `make install`); see README.md."
        ) from exc


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("ceag::masked_linear", "CUDA")
