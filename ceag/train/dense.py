"""Training a dense model from scratch on a tensor data set: the experiment's dense models.

Same batches as :class:`~ceag.train.loop.Trainer` (:func:`epoch_permutation` of the seed and
epoch) and the same NaN / Inf check, with Adam or SGD; the model is the starting point of
every method's run, so it is trained once per seed and cached by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ceag._progress import progress
from ceag.train.batching import IndexBatches, epoch_permutation
from ceag.train.faults import NonFiniteError, listing, nonfinite

DENSE_OPTIMIZERS = ("adam", "sgd")


def fit_dense(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    on_nonfinite: str = "stop",
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> int:
    """Train ``model`` (in place, on ``device``) for ``epochs`` of cross-entropy on ``(x, y)``;
    returns the number of skipped non-finite steps.

    ``optimizer``: "adam" (Adam at ``lr``) or "sgd" (momentum 0.9, ``weight_decay``). A NaN /
    Inf loss or gradient raises :class:`NonFiniteError` (``on_nonfinite="stop"``) or skips
    the step (``"skip"``, logged).
    """
    if optimizer not in DENSE_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {DENSE_OPTIMIZERS}, got {optimizer!r}")
    device = torch.device(device)
    model.to(device).train()
    params = list(model.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    )
    skipped = 0
    for epoch in progress(range(epochs), desc=f"dense training (seed {seed})", disable=not show_progress, leave=False):
        for step, idx in enumerate(IndexBatches(epoch_permutation(len(y), seed, epoch), batch_size)):
            loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            bad = nonfinite(loss, params, across_ranks=False)  # one process trains the dense model
            if bad:
                where = f"dense training (seed {seed}), epoch {epoch}, step {step + 1}: non-finite {listing(bad)}"
                if on_nonfinite == "stop":
                    raise NonFiniteError(
                        f"{where}; stopped, nothing cached. Lower --dense-lr, check the data for NaN / Inf, "
                        "or use --on-nonfinite skip"
                    )
                skipped += 1
                log(f"{where}; step skipped")
                continue
            opt.step()
    return skipped
