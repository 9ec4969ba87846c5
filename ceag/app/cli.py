"""The ``ceag`` command.

    ceag data fetch adult            # once: download into $CEAG_DATA (default ~/.cache/ceag)
    ceag data list
    ceag run --dataset adult --method ceag --sparsity 0.9 --tolerance 0.01
    ceag compare --dataset adult --methods nft,el,el_rb,ceag --sparsity 0.9 --seeds 0,1,2
    ceag sweep --dataset adult --methods nft,ceag --sparsities 0.9,0.95,0.99 --seeds 0,1

``run``, ``compare`` and ``sweep`` are one experiment (:mod:`ceag.app.experiment`) over a grid of
methods × sparsities × seeds; results go to ``runs/<name>/`` and re-running the same
command finishes (or re-reports) the same experiment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from ceag._options import comma_list

__all__ = ["main"]

_list = comma_list


def _fraction(text: str) -> float:
    """A sparsity given as 0.9 or 90%."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return value


def _add_data_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The data flags shared by the experiment commands and ``audit``; returns their group."""
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", help="adult, census-kdd, fashion-mnist or synthetic (default adult)")
    g.add_argument(
        "--groups",
        help="your table: group columns, e.g. race,sex,age:bins=25,45,65 (their "
        "intersection is the group); synthetic: the number of groups",
    )
    g.add_argument("--samples", type=int, help="synthetic only: number of training samples")
    g.add_argument("--minority-effect", type=float, help="synthetic only: strength of the group-specific rules")
    g.add_argument(
        "--data",
        metavar="PATH",
        help="your own table (.csv or .parquet; with --label and --groups) or image "
        "folder (class subfolders; with --attributes and --groups) instead of --dataset",
    )
    g.add_argument("--label", help="your table: the label column")
    g.add_argument("--attributes", metavar="FILE", help="your image folder: a CSV with a 'file' column and the attribute columns")
    g.add_argument(
        "--image-size", type=_size, help="your image folder: resize every image to HxW (default: the first image's size)"
    )
    g.add_argument("--test", metavar="PATH", help="your table: a test file with the same columns (default: --test-fraction)")
    g.add_argument(
        "--test-fraction", type=float, default=0.2, help="your table: share of every group held out for test (default 0.2)"
    )
    g.add_argument("--features", type=_list(str), help="your table: feature columns (default: all but the label)")
    g.add_argument(
        "--missing-groups",
        choices=("level", "error"),
        default="level",
        help="your table: a missing group value is its own level NA (default) or an error",
    )
    g.add_argument(
        "--impute",
        choices=("refuse", "mean"),
        default="refuse",
        help="your table: missing feature values are refused (default) or imputed from train (mean / most frequent)",
    )
    g.add_argument("--data-dir", help="data folder of the bundled data sets (default $CEAG_DATA or ~/.cache/ceag)")
    return g


def _add_experiment_args(p: argparse.ArgumentParser, *, grid: str) -> None:
    """The flags of ``run`` / ``compare`` / ``sweep``: the data flags, the grid (which depends
    on the command), then one flag per :class:`ExperimentConfig` field with a help section
    (help and default from the field)."""
    from ceag._options import add_flags
    from ceag.app.experiment import ExperimentConfig
    from ceag.methods import METHODS

    groups = {"data and model": _add_data_args(p)}
    g = groups["methods"] = p.add_argument_group("methods")
    if grid == "run":
        *others, last = METHODS
        g.add_argument("--method", default="ceag", help=f"{', '.join(others)} or {last} (default ceag)")
        g.add_argument("--sparsity", type=_fraction, default=0.9, help="final sparsity, e.g. 0.9 or 90%% (default 0.9)")
        g.add_argument("--seed", type=int, default=0)
    else:
        g.add_argument(
            "--methods", type=_list(str), default=("nft", "el", "el_rb", "ceag") if grid == "compare" else ("nft", "ceag")
        )
        if grid == "compare":
            g.add_argument("--sparsity", type=_fraction, default=0.9)
        else:
            g.add_argument("--sparsities", type=_list(_fraction), default=(0.9, 0.95, 0.99))
        g.add_argument("--seeds", type=_list(int), default=(0, 1, 2) if grid == "compare" else (0,))
    add_flags(p, ExperimentConfig, groups)
    groups["output"].add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _size(text: str) -> tuple[int, int]:
    """An image size given as 32x32 (or one number for a square)."""
    try:
        parts = [int(t) for t in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 32x32; got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 32x32; got {text!r}")
    return parts[0], parts[1]


def _integer_flag(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--{flag} must be an integer for --dataset synthetic, got {value!r}") from None


def _data_options(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(dataset name, dataset options) from the data flags; ValueError naming a flag."""
    args.dataset_given = args.dataset is not None
    args.dataset = args.dataset or "adult"
    options: dict[str, Any] = {}
    dataset = args.dataset
    table_flags = ("label", "features")
    image_flags = ("attributes", "image_size")
    if args.data is not None and os.path.isdir(args.data):
        if args.dataset_given:
            raise ValueError("--data and --dataset: give one (--data is your own image folder)")
        for flag in table_flags:
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} applies to a table; --data {args.data} is an image folder")
        if not args.attributes or not args.groups:
            raise ValueError("--data DIR (images) needs --attributes (a CSV of each file's attributes) and --groups")
        dataset = "images"
        options = {
            "path": os.path.abspath(args.data),
            "attributes": os.path.abspath(args.attributes),
            "groups": args.groups,
            "test": os.path.abspath(args.test) if args.test else None,
            "test_fraction": args.test_fraction,
            "image_size": list(args.image_size) if args.image_size else None,
            "missing_groups": args.missing_groups,
        }
    elif args.data is not None:
        if args.dataset_given:
            raise ValueError("--data and --dataset: give one (--data is your own table)")
        for flag in image_flags:
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to an image folder; --data {args.data} is a table")
        if not args.label or not args.groups:
            raise ValueError("--data needs --label (the label column) and --groups (the group columns)")
        dataset = "table"
        options = {
            "path": os.path.abspath(args.data),
            "label": args.label,
            "groups": args.groups,
            "test": os.path.abspath(args.test) if args.test else None,
            "test_fraction": args.test_fraction,
            "features": list(args.features) if args.features else None,
            "missing_groups": args.missing_groups,
            "impute": args.impute,
        }
    else:
        for flag in (*table_flags, "test", *image_flags):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to your own data (--data PATH) only")
        for flag, key in (("groups", "num_groups"), ("samples", "num_train"), ("minority_effect", "minority_effect")):
            value = getattr(args, flag)
            if value is not None:
                if args.dataset != "synthetic":
                    raise ValueError(f"--{flag.replace('_', '-')} applies to --dataset synthetic or your own table (--data) only")
                options[key] = _integer_flag(flag, value) if flag == "groups" else value
    return dataset, options


def _config(args: argparse.Namespace, grid: str):
    """The :class:`ExperimentConfig` the flags describe."""
    from ceag.app.experiment import ExperimentConfig

    dataset, options = _data_options(args)
    if grid == "run":
        methods, sparsities, seeds = (args.method,), (args.sparsity,), (args.seed,)
    elif grid == "compare":
        methods, sparsities, seeds = args.methods, (args.sparsity,), args.seeds
    else:
        methods, sparsities, seeds = args.methods, args.sparsities, args.seeds
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentConfig) if "group" in f.metadata}
    return ExperimentConfig(
        dataset=dataset,
        dataset_options=options,
        methods=methods,
        sparsities=sparsities,
        seeds=seeds,
        data_root=args.data_dir,
        **flags,
    )


#: Data-set options and config fields whose flag is not in the config's field metadata.
_FLAG_OF = {"num_groups": "--groups", "num_train": "--samples", "data_root": "--data-dir"}
#: ... and those whose flag depends on the command.
_GRID_FLAG = {
    "run": {"methods": "--method", "sparsities": "--sparsity", "seeds": "--seed", "sparsity": "--sparsity", "seed": "--seed"},
    "compare": {"sparsities": "--sparsity", "sparsity": "--sparsity", "seed": "--seeds"},
    "sweep": {"sparsity": "--sparsities", "seed": "--seeds"},
}


def _naming_the_flag(message: str, parser: argparse.ArgumentParser, grid: str) -> str:
    """``message`` (a config error naming a field) prefixed with the flag that sets that
    field, e.g. "--dual-lr: dual_lr must be > 0"; unchanged if it names a flag already."""
    if re.search(r"(^|\s)--[a-z]", message):
        return message
    from ceag._options import flag_of
    from ceag.app.experiment import ExperimentConfig

    flags = {o for a in parser._actions for o in a.option_strings}
    best: tuple[int, int, str] | None = None
    for m in re.finditer(r"[a-z][a-z_]*[a-z]", message):
        field = m.group(0)
        flag = (
            _GRID_FLAG.get(grid, {}).get(field)
            or _FLAG_OF.get(field)
            or flag_of(ExperimentConfig, field)
            or "--" + field.replace("_", "-")
        )
        if flag in flags and (best is None or m.start() < best[0]):
            best = (m.start(), -len(field), flag)
    return f"{best[2]}: {message}" if best else message


def _experiment(args: argparse.Namespace, grid: str) -> int:
    from ceag.app.experiment import run_experiment
    from ceag.errors import UsageError

    try:
        cfg = _config(args, grid)
    except (ValueError, TypeError) as err:  # every config field is a flag: name it
        raise UsageError(_naming_the_flag(str(err), args.parser, grid)) from None
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with _distributed(cfg) as rank:
        result = run_experiment(cfg, log=log, plots=not args.no_plots)
        if rank != 0:
            return 0
    print()
    print(cfg.header(len(result.group_names)))
    print(result.table())
    if grid == "run":
        _print_worst_groups(result)
    print()
    print(f"results: {result.output_dir / 'results.md'}  {result.output_dir / 'results.json'}")
    for p in result.plots:
        print(f"plot:    {p}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ceag.app import audit as audit_mod
    from ceag.app.experiment import ExperimentConfig, load_data
    from ceag.errors import UsageError

    try:
        dataset, options = _data_options(args)
        if args.rows < 1:
            raise ValueError(f"--rows must be >= 1, got {args.rows}")
        cfg = ExperimentConfig(
            dataset=dataset,
            dataset_options=options,
            data_root=args.data_dir,
            tolerance=args.tolerance,
            min_count=args.min_count,
            progress=not args.no_progress,
            methods=("nft",),
        )
        sparse_path = Path(args.sparse)
        # A run's last.ckpt is named after its run folder.
        name = args.name or f"audit-{sparse_path.parent.name if sparse_path.stem in ('last', 'prev') else sparse_path.stem}"
        ExperimentConfig(name=name)  # the same folder-name rules as experiments
    except (ValueError, TypeError) as err:
        raise UsageError(_naming_the_flag(str(err), args.parser, "audit")) from None
    data = load_data(cfg)
    dense = audit_mod.load_model(args.dense, data, arch=args.arch, hidden=args.hidden)
    sparse = audit_mod.load_model(args.sparse, data, arch=args.arch, hidden=args.hidden)
    try:
        reports = audit_mod.audit(
            dense, sparse, data, tolerance=args.tolerance, min_count=args.min_count, confidence=args.confidence
        )
    except ValueError as err:  # e.g. a model whose outputs do not match the data
        raise UsageError(f"the models do not fit the data: {err}") from None
    folder = Path(args.output) / name
    written = audit_mod.write_audit(reports, data.group_names, folder, plots=not args.no_plots)
    print(f"{data.name}: {data.num_groups} groups; sparse model {audit_mod.sparsity_of(sparse):.1%} sparse (masked layers)")
    for split, r in reports.items():
        print()
        print(audit_mod._summary_line(split, r))
        print(audit_mod._table(r, data.group_names, rows=args.rows))
    print()
    for p in written:
        print(f"written: {p}")
    return 0


@contextlib.contextmanager
def _distributed(cfg):
    """Under ``torchrun`` (WORLD_SIZE > 1): one process group for the command (gloo on CPU,
    nccl on CUDA, each rank on its LOCAL_RANK GPU); ranks other than 0 print nothing.
    Yields this process's rank (0 without torchrun)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield dist.get_rank() if dist.is_initialized() else 0
        return
    cuda = cfg.device.startswith("cuda")
    if cuda:
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(cfg.device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    quiet = open(os.devnull, "w") if rank != 0 else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext(), warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")  # rank 0 says it once
            yield rank
    finally:
        if quiet:
            quiet.close()
        dist.destroy_process_group()


def _print_worst_groups(result, k: int = 5) -> None:
    run = result.runs[0]
    psi = run.psi["train"]
    ranked = sorted((v, g) for g, v in enumerate(psi) if v == v)[::-1][:k]
    if not ranked:
        return
    print(f"\nworst groups on train (ψ_g, {len(ranked)} of {sum(v == v for v in psi)}):")
    for v, g in ranked:
        n = run.count["train"][g]
        print(f"  {result.group_names[g]:<40} ψ = {v * 100:+.1f}%  n = {n} (one sample: {100 / n:.1f} points)")


def _data(args: argparse.Namespace) -> int:
    from ceag.app import data

    if args.data_command == "list":
        for name in data.DATASETS:
            state = "built in" if name == "synthetic" else ("fetched" if data.is_fetched(name, args.data_dir) else "not fetched")
            print(f"{name:<14} {state}")
        print(f"data dir: {data.data_dir(args.data_dir)}")
        return 0
    names = data.DATASETS if "all" in args.names else tuple(dict.fromkeys(args.names))
    unknown = [n for n in names if n not in data.DATASETS]
    if unknown:
        from ceag.errors import UsageError

        raise UsageError(f"unknown dataset {unknown[0]!r}; choose from {', '.join(data.DATASETS)} or all")
    for name in names:
        path = data.fetch(name, args.data_dir, force=args.force, progress=not args.no_progress)
        if args.data_command == "info" or args.verbose:
            print(json.dumps(data.load(name, args.data_dir).summary(), indent=1))
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ceag",
        description="Prune a model without letting the pruning hurt some groups more than others.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for grid, text in (
        ("run", "one method at one sparsity: dense model, GMP, fine-tuning, report"),
        ("compare", "several methods from the same dense model, over seeds (table + plots)"),
        ("sweep", "methods × sparsities: the disparity-vs-accuracy trade-off"),
    ):
        p = sub.add_parser(grid, help=text, description=text)
        _add_experiment_args(p, grid=grid)
        p.set_defaults(handler=lambda a, g=grid: _experiment(a, g), parser=p)

    text = "per-group report of a pruned model against its dense one, without training"
    a = sub.add_parser("audit", help=text, description=text)
    g = a.add_argument_group("models")
    g.add_argument(
        "--dense", required=True, metavar="FILE", help="the dense model: TorchScript, a ceag checkpoint or a state_dict"
    )
    g.add_argument("--sparse", required=True, metavar="FILE", help="the pruned model, in any of the same forms")
    g.add_argument(
        "--arch",
        default="auto",
        help="for state_dict files: auto (MLP for tables, CNN for images), mlp, cnn, resnet18 or resnet56",
    )
    g.add_argument("--hidden", type=_list(int), default=(512, 512), help="for state_dict files: MLP hidden widths")
    _add_data_args(a)
    g = a.add_argument_group("report")
    g.add_argument("--tolerance", "--epsilon", dest="tolerance", type=float, default=0.01, help="ε (default 0.01)")
    g.add_argument("--min-count", type=int, default=30, help="leave out groups with fewer samples (default 30)")
    g.add_argument("--confidence", type=float, default=0.95, help="level of the simultaneous intervals (default 0.95)")
    g.add_argument("--rows", type=int, default=15, help="groups printed per split, worst first (default 15; all in audit.md)")
    g.add_argument("--output", default="runs", help="root folder (default runs)")
    g.add_argument("--name", help="folder name (default audit-<sparse file name>)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    a.set_defaults(handler=_audit, parser=a, train_samples=None)

    d = sub.add_parser("data", help="fetch and list the bundled data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    for cmd, text in (("fetch", "download a data set (once) and verify it"), ("info", "fetch if needed and print a summary")):
        f = dsub.add_parser(cmd, help=text)
        f.add_argument("names", nargs="+", metavar="NAME", help="adult, census-kdd, fashion-mnist, synthetic or all")
        f.add_argument("--force", action="store_true", help="download again even if present")
        f.add_argument("--data-dir")
        f.add_argument("--no-progress", action="store_true")
        f.add_argument("-v", "--verbose", action="store_true", help="print the data set summary")
    ls = dsub.add_parser("list", help="the data sets and whether they are fetched")
    ls.add_argument("--data-dir")
    d.set_defaults(handler=_data)
    return parser


def _known_errors() -> tuple[type[Exception], ...]:
    """What a user can cause or fix: printed as one line. Anything else is a bug in ceag
    and keeps its traceback."""
    from ceag._io import FolderInUseError
    from ceag.app.data import DataCorruptError, DataFetchError
    from ceag.errors import UsageError
    from ceag.train import CheckpointError, NonFiniteError, OutputError

    return (
        UsageError,
        FileNotFoundError,
        NotADirectoryError,
        DataCorruptError,
        DataFetchError,
        CheckpointError,
        NonFiniteError,
        OutputError,
        FolderInUseError,
    )


#: Write failures reported in one line (disk full, quota, read-only, no permission).
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def _fail(parser: argparse.ArgumentParser, err: Exception) -> None:
    hint = ""
    if getattr(err, "errno", None) in _OUTPUT_ERRNOS:
        hint = " (free some space, fix the permissions or choose another --output; then re-run the same command to resume)"
    parser.exit(2, f"ceag: error: {err}{hint}\n")


#: A negative number argparse would take for a flag ("-1e-3"; it knows only "-3" and "-.5").
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def _negative_values_attached(argv: list[str]) -> list[str]:
    """``--flag -1e-3`` as ``--flag=-1e-3``, so argparse reads the value (then validation
    says what is wrong with it) instead of "expected one argument"."""
    out: list[str] = []
    for token in argv:
        if out and _NEGATIVE_NUMBER.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so the run stops as after Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One line per warning, through tqdm so a progress bar is not torn (and no source line)."""
    from tqdm.auto import tqdm

    tqdm.write(f"ceag: warning: {message}", file=sys.stderr)


def _stopped(how: str) -> str:
    from ceag.train import last_saved

    saved = last_saved()
    if saved is None:
        return f"ceag: {how}; nothing was checkpointed yet (re-run the same command to start again)\n"
    path, epoch, step = saved
    return f"ceag: {how}; {path} holds the run at epoch {epoch}, step {step} (re-run the same command to resume from there)\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_negative_values_attached(list(sys.argv[1:] if argv is None else argv)))
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.handler(args)
    except _known_errors() as err:
        _fail(parser, err)
    except OSError as err:
        if err.errno not in _OUTPUT_ERRNOS:
            raise
        _fail(parser, err)
    except KeyboardInterrupt:
        parser.exit(130, _stopped("interrupted"))
    except _Terminated:
        parser.exit(143, _stopped("terminated (SIGTERM)"))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
