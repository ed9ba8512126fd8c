"""Benchmark: SegDeep's comparison metrics vs MONAI's, metric for metric and as a set.

Usage::

    python benchmarks/bench_metrics.py [--quick] [--repeats N]

Two realistic, slightly different bone masks are built from the sample head-and-neck CT
(OpenKBP patient 236, 128³ at 3.9×3.9×3 mm) upsampled linearly to a CT-size grid
(512×512×300 by default, 256×256×150 with ``--quick``):

* A (test) = upsampled CT > 250 HU,
* B (reference) = upsampled CT smoothed at its native resolution (Gaussian, σ = 0.6 voxel) > 250 HU.

Two kinds of comparison, each at equal work:

* **one metric against the same metric**: SegDeep's single-metric functions (``dice``,
  ``hausdorff_distance``, ``hausdorff_distance(percentile=95)``,
  ``average_symmetric_surface_distance``, ``surface_dice``) against MONAI's
  (``compute_dice``, ``compute_hausdorff_distance``, the same with ``percentile=95``,
  ``compute_average_surface_distance(symmetric=True)``, ``compute_surface_dice``);
* **all five at once**: ``compare_masks`` (one call, every metric) against MONAI's five calls.

Each contender runs in its own subprocess (same data, loaded from .npy files), is warmed up
on a small corner of the masks (imports, lazy initialisation, first allocations), then timed
on the full masks; ``peak_extra_mib`` is the peak RSS minus the RSS just before the timed call.
The rounds are interleaved (every contender once per round, the order reversed every other
round) so that a burst of load from other jobs hits both sides alike; medians over the
rounds are reported. Results, with the machine, versions and load, go to
``benchmarks/results/metrics.json`` (``benchmarks/results/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import RESULTS_DIR, Record  # noqa: E402

SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
TOLERANCE_MM = 1.0
PERCENTILE = 95.0
KEYS = ("dice", "hd_mm", "hd95_mm", "assd_mm", "surface_dice")


def build_masks(shape_kji: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Bone masks A and B on a ``shape_kji`` grid covering the sample CT; spacing in array order."""
    from scipy import ndimage

    from SegDeepLogic import read_volume

    ct = read_volume(SAMPLE_CT)
    hu = ct.array.astype(np.float32)
    smooth = ndimage.gaussian_filter(hu, 0.6)
    zoom = [n / o for n, o in zip(shape_kji, hu.shape, strict=True)]
    spacing = tuple(s * o / n for s, o, n in zip(ct.spacing_kji, hu.shape, shape_kji, strict=True))
    a = ndimage.zoom(hu, zoom, order=1, output=np.float32) > 250
    b = ndimage.zoom(smooth, zoom, order=1, output=np.float32) > 250
    return a, b, spacing  # type: ignore[return-value]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# name -> (ours or monai, metric or "all")
CONTENDERS = {
    "ours_all": ("ours", "all"),
    "ours_all_1_thread": ("ours", "all"),
    "monai_all": ("monai", "all"),
    **{f"{side}_{key}": (side, key) for key in KEYS for side in ("ours", "monai")},
}


def _ours(metric: str, spacing: tuple[float, ...], workers: int):
    from SegDeepLogic import metrics as m

    if metric == "all":

        def fn(a, b):
            r = m.compare_masks(a, b, spacing_mm=spacing, tolerance_mm=TOLERANCE_MM, percentile=PERCENTILE, workers=workers)
            return {k: getattr(r, k) for k in KEYS}

        return fn
    single = {
        "dice": lambda a, b: m.dice(a, b),
        "hd_mm": lambda a, b: m.hausdorff_distance(a, b, spacing_mm=spacing),
        "hd95_mm": lambda a, b: m.hausdorff_distance(a, b, spacing_mm=spacing, percentile=PERCENTILE),
        "assd_mm": lambda a, b: m.average_symmetric_surface_distance(a, b, spacing_mm=spacing),
        "surface_dice": lambda a, b: m.surface_dice(a, b, tolerance_mm=TOLERANCE_MM, spacing_mm=spacing),
    }[metric]
    return lambda a, b: {metric: float(single(a, b))}


def _monai(metric: str, spacing: tuple[float, ...]):
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    warnings.simplefilter("ignore")  # MONAI's deprecation warnings
    sp = list(spacing)
    calls = {
        "dice": lambda ya, yb: compute_dice(ya, yb, include_background=True),
        "hd_mm": lambda ya, yb: compute_hausdorff_distance(ya, yb, include_background=True, spacing=sp),
        "hd95_mm": lambda ya, yb: compute_hausdorff_distance(ya, yb, include_background=True, spacing=sp, percentile=PERCENTILE),
        "assd_mm": lambda ya, yb: compute_average_surface_distance(ya, yb, include_background=True, symmetric=True, spacing=sp),
        "surface_dice": lambda ya, yb: compute_surface_dice(ya, yb, [TOLERANCE_MM], include_background=True, spacing=sp),
    }
    keys = KEYS if metric == "all" else (metric,)

    def fn(a, b):
        ya, yb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
        return {k: float(calls[k](ya, yb).item()) for k in keys}

    return fn


def run_contender(name: str, data_dir: Path) -> dict:
    """Runs in a child process: warm up, then time one call of one contender on the saved masks."""
    a = np.load(data_dir / "a.npy")
    b = np.load(data_dir / "b.npy")
    spacing = tuple(float(s) for s in np.load(data_dir / "spacing.npy"))
    side, metric = CONTENDERS[name]
    info: dict = {"side": side, "metric": metric}
    if side == "ours":
        workers = 1 if name.endswith("_1_thread") else -1
        fn = _ours(metric, spacing, workers)
        info["workers"] = workers
    else:
        import torch

        fn = _monai(metric, spacing)
        info["torch_threads"] = torch.get_num_threads()
    # warm-up on a central block holding both surfaces: imports, lazy initialisation, first allocations
    block = tuple(slice(n // 3, n // 3 + max(8, n // 8)) for n in a.shape)
    fn(np.ascontiguousarray(a[block]), np.ascontiguousarray(b[block]))
    rss_before = _rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    values = fn(a, b)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "values": values,
        "peak_extra_mib": max(0.0, _peak_rss_mib() - rss_before),
        **info,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256×256×150 grid instead of 512×512×300")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds, medians kept (default 3)")
    parser.add_argument("--output", type=Path, default=None, help="JSON results (default benchmarks/results/metrics.json)")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_contender(args.child[0], Path(args.child[1]))))
        return 0

    output = args.output or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR) / "metrics.json"
    shape = (150, 256, 256) if args.quick else (300, 512, 512)
    record = Record(
        "SegDeep metrics vs MONAI: each metric against the same metric, and all five (compare_masks) against MONAI's five calls",
        {
            "grid_kji": list(shape),
            "tolerance_mm": TOLERANCE_MM,
            "percentile": PERCENTILE,
            "rounds": args.repeats,
            "statistic": "median over interleaved rounds; one timed call per contender per round, each in a fresh "
            "subprocess after a warm-up call on a block of the masks",
            "threads": "ours: scipy KDTree workers=-1 (all cores) except ours_all_1_thread; MONAI: torch default threads",
        },
    )
    t0 = time.perf_counter()
    a, b, spacing = build_masks(shape)
    print(
        f"grid {shape[::-1]} voxels (i, j, k), spacing {tuple(round(s, 4) for s in spacing[::-1])} mm (i, j, k); "
        f"|A| = {int(a.sum())}, |B| = {int(b.sum())} voxels; built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    record.data["settings"]["spacing_kji_mm"] = list(spacing)  # type: ignore[index]
    record.data["settings"]["voxels_a_b"] = [int(a.sum()), int(b.sum())]  # type: ignore[index]
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "a.npy", a)
        np.save(Path(tmp) / "b.npy", b)
        np.save(Path(tmp) / "spacing.npy", np.array(spacing))
        del a, b
        for r in range(args.repeats):
            order = list(CONTENDERS) if r % 2 == 0 else list(CONTENDERS)[::-1]
            for name in order:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, tmp]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
                if proc.returncode != 0:
                    print(f"{name} failed:\n{proc.stderr}", file=sys.stderr)
                    return 1
                runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.repeats} done, load {os.getloadavg()[0]:.1f}", flush=True)

    results = {}
    for name, rs in runs.items():
        results[name] = {
            "median_s": statistics.median(x["seconds"] for x in rs),
            "all_s": [x["seconds"] for x in rs],
            "median_cpu_s": statistics.median(x["cpu_seconds"] for x in rs),
            "peak_extra_mib": max(x["peak_extra_mib"] for x in rs),
            "values": rs[-1]["values"],
            **{k: v for k, v in rs[-1].items() if k not in ("seconds", "cpu_seconds", "values", "peak_extra_mib")},
        }

    def ratio(ours: str, ref: str) -> float:
        return results[ours]["median_s"] / results[ref]["median_s"]

    ratios = {f"{key}: ours / MONAI": ratio(f"ours_{key}", f"monai_{key}") for key in KEYS}
    ratios["all five: compare_masks / MONAI's five calls"] = ratio("ours_all", "monai_all")
    ratios["all five: compare_masks 1 thread / MONAI's five calls"] = ratio("ours_all_1_thread", "monai_all")
    rel_diff = {}
    for key in KEYS:
        ref = results["monai_all"]["values"][key]
        ours = (results["ours_all"]["values"][key], results[f"ours_{key}"]["values"][key])
        single_ref = results[f"monai_{key}"]["values"][key]
        rel_diff[key] = max(abs(x - y) for x in ours for y in (ref, single_ref)) / max(abs(ref), 1e-300)
    identical = all(d <= 1e-6 for d in rel_diff.values())

    print(f"\n{'contender':<22}{'median (s)':>12}{'peak extra (MiB)':>18}")
    for name, r in results.items():
        print(f"{name:<22}{r['median_s']:>12.3f}{r['peak_extra_mib']:>18.0f}")
    print()
    for label, value in ratios.items():
        print(f"{label:<55}{value:>8.3f}x")
    print(f"\n{'metric':<14}{'ours':>22}{'MONAI':>22}{'rel. diff':>12}")
    for key in KEYS:
        print(
            f"{key:<14}{results['ours_all']['values'][key]:>22.10g}{results['monai_all']['values'][key]:>22.10g}{rel_diff[key]:>12.1e}"
        )
    print(f"\nvalues equal to MONAI (relative difference <= 1e-6): {identical}")

    record.write(
        output,
        {"results": results, "ratios": ratios, "relative_difference_to_monai": rel_diff, "identical_to_monai": identical},
    )
    print(f"results written to {output}")
    return 0 if identical else 2


if __name__ == "__main__":
    sys.exit(main())
