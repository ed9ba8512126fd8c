"""Worker process of the SegDeep module: segment one CT and stream progress as JSON lines.

Usage::

    python worker.py JOB.json          # PythonSlicer worker.py JOB.json inside Slicer
    python worker.py --probe           # one "devices" event: torch version, GPUs

``JOB.json`` (written by :meth:`SegDeepLib.logic.SegDeepLogicBase.startSegmentation`)::

    {"engine_root": "<folder holding SegDeepLogic/>", "input": "<CT .nrrd>", "output_dir": "<folder>",
     "model": "<model package>", "device": "auto", "tta": false, "refine": false,
     "uncertainty": false, "num_threads": null}

Every protocol line on stdout is ``SEGDEEP-EVENT {json}`` with an ``event`` key:

``started`` (``pid``), ``progress`` (``fraction`` in [0, 1], ``stage``), ``done`` (``result``:
the result file name) or ``error`` (``kind``: ``out-of-memory``, ``input``, ``missing-dependency``
or ``internal``; ``message``; ``type``). Other lines (warnings, library output) are log text.

Output files in ``output_dir``: ``labels.nrrd`` (label map on the CT's grid), ``uncertainty.nrrd``
(when requested) and, written last and atomically, ``result.json`` (segments with names, values,
colours and terminology, device, fallbacks, timings, uncertainty summary and ``plausibility``, the
out-of-distribution check of :func:`SegDeepLogic.plausibility.check_plausibility`). The caller treats the
run as complete only when the process exited with 0 and ``result.json`` exists.

This script imports only the standard library and the SegDeep engine (``SegDeepLogic``); never
``slicer`` or Qt. Exit codes: 0 success, 1 error, 2 bad usage, 3 out of memory.

The environment variable ``SEGDEEP_TEST_WORKER_FAULT`` makes the worker fail on purpose right
after its first progress line, for tests: ``exit`` (exit code 7), ``kill`` (SIGKILL itself),
``oom`` (MemoryError), ``hang`` (start a child process, then sleep: for cancellation tests),
``no-result`` (exit 0 without writing a result).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

EVENT_PREFIX = "SEGDEEP-EVENT "
FAULT_ENV = "SEGDEEP_TEST_WORKER_FAULT"
RESULT_FILE = "result.json"
LABELS_FILE = "labels.nrrd"
UNCERTAINTY_FILE = "uncertainty.nrrd"


def emit(event: str, **fields: Any) -> None:
    """Write one protocol line to stdout and flush it."""
    sys.stdout.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class ProgressEmitter:
    """Engine progress callback that emits at most one line per ``interval_s`` per stage."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self._last_time = 0.0
        self._last_stage: str | None = None

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if stage != self._last_stage or fraction >= 1.0 or now - self._last_time >= self.interval_s:
            emit("progress", fraction=round(float(fraction), 4), stage=str(stage))
            self._last_time, self._last_stage = now, stage


def _inject_fault() -> None:
    fault = os.environ.get(FAULT_ENV, "").strip().lower()
    if not fault:
        return
    if fault == "exit":
        sys.stdout.write("simulated crash: exiting with code 7\n")
        sys.stdout.flush()
        os._exit(7)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        time.sleep(60)
    if fault == "oom":
        raise MemoryError("simulated out-of-memory in the worker")
    if fault == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        emit("child", pid=child.pid)
        time.sleep(120)
        os._exit(0)
    if fault == "no-result":
        os._exit(0)
    raise ValueError(f"unknown {FAULT_ENV} value {fault!r}")


def watch_parent(parent_pid: int, workdir: Path, interval_s: float = 1.0) -> threading.Thread:
    """Remove ``workdir`` (the patient's CT copy and every result) and exit once ``parent_pid`` is gone.

    Slicer killed or crashed cannot clean up its worker's temporary folder; the worker does it.
    """
    from SegDeepLogic.atomic import pid_alive

    def watch() -> None:
        while pid_alive(parent_pid):
            time.sleep(interval_s)
        shutil.rmtree(workdir, ignore_errors=True)
        sys.stderr.write(f"SegDeep worker: the parent process {parent_pid} is gone; removed {workdir} and stopped\n")
        sys.stderr.flush()
        os._exit(4)

    thread = threading.Thread(target=watch, name="SegDeepParentWatch", daemon=True)
    thread.start()
    return thread


def run(job: dict[str, Any]) -> int:
    """Segment the CT described by ``job`` and write the result files; returns the exit code."""
    out = Path(job["output_dir"])
    if job.get("parent_pid"):
        watch_parent(int(job["parent_pid"]), out)
    progress = ProgressEmitter()
    emit("started", pid=os.getpid())
    progress(0.0, "starting")
    _inject_fault()

    from SegDeepLogic.io import read_volume, write_volume
    from SegDeepLogic.options import SegmentOptions
    from SegDeepLogic.segment import segment_volume  # imports torch

    options = SegmentOptions.from_dict(job.get("options") or {})  # as the Slicer logic built it
    ct = read_volume(job["input"])
    result = segment_volume(ct, job["model"], options, progress=progress)
    del ct
    progress(0.98, "write")
    write_volume(result.labels, out / LABELS_FILE, compress=True)
    files: dict[str, str | None] = {"labels": LABELS_FILE, "uncertainty": None}
    if result.uncertainty is not None:
        write_volume(result.uncertainty, out / UNCERTAINTY_FILE, compress=True)
        files["uncertainty"] = UNCERTAINTY_FILE
    summary = result.summary()
    volumes = {s["name"]: s.get("volume_mm3") for s in summary.get("segments", [])}
    summary["segments"] = [
        {
            "name": s.name,
            "value": int(s.value),
            "color": [float(c) for c in s.color],
            "terminology": s.terminology,
            "volume_mm3": volumes.get(s.name),
        }
        for s in result.segments
    ]
    summary["files"] = files
    from SegDeepLogic.atomic import write_text

    write_text(out / RESULT_FILE, json.dumps(summary, indent=1, default=str))
    progress(1.0, "done")
    emit("done", result=RESULT_FILE)
    return 0


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "InferenceOutOfMemoryError":
        return "out-of-memory"
    if isinstance(exc, (ModuleNotFoundError, ImportError)):
        return "missing-dependency"
    message = str(exc).lower()
    if any(m in message for m in ("out of memory", "can't allocate memory", "cannot allocate memory")):
        return "out-of-memory"
    try:
        from SegDeepLogic.errors import SegDeepError
    except ImportError:
        return "internal"
    return "input" if isinstance(exc, (SegDeepError, FileNotFoundError)) else "internal"


def probe() -> int:
    """Report what PyTorch finds here as one ``devices`` event (``worker.py --probe``)."""
    try:
        import torch
    except ImportError as exc:
        emit("error", kind="missing-dependency", type=type(exc).__name__, message=f"PyTorch is not installed ({exc})")
        return 1
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = bool(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())
    emit("devices", torch=torch.__version__, cuda=cuda, mps=mps, auto="cuda" if cuda else "mps" if mps else "cpu")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``worker.py JOB.json`` (or ``worker.py --probe``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--probe"]:
        return probe()
    if len(argv) != 1:
        sys.stderr.write("usage: worker.py JOB.json | --probe\n")
        return 2
    # Run as a script, sys.path[0] is this folder: drop it so its modules cannot shadow others.
    here = Path(__file__).resolve().parent
    if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == here:
        sys.path.pop(0)
    try:
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        root = job.get("engine_root")
        if root and root not in sys.path:
            sys.path.insert(0, str(root))
        return run(job)
    except BaseException as exc:  # report everything, including MemoryError and KeyboardInterrupt
        kind = _error_kind(exc)
        emit(
            "error", kind=kind, type=type(exc).__name__, message=str(exc) or type(exc).__name__, traceback=traceback.format_exc()
        )
        return 3 if kind == "out-of-memory" else 1


if __name__ == "__main__":
    sys.exit(main())
