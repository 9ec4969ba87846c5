"""ceag.ops.replay_buffer_update: every backend against a deque(maxlen=k)-per-group model."""

from __future__ import annotations

from collections import deque

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ceag.ops import replay_buffer_update


class DequeModel:
    """The specification: one deque(maxlen=k) per group, samples pushed in batch order."""

    def __init__(self, num_groups: int, k: int):
        self.k = k
        self.queues = [deque(maxlen=k) for _ in range(num_groups)]

    def push(self, group: torch.Tensor, values: torch.Tensor) -> None:
        for g, v in zip(group.tolist(), values.tolist()):
            self.queues[g].append(v)

    def check(self, buffer: torch.Tensor, head: torch.Tensor, fill: torch.Tensor) -> None:
        buffer, head, fill = buffer.cpu(), head.cpu(), fill.cpu()
        for g, q in enumerate(self.queues):
            assert int(fill[g]) == len(q), f"fill[{g}]"
            # The ring holds the last len(q) values ending just before head.
            slots = [(int(head[g]) - len(q) + j) % self.k for j in range(len(q))]
            got = [buffer[g, s].item() for s in slots]
            assert got == list(q), f"group {g}: {got} != {list(q)}"
            if len(q) < self.k:
                assert int(head[g]) == len(q) % self.k


def _new(num_groups, k, dtype, device):
    return (
        torch.zeros(num_groups, k, dtype=dtype, device=device),
        torch.zeros(num_groups, dtype=torch.long, device=device),
        torch.zeros(num_groups, dtype=torch.long, device=device),
    )


def _values(n, dtype, gen):
    if dtype == torch.bool:
        return torch.rand(n, generator=gen) < 0.5
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8)
    return torch.randn(n, generator=gen).to(dtype)


# (id, G, k, batch sizes): more than k samples of a group per batch, empty batches, G=1, k=1.
CASES = [
    ("G1-k1", 1, 1, [0, 1, 3, 0, 5]),
    ("G1-k4", 1, 4, [2, 9, 1, 0, 4]),
    ("G3-k1", 3, 1, [5, 0, 7]),
    ("G5-k3", 5, 3, [1, 20, 0, 7, 13, 2]),
    ("G40-k40", 40, 40, [256, 256, 0, 100, 256]),
    ("G1000-k40", 1000, 40, [256, 256, 512]),
]


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_deque_model(backend_device, case, dtype):
    backend, device = backend_device
    _, num_groups, k, batches = case
    gen = torch.Generator().manual_seed(num_groups * 100 + k)
    buffer, head, fill = _new(num_groups, k, dtype, device)
    model = DequeModel(num_groups, k)
    for n in batches:
        # Skewed groups: a few groups get many samples of one batch.
        group = (torch.rand(n, generator=gen) ** 3 * num_groups).long().clamp_max(num_groups - 1)
        values = _values(n, dtype, gen)
        out = replay_buffer_update(buffer, head, fill, group.to(device), values.to(device), backend=backend)
        assert out is fill
        model.push(group, values)
        model.check(buffer, head, fill)


def test_bool_values_into_float_buffer(backend_device):
    backend, device = backend_device
    buffer, head, fill = _new(3, 4, torch.float32, device)
    group = torch.tensor([0, 0, 2, 1, 0], device=device)
    values = torch.tensor([True, False, True, True, True], device=device)
    replay_buffer_update(buffer, head, fill, group, values, backend=backend)
    assert buffer.cpu().tolist() == [[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert fill.cpu().tolist() == [3, 1, 1] and head.cpu().tolist() == [3, 1, 1]


def test_int32_groups(backend_device):
    backend, device = backend_device
    buffer, head, fill = _new(2, 2, torch.bool, device)
    group = torch.tensor([1, 1, 1], dtype=torch.int32, device=device)
    values = torch.tensor([True, False, True], device=device)
    replay_buffer_update(buffer, head, fill, group, values, backend=backend)
    assert buffer.cpu().tolist() == [[False, False], [True, False]]
    assert fill.cpu().tolist() == [0, 2] and head.cpu().tolist() == [0, 1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_groups=st.integers(1, 12),
    k=st.integers(1, 8),
    batches=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_random_batches(backend_device, num_groups, k, batches, seed):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(seed)
    buffer, head, fill = _new(num_groups, k, torch.bool, device)
    model = DequeModel(num_groups, k)
    for n in batches:
        group = torch.randint(0, num_groups, (n,), generator=gen)
        values = _values(n, torch.bool, gen)
        replay_buffer_update(buffer, head, fill, group.to(device), values.to(device), backend=backend)
        model.push(group, values)
    model.check(buffer, head, fill)


def test_opcheck_cpp_op():
    buffer, head, fill = _new(4, 3, torch.float32, "cpu")
    group = torch.tensor([0, 3, 3, 3, 3, 1])
    torch.library.opcheck(torch.ops.ceag.replay_buffer_update_.default, (buffer, head, fill, group, torch.randn(6)))


def test_torch_compile_fullgraph():
    def step(buffer, head, fill, group, values):
        return replay_buffer_update(buffer, head, fill, group, values) == buffer.shape[1]

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    b1, h1, f1 = _new(5, 3, torch.bool, "cpu")
    b2, h2, f2 = _new(5, 3, torch.bool, "cpu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        group = torch.randint(0, 5, (9,), generator=gen)
        values = torch.rand(9, generator=gen) < 0.5
        full1 = compiled(b1, h1, f1, group, values)
        full2 = step(b2, h2, f2, group, values)
        assert torch.equal(full1, full2)
    assert torch.equal(b1, b2) and torch.equal(h1, h2) and torch.equal(f1, f2)


def _bad_inputs():
    buffer, head, fill = _new(3, 4, torch.bool, "cpu")
    group = torch.tensor([0, 2, 1])
    values = torch.tensor([True, False, True])
    return [
        ("buffer-1d", dict(buffer=buffer[0]), "buffer"),
        ("buffer-k0", dict(buffer=buffer[:, :0]), "buffer"),
        ("buffer-int32", dict(buffer=buffer.int()), "buffer"),
        ("head-length", dict(head=head[:2]), "head"),
        ("head-int32", dict(head=head.int()), "head"),
        ("fill-length", dict(fill=fill[:1]), "fill"),
        ("group-float", dict(group=group.float()), "group"),
        ("group-too-large", dict(group=torch.tensor([0, 3, 1])), "group"),
        ("group-negative", dict(group=torch.tensor([0, -1, 1])), "group"),
        ("group-device", dict(group=group.to("meta")), "group"),
        ("values-length", dict(values=values[:2]), "values"),
        ("values-dtype", dict(values=torch.rand(3)), "values"),
        ("backend", dict(backend="nope"), "backend"),
    ], (buffer, head, fill, group, values)


@pytest.mark.parametrize("idx", range(len(_bad_inputs()[0])), ids=[b[0] for b in _bad_inputs()[0]])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_bad_inputs_name_the_argument(idx, backend):
    cases, (buffer, head, fill, group, values) = _bad_inputs()
    _, override, name = cases[idx]
    kw = dict(buffer=buffer, head=head, fill=fill, group=group, values=values, backend=backend)
    kw.update(override)
    args = [kw.pop(k) for k in ("buffer", "head", "fill", "group", "values")]
    with pytest.raises((ValueError, TypeError, RuntimeError), match=name):
        replay_buffer_update(*args, **kw)
    if name not in ("buffer", "head", "fill"):
        assert not buffer.any() and not head.any() and not fill.any(), "a bad call left the state untouched"


def test_cpp_kernel_checks_head_and_fill():
    buffer, head, fill = _new(2, 3, torch.bool, "cpu")
    group, values = torch.tensor([1]), torch.tensor([True])
    with pytest.raises(RuntimeError, match="head"):
        torch.ops.ceag.replay_buffer_update_(buffer, head + 3, fill, group, values)
    with pytest.raises(RuntimeError, match="fill"):
        torch.ops.ceag.replay_buffer_update_(buffer, head, fill + 4, group, values)
    with pytest.raises(RuntimeError, match="group"):
        torch.ops.ceag.replay_buffer_update_(buffer, head, fill, group + 1, values)
