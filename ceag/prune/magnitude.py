"""Unstructured magnitude pruning of a model's masked layers.

The flow, in the order a training script calls it:

- :func:`sparsify` swaps ``nn.Linear`` / ``nn.Conv2d`` for :class:`~ceag.nn.MaskedLinear` /
  :class:`~ceag.nn.MaskedConv2d` (the first conv and last linear stay dense by default, as in
  the paper); :func:`prunable_layers` lists the masked layers.
- :func:`magnitude_prune` shrinks the masks to a target sparsity by ``|w|``, layer-wise (the
  paper's default) or global, and zeroes the pruned weights.
- :func:`mask_optimizer_state_` zeroes the optimizer state (momentum, Adam moments) at pruned
  positions, once after each pruning; :func:`apply_masks_` re-zeroes pruned weights (cheap
  insurance after each optimizer step, see its docstring).
- :func:`sparsity_report` tabulates per-layer and overall sparsity.

The GMP cubic schedule that calls :func:`magnitude_prune` over training is in
:mod:`ceag.prune.schedule`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ceag.nn import COMPACT_BELOW_DENSITY, STORAGES, CompactLinear, MaskedConv2d, MaskedLinear

__all__ = [
    "LayerSparsity",
    "SparsityReport",
    "apply_masks_",
    "magnitude_prune",
    "mask_optimizer_state_",
    "prunable_layers",
    "sparsify",
    "sparsity_report",
]

_MASKED = (MaskedLinear, MaskedConv2d, CompactLinear)
# Forward/backward hook dicts moved to the masked replacement (shared objects, so existing
# RemovableHandles still remove them).
_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """``sparsity`` as a float, or a TypeError/ValueError naming ``name`` unless it is in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return s


def _kind(module: nn.Module) -> str | None:
    """ "linear" / "conv" for layers sparsify handles (exact nn.Linear / nn.Conv2d or masked)."""
    if isinstance(module, (MaskedLinear, CompactLinear)) or type(module) is nn.Linear:
        return "linear"
    if isinstance(module, MaskedConv2d) or type(module) is nn.Conv2d:
        return "conv"
    return None


def sparsify(
    model: nn.Module,
    *,
    keep_first_conv_dense: bool = True,
    keep_last_linear_dense: bool = True,
    exclude: Iterable[str] | str = (),
    storage: str = "dense",
) -> nn.Module:
    """Swap ``nn.Linear`` -> MaskedLinear and ``nn.Conv2d`` -> MaskedConv2d in place.

    The masked layers share the original weight and bias Parameters (no copy), so an optimizer
    built before or after the call keeps working, and start with an all-True mask (the model
    computes the same function). Forward/backward hooks registered on a swapped layer move to
    its replacement; the ``training`` flag is kept.

    Args:
        model: the model, changed in place and returned. If ``model`` is itself a swappable
            layer, the returned module is its replacement (use ``model = sparsify(model)``).
        keep_first_conv_dense: leave the first ``nn.Conv2d`` dense (paper default).
        keep_last_linear_dense: leave the last ``nn.Linear`` dense (paper default).
        exclude: qualified module names (as in ``model.named_modules()``) to leave dense;
            a name also excludes every layer under it. Unknown names raise ValueError.
        storage: how the masked linear layers store their weight (:data:`ceag.nn.STORAGES`):
            "dense" (MaskedLinear), "compact" (:class:`~ceag.nn.CompactLinear`, only the kept
            weights; the weight Parameter is reused, reshaped: build the optimizer afterwards)
            or "auto" (MaskedLinear until pruning takes it below
            :data:`ceag.nn.COMPACT_BELOW_DENSITY`, then compact). Conv layers stay dense-stored.

    "First" and "last" follow module registration order (``named_modules``), which is the
    execution order for ``nn.Sequential``-style models but not necessarily otherwise: pass
    ``exclude`` for anything else. Only exact ``nn.Linear`` / ``nn.Conv2d`` are swapped;
    subclasses are left alone (e.g. ``nn.MultiheadAttention``'s ``out_proj``, whose weight the
    attention reads directly). Idempotent: layers already masked stay as they are (a masked
    layer is never made dense again), and they count when locating the first conv / last
    linear, so a second call with the same arguments changes nothing.

    Call it before wrapping the model in ``DistributedDataParallel`` or ``torch.compile``
    (both capture the module tree), and before loading a checkpoint of a sparsified model
    (its state dict has the ``mask`` buffers).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    names = {name for name, _ in model.named_modules()}
    for e in exclude:
        if not isinstance(e, str):
            raise TypeError(f"exclude must hold module names (str), got {e!r}")
        if e not in names:
            raise ValueError(f"exclude: model has no module named {e!r}")

    layers = [(name, m, k) for name, m in model.named_modules() if (k := _kind(m)) is not None]
    keep_dense: set[int] = set()
    convs = [m for _, m, k in layers if k == "conv"]
    linears = [m for _, m, k in layers if k == "linear"]
    if keep_first_conv_dense and convs:
        keep_dense.add(id(convs[0]))
    if keep_last_linear_dense and linears:
        keep_dense.add(id(linears[-1]))

    def excluded(name: str) -> bool:
        return any(e == "" or name == e or name.startswith(e + ".") for e in exclude)

    replacement: dict[int, nn.Module] = {}
    for name, m, k in layers:
        if isinstance(m, _MASKED) or id(m) in keep_dense or excluded(name):
            continue
        if not isinstance(m.weight, nn.Parameter):
            raise ValueError(
                f"layer {name!r}: weight is not an nn.Parameter (torch.nn.utils.prune or a "
                "parametrization?); remove it (torch.nn.utils.prune.remove) before sparsify"
            )
        new = MaskedLinear.from_linear(m) if k == "linear" else MaskedConv2d.from_conv(m)
        if k == "linear" and storage == "compact":
            new = new.to_compact()
        elif k == "linear":
            new.storage = storage
        new.train(m.training)
        for attr in _HOOK_DICTS:
            if hasattr(m, attr):
                setattr(new, attr, getattr(m, attr))
        replacement[id(m)] = new
    _replace_children(model, replacement)
    return replacement.get(id(model), model)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every MaskedLinear / MaskedConv2d in ``model``, registration order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _MASKED)]


def _scores(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """Flat ``|w|`` in ``dtype``, with already-pruned positions at -1 (below every magnitude)."""
    if isinstance(layer, CompactLinear):
        s = torch.full((_numel(layer),), -1.0, dtype=dtype, device=layer.values.device)
        s[layer.layout.positions()] = layer.values.detach().abs().to(dtype)
        return s
    s = layer.weight.detach().abs().to(dtype).flatten()
    return s.masked_fill_(~layer.mask.flatten(), -1.0)


def _shape(layer: nn.Module) -> tuple[int, ...]:
    """The weight's shape, without building a compact layer's dense weight."""
    if isinstance(layer, CompactLinear):
        return (layer.out_features, layer.in_features)
    return tuple(layer.weight.shape)


def _numel(layer: nn.Module) -> int:
    return math.prod(_shape(layer))


def _param(layer: nn.Module) -> torch.Tensor:
    return layer.values if isinstance(layer, CompactLinear) else layer.weight


def _keep_mask(scores: torch.Tensor, keep: torch.Tensor, num_pruned: int) -> torch.Tensor:
    """Flat bool mask pruning the ``num_pruned`` lowest scores; ``keep`` is the current flat mask."""
    if num_pruned <= keep.numel() - int(keep.count_nonzero()):
        return keep.clone()  # already at or past the target: masks only shrink
    # The num_pruned-th smallest score is the threshold: everything below goes, and among
    # scores equal to it the lowest indices go first (already-pruned ones are -1, below all).
    # O(n) selection instead of a sort. NaN magnitudes count as +inf (kept).
    scores = torch.nan_to_num(scores, nan=math.inf)
    threshold = torch.kthvalue(scores, num_pruned).values
    below = scores < threshold
    tied = scores == threshold
    keep = ~(below | (tied & (tied.cumsum(0) <= num_pruned - int(below.sum()))))
    return keep


def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    scope: str = "layer",
    *,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module:
    """Prune the masked layers to ``sparsity`` by weight magnitude ``|w|``; returns ``model``.

    Args:
        model: a model with masked layers (see :func:`sparsify`); dense layers are untouched.
        sparsity: target fraction of pruned weights, in [0, 1).
        scope: ``"layer"`` (default, the paper's): each masked layer loses
            ``round(sparsity * numel)`` weights, its own smallest. ``"global"``: the
            ``round(sparsity * total)`` smallest weights over all masked layers together (so
            layers end at different sparsities). ``round`` is Python's, as in
            ``torch.nn.utils.prune``.
        optimizer: if given, :func:`mask_optimizer_state_` is applied to it afterwards.

    Masks only shrink: already-pruned weights stay pruned and count towards the target (a
    layer or model already sparser than the target is left as it is), so the sparsity is the
    total fraction, not a fraction of what remains (unlike repeated
    ``torch.nn.utils.prune.l1_unstructured``). Pruned weights are set to exactly 0.

    Ties are broken deterministically: among equal magnitudes the weight with the lower
    row-major index is pruned first; in global scope layers are ordered as
    :func:`prunable_layers` lists them. Magnitudes are compared in float32 (float64 if a
    weight is float64); NaN magnitudes count as +inf (kept). Equal weights give equal masks,
    so data-parallel replicas stay in step. Cost: one O(n) selection (``kthvalue``) per
    layer, or over all masked weights for the global scope.
    """
    s = check_sparsity(sparsity, "sparsity")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):  # before any change
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    layers = [m for _, m in prunable_layers(model)]
    if not layers:
        raise ValueError("model has no masked layers to prune: call ceag.prune.sparsify(model) first")
    dtype = torch.float64 if any(_param(m).dtype == torch.float64 for m in layers) else torch.float32

    def set_mask(m: nn.Module, keep: torch.Tensor) -> None:
        keep = keep.view(_shape(m)).to(_param(m).device)
        if isinstance(m, CompactLinear):
            m.set_mask(keep, optimizer)  # repacks its values and their optimizer state
        else:
            m.set_mask(keep)

    with torch.no_grad():
        if scope == "layer":
            for m in layers:
                set_mask(m, _keep_mask(_scores(m, dtype), m.mask.flatten(), round(s * _numel(m))))
        else:
            device = _param(layers[0]).device
            scores = torch.cat([_scores(m, dtype).to(device) for m in layers])
            current = torch.cat([m.mask.flatten().to(device) for m in layers])
            keep = _keep_mask(scores, current, round(s * scores.numel()))
            for m, k in zip(layers, keep.split([_numel(m) for m in layers]), strict=True):
                set_mask(m, k)
    apply_masks_(model)
    if optimizer is not None:
        mask_optimizer_state_(optimizer, model)
    compact_below_threshold_(model, optimizer)
    return model


def compact_below_threshold_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Turn every ``storage="auto"`` MaskedLinear whose density is below
    :data:`ceag.nn.COMPACT_BELOW_DENSITY` into a :class:`~ceag.nn.CompactLinear` (in place,
    sharing its Parameters; ``optimizer``'s state is gathered); returns ``model``."""
    return _compact_where(model, lambda _, m: m.storage == "auto" and m.density < COMPACT_BELOW_DENSITY, optimizer)


def compact_(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Turn the MaskedLinear layers ``names`` (as in ``named_modules``) into CompactLinear, in
    place; returns ``model``. E.g. before loading a state dict saved after "auto" storage
    turned them compact."""
    names = set(names)
    return _compact_where(model, lambda name, _: name in names)


def _compact_where(model: nn.Module, pick, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Every MaskedLinear ``m`` named ``name`` with ``pick(name, m)`` made compact (see above)."""
    swap = {id(m): m.to_compact(optimizer) for name, m in prunable_layers(model) if isinstance(m, MaskedLinear) and pick(name, m)}
    _replace_children(model, swap)
    return swap.get(id(model), model)


def _replace_children(model: nn.Module, replacement: dict[int, nn.Module]) -> None:
    """Every parent slot holding a replaced layer (a layer registered twice is replaced in both)."""
    if not replacement:
        return
    for parent in list(model.modules()):
        for cname, child in list(parent._modules.items()):
            if child is not None and id(child) in replacement:
                parent._modules[cname] = replacement[id(child)]


def unsparsify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every masked layer as the plain ``nn.Linear`` / ``nn.Conv2d``
    it stands for, the pruned weights exactly 0 and no mask: code that knows nothing of ceag
    loads its ``state_dict`` into the original architecture, or runs it as TorchScript."""
    import copy

    out = copy.deepcopy(model)
    swap = {}
    for _, m in prunable_layers(out):
        if isinstance(m, CompactLinear):
            swap[id(m)] = m.to_dense()
            continue
        w = m.weight
        kw = dict(bias=m.bias is not None, device=w.device, dtype=w.dtype)
        if isinstance(m, MaskedLinear):
            new = nn.Linear(m.in_features, m.out_features, **kw)
        else:
            new = nn.Conv2d(
                m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                padding_mode=m.padding_mode, **kw,
            )  # fmt: skip
        with torch.no_grad():
            new.weight.copy_(w * m.mask)
            if m.bias is not None:
                new.bias.copy_(m.bias)
        new.train(m.training)
        swap[id(m)] = new
    _replace_children(out, swap)
    return swap.get(id(out), out)


def apply_masks_(model: nn.Module) -> nn.Module:
    """Set every masked layer's pruned weights to exactly 0; returns ``model``.

    The masked layers already give pruned weights a zero gradient, so once the weights and the
    optimizer state are zero there (:func:`magnitude_prune`, :func:`mask_optimizer_state_`),
    SGD (momentum, Nesterov, weight decay), Adam and AdamW keep them at zero by themselves.
    Calling this after each optimizer step is cheap insurance against everything else: a
    weight also used outside its masked layer (tied weights), gradient edits, optimizers
    whose update is not zero for a zero gradient, or loading unmasked weights.
    """
    with torch.no_grad():
        for _, m in prunable_layers(model):
            if not isinstance(m, CompactLinear):  # stores no pruned weight to zero
                m.weight.masked_fill_(~m.mask, 0)
    return model


def mask_optimizer_state_(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """Zero ``optimizer``'s per-weight state at pruned positions; returns ``optimizer``.

    Every state tensor with the weight's shape is masked: SGD's ``momentum_buffer``, Adam's
    ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``, RMSprop's ``square_avg``, Adagrad's
    ``sum``, and so on. Call it after each pruning (``magnitude_prune(..., optimizer=opt)``
    does): a momentum built up before pruning would otherwise move pruned weights away from
    zero. Parameters the optimizer does not hold, or holds no state for yet, are skipped.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    with torch.no_grad():
        for _, m in prunable_layers(model):
            state = None if isinstance(m, CompactLinear) else optimizer.state.get(m.weight)
            if not state:  # (a compact layer's state holds kept positions only)
                continue
            pruned = ~m.mask
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == m.weight.shape:
                    value.masked_fill_(pruned.to(value.device), 0)
    return optimizer


@dataclass(frozen=True)
class LayerSparsity:
    """One row of a :class:`SparsityReport`: a layer's weight (or the total over layers)."""

    name: str
    type: str
    shape: tuple[int, ...]
    kept: int
    total: int
    masked: bool

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total if self.total else 0.0


class SparsityReport:
    """Per-layer weight sparsity of a model's Linear / Conv2d layers (masked or dense).

    Iterate it for :class:`LayerSparsity` rows; ``overall`` is the total over all listed
    layers, ``masked_overall`` over the masked ones only; :meth:`to_pandas` gives a DataFrame
    (one row per layer plus the two totals); ``print(report)`` shows a table.
    """

    def __init__(self, rows: list[LayerSparsity]) -> None:
        self.rows = list(rows)
        self.overall = self._total("(overall)", self.rows)
        self.masked_overall = self._total("(masked layers)", [r for r in self.rows if r.masked])

    @staticmethod
    def _total(name: str, rows: list[LayerSparsity]) -> LayerSparsity:
        return LayerSparsity(name, "", (), sum(r.kept for r in rows), sum(r.total for r in rows), all(r.masked for r in rows))

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def to_pandas(self):
        """DataFrame with columns name, type, shape, kept, total, sparsity, masked."""
        import pandas as pd

        rows = [*self.rows, self.masked_overall, self.overall]
        cols = ("name", "type", "shape", "kept", "total", "sparsity", "masked")
        return pd.DataFrame([{c: getattr(r, c) for c in cols} for r in rows], columns=list(cols))

    def __str__(self) -> str:
        head = ("layer", "type", "shape", "kept", "total", "sparsity")
        lines = [
            (
                r.name or "(root)",
                r.type + ("" if r.masked else " (dense)"),
                "x".join(map(str, r.shape)),
                str(r.kept),
                str(r.total),
                f"{r.sparsity:.2%}",
            )
            for r in self.rows
        ]
        totals = [(t.name, "", "", str(t.kept), str(t.total), f"{t.sparsity:.2%}") for t in (self.masked_overall, self.overall)]
        widths = [max(len(x[i]) for x in [head, *lines, *totals]) for i in range(len(head))]

        def fmt(cells):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(fmt(head))
        return "\n".join([fmt(head), rule, *map(fmt, lines), rule, *map(fmt, totals)])

    def __repr__(self) -> str:
        o = self.overall
        return f"SparsityReport({len(self.rows)} layers, overall sparsity {o.sparsity:.4f})"


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Kept / total weights of every Linear and Conv2d layer, masked (by its mask) or dense
    (all kept), plus totals. ``print(sparsity_report(model))`` for a table,
    ``.to_pandas()`` for a DataFrame."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, _MASKED):
            rows.append(LayerSparsity(name, type(m).__name__, _shape(m), m.num_kept, _numel(m), True))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            n = math.prod(m.weight.shape)
            rows.append(LayerSparsity(name, type(m).__name__, tuple(m.weight.shape), n, n, False))
    return SparsityReport(rows)
