"""Progress reporting for long work.

In a terminal: a tqdm bar on stderr.  When ``SPINESSL_PROGRESS=lines`` is set (the Slicer
module does this for its background processes) each update is also printed to stdout as
``PROGRESS <done>/<total> <description>`` so a GUI can drive its progress bar from the output.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_enabled = True


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = flag


def _lines_mode() -> bool:
    return os.environ.get("SPINESSL_PROGRESS", "") == "lines"


class Progress:
    """Minimal progress object: ``update(n)``, ``set_postfix(**kw)``, ``close()``."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it"):
        self.total, self.desc, self.n = total, desc, 0
        self._bar = None
        if _enabled and not _lines_mode():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                             leave=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        if _lines_mode():
            print(f"PROGRESS {self.n}/{self.total or 0} {self.desc}", flush=True)

    def set_postfix(self, **kw) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**kw, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit) as p:
        for it in items:
            yield it
            p.update(1)
