"""Same-run A/B timing of the default ``segdeep segment`` from two checkouts, alternating.

Usage (from the repository root)::

    python benchmarks/bench_e2e_ab.py --base ../main-checkout --new . --ct big_ct.nii.gz --reps 2 \
        --json benchmarks/results/end_to_end_body_crop_ab.json

Runs ``segdeep segment CT -o seg.nii.gz --device cpu --json summary.json --no-progress`` (the
default settings; ``--json`` makes the run compute the uncertainty summary, as the Slicer panel
and batch do) in each checkout in turn, ``--reps`` times, under ``/usr/bin/time -v`` for the
wall time and peak resident memory. A busy machine slows both sides alike only when the runs
alternate, so the result is the ratio of each new run to the base run just before it, and of
the sums; the load average (1 min) is recorded around every run. The CT is made by
``bench_inference.make_big_ct`` (the sample CT resampled to 512 x 512 x 300, 500 mm field of view).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import Record  # noqa: E402


def git_commit(path: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()


def one_run(checkout: Path, ct: Path, out: Path, python: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["/usr/bin/time", "-v", python, "-m", "SegDeepLogic.cli", "segment", str(ct), "-o", str(out / "seg.nii.gz")]
    cmd += ["--device", "cpu", "--json", str(out / "summary.json"), "--no-progress", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load_before = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"segdeep segment failed in {checkout}:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    summary = json.loads((out / "summary.json").read_text())
    summary = summary[0] if isinstance(summary, list) else summary
    return {
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(rss_kb / 2**20, 3),
        "load_1min_before": load_before,
        "load_1min_after": round(os.getloadavg()[0], 2),
        "timings_s": {k: round(float(v), 2) for k, v in summary["timings_s"].items()},
        "restrict_to_body": summary["parameters"].get("restrict_to_body", "absent (before the option)"),
        "volumes_ml": {s["name"]: round(s["volume_mm3"] / 1000.0, 2) for s in summary["segments"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout with the old default")
    parser.add_argument("--new", type=Path, required=True, help="checkout with the new default")
    parser.add_argument("--ct", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    base, new = args.base.resolve(), args.new.resolve()
    record = Record(
        "segdeep segment (default settings), bundled headneck-ct, 512x512x300 CT, CPU: old default vs new, alternating",
        {"ct": str(args.ct), "reps": args.reps, "base_commit": git_commit(base), "new_commit": git_commit(new)},
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(1, args.reps + 1):
            for side, checkout in (("base", base), ("new", new)):
                result = one_run(checkout, args.ct.resolve(), Path(tmp) / f"{side}{rep}", sys.executable)
                runs.append({"side": side, "rep": rep, **result})
                print(side, rep, result["wall_s"], "s", result["peak_rss_gb"], "GB, load", result["load_1min_before"], flush=True)
    walls = {side: [r["wall_s"] for r in runs if r["side"] == side] for side in ("base", "new")}
    ratios = [round(n / b, 3) for b, n in zip(walls["base"], walls["new"])]
    record.write(
        args.json,
        {
            "runs": runs,
            "wall_s": walls,
            "ratio_new_over_base_per_rep": ratios,
            "ratio_of_sums": round(sum(walls["new"]) / sum(walls["base"]), 3),
            "peak_rss_gb_max": {side: max(r["peak_rss_gb"] for r in runs if r["side"] == side) for side in walls},
        },
    )
    print(json.dumps({"ratios": ratios, "ratio_of_sums": round(sum(walls["new"]) / sum(walls["base"]), 3)}))


if __name__ == "__main__":
    main()
