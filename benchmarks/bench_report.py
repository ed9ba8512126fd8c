"""Benchmark the per-case report (``SegDeepLogic.report``) on a 512 x 512 x 300 CT, network excluded.

The bundled real CT (OpenKBP pt_236) and its clinical masks are resampled to 512 x 512 x 300
voxels (~0.98 x 0.98 x 1.28 mm; linear for the CT, nearest for the masks). The masks stand in
for the network's result (``segmentation=``, so the network does not run), with an uncertainty
map made from the smoothed label boundaries, and the same masks shifted by one voxel serve as
the reference segmentation. Timed:

1. ``build_report`` from in-memory volumes (every stage: threshold, comparisons, meshes,
   signed distances, pictures), the median of ``--repeats`` runs;
2. ``write_report`` (HTML rendering with embedded PNGs, JSON, atomic writes);
3. ``segdeep report`` end to end in a subprocess from files (reading the .nii.gz CT and
   segmentation included), wall time.

Usage::

    python benchmarks/bench_report.py [--quick] [--repeats N]

Results go to ``benchmarks/results/report.json`` (``benchmarks/results/quick/`` with ``--quick``)
with the machine, versions and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import RESULTS_DIR, Record  # noqa: E402

from SegDeepLogic.io import from_sitk, write_volume  # noqa: E402
from SegDeepLogic.report import build_report, write_report  # noqa: E402
from SegDeepLogic.segmentation_io import Segmentation, SegmentInfo, write_labelmap_nifti  # noqa: E402

SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
STRUCTURES = ("mandible", "parotid_left", "parotid_right", "spinal_cord", "brainstem")


def _resample(image: sitk.Image, size_ijk: tuple[int, int, int], linear: bool) -> sitk.Image:
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in size_ijk])
    f.SetOutputSpacing((extent / np.array(size_ijk)).tolist())
    f.SetOutputOrigin(image.GetOrigin())
    f.SetOutputDirection(image.GetDirection())
    f.SetInterpolator(sitk.sitkLinear if linear else sitk.sitkNearestNeighbor)
    f.SetDefaultPixelValue(-1024 if linear else 0)
    f.SetOutputPixelType(sitk.sitkInt16 if linear else sitk.sitkUInt8)
    return f.Execute(image)


def make_case(size_ijk: tuple[int, int, int]) -> tuple:
    """CT, segmentation (clinical masks), uncertainty map and shifted reference on a big grid."""
    ct_image = sitk.ReadImage(str(SAMPLE / "ct.nii.gz"))
    ct = from_sitk(_resample(ct_image, size_ijk, linear=True))
    labels = np.zeros(ct.array.shape, np.uint8)
    segments = []
    for value, name in enumerate(STRUCTURES, start=1):
        mask = sitk.ReadImage(str(SAMPLE / f"{name}.nii.gz"))
        labels[sitk.GetArrayFromImage(_resample(mask, size_ijk, linear=False)) > 0] = value
        segments.append(SegmentInfo(name, value))
    seg = Segmentation(ct.with_array(labels), segments)
    reference = Segmentation(ct.with_array(np.roll(labels, 1, axis=2)), segments)
    # uncertainty: high on the smoothed label boundaries (what a network's entropy looks like)
    smooth = ndi.gaussian_filter((labels > 0).astype(np.float32), sigma=1.5)
    uncertainty = ct.with_array((1.0 - np.abs(2.0 * smooth - 1.0)).astype(np.float32))
    return ct, seg, reference, uncertainty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 150 instead of 512 x 512 x 300, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = (256, 256, 150) if args.quick else (512, 512, 300)
    repeats = 1 if args.quick else max(1, args.repeats)

    output = RESULTS_DIR / "quick" / "report.json" if args.quick else RESULTS_DIR / "report.json"
    record = Record(
        "per-case report (build_report, write_report, segdeep report from files), network excluded",
        {"size_ijk": list(size), "repeats": repeats, "structures": list(STRUCTURES), "statistic": "median of repeats"},
    )
    t = time.perf_counter()
    ct, seg, reference, uncertainty = make_case(size)
    print(f"case {size} ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    build_times, cpu_times, stages = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            facts = build_report(ct, segmentation=seg, reference=reference, uncertainty=uncertainty)
            build_times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
            stages.append(facts.data["timings_s"])
        t = time.perf_counter()
        html, js = write_report(facts, tmp / "report.html")
        write_s = time.perf_counter() - t
        html_mb = html.stat().st_size / 2**20

        # end to end from files, in a fresh process (imports included)
        write_volume(ct, tmp / "ct.nii.gz")
        write_labelmap_nifti(seg.labelmap, list(seg.segments), tmp / "seg.nii.gz")
        write_labelmap_nifti(reference.labelmap, list(reference.segments), tmp / "ref.nii.gz")
        write_volume(uncertainty, tmp / "unc.nii.gz")
        cmd = [
            sys.executable,
            "-m",
            "SegDeepLogic.cli",
            "report",
            str(tmp / "ct.nii.gz"),
            "-o",
            str(tmp / "cli.html"),
            "--segmentation",
            str(tmp / "seg.nii.gz"),
            "--reference",
            str(tmp / "ref.nii.gz"),
            "--uncertainty",
            str(tmp / "unc.nii.gz"),
            "--no-progress",
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
        cli_s = time.perf_counter() - t
        cli_timings = json.loads((tmp / "cli.json").read_text())["timings_s"]

    best = int(np.argmin(build_times))
    result = {
        "spacing_mm": [round(s, 4) for s in ct.spacing],
        "build_report_s": {"median": statistics.median(build_times), "all": build_times},
        "build_report_cpu_s": {"median": statistics.median(cpu_times), "all": cpu_times},
        "stages_s_fastest_run": stages[best],
        "write_report_s": write_s,
        "html_mb": round(html_mb, 2),
        "cli_end_to_end_s": cli_s,
        "cli_timings_s": cli_timings,
    }
    record.write(output, result)
    s = stages[best]
    print(
        f"report on {size}: build_report median {result['build_report_s']['median']:.2f} s "
        f"(CPU {result['build_report_cpu_s']['median']:.2f} s; "
        f"threshold {s['threshold']:.2f}, comparisons {s['compare_threshold'] + s['compare_reference']:.2f}, "
        f"meshes {s['meshes']:.2f}, distances {s['deviation']:.2f}, pictures {s['figures']:.2f}), "
        f"write_report {write_s:.2f} s ({html_mb:.1f} MB HTML), segdeep report from files {cli_s:.1f} s -> {output}"
    )


if __name__ == "__main__":
    main()
