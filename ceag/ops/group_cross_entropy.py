"""Segmented per-group cross-entropy and accuracy in one pass over the logits.

``group_cross_entropy(logits, target, group, num_groups)`` returns, for logits [N, C]:

- ``loss_sum[G]``: sum of the per-sample cross-entropy of each group (differentiable),
- ``correct[G]`` / ``count[G]`` (int64): samples of the group whose argmax equals the target,
  and samples of the group,
- ``sample_correct[N]`` (bool): the per-sample correctness bits the replay buffers take,
- ``weighted_loss``: ``sum_g group_weight[g] * loss_sum[g]`` when ``group_weight`` is given.

Non-finite logits are not an error (checking would cost a pass): they propagate. A row
holding a NaN, or a +inf, or only -inf, has a NaN loss, so its group's ``loss_sum`` (and
``weighted_loss``) is NaN; ``count`` is unaffected, and the predicted class is
``torch.argmax``'s: NaN counts as the maximum (the first NaN wins), else the first largest
value. Every backend follows this.

Samples whose target is ``ignore_index`` count nowhere and are never correct. ``loss_sum`` is
float32 (float64 for float64 logits, so that gradcheck works). With ``group_weight`` and
logits that require grad, the kernel writes the gradient of ``weighted_loss`` during the
forward sweep, and ``weighted_loss.backward()`` only scales that saved gradient: one read of
the logits per training step instead of three. ``loss_sum`` stays differentiable either way.

Backends ("cpp", "cuda", "triton", "reference") share the schemas of csrc/ceag.cpp; the
family's record, :data:`GROUP_CROSS_ENTROPY` (ceag/ops/_registry.py), registers the fake
kernels and autograd formulas of the forward, backward and weighted ops of each backend.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from torch import Tensor

from ceag.ops import reference
from ceag.ops._checks import FLOAT_DTYPES, INDEX_DTYPES, check_index_range, check_num_groups, check_tensor
from ceag.ops._registry import OpFamily, dispatch, register_family

__all__ = ["GroupCrossEntropy", "group_cross_entropy"]


class GroupCrossEntropy(NamedTuple):
    loss_sum: Tensor
    correct: Tensor
    count: Tensor
    sample_correct: Tensor
    weighted_loss: Tensor | None = None


def _acc_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------
# Fake kernels (shape/dtype propagation for torch.compile) and autograd formulas.
# ---------------------------------------------------------------------------------------


def _fake_forward(logits, target, group, num_groups, label_smoothing, ignore_index):
    n = logits.shape[0]
    acc = _acc_dtype(logits)
    return (
        logits.new_empty((num_groups,), dtype=acc),
        logits.new_empty((num_groups,), dtype=torch.int64),
        logits.new_empty((num_groups,), dtype=torch.int64),
        logits.new_empty((n,), dtype=torch.bool),
        logits.new_empty((n,), dtype=acc),
    )


def _fake_backward(grad_loss_sum, logits, target, group, lse, label_smoothing, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _fake_weighted(logits, target, group, group_weight, label_smoothing, ignore_index):
    out = _fake_forward(logits, target, group, group_weight.shape[0], label_smoothing, ignore_index)
    return (*out, torch.empty_like(logits, memory_format=torch.contiguous_format))


def _register_autograd(forward_op, backward_op, weighted_op) -> None:
    """``loss_sum`` (of the forward and of the weighted op) is differentiable through
    ``backward_op`` and the saved row logsumexp; ``lse`` and the weighted op's ``grad_logits``
    are not. Gradients that are None (unused outputs) are never materialized as zeros."""

    def setup_forward(ctx, inputs, output):
        logits, target, group, _num_groups, label_smoothing, ignore_index = inputs
        lse = output[4]
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(logits, target, group, lse)
        ctx.label_smoothing = label_smoothing
        ctx.ignore_index = ignore_index

    def backward_forward(ctx, grad_loss_sum, *_unused):
        if grad_loss_sum is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        logits, target, group, lse = ctx.saved_tensors
        grad = backward_op(grad_loss_sum.contiguous(), logits, target, group, lse, ctx.label_smoothing, ctx.ignore_index)
        return grad, None, None, None, None, None

    def setup_weighted(ctx, inputs, output):
        logits, target, group, _group_weight, label_smoothing, ignore_index = inputs
        lse, grad_logits = output[4], output[5]
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(lse, grad_logits)
        ctx.save_for_backward(logits, target, group, lse)
        ctx.label_smoothing = label_smoothing
        ctx.ignore_index = ignore_index

    # The gradient of weighted_loss does not come through here: it flows through
    # ceag::_weighted_loss_from_grad, which scales the grad_logits this op wrote. Only a
    # gradient of loss_sum itself (e.g. a per-group statistic used in a loss) costs a pass.
    torch.library.register_autograd(forward_op, backward_forward, setup_context=setup_forward)
    torch.library.register_autograd(weighted_op, backward_forward, setup_context=setup_weighted)


GROUP_CROSS_ENTROPY = register_family(
    OpFamily(
        name="group_cross_entropy",
        compiled=("group_cross_entropy", "group_cross_entropy_backward", "weighted_group_cross_entropy"),
        triton=(
            "group_cross_entropy_triton",
            "group_cross_entropy_backward_triton",
            "weighted_group_cross_entropy_triton",
        ),
        triton_module="ceag.kernels.group_cross_entropy",
        reference=reference.group_cross_entropy,
        fake=(_fake_forward, _fake_backward, _fake_weighted),
        autograd=_register_autograd,
    )
)


# weighted_loss = sum_g w_g * loss_sum_g, whose gradient w.r.t. logits was already written by
# the weighted forward (grad_logits): its backward is grad_out * grad_logits, no second sweep.
# loss_sum enters only for the value (and the gradient w.r.t. group_weight); logits only to
# connect the autograd graph.
@torch.library.custom_op("ceag::_weighted_loss_from_grad", mutates_args=())
def _weighted_loss_from_grad(loss_sum: Tensor, group_weight: Tensor, logits: Tensor, grad_logits: Tensor) -> Tensor:
    return (loss_sum * group_weight.to(loss_sum.dtype)).sum()


@_weighted_loss_from_grad.register_fake
def _(loss_sum, group_weight, logits, grad_logits):
    return loss_sum.new_empty(())


def _setup_weighted_loss(ctx, inputs, output):
    loss_sum, group_weight, logits, grad_logits = inputs
    ctx.save_for_backward(loss_sum, grad_logits)
    ctx.weight_dtype = group_weight.dtype


def _plain_eager(t: Tensor) -> bool:
    """True outside every tracer (compile, make_fx, fake/functional modes): values are real."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0


def _backward_weighted_loss(ctx, grad):
    loss_sum, grad_logits = ctx.saved_tensors
    grad_w = grad_x = None
    if ctx.needs_input_grad[1]:
        grad_w = (grad * loss_sum).to(ctx.weight_dtype)
    if ctx.needs_input_grad[2]:
        if _plain_eager(grad) and grad.device.type == "cpu" and grad.item() == 1.0:
            # loss.backward(): the saved gradient is the answer; skip a pass over [N, C]. (Not
            # scaled in place: the graph may be retained and run again.)
            grad_x = grad_logits
        else:
            grad_x = grad_logits * grad.to(grad_logits.dtype)
    return None, grad_w, grad_x, None


_weighted_loss_from_grad.register_autograd(_backward_weighted_loss, setup_context=_setup_weighted_loss)

# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _validate(logits, target, group, num_groups, label_smoothing, ignore_index, group_weight):
    check_tensor("logits", logits, dim=2, dtypes=FLOAT_DTYPES)
    device = logits.device
    n, c = logits.shape
    if c < 1:
        raise ValueError(f"logits must have at least one class, got shape {tuple(logits.shape)}")
    for name, t in (("target", target), ("group", group)):
        check_tensor(name, t, dim=1, dtypes=INDEX_DTYPES, device=device, device_of="logits")
        if t.shape[0] != n:
            raise ValueError(f"{name} must have length N={n} (logits.shape[0]), got {t.shape[0]}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, torch.SymInt)):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if not isinstance(num_groups, torch.SymInt):
        check_num_groups(num_groups)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (numbers.Real, torch.SymFloat)):
        raise TypeError(f"label_smoothing must be a real number, got {type(label_smoothing).__name__}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if group_weight is not None:
        check_tensor("group_weight", group_weight, dim=1, dtypes=FLOAT_DTYPES, device=device, device_of="logits")
        if group_weight.shape[0] != num_groups:
            raise ValueError(f"group_weight must have length num_groups={num_groups}, got {group_weight.shape[0]}")


def group_cross_entropy(
    logits: Tensor,
    target: Tensor,
    group: Tensor,
    num_groups: int,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    group_weight: Tensor | None = None,
    backend: str | None = None,
) -> GroupCrossEntropy:
    """Per-group cross-entropy sums and accuracy counts of ``logits`` [N, C] in one sweep.

    Args:
        logits: [N, C] float32, float64, bfloat16 or float16 (accumulated in fp32 or fp64).
        target: [N] int64/int32 class ids in [0, C), or ``ignore_index``.
        group: [N] int64/int32 group ids in [0, num_groups).
        num_groups: G >= 1; groups absent from the batch get zeros.
        label_smoothing: in [0, 1], as in ``torch.nn.functional.cross_entropy``.
        ignore_index: target value of samples that count nowhere.
        group_weight: optional [G] weights; adds ``weighted_loss = sum_g w_g loss_sum_g``,
            whose gradient the forward writes in the same sweep.
        backend: "cpp", "cuda", "triton" or "reference"; default by device / $CEAG_BACKEND.
    """
    _validate(logits, target, group, num_groups, label_smoothing, ignore_index, group_weight)
    label_smoothing = float(label_smoothing)
    # The Triton kernels index target and group as dense arrays (strided views gave wrong
    # sums); logits and group_weight go with their strides. No copy when already contiguous.
    target, group = target.contiguous(), group.contiguous()
    route = dispatch(GROUP_CROSS_ENTROPY, backend, logits.device)
    if route.backend != "cpp" and not torch.compiler.is_compiling():
        # The C++ CPU kernels check the ranges themselves during their sweep.
        check_index_range("target", target, logits.shape[1], allow=ignore_index)
        check_index_range("group", group, num_groups)

    if route.backend == "reference":
        loss_sum, correct, count, sample_correct = GROUP_CROSS_ENTROPY.reference(
            logits, target, group, num_groups, label_smoothing=label_smoothing, ignore_index=ignore_index
        )
        weighted = None
        if group_weight is not None:
            weighted = (loss_sum * group_weight.to(loss_sum.dtype)).sum()
        return GroupCrossEntropy(loss_sum, correct, count, sample_correct, weighted)

    forward_op, _backward_op, weighted_op = route.ops
    if group_weight is not None and torch.is_grad_enabled() and logits.requires_grad:
        loss_sum, correct, count, sample_correct, _lse, grad_logits = weighted_op(
            logits, target, group, group_weight, label_smoothing, ignore_index
        )
        weighted = torch.ops.ceag._weighted_loss_from_grad(loss_sum, group_weight, logits, grad_logits)
        return GroupCrossEntropy(loss_sum, correct, count, sample_correct, weighted)

    loss_sum, correct, count, sample_correct, _lse = forward_op(logits, target, group, num_groups, label_smoothing, ignore_index)
    weighted = None
    if group_weight is not None:
        weighted = (loss_sum * group_weight.to(loss_sum.dtype)).sum()
    return GroupCrossEntropy(loss_sum, correct, count, sample_correct, weighted)
