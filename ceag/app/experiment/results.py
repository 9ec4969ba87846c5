"""The results of an experiment: per-run summaries, the table over seeds, JSON and markdown."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ceag._io import json_ready, nan_for_null
from ceag.app.experiment.config import METHOD_LABELS, ExperimentConfig, sparsity_label

# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

#: Summary columns of a run, per split: (key in the report, header in the table, as percent).
_COLUMNS = (
    ("accuracy", "acc", True),
    ("psi_pw", "Ψ_PW", True),
    ("max_psi", "max ψ", True),
    ("max_psi_measurable", "max ψ measurable", True),
)
#: Per split, the verdict counts (DisparityReport.summary keys), shown as one cell.
_VERDICTS = ("num_within", "num_violates", "num_too_small")
#: Summary keys added after metrics.json files were first written: absent reads as NaN.
_ADDED_KEYS = ("max_psi_measurable", *_VERDICTS)


@dataclass
class RunResult:
    """One (method, sparsity, seed) run: final summaries and per-group ψ on train and test."""

    method: str
    sparsity: float
    seed: int
    summary: dict[str, dict[str, float]]  # split -> DisparityReport.summary() + "accuracy"
    psi: dict[str, list[float]]  # split -> [G] ψ_g (NaN: excluded)
    count: dict[str, list[int]]  # split -> [G] samples
    history: list[dict[str, Any]]
    seconds_per_step: float  # mean wall time of a mitigation-phase training step
    measured_sparsity: float = math.nan  # of the final model's masked layers (the requested one is ``sparsity``)
    # split -> {"psi_lower", "psi_upper", "samples_to_certify": [G], "status": [G] verdicts}
    # ({} in files from before)
    groups: dict[str, dict[str, list]] = field(default_factory=dict)
    # The file name of the dense model the run started from, in output_root/.dense-cache
    # ("" in files from before): what `ceag audit RUN_DIR` compares against.
    dense_model: str = ""

    def to_dict(self) -> dict[str, Any]:
        # Shallow (the values are JSON-ready lists and dicts): dataclasses.asdict would deep-copy
        # the history, G multipliers per epoch.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        # Numbers written as null are NaN (json_ready); files from before wrote NaN itself.
        d = nan_for_null(d)  # no field of a run is None by itself
        if "measured_sparsity" not in d:  # written before it was recorded: the last epoch's
            d["measured_sparsity"] = (d.get("history") or [{}])[-1].get("sparsity", math.nan)
        run = cls(**d)
        for split in ("train", "test"):  # the report reads these: a wrong shape fails here, not there
            for key in _ADDED_KEYS:
                run.summary[split].setdefault(key, math.nan)
            for key in (*(k for k, _, _ in _COLUMNS), *_VERDICTS):
                float(run.summary[split][key])
            if len(run.psi[split]) != len(run.count[split]):
                raise ValueError(f"psi and count of {split} differ in length")
        return run


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    runs: list[RunResult]
    group_names: tuple[str, ...]
    output_dir: Path
    plots: list[Path] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (sparsity, method): mean and std over seeds of every summary column."""
        out = []
        for sparsity in self.config.sparsities:
            for method in self.config.methods:
                runs = [r for r in self.runs if r.method == method and r.sparsity == sparsity]
                if not runs:
                    continue
                row: dict[str, Any] = {"method": method, "sparsity": sparsity, "seeds": len(runs)}
                for split in ("train", "test"):
                    for key in (*(k for k, _, _ in _COLUMNS), *_VERDICTS):
                        mean, std = _mean_std([r.summary[split][key] for r in runs])
                        row[f"{split}_{key}"], row[f"{split}_{key}_std"] = mean, std
                row["seconds_per_step"] = statistics.fmean(r.seconds_per_step for r in runs)
                row["measured_sparsity"] = _mean_std([r.measured_sparsity for r in runs])[0]
                out.append(row)
        return out

    def table(self) -> str:
        """The comparison as a markdown table (percent, mean ± std over seeds)."""
        eps = self.config.tolerance
        heads = ["sparsity (measured)", "method"]
        for split in ("train", "test"):
            heads += [f"{split} {h}" for _, h, _ in _COLUMNS]
            heads.append(f"{split} within / violate / too small")
        heads.append("ms/step")
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for row in self.rows():
            measured = "n/a" if math.isnan(row["measured_sparsity"]) else f"{row['measured_sparsity']:.2%}"
            cells = [f"{sparsity_label(row['sparsity'])}% ({measured})", METHOD_LABELS.get(row["method"], row["method"])]
            for split in ("train", "test"):
                for key, _, _ in _COLUMNS:
                    mean, std = row[f"{split}_{key}"], row[f"{split}_{key}_std"]
                    cell = "n/a" if math.isnan(mean) else f"{mean * 100:.1f}"
                    if row["seeds"] > 1 and not math.isnan(std):
                        cell += f" ± {std * 100:.1f}"
                    if key == "max_psi" and not math.isnan(mean) and mean <= eps:
                        cell = f"**{cell}**"  # within ε
                    cells.append(cell)
                counts = [row[f"{split}_{k}"] for k in _VERDICTS]
                cells.append("n/a" if any(math.isnan(v) for v in counts) else " / ".join(f"{v:.3g}" for v in counts))
            cells.append(f"{row['seconds_per_step'] * 1e3:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        if any("**" in line for line in lines[2:]):
            lines += ["", "**Bold** max ψ: the mean over seeds is within ε."]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "group_names": list(self.group_names),
            "rows": self.rows(),
            "runs": [r.to_dict() for r in self.runs],
            "plots": [str(p) for p in self.plots],
        }


def _json_chunks(obj: Any, indent: int | None = None, size: int = 1 << 20) -> Iterator[bytes]:
    """``json.dumps(json_ready(obj), indent=indent)`` encoded (NaN as null), in pieces of about
    ``size`` bytes, so a large file (every run's history: G multipliers per epoch) is never held whole."""
    parts: list[str] = []
    held = 0
    for piece in json.JSONEncoder(indent=indent, allow_nan=False).iterencode(json_ready(obj)):
        parts.append(piece)
        held += len(piece)
        if held >= size:
            yield "".join(parts).encode()
            parts, held = [], 0
    yield "".join(parts).encode()


def _markdown(result: ExperimentResult) -> str:
    cfg = result.config
    lines = [
        f"# {result.output_dir.name}",
        "",
        cfg.header(len(result.group_names)),
        "",
        result.table(),
    ]
    if result.plots:
        lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in result.plots]]
    return "\n".join(lines)
