"""The one list of methods: how to build each, and how tables, figures and configs name it.

``train``, ``experiment``, ``plots`` and ``cli`` read :data:`METHODS` instead of keeping
their own lists, so adding a method is adding one :class:`MethodSpec` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ceag.methods.base import NFT, Method
from ceag.methods.ceag import CEAG, PAPER_FORMULATION
from ceag.methods.el import EL, ELRB
from ceag.metrics import GroupStats

__all__ = ["METHODS", "MethodSpec", "build_method"]


@dataclass(frozen=True)
class MethodSpec:
    """One method: its name (the key of configs and run folders), labels, style and builder.

    - ``label``: tables and logs; ``plot_label``: figure legends (short enough for a legend).
    - ``color`` / ``marker``: its style in every figure (Okabe–Ito, colour-blind safe).
    - ``constrained``: has multipliers, hence a tolerance, a dual step and a dual optimizer.
    - ``uses_buffers``: its dual step reads replay buffers (``buffer_size`` required).
    - ``needs_dense``: building it needs the dense model's train-set ``GroupStats``.
    - ``build``: ``(num_groups, dense, **kwargs) -> Method``; ``dense`` may be None unless
      ``needs_dense``.
    """

    name: str
    label: str
    plot_label: str
    color: str
    marker: str
    constrained: bool
    uses_buffers: bool
    needs_dense: bool
    build: Callable[..., Method]


def _build_ceag_batch(num_groups: int, dense: GroupStats, **kwargs: Any) -> CEAG:
    if kwargs.get("buffer_size") is not None:
        raise ValueError(f"method 'ceag_batch' has no replay buffers: buffer_size must be None, got {kwargs['buffer_size']!r}")
    kwargs["buffer_size"] = None
    return CEAG(num_groups, dense, **kwargs)


def _build_ceag_paper(num_groups: int, dense: GroupStats, **kwargs: Any) -> CEAG:
    """CEAG exactly as the paper formulates it (ALGORITHM.md), for comparisons."""
    for key, value in PAPER_FORMULATION.items():
        if kwargs.get(key, value) != value:
            raise ValueError(f"method 'ceag_paper' is the paper's formulation: {key} must be {value!r}, got {kwargs[key]!r}")
        kwargs[key] = value
    return CEAG(num_groups, dense, **kwargs)


def _build_el_rb(num_groups: int, dense: GroupStats | None, *, group_shares: Tensor | None = None, **kwargs: Any) -> ELRB:
    if group_shares is None:
        if dense is None:
            raise ValueError("method 'el_rb' needs group_shares or dense")
        group_shares = dense.shares
    return ELRB(num_groups, group_shares, **kwargs)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "nft",
            "NFT",
            "NFT",
            "#E69F00",
            "s",
            constrained=False,
            uses_buffers=False,
            needs_dense=False,
            build=lambda num_groups, dense, **kwargs: NFT(num_groups, **kwargs),
        ),
        MethodSpec(
            "el",
            "EL",
            "EL",
            "#56B4E9",
            "^",
            constrained=True,
            uses_buffers=False,
            needs_dense=False,
            build=lambda num_groups, dense, **kwargs: EL(num_groups, **kwargs),
        ),
        MethodSpec(
            "el_rb", "EL+RB", "EL+RB", "#009E73", "D", constrained=True, uses_buffers=True, needs_dense=False, build=_build_el_rb
        ),
        MethodSpec(
            "ceag",
            "CEAG",
            "CEAG",
            "#0072B2",
            "o",
            constrained=True,
            uses_buffers=True,
            needs_dense=True,
            build=lambda num_groups, dense, **kwargs: CEAG(num_groups, dense, **kwargs),
        ),
        MethodSpec(
            "ceag_paper",
            "CEAG-paper",
            "CEAG-paper",
            "#D55E00",
            "X",
            constrained=True,
            uses_buffers=True,
            needs_dense=True,
            build=_build_ceag_paper,
        ),
        MethodSpec(
            "ceag_batch",
            "CEAG (no buffers)",
            "CEAG-batch",
            "#CC79A7",
            "v",
            constrained=True,
            uses_buffers=False,
            needs_dense=True,
            build=_build_ceag_batch,
        ),
    )
}


def build_method(name: str, num_groups: int, *, dense: GroupStats | None = None, **kwargs: Any) -> Method:
    """Build a method by name: "nft", "el", "el_rb", "ceag" (buffers), "ceag_paper" (the
    paper's formulation, see :data:`ceag.methods.ceag.PAPER_FORMULATION`) or "ceag_batch" (none).

    ``dense`` (the dense train-set GroupStats) is required by CEAG; EL+RB takes its group
    shares from it unless ``group_shares`` is given.
    """
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"name must be one of {', '.join(METHODS)}; got {name!r}")
    if spec.needs_dense and dense is None:
        raise ValueError(f"method {name!r} needs dense (the dense model's train-set GroupStats)")
    return spec.build(num_groups, dense, **kwargs)
