"""Progress for long loops: a tqdm bar on a terminal, one log line every N % otherwise.

A redirected stderr (a batch job, ``2> log``) must not fill with ``\\r``-redrawn
bars, so off a terminal :class:`LogProgress` writes a plain line each time the
loop crosses another ``every_percent`` of its total (and at the end).
Both objects offer the tqdm calls the tasks use: iteration, ``update``,
``set_postfix``, ``close`` and use as a context manager.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable


def make_progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                  enabled: bool = True, stream=None, log: Callable[[str], object] | None = None,
                  every_percent: float = 10.0, **tqdm_kwargs):
    """A progress reporter for ``iterable`` (or for ``total`` manual ``update`` calls)."""
    stream = stream if stream is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, file=stream, dynamic_ncols=True, **tqdm_kwargs)
    return LogProgress(iterable, desc=desc, total=total, stream=stream if enabled else None,
                       log=log, every_percent=every_percent)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LogProgress:
    """One line per ``every_percent`` of ``total`` to ``stream`` and/or ``log`` (no ``\\r``)."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, stream=None,
                 log: Callable[[str], object] | None = None, every_percent: float = 10.0):
        self.iterable, self.desc, self.total = iterable, desc or "progress", total
        self.stream, self.log = stream, log
        self.every = max(float(every_percent), 1e-9) / 100.0
        self.n = 0
        self.postfix = ""
        self._next_mark = self.every
        self._started = time.perf_counter()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        fraction = self.n / self.total
        if fraction >= self._next_mark and fraction < 1.0:
            self._emit()
            while self._next_mark <= fraction:
                self._next_mark += self.every

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        values = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n:
            self._emit()

    def _emit(self) -> None:
        elapsed = time.perf_counter() - self._started
        where = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f} %)" if self.total else f"{self.n}"
        line = f"{self.desc}: {where}, {elapsed:.1f} s" + (f", {self.postfix}" if self.postfix else "")
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        if self.log is not None:
            self.log(line)
