"""Audit a pruned model without training: did any group pay more than ε for the pruning?

    ceag audit runs/adult-nft-ceag-s90/ceag-s90-seed0
    ceag audit --dense dense.pt --sparse pruned.pt --dataset adult
    ceag audit --dense dense.pt --sparse pruned.pt --data people.csv --label y --groups race,sex

Given a run folder of an experiment, the audit needs no other flag: the experiment's
``config.json`` says which data and which split (subset, held-out rows), the dense model is
the one the run started from (the experiment root's dense cache), and the sparse model is
the run's ``last.ckpt``; ε and ``min_count`` are the run's unless given.

Both models are evaluated on the same data; the report gives, per group, the dense and
sparse accuracy, ψ_g = ΔA_g − ΔA with its 95% simultaneous interval (paired: it uses the
samples on which the two models disagree, :func:`ceag.metrics.paired_psi_interval`), and a
verdict: "within ε" (certified: the interval's upper end is ≤ ε), "violates" (its lower end
is > ε), "too small to tell", or left out (fewer than ``min_count`` samples). It is written
as ``audit.md``, ``audit.json`` and a per-group bar plot, one set per split.

A model file is a TorchScript archive, a ceag checkpoint (``last.ckpt`` of a run, or a
dense-cache entry), or a ``state_dict`` saved with ``torch.save`` (then the architecture
is rebuilt from ``arch`` / ``hidden`` and the data's shape; masks in the state dict make
the layers masked). Files are unpickled with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ceag._io import CEAG_CHECKPOINT_MAGIC, atomic_write, json_ready, unpickling_refusal
from ceag.app.data.core import GroupedDataset
from ceag.errors import UsageError
from ceag.metrics import DEFAULT_MIN_COUNT, DisparityReport, disparity, evaluate_samples, paired_counts
from ceag.models import build_model
from ceag.prune import compact_, sparsify, sparsity_report

__all__ = ["RunToAudit", "audit", "export_run", "load_model", "load_run", "write_audit"]


def load_model(path: str | Path, data: GroupedDataset, *, arch: str = "auto", hidden: Sequence[int] = (512, 512)) -> nn.Module:
    """The model in ``path`` (TorchScript, ceag checkpoint or state_dict; see the module
    docstring), checked to take the data's inputs and give one output per class."""
    model = _read_model(Path(path), data, arch, hidden)
    _check_fits(model, data, Path(path))
    return model


def _check_fits(model: nn.Module, data: GroupedDataset, path: Path) -> None:
    """Refuse a model that cannot judge ``data``: one that fails on its inputs, or whose
    outputs are not [N, num_classes] (a 5-output model on a 2-class table would be scored)."""
    split = data.train if len(data.train) else data.test
    x = split.tensors[0][:2]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - a TorchScript model raises anything
        first = str(err).strip().splitlines()
        raise UsageError(
            f"model file {path} does not take this data's inputs (shape {tuple(x.shape[1:])} per sample): "
            f"{first[-1] if first else type(err).__name__}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), data.num_classes):
        got = f"outputs of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UsageError(
            f"model file {path} gives {got} for {len(x)} samples; the data has {data.num_classes} classes "
            f"({', '.join(data.class_names[:5])}{', ...' if data.num_classes > 5 else ''}): one output per class is needed"
        )


def _check_features(recorded: Any, data: GroupedDataset, path: Path) -> None:
    """A dense-cache entry records the encoded columns it was trained on: refuse others (the
    same table with two columns swapped once scored 49% instead of 99%, silently)."""
    from ceag.app.experiment.data_record import first_difference

    if isinstance(recorded, list) and data.feature_names and recorded != list(data.feature_names):
        raise UsageError(
            f"model file {path} was trained on other encoded columns than this data's "
            f"({first_difference(recorded, list(data.feature_names))}): check the table and --features"
        )


def _read_model(path: Path, data: GroupedDataset, arch: str, hidden: Sequence[int]) -> nn.Module:
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist")
    with path.open("rb") as f:
        head = f.read(len(CEAG_CHECKPOINT_MAGIC))
    if head == CEAG_CHECKPOINT_MAGIC:
        from ceag.train import CheckpointError, load_checkpoint

        try:
            saved = load_checkpoint(path)
        except CheckpointError as err:
            raise UsageError(str(err)) from None
        state = saved.get("model")
        _check_features(saved.get("features"), data, path)
    else:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still ship it
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    return torch.jit.load(str(path), map_location="cpu").eval()
                except RuntimeError as err:
                    raise UsageError(f"model file {path}: a TorchScript archive that does not load ({err})") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
            # Never torch's advice to retry with weights_only=False: that would run the file's code.
            why = unpickling_refusal(err) if isinstance(err, pickle.UnpicklingError) else str(err).strip().splitlines()[0]
            raise UsageError(f"model file {path} is neither TorchScript, a ceag checkpoint nor a state_dict ({why})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"model file {path} holds no state_dict of tensors")
    torch.manual_seed(0)
    model = build_model(data.input_shape, data.num_classes, arch, hidden)
    if any(k.endswith((".mask", ".row_ptr")) for k in state):  # masked, or compact ("compact"/"auto" storage)
        sparsify(model)
        # Layers a run with "auto" storage made compact are compact before loading.
        compact_(model, (k.rsplit(".", 1)[0] for k in state if k.endswith(".row_ptr")))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise UsageError(
            f"model file {path} does not fit --arch {arch} --hidden {','.join(map(str, hidden))} on this data "
            f"({len(data.input_shape) and data.input_shape} inputs, {data.num_classes} classes): {first[0] if first else err}"
        ) from None
    return model.eval()


@dataclass
class RunToAudit:
    """Everything :func:`load_run` found for auditing one run of an experiment."""

    run_dir: Path
    config: Any  # the experiment's ExperimentConfig
    seed: int
    data: GroupedDataset
    dense: nn.Module
    sparse: nn.Module
    dense_path: Path
    finished: bool  # metrics.json written (else the audit is of the last checkpoint)


def load_run(run_dir: str | Path, *, data_root: str | None = None) -> RunToAudit:
    """The data split and both models of one run folder of an experiment (see the module
    docstring); ``data_root``: where the bundled data sets are, if not where the run found them.

    Raises :class:`~ceag.errors.UsageError` naming what is missing: a folder that is not a
    run of an experiment, no checkpoint, or a dense model no longer in the cache.
    """
    from ceag.app.experiment import dense_cache_path

    run_dir = Path(run_dir)
    cfg, seed, ckpt, data = _open_run(run_dir, data_root)
    dense_path = dense_cache_path(cfg, data, seed)
    recorded = _recorded_dense_model(run_dir)
    if recorded:  # the file the run started from, even if the cache key has changed since
        dense_path = dense_path.with_name(recorded)
    if not dense_path.is_file():
        raise UsageError(
            f"the dense model of {run_dir} (seed {seed}) is not in the cache: {dense_path} is missing; "
            f"re-running the experiment's command rebuilds it (or audit with --dense FILE --sparse {ckpt})"
        )
    dense = load_model(dense_path, data, arch=cfg.arch, hidden=cfg.hidden)
    sparse = load_model(ckpt, data, arch=cfg.arch, hidden=cfg.hidden)
    return RunToAudit(run_dir, cfg, seed, data, dense, sparse, dense_path, (run_dir / "metrics.json").is_file())


def export_run(run_dir: str | Path, path: str | Path | None = None, *, fmt: str = "state_dict") -> Path:
    """Write the run's pruned model for code that knows nothing of ceag; returns the file.

    ``fmt="state_dict"``: ``torch.save`` of the plain model's ``state_dict``
    (:func:`ceag.prune.unsparsify`: ``nn.Linear`` / ``nn.Conv2d``, pruned weights 0, no
    masks), loadable with ``torch.load(..., weights_only=True)`` into the architecture
    ``ceag.models.build_model`` builds. ``fmt="torchscript"``: the plain model as TorchScript,
    loadable with ``torch.jit.load`` alone. Default file: ``RUN_DIR/model.pt`` or ``model.ts``.
    """
    from ceag.prune import unsparsify

    if fmt not in ("state_dict", "torchscript"):
        raise UsageError(f"--format must be state_dict or torchscript, got {fmt!r}")
    run_dir = Path(run_dir)
    cfg, _, ckpt, data = _open_run(run_dir, None)
    plain = unsparsify(load_model(ckpt, data, arch=cfg.arch, hidden=cfg.hidden)).eval()
    out = Path(path) if path is not None else run_dir / ("model.pt" if fmt == "state_dict" else "model.ts")
    buf = io.BytesIO()
    if fmt == "state_dict":
        torch.save(plain.state_dict(), buf)
    else:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still ship it
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(plain), buf)
    return atomic_write(out, buf.getvalue())


def _open_run(run_dir: Path, data_root: str | None) -> tuple[Any, int, Path, GroupedDataset]:
    """(the experiment's config, placed where the folder is now; the run's seed; its last.ckpt;
    the data as the experiment split it)."""
    from ceag.app.experiment import ExperimentConfig, load_data
    from ceag.app.experiment.data_record import check_data_record
    from ceag.train import CheckpointError, load_checkpoint
    from ceag.train.checkpoint import CHECKPOINT_NAME

    experiment = run_dir.parent
    config_path = experiment / "config.json"
    ckpt = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not config_path.is_file() or not ckpt.is_file():
        raise UsageError(
            f"{run_dir} is not a run of an experiment: expected {config_path} and {ckpt} "
            "(give a folder like runs/<experiment>/<method>-s<sparsity>-seed<k>, or --dense and --sparse)"
        )
    try:
        saved = json.loads(config_path.read_text())
        # Fields added since the folder was written read as the value it ran with.
        cfg = ExperimentConfig.from_dict({**ExperimentConfig.ADDED_FIELDS, **saved})
        seed = int(load_checkpoint(ckpt)["config"]["seed"])
    except (ValueError, TypeError, KeyError, OSError, CheckpointError) as err:
        raise UsageError(f"{run_dir}: cannot read the experiment's config or checkpoint ({err})") from None
    # Where the folder is now, not where it was written: the dense cache sits beside it.
    cfg = dataclasses.replace(cfg, output_root=str(experiment.parent), name=experiment.name, progress=False)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=data_root)
    data = load_data(cfg)
    check_data_record(
        data,
        experiment,
        what="Auditing would judge its models on data they were not trained on; to do so anyway, "
        "give --dense FILE --sparse FILE and the data flags",
    )
    return cfg, seed, ckpt, data


def _recorded_dense_model(run_dir: Path) -> str:
    """The dense model's file name a finished run recorded in metrics.json ("" if none)."""
    try:
        name = json.loads((run_dir / "metrics.json").read_text()).get("dense_model", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return name if isinstance(name, str) and "/" not in name and "\\" not in name else ""


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a torch.save file has none)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def audit(
    dense: nn.Module,
    sparse: nn.Module,
    data: GroupedDataset,
    *,
    tolerance: float = 0.01,
    min_count: int = DEFAULT_MIN_COUNT,
    confidence: float = 0.95,
    batch_size: int = 1024,
) -> dict[str, DisparityReport]:
    """Per-split reports (``"train"``, ``"test"``) of ψ_g for ``sparse`` against ``dense``."""
    out = {}
    for split in ("train", "test"):
        ds = getattr(data, split)
        if len(ds) == 0:
            continue
        x, y, g = ds.tensors
        batches = [(x[i : i + batch_size], y[i : i + batch_size], g[i : i + batch_size]) for i in range(0, len(y), batch_size)]
        with torch.no_grad():
            d, s = (evaluate_samples(m, batches, data.num_groups) for m in (dense, sparse))
        lost, gained = paired_counts(d.correct, s.correct, g, data.num_groups)
        out[split] = disparity(d.stats, s.stats, tolerance, min_count=min_count, confidence=confidence, lost=lost, gained=gained)
    return out


def _pct(v: float, sign: bool = True) -> str:
    return "n/a" if math.isnan(v) else f"{v * 100:+.1f}" if sign else f"{v * 100:.1f}"


def _table(report: DisparityReport, names: Sequence[str], rows: int | None = None) -> str:
    lines = [
        "| group | n | dense acc | sparse acc | ψ_g (interval) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    order = sorted(
        range(report.num_groups), key=lambda g: (not report.included[g], -(report.psi[g] if report.included[g] else 0))
    )
    shown = 0
    for g in order:
        if int(report.count[g]) == 0 and int(report.dense_count[g]) == 0:
            continue
        if rows is not None and shown >= rows:
            break
        shown += 1
        status = report.status[g] if report.included[g] else f"left out (n < {report.min_count})"
        need = float(report.samples_to_certify[g]) if report.samples_to_certify is not None else math.nan
        if status == "too small to tell" and not math.isnan(need):
            status += f" (~{need:,.0f} samples would certify ε at this discordance)"
        lo, hi = float(report.psi_ci[0][g]), float(report.psi_ci[1][g])
        lines.append(
            f"| {names[g]} | {int(report.count[g])} | {_pct(float(report.dense_accuracy[g]), sign=False) if report.included[g] else 'n/a'} "
            f"| {_pct(float(report.sparse_accuracy[g]), sign=False) if report.included[g] else 'n/a'} "
            f"| {_pct(float(report.psi[g]))} ({_pct(lo)}, {_pct(hi)}) | {status} |"
        )
    return "\n".join(lines)


def _summary_line(split: str, r: DisparityReport) -> str:
    s = r.summary()
    return (
        f"{split}: overall accuracy {s['dense_accuracy']:.1%} dense → {s['sparse_accuracy']:.1%} sparse; "
        f"max ψ {_pct(s['max_psi'])} points, Ψ_PW {_pct(s['psi_pw'], sign=False)} over {s['num_included']} groups "
        f"(max ψ {_pct(s['max_psi_measurable'])} over the {s['num_measurable']} measurable ones: interval ≤ 2ε each side); "
        f"{s['num_within']} certified within ε = {r.tolerance * 100:g} points, {s['num_violates']} violate, "
        f"{s['num_too_small']} too small to tell" + (f"; {r.exclusion_note()}" if r.exclusion_note() else "")
    )


def write_audit(
    reports: dict[str, DisparityReport], names: Sequence[str], folder: str | Path, *, plots: bool = True
) -> list[Path]:
    """``audit.md``, ``audit.json`` and (``plots``) ``group-psi-<split>.png`` in ``folder``."""
    folder = Path(folder)
    md = ["# Audit: excess accuracy gap ψ_g of the sparse model (percentage points)", ""]
    payload: dict[str, Any] = {"group_names": list(names)}
    written = []
    for split, r in reports.items():
        md += [f"## {split}", "", _summary_line(split, r), "", _table(r, names), ""]
        frame = r.to_dataframe(names)
        payload[split] = {
            "summary": r.summary(),
            "groups": json.loads(frame.reset_index().to_json(orient="records", double_precision=15)),
        }
        if plots:
            from ceag.app import plots as plots_mod

            written.append(
                plots_mod.group_gap_bars(
                    {"sparse": r.psi},
                    r.tolerance,
                    folder / f"group-psi-{split}.png",
                    group_names=list(names),
                    counts=r.count.tolist(),
                    split=split,
                    intervals={"sparse": r.psi_ci},
                )
            )
    written.insert(0, atomic_write(folder / "audit.md", "\n".join(md).encode()))
    written.insert(1, atomic_write(folder / "audit.json", json.dumps(json_ready(payload), indent=1, allow_nan=False).encode()))
    return written


def sparsity_of(model: nn.Module) -> tuple[float, str]:
    """(sparsity, what it counts): the masked layers' sparsity, or for a model without masks
    (a TorchScript or plain model) the share of zeros among its weight matrices and kernels."""
    try:
        report = sparsity_report(model)
        if report.masked_overall.total:
            return report.masked_overall.sparsity, "masked layers"
    except (ValueError, AttributeError, RuntimeError):
        pass  # TorchScript: count its parameters
    weights = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() >= 2]
    total = sum(p.numel() for p in weights)
    if not total:
        return math.nan, "no weight matrices"
    return sum(int((p == 0).sum()) for p in weights) / total, "zero weights"
