"""The life of a run directory: ``status.json`` with PID and heartbeat, signals, dead runs.

While a run works, ``status.json`` holds ``status = "running"``, the process
id, host and a ``heartbeat`` time rewritten every :data:`HEARTBEAT_SECONDS`.
SIGTERM and SIGINT end the run through :class:`~emverse.errors.RunInterrupted`
so the runner can checkpoint and write ``status = "interrupted"``. A run
killed outright (SIGKILL, power loss) cannot write anything; :func:`read_status`
then reports it as ``"dead"``: its process is gone (same host) or its
heartbeat stopped long ago (another host).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import signal
import socket
import threading
from pathlib import Path

from emverse.errors import RunInterrupted
from emverse.io import write_json

#: seconds between heartbeats (``EMVERSE_HEARTBEAT_SECONDS`` overrides it)
HEARTBEAT_SECONDS = 30.0
#: a heartbeat older than this many periods means the run is dead
STALE_PERIODS = 4


def heartbeat_seconds() -> float:
    try:
        return float(os.environ.get("EMVERSE_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    except ValueError:
        return HEARTBEAT_SECONDS


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class StatusFile:
    """``status.json`` of one run, kept fresh by a daemon heartbeat thread."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "status.json"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict = {}

    def start(self, **extra) -> None:
        self._running = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                         "started": now_iso(), "heartbeat": now_iso(),
                         "heartbeat_seconds": heartbeat_seconds(), **extra}
        with self._lock:
            write_json(self.path, self._running)
        self._thread = threading.Thread(target=self._beat, name="emverse-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_seconds()):
            with self._lock:
                if self._stop.is_set():
                    return
                self._running["heartbeat"] = now_iso()
                write_json(self.path, self._running)

    def finish(self, status: str, **fields) -> None:
        """Stop the heartbeat and write the final state (complete, failed, interrupted)."""
        self._stop.set()
        with self._lock:
            write_json(self.path, {"status": status, "pid": os.getpid(),
                                   "host": self._running.get("host", socket.gethostname()),
                                   "started": self._running.get("started"), "ended": now_iso(),
                                   **fields})
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def read_status(run_dir: str | Path) -> dict:
    """``status.json`` of ``run_dir``, with a ``"running"`` run that no longer lives turned into
    ``"dead"`` (and a ``reason``)."""
    path = Path(run_dir) / "status.json"
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "unknown"}
    if status.get("status") != "running":
        return status
    reason = _why_dead(status)
    if reason:
        status = {**status, "status": "dead", "reason": reason}
    return status


def _why_dead(status: dict) -> str | None:
    pid = status.get("pid")
    if isinstance(pid, int) and status.get("host") == socket.gethostname() and not _pid_alive(pid):
        return (f"process {pid} on {status['host']} is gone (killed, e.g. SIGKILL or out of memory) "
                f"but status.json still said running; last heartbeat {status.get('heartbeat')}")
    beat = status.get("heartbeat")
    period = float(status.get("heartbeat_seconds", HEARTBEAT_SECONDS))
    if beat:
        try:
            age = (_dt.datetime.now(_dt.timezone.utc) - _dt.datetime.fromisoformat(beat)).total_seconds()
        except ValueError:
            return None
        if age > STALE_PERIODS * period + 5:
            return f"no heartbeat for {age:.0f} s (expected every {period:.0f} s); the process died"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


#: a stop request held while a loop step runs (see :func:`at_step_boundary`)
_held = {"active": False, "signal": None}


@contextlib.contextmanager
def interrupt_on_signals():
    """Within the block SIGTERM and SIGINT raise :class:`RunInterrupted` (main thread only);
    inside :func:`at_step_boundary` a first signal is held until the step ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if _held["active"] and _held["signal"] is None:  # finish the step first; a second signal is final
            _held["signal"] = name
            return
        raise RunInterrupted(name)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - platforms without the signal
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def at_step_boundary():
    """Run one step of a loop whole: a SIGTERM/SIGINT that arrives inside it is raised as
    :class:`RunInterrupted` when the step has finished, so the loop's state is consistent
    when the run's interrupt hooks save it (a second signal interrupts at once)."""
    if _held["active"]:  # nested: the outer step decides
        yield
        return
    _held["active"], _held["signal"] = True, None
    try:
        yield
    finally:
        _held["active"] = False
    name, _held["signal"] = _held["signal"], None
    if name is not None:
        raise RunInterrupted(name)
