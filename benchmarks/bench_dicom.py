"""Benchmark: writing (and reading back) the RT Structure Set of 7 structures on a 512×512×300 CT.

Usage::

    python benchmarks/bench_dicom.py [--quick] [--repeats N]

The 7 clinical structure masks of the sample CT (OpenKBP pt_236: mandible, brainstem,
spinal_cord, parotids, esophagus, larynx; 128³ at 3.9×3.9×3 mm) are upsampled (linear
interpolation, > 0.5: smooth boundaries at the fine resolution) to a CT-size grid of 512×512×300 voxels (256×256×150 with ``--quick``), about
0.98×0.98×1.28 mm. The CT series itself is not written (its UIDs are generated): the time is
that of :func:`SegDeepLogic.rtstruct.write_rtstruct` — tracing every slice of every structure,
converting to LPS millimetres, building and writing the DICOM file — and of
:func:`~SegDeepLogic.rtstruct.read_rtstruct` rasterising it back, whose Dice with the masks is
reported as a check. Times are the best of ``--repeats`` runs. The results, with the machine, go
to ``benchmarks/results/dicom.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
RESULTS = ROOT / "benchmarks" / "results" / "dicom.json"
STRUCTURES = ("mandible", "brainstem", "spinal_cord", "parotid_left", "parotid_right", "esophagus", "larynx")


def build(shape_kji: tuple[int, int, int]):  # noqa: ANN201
    import pydicom
    from scipy import ndimage

    from SegDeepLogic import read_volume
    from SegDeepLogic.dicom_series import CTReference, new_uid
    from SegDeepLogic.volume import Volume

    ct = read_volume(SAMPLE / "ct.nii.gz")
    zoom = [n / o for n, o in zip(shape_kji, ct.array.shape, strict=True)]
    spacing = tuple(s * o / n for s, o, n in zip(ct.spacing, ct.shape_ijk, shape_kji[::-1], strict=True))
    grid = Volume(np.zeros(shape_kji, np.uint8), spacing, ct.origin, ct.direction)
    masks = {}
    for name in STRUCTURES:
        m = read_volume(SAMPLE / f"{name}.nii.gz").array > 0
        # linear interpolation then 0.5: smooth, CT-resolution boundaries (not 4-voxel staircases)
        masks[name] = grid.with_array(ndimage.zoom(m.astype(np.float32), zoom, order=1) > 0.5)
    header = pydicom.Dataset()
    header.PatientName, header.PatientID, header.SeriesNumber = "Bench^Mark", "BENCH", 1
    study, series, frame = new_uid(), new_uid(), new_uid()
    header.StudyInstanceUID = study
    reference = CTReference(
        folder=Path("."),
        series_uid=series,
        study_uid=study,
        frame_of_reference_uid=frame,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uids=[new_uid() for _ in range(shape_kji[0])],
        files=[],
        datasets=[header],
    )
    return grid, masks, reference


def machine() -> dict:
    import pydicom
    import scipy
    import skimage

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "pydicom": pydicom.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    from SegDeepLogic.dicom_common import Algorithm
    from SegDeepLogic.metrics import compare_masks
    from SegDeepLogic.rtstruct import read_rtstruct, write_rtstruct

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256×256×150 instead of 512×512×300")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = (150, 256, 256) if args.quick else (300, 512, 512)
    grid, masks, reference = build(shape)
    algorithm = Algorithm("headneck-ct", "1.0.0", "0" * 64)
    write_times, read_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rs.dcm"
        for _ in range(args.repeats):
            start = time.perf_counter()
            write_rtstruct(masks, reference, path, algorithm=algorithm, overwrite=True)
            write_times.append(time.perf_counter() - start)
        size_mb = path.stat().st_size / 1e6
        import pydicom

        ds = pydicom.dcmread(path)
        n_contours = sum(len(rc.get("ContourSequence", [])) for rc in ds.ROIContourSequence)
        n_points = sum(int(c.NumberOfContourPoints) for rc in ds.ROIContourSequence for c in rc.get("ContourSequence", []))
        for _ in range(args.repeats):
            start = time.perf_counter()
            back = read_rtstruct(path, (grid, reference))
            read_times.append(time.perf_counter() - start)
    dice = {name: round(compare_masks(back[name], masks[name]).dice, 6) for name in STRUCTURES}
    result = {
        "benchmark": "RTSTRUCT write and read-back, 7 structures",
        "grid_kji": list(shape),
        "spacing_ijk_mm": [round(s, 4) for s in grid.spacing],
        "mask_voxels": {n: int(m.array.sum()) for n, m in masks.items()},
        "write_rtstruct_s_best": round(min(write_times), 3),
        "write_rtstruct_s_all": [round(t, 3) for t in write_times],
        "read_rtstruct_s_best": round(min(read_times), 3),
        "read_rtstruct_s_all": [round(t, 3) for t in read_times],
        "file_mb": round(size_mb, 2),
        "contours": n_contours,
        "points": n_points,
        "dice_read_back": dice,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"grid {shape[::-1]} (i, j, k), {n_contours} contours, {n_points} points, {size_mb:.1f} MB")
    print(f"write_rtstruct: {min(write_times):.2f} s (best of {args.repeats})")
    print(f"read_rtstruct (rasterise back): {min(read_times):.2f} s; Dice {min(dice.values()):.4f}..{max(dice.values()):.4f}")
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
