"""Cohort throughput: one ``segdeep segment`` process per case vs ``segdeep batch`` vs ``segdeep batch --ray local``.

The first ``--cases`` validation CTs (``DATA/pt_*/ct.nii.gz``, OpenKBP; sorted by name) are
segmented with the same model and options in each mode, each mode from a cold start (new
processes, empty output folder), timed by wall clock:

* ``per_case``: ``segdeep segment CT -o OUT.seg.nrrd`` once per case, one after the other (the
  way a shell loop runs a cohort today: every process imports torch and loads the model);
* ``batch``: ``segdeep batch MANIFEST -o OUTDIR`` (one process, the model loaded once);
* ``batch_workers2``: the same with ``--workers 2`` (two processes, one thread each);
* ``ray``: ``segdeep batch MANIFEST -o OUTDIR --ray local`` (Ray started by the command, one task
  per case declaring one CPU).

Every mode writes the segmentation only (``--no-report``), so they do the same work; ``--full``
adds a ``batch_full`` run with the report, comparisons and meshes. The label maps of every mode are
checked to be identical to the ``per_case`` ones. The load average before and after each mode is
recorded, since the machine may be shared.

Usage::

    python benchmarks/bench_batch.py [--cases 4] [--model PATH] [--modes per_case batch ray] [--full]

Results: ``benchmarks/results/batch.json`` (committed for this benchmark) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SegDeepLogic.atomic import atomic_path  # noqa: E402
from SegDeepLogic.segmentation_io import read_seg_nrrd  # noqa: E402

DATA = Path("/work/shared/data/openkbp/validation")
RESULTS = ROOT / "benchmarks" / "results" / "batch.json"
MODES = ("per_case", "batch", "batch_workers2", "ray")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "SegDeepLogic.cli", *args]


def _run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--model", default=None, help="model package (default: the bundled one)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--full", action="store_true", help="also time the batch with reports and meshes")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    cts = sorted(args.data.glob("pt_*/ct.nii.gz"))[: args.cases]
    if not cts:
        raise SystemExit(f"no pt_*/ct.nii.gz under {args.data}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    model = ["--model", args.model] if args.model else []
    work = Path(tempfile.mkdtemp(prefix="segdeep-bench-batch-"))
    manifest = work / "cohort.csv"
    manifest.write_text("case_id,ct\n" + "".join(f"{ct.parent.name},{ct}\n" for ct in cts))
    common = ["--no-progress", "--device", "cpu", *model]
    runs: dict[str, list[str] | None] = {
        "per_case": None,
        "batch": _cli("batch", str(manifest), "-o", str(work / "batch"), "--no-report", *common),
        "batch_workers2": _cli(
            "batch", str(manifest), "-o", str(work / "batch_workers2"), "--no-report", "--workers", "2", *common
        ),
        "ray": _cli("batch", str(manifest), "-o", str(work / "ray"), "--no-report", "--ray", "local", *common),
    }
    modes = list(args.modes)
    if args.full:
        runs["batch_full"] = _cli("batch", str(manifest), "-o", str(work / "batch_full"), *common)
        modes.append("batch_full")
    results = {}
    for mode in modes:
        load_before = os.getloadavg()
        start = time.perf_counter()
        if mode == "per_case":
            for ct in cts:
                out = work / "per_case" / f"{ct.parent.name}.seg.nrrd"
                out.parent.mkdir(parents=True, exist_ok=True)
                _run(_cli("segment", str(ct), "-o", str(out), *common), env)
        else:
            _run(runs[mode], env)  # type: ignore[arg-type]
        wall = time.perf_counter() - start
        results[mode] = {
            "wall_s": round(wall, 2),
            "cases": len(cts),
            "cases_per_hour": round(3600 * len(cts) / wall, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        print(f"{mode:15s} {wall:8.1f} s  {results[mode]['cases_per_hour']:8.1f} cases/h  load {load_before[0]:.1f}", flush=True)
    if "per_case" in results:
        base = results["per_case"]["cases_per_hour"]
        for r in results.values():
            r["speedup_vs_per_case"] = round(r["cases_per_hour"] / base, 3)
        for mode in results:
            if mode == "per_case":
                continue
            for ct in cts:
                a = read_seg_nrrd(work / "per_case" / f"{ct.parent.name}.seg.nrrd").labelmap.array
                b = read_seg_nrrd(work / mode / "cases" / ct.parent.name / "segmentation.seg.nrrd").labelmap.array
                results[mode].setdefault("label_maps_identical_to_per_case", True)
                if not np.array_equal(a, b):
                    results[mode]["label_maps_identical_to_per_case"] = False
    import torch

    record = {
        "benchmark": "bench_batch",
        "cases": [ct.parent.name for ct in cts],
        "model": args.model or "bundled (Resources/Models)",
        "outputs": "segmentation only (--no-report), device cpu",
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_path(args.output) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
