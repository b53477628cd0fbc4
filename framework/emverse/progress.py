"""Progress for long loops: a tqdm bar on a terminal, one log line every N % otherwise.

A redirected stderr (a batch job, ``2> log``) must not fill with ``\\r``-redrawn
bars, so off a terminal :class:`LogProgress` writes a plain line each time the
loop crosses another ``every_percent`` of its total (and at the end).
Both objects offer the tqdm calls the tasks use: iteration, ``update``,
``set_postfix``, ``close`` and use as a context manager.

Components (samplers, corrections) report their inner loops through :func:`steps`:
inside a run it is the run's progress, shown only once the loop has taken
``min_seconds`` (so the many short loops of a batch stay quiet); outside a run it
returns the iterable unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar

_ACTIVE: ContextVar[Callable | None] = ContextVar("emverse_progress", default=None)


@contextlib.contextmanager
def reporting(progress: Callable):
    """Route :func:`steps` to ``progress`` (a ``RunContext.progress``) inside the block."""
    token = _ACTIVE.set(progress)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def steps(iterable: Iterable, *, desc: str, total: int | None = None, min_seconds: float = 5.0):
    """``iterable`` with progress inside a run once it has run ``min_seconds``; unchanged otherwise."""
    progress = _ACTIVE.get()
    if progress is None:
        return iterable
    return progress(iterable, desc=desc, total=total, min_seconds=min_seconds)


def make_progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                  enabled: bool = True, stream=None, log: Callable[[str], object] | None = None,
                  every_percent: float = 10.0, min_seconds: float = 0.0, **tqdm_kwargs):
    """A progress reporter for ``iterable`` (or for ``total`` manual ``update`` calls); nothing is
    shown before ``min_seconds`` have passed."""
    stream = stream if stream is not None else sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and _is_terminal(stream):
        from tqdm.auto import tqdm

        if min_seconds > 0:
            tqdm_kwargs = {"delay": min_seconds, "leave": False, **tqdm_kwargs}
        return tqdm(iterable, desc=desc, total=total, file=stream, dynamic_ncols=True, **tqdm_kwargs)
    return LogProgress(iterable, desc=desc, total=total, stream=stream if enabled else None,
                       log=log, every_percent=every_percent, min_seconds=min_seconds)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class LogProgress:
    """One line per ``every_percent`` of ``total`` to ``stream`` and/or ``log`` (no ``\\r``);
    none until ``min_seconds`` have passed."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, stream=None,
                 log: Callable[[str], object] | None = None, every_percent: float = 10.0,
                 min_seconds: float = 0.0):
        self.iterable, self.desc, self.total = iterable, desc or "progress", total
        self.min_seconds = float(min_seconds)
        self.stream, self.log = stream, log
        self.every = max(float(every_percent), 1e-9) / 100.0
        self.n = 0
        self.postfix = ""
        self._next_mark = self.every
        self._started = time.perf_counter()
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:  # also when the caller leaves the loop early
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
        if elapsed < self.min_seconds:
            return
        where = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f} %)" if self.total else f"{self.n}"
        line = f"{self.desc}: {where}, {elapsed:.1f} s" + (f", {self.postfix}" if self.postfix else "")
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        if self.log is not None:
            self.log(line)
