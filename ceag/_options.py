"""Config fields that carry their own help text, so a command line can be generated from them.

A field made with :func:`option` holds, in its ``metadata``: ``help`` (one line, no default:
the generator adds it) and, for fields that are command-line flags, ``group`` (the help
section) with optional ``flags`` (default ``--`` + the name with dashes), ``parse`` (the
argparse ``type``), ``choices`` and ``default_text`` (how to show a None default). A field
of another config that means the same thing is declared once and reused with
:func:`same_as`, which copies its help (the default may differ, and is stated where it does).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

_MISSING: Any = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, default_factory: Callable[[], Any] | Any = _MISSING, **cli: Any) -> Any:
    """A dataclass field with ``help`` and command-line details (see the module docstring)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **cli})


def same_as(cls: type, name: str, default: Any = _MISSING, **cli: Any) -> Any:
    """A field meaning what ``cls.name`` means: its help and, unless given, its default.

    ``cli`` adds or overrides metadata (``group``, ``flags``, ``help`` ...); the field is
    passed on to ``cls`` unchanged unless ``passed_on=False`` says it is transformed first.
    """
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default is _MISSING:
        default = source.default
    factory = source.default_factory if default is _MISSING else _MISSING
    metadata = {**source.metadata, "same_as": name, "passed_on": True, **cli}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def passed_on(instance: Any) -> dict[str, Any]:
    """The values of ``instance``'s fields declared :func:`same_as` another config's, unchanged."""
    return {f.metadata["same_as"]: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.metadata.get("passed_on")}


def comma_list(cast: Callable[[str], Any]) -> Callable[[str], tuple]:
    """A command-line ``type`` for ``"a,b,c"``: the tuple of ``cast`` of each item."""

    def parse(text: str) -> tuple:
        try:
            return tuple(cast(t.strip()) for t in text.split(",") if t.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {err}") from None

    return parse


def add_flags(parser: argparse.ArgumentParser, cls: type, groups: dict[str, Any]) -> None:
    """Add a flag for every field of ``cls`` with a ``group``: ``dest`` is the field's name,
    the default its default, the help its help plus the default. ``groups`` maps a section
    title to an argparse group, and gains the sections it lacks."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "group" not in meta:
            continue
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flags = meta.get("flags", ("--" + f.name.replace("_", "-"),))
        shown = meta.get("default_text", ",".join(map(str, default)) if isinstance(default, tuple) else default)
        help_text = meta["help"].replace("%", "%%")
        if isinstance(default, bool):  # a switch that turns the default off: --no-progress
            group.add_argument(*flags, dest=f.name, action="store_false" if default else "store_true", help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f"{help_text} (default {shown})"}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        else:
            kwargs["metavar"] = flags[0].lstrip("-").replace("-", "_").upper()
        kwargs["type"] = meta.get("parse") or (type(default) if default is not None else str)
        group.add_argument(*flags, **kwargs)


def flag_of(cls: type, name: str) -> str | None:
    """The command-line flag that sets field ``name`` of ``cls`` (None: not a flag)."""
    for f in dataclasses.fields(cls):
        if f.name == name and "group" in f.metadata:
            return f.metadata.get("flags", ("--" + name.replace("_", "-"),))[0]
    return None
