"""A mitigation step as `ceag run` takes it (the Trainer) against a plain eager PyTorch step.

Adult-shaped data (32,561 rows of 105 random features, 2 classes, 40 groups), the experiments'
MLP 512-512 at 90% sparsity (layer-wise), batch 256, SGD with momentum 0.9 and weight decay
1e-4. ``plain``: ``F.linear(x, W * M)`` for the masked layers, cross-entropy, backward, SGD,
nothing else (the issue 22 baseline). ``nft`` / ``ceag``: :class:`ceag.train.Trainer` with
that method, evaluation off, one pruning epoch then two mitigation epochs; the time per
mitigation step from ``Trainer.timings``. The three alternate, ``--reps`` times, in one
process; the table gives each one's median and its ratio to ``plain``'s.

    python bench/trainer_step.py             # writes bench/results/cpu-trainer_step.{json,md}
"""

from __future__ import annotations

import argparse
import time

import script_results
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ceag.models import build_model
from ceag.train import TrainConfig, Trainer

N, D, G, B, HIDDEN = 32561, 105, 40, 256, (512, 512)


def _data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = (x[:, 0] + 0.3 * torch.randn(N, generator=gen) > 0).long()
    return TensorDataset(x, y, torch.randint(0, G, (N,), generator=gen))


def trainer_ms(method: str, data: TensorDataset) -> float:
    torch.manual_seed(0)
    cfg = TrainConfig(
        num_groups=G,
        method=method,
        pruning_epochs=1,
        mitigation_epochs=2,
        batch_size=B,
        eval_train=False,
        eval_test=False,
        progress=False,
        dual_lr=1 / 128,
        **({"buffer_size": 40} if method == "ceag" else {}),
    )
    trainer = Trainer(cfg, build_model((D,), 2, "auto", HIDDEN), data, data)
    trainer.fit()
    t = trainer.timings["mitigation"]
    return 1000 * t["seconds"] / t["steps"]


def plain_ms(data: TensorDataset, steps: int = 256, warmup: int = 20) -> float:
    torch.manual_seed(0)
    model = build_model((D,), 2, "auto", HIDDEN)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    masks = [(torch.rand_like(m.weight) > 0.9).float() for m in layers[:-1]]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y, _ = data.tensors
    order = torch.randperm(N)
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        idx = order[(i * B) % (N - B) :][:B]
        h = x[idx]
        for layer, mask in zip(layers[:-1], masks):
            h = F.relu(F.linear(h, layer.weight * mask, layer.bias))
        loss = F.cross_entropy(layers[-1](h), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    data = _data()
    times: dict[str, list[float]] = {"plain": [], "nft": [], "ceag": []}
    for _ in range(args.reps):
        times["plain"].append(plain_ms(data))
        for method in ("nft", "ceag"):
            times[method].append(trainer_ms(method, data))
    note = f"{args.reps} alternating repetitions"
    print(script_results.write("trainer_step", times, unit="ms", what="step", baseline="plain", note=note))


if __name__ == "__main__":
    main()
