"""What the Triton kernels' host code does differently under TRITON_INTERPRET=1 (CPU tensors).

torch.library.wrap_triton hands interpreted kernels back unwrapped (no tracing HOP), so under
the interpreter the host code must not launch kernels while torch.compile traces, and the ops
are kept opaque to the compiler. Compiled Triton (a GPU) never takes these paths: wrap_triton
traces the launches there.
"""

from __future__ import annotations

import os

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def traced(*tensors: torch.Tensor | None) -> bool:
    """True under the interpreter when a tensor has no real data (FakeTensor, FunctionalTensor).

    nn.Parameter and other real tensors count as data: only tracing subclasses are skipped.
    """
    return INTERPRET and any(isinstance(t, (FakeTensor, FunctionalTensor)) for t in tensors)


def opaque_under_interpreter(*ops) -> None:
    """Under the interpreter, keep the ops whole under functionalization (torch.compile then
    calls them like any custom op) instead of decomposing them into kernel launches."""
    if not INTERPRET:
        return

    def keep_whole(mode, op, types, args, kwargs):
        return mode.__torch_dispatch__(op, types, args, kwargs)

    for op in ops:
        op.register_torch_dispatch(FunctionalTensorMode, keep_whole)
