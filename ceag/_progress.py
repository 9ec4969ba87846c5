"""Progress bars when tqdm is installed (the ``app`` extra), silent stand-ins when it is not."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class _Silent:
    """The part of tqdm's interface the library uses, doing nothing but iterating."""

    def __init__(self, iterable: Iterable | None = None, **_: Any) -> None:
        self.iterable = iterable if iterable is not None else ()

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix(self, *_: Any, **__: Any) -> None:
        pass

    def update(self, *_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(iterable, **kwargs)``, or a silent bar when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Silent(iterable)
    return tqdm(iterable, **kwargs)
