"""The flags of the ``ceag`` commands and the configuration they describe."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any

from ceag._options import comma_list


def _fraction(text: str) -> float:
    """A sparsity given as 0.9 or 90%."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return value


def add_data_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
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
        "--test-fraction", type=float, default=None, help="your table: share of every group held out for test (default 0.2)"
    )
    g.add_argument("--features", type=comma_list(str), help="your table: feature columns (default: all but the label)")
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


def add_experiment_args(p: argparse.ArgumentParser, *, grid: str) -> None:
    """The flags of ``run`` / ``compare`` / ``sweep``: the data flags, the grid (which depends
    on the command), then one flag per :class:`ExperimentConfig` field with a help section
    (help and default from the field)."""
    from ceag._options import add_flags
    from ceag.app.experiment import ExperimentConfig
    from ceag.methods import METHODS

    groups = {"data and model": add_data_args(p)}
    g = groups["methods"] = p.add_argument_group("methods")
    if grid == "run":
        *others, last = METHODS
        g.add_argument("--method", default="ceag", help=f"{', '.join(others)} or {last} (default ceag)")
        g.add_argument("--sparsity", type=_fraction, default=0.9, help="final sparsity, e.g. 0.9 or 90%% (default 0.9)")
        g.add_argument("--seed", type=int, default=0)
    else:
        g.add_argument(
            "--methods", type=comma_list(str), default=("nft", "el", "el_rb", "ceag") if grid == "compare" else ("nft", "ceag")
        )
        if grid == "compare":
            g.add_argument("--sparsity", type=_fraction, default=0.9)
        else:
            g.add_argument("--sparsities", type=comma_list(_fraction), default=(0.9, 0.95, 0.99))
        g.add_argument("--seeds", type=comma_list(int), default=(0, 1, 2) if grid == "compare" else (0,))
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


def data_options(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(dataset name, dataset options) from the data flags; ValueError naming a flag."""
    from ceag.app.data.table import DEFAULT_TEST_FRACTION  # not at import: `ceag --help` stays light

    args.dataset_given = args.dataset is not None
    args.dataset = args.dataset or "adult"
    options: dict[str, Any] = {}
    dataset = args.dataset
    table_flags = ("label", "features")
    image_flags = ("attributes", "image_size")
    if args.test is not None and args.test_fraction is not None:
        raise ValueError("--test and --test-fraction: give one (with --test, the test file is the test split)")
    test_fraction = args.test_fraction if args.test_fraction is not None else DEFAULT_TEST_FRACTION
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
            "test_fraction": test_fraction,
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
            "test_fraction": test_fraction,
            "features": list(args.features) if args.features is not None else None,
            "missing_groups": args.missing_groups,
            "impute": args.impute,
        }
    else:
        for flag in (*table_flags, "test", "test_fraction", *image_flags):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to your own data (--data PATH) only")
        for flag, key in (("groups", "num_groups"), ("samples", "num_train"), ("minority_effect", "minority_effect")):
            value = getattr(args, flag)
            if value is not None:
                if args.dataset != "synthetic":
                    raise ValueError(f"--{flag.replace('_', '-')} applies to --dataset synthetic or your own table (--data) only")
                options[key] = _integer_flag(flag, value) if flag == "groups" else value
    return dataset, options


def experiment_config(args: argparse.Namespace, grid: str):
    """The :class:`ExperimentConfig` the flags describe."""
    from ceag.app.experiment import ExperimentConfig

    dataset, options = data_options(args)
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


def naming_the_flag(message: str, parser: argparse.ArgumentParser, grid: str) -> str:
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
