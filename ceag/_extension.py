"""The compiled extension (``ceag._C``, which defines the torch.ops.ceag kernels), loaded on first use.

``import ceag`` loads nothing: the first op call that needs a compiled backend, or resolves its
default one, calls :func:`available`, which imports ``ceag._C`` and then runs the
:func:`on_load` hooks (ceag.ops registers its fake kernels and autograd formulas there, on the
schemas the library has just defined).

A pure-Python install (``CEAG_BUILD_EXT=0 pip install --no-build-isolation -e .``) has no
``ceag._C``: :func:`available` is then False, ``backend="reference"`` still works for every
op, and the default CPU backend falls back to it (ceag/ops/_backend.py).

``$CEAG_EXTENSION_PATH`` points at another build of the library to load instead of
``ceag._C`` (sanitizer builds, side-by-side development builds). That explicit choice is loaded
at ``import ceag``, so that a bad path fails at once with an ImportError naming the variable.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable

import torch

ENV_VAR = "CEAG_EXTENSION_PATH"
BUILD_ENV_VAR = "CEAG_BUILD_EXT"

MISSING = (
    "ceag's compiled extension (ceag._C) is not installed (a CEAG_BUILD_EXT=0 build, or the "
    "extension was never built). Build it against the installed torch with "
    "`pip install --no-build-isolation -e .` (or `make install`); see README.md."
)

_available: bool | None = None  # None: not tried yet
_cuda_kernels = False
_hooks: list[Callable[[], object]] = []
_lock = threading.RLock()


def available() -> bool:
    """True when the compiled kernels are loaded; loads them on the first call.

    False only when this install has no ``ceag._C`` (a pure-Python build); an extension that
    is present but cannot be loaded (built against another torch) raises ImportError.
    """
    if _available is None:
        return _load()
    return _available


def load() -> None:
    """Load the compiled kernels now; ImportError naming CEAG_BUILD_EXT if this install has none."""
    if not available():
        raise ImportError(MISSING)


def on_load(hook: Callable[[], object]) -> None:
    """Run ``hook()`` once the compiled kernels are loaded (at once if they already are).

    Hooks run before :func:`available` reports the kernels, so they must not call it (nor
    :func:`load`): they only register things on the ops the library has just defined.
    """
    with _lock:
        _hooks.append(hook)
        if _available:
            hook()


def has_cuda_kernels() -> bool:
    """True when the extension is installed and was built with its CUDA kernels."""
    return available() and _cuda_kernels


def constant_result(fn: Callable) -> Callable:
    """:func:`torch.compiler.assume_constant_result` without importing Dynamo at ``import
    ceag`` (that import alone took 3.7 s, as long as ``import torch``): the marker Dynamo reads
    is set directly while Dynamo is not loaded (a test checks it is the one torch sets)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


# Under torch.compile the first op call may come while Dynamo traces: it then runs this at
# trace time (the result, like the library, does not change afterwards) instead of breaking
# the graph, so that torch.compile(fullgraph=True) works on a fresh process too.
@constant_result
def _load() -> bool:
    global _available, _cuda_kernels
    with _lock:
        if _available is not None:
            return _available
        override = os.environ.get(ENV_VAR)
        if override:
            try:
                torch.ops.load_library(override)
            except OSError as exc:  # name the variable: the loader's message names only the file
                raise ImportError(
                    f"CEAG_EXTENSION_PATH={override!r} cannot be loaded ({exc}); point it at a ceag "
                    "extension built against this torch, or unset it to use the installed build"
                ) from None
        else:
            try:
                importlib.import_module("ceag._C")  # importing registers the ops
            except ModuleNotFoundError as exc:
                if exc.name != "ceag._C":
                    raise
                _available = False  # a pure-Python install
                return False
            except ImportError as exc:
                raise ImportError(
                    f"ceag's compiled extension (ceag._C) is installed but cannot be loaded ({exc}). "
                    "Rebuild it against the installed torch with `pip install --no-build-isolation -e .`."
                ) from exc
        _cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("ceag::masked_linear", "CUDA")
        for hook in _hooks:
            hook()
        _available = True  # only now: another thread never sees ops without their autograd
        return True


if os.environ.get(ENV_VAR):
    _load()
