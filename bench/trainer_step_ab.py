"""bench/trainer_step.py as an A/B in one process: today's Trainer step against the same with the
three per-step costs removed in session 9 put back (``apply_masks_`` after every optimizer
step, ``copy.deepcopy`` of the method's state dicts for the undo point, ``get_total_norm`` in
the non-finite check), interleaved, so a shared machine's drift hits both alike.

    OMP_NUM_THREADS=2 python bench/trainer_step_ab.py 5     # repetitions
"""

from __future__ import annotations

import copy
import statistics
import sys

import torch
import trainer_step as ts

import ceag.methods.constrained as constrained
import ceag.train.faults as faults
import ceag.train.loop as loop
from ceag.prune import apply_masks_

TODAY = {"sgd_step": torch.optim.SGD.step, "copied": constrained._copied, "grad_norm": faults._grad_norm}
_put_back = False


def _sgd_step_then_mask(self, *args, **kwargs):
    out = TODAY["sgd_step"](self, *args, **kwargs)
    if getattr(self, "ab_model", None) is not None:
        apply_masks_(self.ab_model)
    return out


def _use(put_back: bool) -> None:
    global _put_back
    _put_back = put_back
    torch.optim.SGD.step = _sgd_step_then_mask if put_back else TODAY["sgd_step"]
    constrained._copied = copy.deepcopy if put_back else TODAY["copied"]
    faults._grad_norm = torch.nn.utils.get_total_norm if put_back else TODAY["grad_norm"]


_trainer_init = loop.Trainer.__init__


def _init(self, *args, **kwargs):
    _trainer_init(self, *args, **kwargs)
    self.optimizer.ab_model = self.model if _put_back else None


def main(reps: int) -> None:
    loop.Trainer.__init__ = _init
    data = ts._data()
    times: dict[str, list[float]] = {k: [] for k in ("plain", "nft", "nft-old", "ceag", "ceag-old")}
    for _ in range(reps):
        _use(False)
        times["plain"].append(ts.plain_ms(data))
        for method in ("nft", "ceag"):
            _use(False)
            times[method].append(ts.trainer_ms(method, data))
            _use(True)
            times[f"{method}-old"].append(ts.trainer_ms(method, data))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k}: median {med[k]:.2f} ms ({med[k] / med['plain']:.2f}x plain), all {[round(x, 2) for x in v]}")
    print(f"ceag today / put back {med['ceag'] / med['ceag-old']:.3f}, nft {med['nft'] / med['nft-old']:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
