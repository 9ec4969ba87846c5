"""A generated grouped classification task with any number of groups and a tunable minority effect.

For ``G`` groups, ``F`` features and ``C`` classes, with ``k = max(1, F // 4)`` code
features and ``d = F - k`` signal features:

- Group sizes follow a Zipf law: group ``g`` (0 the largest) gets a share proportional to
  ``(g + 1) ** -imbalance`` of each split, rounded by largest remainders (``imbalance=0``:
  equal sizes up to one row). Groups can be empty when ``N`` is small against ``G``.
- Features: ``x[:, :k]`` is the group's code (a random ``N(0, I_k)`` vector per group) plus
  ``N(0, 0.05²)`` noise, so the group is inferable from ``x``; ``x[:, k:] = z ~ N(0, I_d)``.
- Label rule: each group has, per class ``c``, a direction ``v[g, :, c]`` = unit(``w[:, c] +
  minority_effect · u[g, :, c]``) with ``w`` shared by all groups and ``u[g]`` the group's own
  (all ``N(0, I)``, normalized to unit length); ``y`` is drawn from ``softmax(4 · z · v[g])``
  (Gumbel-max), about 90% Bayes accuracy at ``C = 2``. ``minority_effect=0`` gives every group
  the same rule; at 1 the group part weighs as much as the shared part, so a small model that
  learns only ``w`` and the big groups' rules loses the small groups first.

Parameters come from ``SeedSequence(seed)``'s first child, train and test rows from the second
and third, so the test set does not depend on ``num_train``. Memory is O(N·F + G·d·C) (rows are
labelled in chunks); G = 10,000 and N = 1,000,000 take a few seconds
and about 150 MB (the tensors themselves, 4·N·F + 16·N bytes, plus ~16 MB of temporaries).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ceag.app.data.core import GroupedDataset

__all__ = ["group_sizes", "synthetic"]

NAME = "synthetic"
CODE_NOISE = 0.05
LOGIT_SCALE = 4.0
_CHUNK_ELEMENTS = 1 << 22


def _integer(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"synthetic: {name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"synthetic: {name} must be >= {lo}, got {value}")
    return int(value)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"synthetic: {name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"synthetic: {name} must be finite and >= 0, got {value}")
    return float(value)


def group_sizes(total: int, num_groups: int, imbalance: float) -> np.ndarray:
    """Rows per group: shares ∝ ``(g + 1) ** -imbalance``, largest-remainder rounding to ``total``."""
    weights = np.arange(1, num_groups + 1, dtype=np.float64) ** -imbalance
    raw = total * weights / weights.sum()
    sizes = np.floor(raw).astype(np.int64)
    short = total - int(sizes.sum())
    if short:
        sizes[np.argsort(-(raw - sizes), kind="stable")[:short]] += 1
    return sizes


def _rows(rng: np.random.Generator, sizes: np.ndarray, codes: np.ndarray, rules: np.ndarray) -> TensorDataset:
    """Rows of one split: groups in the given sizes, code + signal features, sampled labels.

    Written in place, a chunk of rows at a time: besides the result (``x`` float32 [N, F],
    ``y`` and ``group`` int64 [N]) it holds at most ~``_CHUNK_ELEMENTS`` elements of temporaries.
    Each draw fills its chunks in row order, which consumes the generator's stream exactly as
    one whole-array draw would, so the rows do not depend on the chunk size.
    """
    n, (num_groups, d, c) = int(sizes.sum()), rules.shape
    k = codes.shape[1]
    group = np.repeat(np.arange(num_groups, dtype=np.int64), sizes)
    rng.shuffle(group)  # in place: the same stream (and result) as rng.permutation, without a copy
    x = np.empty((n, k + d), dtype=np.float32)
    rows = max(1, _CHUNK_ELEMENTS // (k + d))
    for lo in range(0, n, rows):  # code features: the group's code plus noise
        hi = min(n, lo + rows)
        code = x[lo:hi, :k]
        np.take(codes, group[lo:hi], axis=0, out=code)
        code += CODE_NOISE * rng.standard_normal((hi - lo, k), dtype=np.float32)
    for lo in range(0, n, rows):  # signal features z ~ N(0, I_d)
        hi = min(n, lo + rows)
        x[lo:hi, k:] = rng.standard_normal((hi - lo, d), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // (d * c))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        logits = LOGIT_SCALE * np.einsum("nd,ndc->nc", x[lo:hi, k:], rules[group[lo:hi]])
        gumbel = -np.log(-np.log(rng.random((hi - lo, c), dtype=np.float32) + np.float32(1e-12)) + np.float32(1e-12))
        y[lo:hi] = np.argmax(logits + gumbel, axis=1)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(group))


#: Each option of :func:`synthetic` with its check (the value, normalised, or an error naming it).
_CHECKS = {
    "num_groups": lambda v: _integer("num_groups", v, 1),
    "num_train": lambda v: _integer("num_train", v, 1),
    "num_test": lambda v: _integer("num_test", v, 0),
    "num_features": lambda v: _integer("num_features", v, 2),
    "num_classes": lambda v: _integer("num_classes", v, 2),
    "minority_effect": lambda v: _real("minority_effect", v),
    "imbalance": lambda v: _real("imbalance", v),
    "seed": lambda v: _integer("seed", v, 0),
}
#: More groups than this is a mistake (ceag's ops take up to 2**24, but not as a data set).
MAX_GROUPS = 100_000


def check_options(**options) -> dict:
    """:func:`synthetic`'s keyword arguments checked and normalised, without generating
    anything: TypeError for an unknown option, the errors :func:`synthetic` documents."""
    unknown = sorted(set(options) - set(_CHECKS))
    if unknown:
        raise TypeError(f"synthetic: unknown option(s) {unknown}; expected some of {sorted(_CHECKS)}")
    out = {k: _CHECKS[k](v) for k, v in options.items()}
    if out.get("num_groups", 0) > MAX_GROUPS:
        raise ValueError(f"synthetic: num_groups must be <= {MAX_GROUPS}, got {out['num_groups']}")
    return out


def synthetic(
    num_groups: int = 20,
    num_train: int = 20000,
    num_test: int = 5000,
    num_features: int = 32,
    num_classes: int = 2,
    minority_effect: float = 1.0,
    imbalance: float = 1.0,
    seed: int = 0,
) -> GroupedDataset:
    """Generate the synthetic grouped data set (see the module docstring); deterministic in ``seed``.

    Raises TypeError for a non-integer count or non-real effect, ValueError (naming the
    argument) for ``num_groups < 1``, ``num_train < 1``, ``num_test < 0``,
    ``num_features < 2``, ``num_classes < 2``, a negative or non-finite ``minority_effect`` or
    ``imbalance``, or a negative ``seed``.
    """
    o = check_options(
        num_groups=num_groups,
        num_train=num_train,
        num_test=num_test,
        num_features=num_features,
        num_classes=num_classes,
        minority_effect=minority_effect,
        imbalance=imbalance,
        seed=seed,
    )
    num_groups, num_train, num_test, num_features = o["num_groups"], o["num_train"], o["num_test"], o["num_features"]
    num_classes, minority_effect, imbalance, seed = o["num_classes"], o["minority_effect"], o["imbalance"], o["seed"]

    k = max(1, num_features // 4)
    d = num_features - k
    param_rng, train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    codes = param_rng.standard_normal((num_groups, k), dtype=np.float32)
    shared = param_rng.standard_normal((1, d, num_classes), dtype=np.float32)
    shared /= np.linalg.norm(shared, axis=1, keepdims=True)
    own = param_rng.standard_normal((num_groups, d, num_classes), dtype=np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    rules = shared + np.float32(minority_effect) * own
    rules /= np.maximum(np.linalg.norm(rules, axis=1, keepdims=True), np.float32(1e-12))
    del own

    train = _rows(train_rng, group_sizes(num_train, num_groups, imbalance), codes, rules)
    test = _rows(test_rng, group_sizes(num_test, num_groups, imbalance), codes, rules)
    width = len(str(num_groups - 1))
    return GroupedDataset(
        name=NAME,
        train=train,
        test=test,
        num_classes=num_classes,
        num_groups=num_groups,
        group_names=tuple(f"g{g:0{width}d}" for g in range(num_groups)),
        class_names=tuple(str(c) for c in range(num_classes)),
        input_shape=(num_features,),
        description=(
            f"Synthetic (seed {seed}): {num_train:,} train and {num_test:,} test rows, {num_features} "
            f"features, {num_classes} classes, {num_groups} groups with Zipf sizes of exponent "
            f"{imbalance:g} (group 0 the largest). The first {k} features are a noisy random code of "
            f"the group; the label is drawn from a softmax of the other {d} features along per-class "
            f"directions that mix a rule shared by all groups with a group-specific one of relative "
            f"weight minority_effect={minority_effect:g}."
        ),
    )
