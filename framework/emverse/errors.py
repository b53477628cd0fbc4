"""Errors a user can act on.

Every error raised for bad input is an :class:`EmverseError` whose message
names the thing, the value and the fix. The CLI prints it on one line and
exits with code 2; tracebacks only with ``--debug``.
"""

from __future__ import annotations


class EmverseError(Exception):
    """Bad input or configuration a user can fix; the message says how."""


class RecipeError(EmverseError):
    """A recipe failed validation; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


class PluginError(EmverseError):
    """A plugin could not be loaded, or two plugins clash."""


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived during a run (a BaseException, like KeyboardInterrupt, so
    ``except Exception`` in a task does not swallow it)."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(f"run interrupted by {signal_name}")
