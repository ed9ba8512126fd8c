"""Benchmark: HU threshold and clean-up against plain numpy on a CT-size volume.

Usage::

    python benchmarks/bench_threshold.py            # 512 x 512 x 300 int16, 7 repeats
    python benchmarks/bench_threshold.py --quick    # 256 x 256 x 150 int16, 3 repeats

The volume is the sample head-and-neck CT (128³ at 3.9 x 3.9 x 3 mm) upsampled by
nearest-neighbour index mapping to the target size (so its anatomy, bone fraction and component
structure are real), stored as int16 like a DICOM CT. Every timing is taken in the same run,
against ``(ct >= lo) & (ct <= hi)`` on the same array. Results go to
``benchmarks/results/threshold.json`` with the machine, versions and load
(``benchmarks/results/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import RESULTS_DIR, Record  # noqa: E402

from SegDeepLogic import Volume, read_volume  # noqa: E402
from SegDeepLogic.threshold import PRESETS, auto_threshold_hu, threshold_hu, threshold_segment  # noqa: E402

SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"


def ct_of_size(size_ijk: tuple[int, int, int]) -> Volume:
    """The sample CT resampled (nearest neighbour) to ``size_ijk`` voxels over the same extent."""
    ct = read_volume(SAMPLE_CT)
    src = ct.array
    index = [
        np.minimum((np.arange(n) + 0.5) * src.shape[a] / n, src.shape[a] - 1).astype(np.intp)
        for a, n in enumerate(size_ijk[::-1])
    ]
    array = np.ascontiguousarray(src[np.ix_(*index)].astype(np.int16))
    spacing = tuple(s * n0 / n for s, n0, n in zip(ct.spacing, ct.shape_ijk, size_ijk, strict=True))
    return Volume(array, spacing, ct.origin, ct.direction)


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up: page faults of the first allocation, imports, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 150 volume, 3 repeats")
    parser.add_argument("--output", type=Path, default=None, help="JSON output (default benchmarks/results/threshold.json)")
    args = parser.parse_args(argv)
    output = args.output or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR) / "threshold.json"

    size = (256, 256, 150) if args.quick else (512, 512, 300)
    repeats = 3 if args.quick else 7
    record = Record(
        "threshold_hu and threshold_segment vs plain numpy on the same int16 CT-size array",
        {"size_ijk": list(size), "repeats": repeats, "statistic": "median after one warm-up call, same array"},
    )
    ct = ct_of_size(size)
    a = ct.array
    lo, hi = PRESETS["bone"].lower_hu, PRESETS["bone"].upper_hu
    lo_i, hi_i = int(lo), int(hi)
    print(
        f"volume {ct.shape_ijk} voxels (i, j, k), {a.dtype}, {a.nbytes / 2**20:.0f} MiB, spacing {tuple(round(s, 3) for s in ct.spacing)} mm"
    )
    assert np.array_equal(threshold_hu(a, lo, hi), (a >= lo_i) & (a <= hi_i))

    cases: dict[str, Callable[[], object]] = {
        "numpy (ct >= lo) & (ct <= hi), int bounds": lambda: (a >= lo_i) & (a <= hi_i),
        "numpy (ct >= lo) & (ct <= hi), float bounds": lambda: (a >= lo) & (a <= hi),
        "threshold_hu": lambda: threshold_hu(a, lo, hi),
        "threshold_segment(preset='bone')": lambda: threshold_segment(ct, preset="bone"),
        "  + min_island_mm3=100": lambda: threshold_segment(ct, preset="bone", min_island_mm3=100.0),
        "  + keep_largest": lambda: threshold_segment(ct, preset="bone", keep_largest=True),
        "  + fill_holes": lambda: threshold_segment(ct, preset="bone", fill_holes=True),
        "  + all three clean-ups": lambda: threshold_segment(
            ct, preset="bone", min_island_mm3=100.0, keep_largest=True, fill_holes=True
        ),
        "auto_threshold_hu('otsu')": lambda: auto_threshold_hu(ct, "otsu"),
    }
    results = {}
    baseline = None
    for name, fn in cases.items():
        r = timed(fn, repeats)
        baseline = baseline or r["median_s"]
        r["ratio_to_numpy"] = r["median_s"] / baseline
        results[name] = r
        print(f"{name:48s} {1000 * r['median_s']:9.1f} ms (min {1000 * r['min_s']:8.1f})  x{r['ratio_to_numpy']:6.2f} numpy")
    ratio = results["threshold_hu"]["ratio_to_numpy"]
    print(f"\nplain threshold / numpy = {ratio:.2f} (target <= 1.2)")

    record.write(
        output,
        {
            "volume": {
                "size_ijk": list(ct.shape_ijk),
                "dtype": str(a.dtype),
                "spacing_mm": list(ct.spacing),
                "source": "sample CT, nearest-neighbour upsampled",
            },
            "hu_range": [lo, hi],
            "quick": args.quick,
            "threshold_hu_ratio_to_numpy": ratio,
            "results": results,
        },
    )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
