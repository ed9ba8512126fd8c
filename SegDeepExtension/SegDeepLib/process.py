"""The worker process: start it, read its progress without blocking, kill its whole tree.

Inference runs outside Slicer's process so that a crash or an out-of-memory kill of the network
cannot take Slicer (or the scene) down, and so that the user interface stays responsive.
Inside Slicer the interpreter is ``PythonSlicer``, a launcher that starts the real Python as a
child process: cancelling must therefore kill the process *tree*. The worker is started in a new
session (POSIX) or process group (Windows) and killed with ``killpg`` / ``taskkill /T``.

:class:`WorkerProcess` reads the merged stdout/stderr on a background thread into a queue;
:meth:`WorkerProcess.poll` drains the queue and never blocks longer than its ``timeout``, so the
Slicer GUI can call it from a ``qt.QTimer`` and the console API from a loop.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EVENT_PREFIX = "SEGDEEP-EVENT "  # same as SegDeepLib.worker.EVENT_PREFIX (the worker imports nothing from here)
_EOF = object()


def python_executable() -> str:
    """The Python interpreter for the worker: ``PythonSlicer`` inside Slicer, ``sys.executable`` elsewhere."""
    try:
        import slicer

        in_slicer = hasattr(slicer, "app")
    except ImportError:
        in_slicer = False
    if in_slicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        candidate = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if candidate.exists():
            return str(candidate)
    return sys.executable


def parse_line(line: str) -> dict[str, Any]:
    """A protocol event from one output line, or ``{"event": "log", "line": line}``.

    Examples
    --------
    >>> parse_line('SEGDEEP-EVENT {"event": "progress", "fraction": 0.5, "stage": "network"}')["stage"]
    'network'
    >>> parse_line("UserWarning: something")
    {'event': 'log', 'line': 'UserWarning: something'}
    """
    if line.startswith(EVENT_PREFIX):
        try:
            event = json.loads(line[len(EVENT_PREFIX) :])
        except ValueError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            return event
    return {"event": "log", "line": line}


class WorkerProcess:
    """A child process whose output is read line by line on a background thread.

    Parameters
    ----------
    args : sequence of str
        Command line (interpreter, script, arguments).
    env : mapping, optional
        Environment (default: this process's environment).
    cwd : path-like, optional
        Working folder.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None) -> None:
        self.args = [str(a) for a in args]
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.setdefault("PYTHONIOENCODING", "utf-8")
        self.cwd = None if cwd is None else str(cwd)
        self.returncode: int | None = None
        self.killed = False
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.history: list[dict[str, Any]] = []  # every protocol event received so far (not log lines)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._eof = False
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> WorkerProcess:
        """Start the process (in its own session / process group) and the reader thread."""
        kwargs: dict[str, Any] = {
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "stdin": subprocess.DEVNULL,
            "text": True,
            "encoding": "utf-8",
            "errors": "replace",
            "bufsize": 1,
            "env": self.env,
            "cwd": self.cwd,
        }
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        self._proc = subprocess.Popen(self.args, **kwargs)
        self._thread = threading.Thread(target=self._read, name="SegDeepWorkerReader", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            for line in self._proc.stdout:
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):  # pipe closed by kill()
            pass
        finally:
            self._queue.put(_EOF)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def finished(self) -> bool:
        """True once the process has exited and all its output has been read."""
        return self._eof and self.returncode is not None

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events received since the last call (waits up to ``timeout`` seconds for the first one)."""
        events: list[dict[str, Any]] = []
        if self._proc is None or self._eof:
            self._update_returncode()
            return events
        block = timeout > 0
        while True:
            try:
                item = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                break
            block = False
            if item is _EOF:
                self._eof = True
                break
            event = parse_line(item)
            if event["event"] == "log":
                self.log.append(item)
            else:
                self.history.append(event)
            events.append(event)
        self._update_returncode()
        return events

    def _update_returncode(self) -> None:
        if self._proc is not None and self.returncode is None and self._eof:
            self.returncode = self._proc.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process has exited and closed its output (or ``timeout`` passed).

        Events stay queued for :meth:`poll`; returns the exit code, or None on timeout.
        """
        if self._proc is None:
            return None
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the process and every process it started (its session / process group)."""
        proc = self._proc
        if proc is None:
            return
        self.killed = True
        if os.name == "nt":
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if proc.poll() is None:
                proc.kill()
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                if proc.poll() is None:
                    proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        while True:  # drain what was read before the kill
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._eof = True
            else:
                self.log.append(item)
        self._eof = True
        self.returncode = proc.returncode

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of non-protocol output (tracebacks, warnings)."""
        return "\n".join(list(self.log)[-lines:])
