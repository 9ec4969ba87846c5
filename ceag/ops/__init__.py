"""The fused ops, one API over every backend ("cpp", "triton", "cuda", "reference").

The backend follows the inputs' device unless a ``backend=`` argument or ``$CEAG_BACKEND``
names one (see :func:`ceag.ops._backend.resolve_backend`). Each op family has one record
(:class:`ceag.ops._registry.OpFamily`: compiled ops, Triton module, reference, fake kernels,
autograd) and every public op routes through :func:`ceag.ops._registry.dispatch`.
"""

from ceag.ops import reference
from ceag.ops._backend import BACKENDS, cpu_capability, resolve_backend
from ceag.ops.compact_linear import CompactLayout, compact_linear
from ceag.ops.group_cross_entropy import GroupCrossEntropy, group_cross_entropy
from ceag.ops.masked_linear import MaskLayout, masked_linear
from ceag.ops.replay_buffer import replay_buffer_update

__all__ = [
    "BACKENDS",
    "CompactLayout",
    "GroupCrossEntropy",
    "MaskLayout",
    "compact_linear",
    "cpu_capability",
    "group_cross_entropy",
    "masked_linear",
    "reference",
    "replay_buffer_update",
    "resolve_backend",
]
