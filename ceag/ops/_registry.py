"""One record per op family, and the one function every public op routes through.

An :class:`OpFamily` says, in one place, where each face of an op family lives: its compiled
ops (``torch.ops.ceag.*``, schemas in csrc/ceag.cpp), the Triton module that defines the same
ops with a ``_triton`` name (ceag/kernels/), its plain-PyTorch reference
(ceag/ops/reference.py), the fake (meta) kernel of each op and the function that registers
its autograd formula. :func:`dispatch` resolves the backend (:func:`resolve_backend`'s rules)
and hands back that backend's ops, registered on first use.

The compiled ops exist only once ``ceag._C`` is loaded (lazily, ceag/_extension.py), so their
fake kernels and autograd are registered by a hook the loader runs; the Triton ops get theirs
when :func:`dispatch` first routes to "triton" (after importing their module, which imports
nothing from here).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ceag import _extension
from ceag.ops._backend import resolve_backend

__all__ = ["FAMILIES", "OpFamily", "Route", "dispatch", "register_family"]

OpOverload = torch._ops.OpOverload


@dataclass(frozen=True)
class OpFamily:
    """The faces of one op family. ``compiled``, ``triton`` and ``fake`` align op by op."""

    name: str
    compiled: tuple[str, ...]  # names in torch.ops.ceag, defined by ceag._C
    triton: tuple[str, ...]  # the same ops from ``triton_module`` (same schemas); () for none
    triton_module: str  # importing it defines the Triton ops (ceag/kernels/)
    reference: Callable[..., Any]  # ceag.ops.reference: the spec every backend is tested against
    fake: tuple[Callable[..., Any], ...]  # fake (meta) kernel of each op
    autograd: Callable[..., None] | None = None  # autograd(*ops): registers the backward
    # Backends this family has no kernels for and answers with its reference (compact_linear
    # on CUDA until its GPU kernels land); dispatch routes them to "reference".
    reference_on: tuple[str, ...] = ()

    def __post_init__(self):
        if not len(self.compiled) == len(self.fake) > 0 or len(self.triton) not in (0, len(self.compiled)):
            raise ValueError(f"{self.name}: compiled, triton (if any) and fake must name the same ops")

    def ops(self, backend: str) -> tuple[OpOverload, ...]:
        """The ops of ``backend`` ("cpp" and "cuda" share the compiled ones), registered."""
        if backend not in ("cpp", "cuda", "triton"):
            raise ValueError(f"{self.name}: backend {backend!r} has no ops (the reference is a function)")
        kind = "triton" if backend == "triton" else "compiled"
        if kind == "triton" and not self.triton:
            raise ValueError(f"{self.name} has no Triton kernels; use backend='reference' on this device")
        _load_ops(self.name, kind)
        return _OPS[(self.name, kind)]

    def _register_ops(self, names: tuple[str, ...], kind: str) -> tuple[OpOverload, ...]:
        """The ops ``names`` of ``torch.ops.ceag`` as ``kind`` ("compiled" or "triton"), with
        their fake kernels and autograd registered (once per backend: the family is the only
        registrar)."""
        ops = tuple(getattr(torch.ops.ceag, name).default for name in names)
        key = ops[0]._schema.name
        with _LOCK:
            if key not in _REGISTERED:
                for op, fake_fn in zip(ops, self.fake, strict=True):
                    torch.library.register_fake(op._schema.name, fake_fn)
                if self.autograd is not None:
                    self.autograd(*ops)
                _REGISTERED.add(key)
        _OPS[(self.name, kind)] = ops
        return ops


class Route(NamedTuple):
    """Where one call goes: the resolved backend and its ops (none for "reference")."""

    backend: str
    ops: tuple[OpOverload, ...]


def dispatch(family: OpFamily, backend: str | None, device: torch.device) -> Route:
    """Route a call of ``family`` on tensors of ``device``: the backend :func:`resolve_backend`
    picks (argument, then $CEAG_BACKEND, then the device default) and that backend's ops.

    For "reference" the ops are empty: call ``family.reference``.
    """
    chosen = resolve_backend(backend, device)
    if chosen in family.reference_on:
        chosen = "reference"
    return Route(chosen, () if chosen == "reference" else family.ops(chosen))


# Under torch.compile the first call of a backend may come while Dynamo traces: it runs this
# at trace time (importing a module or loading a library is no graph op) instead of breaking
# the graph. Afterwards it only finds the ops in _OPS.
@_extension.constant_result
def _load_ops(family: str, kind: str) -> bool:
    """Make ``_OPS[(family, kind)]`` hold the family's "triton" or "compiled" ops, registered."""
    if (family, kind) not in _OPS:
        if kind == "triton":
            record = FAMILIES[family]
            importlib.import_module(record.triton_module)  # defines the *_triton ops
            record._register_ops(record.triton, kind)
        else:
            _extension.load()  # its hook registers the compiled ops of every family
    return True


FAMILIES: dict[str, OpFamily] = {}
_OPS: dict[tuple[str, str], tuple[OpOverload, ...]] = {}
_REGISTERED: set[str] = set()
_LOCK = threading.RLock()


def register_family(family: OpFamily) -> OpFamily:
    """Add ``family`` to :data:`FAMILIES`; its compiled ops are registered once ceag._C loads."""
    if family.name in FAMILIES:
        raise ValueError(f"op family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    _extension.on_load(lambda: family._register_ops(family.compiled, "compiled"))
    return family
