"""Benchmark: ``compare_masks`` (all metrics at once) vs MONAI computing the same metrics.

Usage::

    python benchmarks/bench_metrics.py [--quick] [--repeats N]

Two realistic, slightly different bone masks are built from the sample head-and-neck CT
(OpenKBP patient 236, 128³ at 3.9×3.9×3 mm) upsampled linearly to a CT-size grid
(512×512×300 by default, 256×256×150 with ``--quick``):

* A (test) = upsampled CT > 250 HU,
* B (reference) = upsampled CT smoothed at its native resolution (Gaussian, σ = 0.6 voxel) > 250 HU.

Each contender runs in its own subprocess (same data, loaded from .npy files) so that its
peak resident memory can be measured: ``peak_extra_mib`` is the peak RSS minus the RSS just
before the first call (masks loaded, libraries imported). MONAI computes Dice, HD, HD95,
ASSD and surface Dice with one call each, as a user would (``compute_dice``,
``compute_hausdorff_distance`` twice, ``compute_average_surface_distance(symmetric=True)``,
``compute_surface_dice``). Times are the best of ``--repeats`` runs. The table is printed and
the results (with the machine description) are written to ``benchmarks/results/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
RESULTS = ROOT / "benchmarks" / "results" / "metrics.json"
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


def run_contender(name: str, data_dir: Path, repeats: int) -> dict:
    """Runs in a child process: time one contender on the saved masks, return a JSON-able dict."""
    a = np.load(data_dir / "a.npy")
    b = np.load(data_dir / "b.npy")
    spacing = tuple(float(s) for s in np.load(data_dir / "spacing.npy"))
    info: dict = {}
    if name.startswith("ours"):
        from SegDeepLogic.metrics import compare_masks

        workers = 1 if name == "ours_1_thread" else -1

        def compute() -> dict:
            r = compare_masks(a, b, spacing_mm=spacing, tolerance_mm=TOLERANCE_MM, percentile=PERCENTILE, workers=workers)
            return {k: getattr(r, k) for k in KEYS}

        info["workers"] = workers
    else:
        import torch
        from monai.metrics import (
            compute_average_surface_distance,
            compute_dice,
            compute_hausdorff_distance,
            compute_surface_dice,
        )

        warnings.simplefilter("ignore")  # MONAI's deprecation warnings
        sp = list(spacing)

        def compute() -> dict:
            ya, yb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
            return {
                "dice": compute_dice(ya, yb, include_background=True).item(),
                "hd_mm": compute_hausdorff_distance(ya, yb, include_background=True, spacing=sp).item(),
                "hd95_mm": compute_hausdorff_distance(ya, yb, include_background=True, spacing=sp, percentile=PERCENTILE).item(),
                "assd_mm": compute_average_surface_distance(ya, yb, include_background=True, symmetric=True, spacing=sp).item(),
                "surface_dice": compute_surface_dice(ya, yb, [TOLERANCE_MM], include_background=True, spacing=sp).item(),
            }

        info["torch_threads"] = torch.get_num_threads()
    rss_before = _rss_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        values = compute()
        times.append(time.perf_counter() - t0)
    return {
        "name": name,
        "seconds_best": min(times),
        "seconds_all": times,
        "values": values,
        "peak_extra_mib": max(0.0, _peak_rss_mib() - rss_before),
        **info,
    }


def machine() -> dict:
    import scipy

    out = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    try:
        import monai
        import torch

        out.update(torch=torch.__version__, monai=monai.__version__)
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256×256×150 grid instead of 512×512×300")
    parser.add_argument("--repeats", type=int, default=None, help="runs per contender, best kept (default 3, 2 full)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 2)

    if args.child:
        print(json.dumps(run_contender(args.child[0], Path(args.child[1]), repeats)))
        return 0

    shape = (150, 256, 256) if args.quick else (300, 512, 512)
    t0 = time.perf_counter()
    a, b, spacing = build_masks(shape)
    print(
        f"grid {shape[::-1]} voxels (i, j, k), spacing {tuple(round(s, 4) for s in spacing[::-1])} mm (i, j, k); "
        f"|A| = {int(a.sum())}, |B| = {int(b.sum())} voxels; built in {time.perf_counter() - t0:.1f} s"
    )
    contenders = ["ours", "ours_1_thread", "monai"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "a.npy", a)
        np.save(Path(tmp) / "b.npy", b)
        np.save(Path(tmp) / "spacing.npy", np.array(spacing))
        del a, b
        for name in contenders:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, tmp, "--repeats", str(repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name} failed:\n{proc.stderr}", file=sys.stderr)
                return 1
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    monai_values = results["monai"]["values"]
    rel_diff = {}
    for key in KEYS:
        ours, ref = results["ours"]["values"][key], monai_values[key]
        rel_diff[key] = abs(ours - ref) / max(abs(ref), 1e-300)
    identical = all(d <= 1e-6 for d in rel_diff.values())

    print(f"\n{'contender':<16}{'time (s)':>10}{'vs MONAI':>10}{'peak extra (MiB)':>18}")
    for name in contenders:
        r = results[name]
        ratio = r["seconds_best"] / results["monai"]["seconds_best"]
        print(f"{name:<16}{r['seconds_best']:>10.2f}{ratio:>9.3f}x{r['peak_extra_mib']:>18.0f}")
    print(f"\n{'metric':<14}{'ours':>22}{'MONAI':>22}{'rel. diff':>12}")
    for key in KEYS:
        print(f"{key:<14}{results['ours']['values'][key]:>22.10g}{monai_values[key]:>22.10g}{rel_diff[key]:>12.1e}")
    print(f"\nvalues identical to MONAI (relative difference <= 1e-6): {identical}")

    report = {
        "benchmark": "compare_masks vs MONAI (dice, HD, HD95, ASSD, surface Dice)",
        "grid_kji": list(shape),
        "spacing_kji_mm": list(spacing),
        "tolerance_mm": TOLERANCE_MM,
        "percentile": PERCENTILE,
        "repeats": repeats,
        "machine": machine(),
        "results": results,
        "ratio_ours_to_monai": results["ours"]["seconds_best"] / results["monai"]["seconds_best"],
        "ratio_ours_1_thread_to_monai": results["ours_1_thread"]["seconds_best"] / results["monai"]["seconds_best"],
        "relative_difference_to_monai": rel_diff,
        "identical_to_monai": identical,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"results written to {args.output}")
    return 0 if identical else 2


if __name__ == "__main__":
    sys.exit(main())
