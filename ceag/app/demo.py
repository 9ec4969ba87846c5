"""A short tour of ceag's fused ops against eager PyTorch: same answers, less time.

    python -m ceag.app.demo [--device cpu|cuda]        # or: make tour

It checks each op against the plain-PyTorch reference, then times forward+backward of both.
(The main job, fine-tuning on real data, is ``ceag compare``: ``make demo``.)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import ceag
from ceag.ops import MaskLayout


def _time_ms(fn, min_run_time: float = 1.0) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _masked_linear_rows(device: torch.device) -> list[tuple[str, float, float, float]]:
    rows = []
    batch, n_out, n_in = 256, 1024, 1024
    x = torch.randn(batch, n_in, device=device, requires_grad=True)
    weight = torch.randn(n_out, n_in, device=device, requires_grad=True)
    for sparsity in (0.5, 0.9, 0.99):
        mask = torch.rand(n_out, n_in, device=device) >= sparsity
        layout = MaskLayout.from_mask(mask)

        def eager():
            F.linear(x, weight * mask).sum().backward()

        def fused():
            ceag.ops.masked_linear(x, weight, mask, layout=layout).sum().backward()

        y_ref = F.linear(x, weight * mask)
        y = ceag.ops.masked_linear(x, weight, mask, layout=layout)
        err = (y - y_ref).abs().max().item()
        rows.append((f"masked_linear B={batch} {n_out}x{n_in} sparsity {sparsity:.0%}", _time_ms(eager), _time_ms(fused), err))
    return rows


def _group_ce_rows(device: torch.device) -> list[tuple[str, float, float, float]]:
    n, c, g = 65536, 100, 1000
    logits = torch.randn(n, c, device=device, requires_grad=True)
    target = torch.randint(c, (n,), device=device)
    group = torch.randint(g, (n,), device=device)
    weight = torch.rand(g, device=device)

    def eager():
        loss = F.cross_entropy(logits, target, reduction="none")
        loss_sum = torch.zeros(g, device=device).index_add(0, group, loss)
        torch.bincount(group[logits.argmax(1) == target], minlength=g)
        (loss_sum * weight).sum().backward()

    def fused():
        out = ceag.ops.group_cross_entropy(logits, target, group, g, group_weight=weight)
        out.weighted_loss.backward()

    ref = ceag.ops.reference.group_cross_entropy(logits, target, group, g)[0]
    got = ceag.ops.group_cross_entropy(logits, target, group, g).loss_sum
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    return [(f"group_cross_entropy N={n} C={c} G={g}", _time_ms(eager), _time_ms(fused), err)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"ceag {ceag.__version__} on {device} ({torch.get_num_threads()} CPU threads), "
        "forward+backward, median of repeated runs\n"
    )
    rows = _masked_linear_rows(device) + _group_ce_rows(device)
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'eager ms':>9}  {'ceag ms':>8}  {'speedup':>7}  {'max err':>8}")
    for name, eager_ms, fused_ms, err in rows:
        print(f"{name:<{width}}  {eager_ms:9.2f}  {fused_ms:8.2f}  {eager_ms / fused_ms:6.2f}x  {err:8.1e}")


if __name__ == "__main__":
    main()
