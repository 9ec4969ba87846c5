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
import json
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from ceag._options import comma_list
from ceag.app.cli.errors import (
    OUTPUT_ERRNOS,
    Terminated,
    fail,
    known_errors,
    negative_values_attached,
    on_sigterm,
    show_warning,
    stopped,
)
from ceag.app.cli.flags import add_data_args, add_experiment_args, data_options, experiment_config, naming_the_flag

__all__ = ["main"]


def _experiment(args: argparse.Namespace, grid: str) -> int:
    from ceag.app.experiment import run_experiment
    from ceag.errors import UsageError

    try:
        cfg = experiment_config(args, grid)
    except (ValueError, TypeError) as err:  # every config field is a flag: name it
        raise UsageError(naming_the_flag(str(err), args.parser, grid)) from None
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

    if args.rows < 1:
        raise UsageError(naming_the_flag(f"--rows must be >= 1, got {args.rows}", args.parser, "audit"))
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and 0 <= args.tolerance < 1):
        raise UsageError(f"--tolerance (ε) is a fraction of accuracy in [0, 1), e.g. 0.01 for one point; got {args.tolerance:g}")
    if not (math.isfinite(args.confidence) and 0 < args.confidence < 1):
        raise UsageError(f"--confidence must be in (0, 1), e.g. 0.95; got {args.confidence:g}")
    if args.run is not None:
        return _audit_run(args)
    if args.dense is None or args.sparse is None:
        raise UsageError("audit: give a run folder (ceag audit RUN_DIR), or both --dense FILE and --sparse FILE")
    defaults = ExperimentConfig(methods=("nft",))  # ε and min count of an experiment
    args.tolerance = defaults.tolerance if args.tolerance is None else args.tolerance
    args.min_count = defaults.min_count if args.min_count is None else args.min_count
    try:
        dataset, options = data_options(args)
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
        raise UsageError(naming_the_flag(str(err), args.parser, "audit")) from None
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
    _print_audit(args, data, sparse, reports, folder)
    return 0


def _export(args: argparse.Namespace) -> int:
    from ceag.app import audit as audit_mod

    path = audit_mod.export_run(args.run, args.output, fmt=args.format)
    how = (
        "torch.load(path, weights_only=True) -> state_dict of plain nn.Linear / nn.Conv2d layers (pruned weights 0)"
        if args.format == "state_dict"
        else "torch.jit.load(path)"
    )
    print(f"written: {path}\nload it with {how}; its per-group report: ceag audit {args.run}")
    return 0


def _audit_run(args: argparse.Namespace) -> int:
    """``ceag audit RUN_DIR``: the run's data split, dense model and ε, found from its folder."""
    from pathlib import Path

    from ceag.app import audit as audit_mod
    from ceag.errors import UsageError

    given = [
        f"--{f}"
        for f in ("dense", "sparse", "data", "dataset", "groups", "label", "test", "features", "attributes")
        if getattr(args, f, None) is not None
    ]
    if given:
        raise UsageError(f"audit RUN_DIR takes the data and models from the run; drop {', '.join(given)}")
    run = audit_mod.load_run(args.run, data_root=args.data_dir)
    cfg = run.config
    tolerance = cfg.tolerance if args.tolerance is None else args.tolerance
    min_count = cfg.min_count if args.min_count is None else args.min_count
    print(
        f"run {run.run_dir}: seed {run.seed}, data {cfg.dataset} as the experiment split it; dense model {run.dense_path}"
        + ("" if run.finished else "; the run has not finished: auditing its last checkpoint")
    )
    reports = audit_mod.audit(
        run.dense, run.sparse, run.data, tolerance=tolerance, min_count=min_count, confidence=args.confidence
    )
    folder = Path(args.output) / args.name if args.name else run.run_dir / "audit"
    _print_audit(args, run.data, run.sparse, reports, folder)
    return 0


def _print_audit(args: argparse.Namespace, data, sparse, reports, folder) -> None:
    from ceag.app import audit as audit_mod

    written = audit_mod.write_audit(reports, data.group_names, folder, plots=not args.no_plots)
    sparsity, counted = audit_mod.sparsity_of(sparse)
    print(f"{data.name}: {data.num_groups} groups; sparse model {sparsity:.1%} sparse ({counted})")
    for note in data.notes:
        print(note)
    for split, r in reports.items():
        print()
        print(audit_mod._summary_line(split, r))
        print(audit_mod._table(r, data.group_names, rows=args.rows))
    print()
    for p in written:
        print(f"written: {p}")


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
        add_experiment_args(p, grid=grid)
        p.set_defaults(handler=lambda a, g=grid: _experiment(a, g), parser=p)

    text = "per-group report of a pruned model against its dense one, without training"
    a = sub.add_parser("audit", help=text, description=text)
    a.add_argument(
        "run",
        nargs="?",
        metavar="RUN_DIR",
        help="a run folder of an experiment (runs/<experiment>/<method>-s<sparsity>-seed<k>): its data split, dense "
        "model, ε and min count are read from the experiment; no other flag needed",
    )
    g = a.add_argument_group("models (without RUN_DIR)")
    g.add_argument("--dense", metavar="FILE", help="the dense model: TorchScript, a ceag checkpoint or a state_dict")
    g.add_argument("--sparse", metavar="FILE", help="the pruned model, in any of the same forms")
    g.add_argument(
        "--arch",
        default="auto",
        help="for state_dict files: auto (MLP for tables, CNN for images), mlp, cnn, resnet18 or resnet56",
    )
    g.add_argument("--hidden", type=comma_list(int), default=(512, 512), help="for state_dict files: MLP hidden widths")
    add_data_args(a)
    g = a.add_argument_group("report")
    g.add_argument(
        "--tolerance", "--epsilon", dest="tolerance", type=float, default=None, help="ε (default: the run's, else 0.01)"
    )
    g.add_argument(
        "--min-count", type=int, default=None, help="leave out groups with fewer samples (default: the run's, else 30)"
    )
    g.add_argument("--confidence", type=float, default=0.95, help="level of the simultaneous intervals (default 0.95)")
    g.add_argument("--rows", type=int, default=15, help="groups printed per split, worst first (default 15; all in audit.md)")
    g.add_argument("--output", default="runs", help="root folder (default runs)")
    g.add_argument("--name", help="folder name under --output (default audit-<sparse file name>; with RUN_DIR: RUN_DIR/audit)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    a.set_defaults(handler=_audit, parser=a, train_samples=None)

    text = "write a run's pruned model as a plain state_dict or TorchScript, for code without ceag"
    e = sub.add_parser("export", help=text, description=text)
    e.add_argument(
        "run", metavar="RUN_DIR", help="a run folder of an experiment (runs/<experiment>/<method>-s<sparsity>-seed<k>)"
    )
    e.add_argument(
        "--format",
        choices=("state_dict", "torchscript"),
        default="state_dict",
        help="state_dict (default; torch.load(..., weights_only=True) into ceag.models.build_model's architecture) or "
        "torchscript (torch.jit.load alone)",
    )
    e.add_argument("--output", metavar="FILE", help="the file to write (default RUN_DIR/model.pt or model.ts)")
    e.set_defaults(handler=_export, parser=e)

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(negative_values_attached(list(sys.argv[1:] if argv is None else argv)))
    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return args.handler(args)
    except known_errors() as err:
        fail(parser, err)
    except OSError as err:
        if err.errno not in OUTPUT_ERRNOS:
            raise
        fail(parser, err)
    except KeyboardInterrupt:
        parser.exit(130, stopped("interrupted"))
    except Terminated:
        parser.exit(143, stopped("terminated (SIGTERM)"))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
