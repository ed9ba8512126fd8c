"""Shared by every ``bench_*.py``: the machine, library versions and load, and the result file.

Every benchmark writes one JSON file under ``benchmarks/results/`` (committed: BENCHMARKS.md
cites these files for each of its numbers). Each file holds ``machine`` (CPU model from
``/proc/cpuinfo``, cores, RAM, platform), ``versions`` (python, numpy, scipy, torch, MONAI,
VTK, SimpleITK, whichever are importable), ``load_average_before`` / ``load_average_after``
(1, 5 and 15 min, as ``os.getloadavg``), the start and end time (UTC), the command line and
the benchmark's settings and numbers.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

_VERSIONED = ("numpy", "scipy", "torch", "monai", "vtk", "SimpleITK", "skimage", "psutil")


def cpu_model() -> str:
    """The ``model name`` line of ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-instruction flags of interest (AVX2, AVX-512, AMX, BF16) of the first CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx2", "avx512", "amx")) or "bf16" in f)
    except OSError:
        pass
    return []


def machine() -> dict[str, object]:
    """CPU model, logical cores (all and usable by this process), RAM and platform."""
    try:
        ram_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        ram_gib = None
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "gpu": None,
    }


def versions() -> dict[str, str]:
    """Python and the versions of the numerical libraries that are importable."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        version = getattr(module, "__version__", None)
        if name == "SimpleITK":
            version = module.Version_VersionString()
        out[name] = str(version)
    if "torch" in sys.modules:
        import torch

        out["torch_threads"] = str(torch.get_num_threads())
        out["torch_mkldnn"] = str(torch.backends.mkldnn.is_available())
    return out


def now() -> str:
    """UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Record:
    """Collects a benchmark's context at start and writes the result file at the end.

    Examples
    --------
    >>> rec = Record("example", {"size": 3})
    >>> sorted(rec.data)[:3]
    ['benchmark', 'command', 'load_average_before']
    """

    def __init__(self, benchmark: str, settings: dict[str, object]) -> None:
        self.data: dict[str, object] = {
            "benchmark": benchmark,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started_utc": now(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "machine": machine(),
            "settings": settings,
        }

    def write(self, path: Path, results: dict[str, object]) -> Path:
        """Add the results, the versions, the end time and load, and write ``path`` atomically."""
        self.data["versions"] = versions()
        self.data["finished_utc"] = now()
        self.data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        self.data.update(results)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float) + "\n")
        tmp.replace(path)
        return path
