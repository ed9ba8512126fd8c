"""Benchmark: mask -> smoothed watertight mesh (``mask_to_mesh``) vs the VTK chain Slicer uses.

Usage::

    python benchmarks/bench_mesh.py            # 512 x 512 x 300 masks, 5 repeats
    python benchmarks/bench_mesh.py --quick    # 256 x 256 x 150 masks, 3 repeats

Two masks at CT size:

* **bone**: the sample head-and-neck CT (OpenKBP patient 236, 128³ at 3.9 x 3.9 x 3 mm,
  direction diag(1, 1, -1)) upsampled linearly to the target grid and thresholded at 226 HU
  (Slicer's "Bone" preset) -- a realistic bone mask with its real geometry;
* **sphere**: an analytic sphere (radius 80 mm) on a shifted, anisotropic grid
  (0.7 x 0.7 x 1.0 mm), where accuracy is measured against the true surface: mean and max
  ``| |p - c| - r |`` over the vertices (mm) and the enclosed-volume error against 4/3 pi r³.

The reference is Slicer's closed-surface conversion chain on the same mask, in the same
process, given the same work as ours: the mask cropped to its bounding box (as
``mask_to_mesh`` does first; the crop is timed on both sides), then ``vtkImageConstantPad``
(1 voxel) -> ``vtkDiscreteFlyingEdges3D`` ->
``vtkWindowedSincPolyDataFilter`` (smoothing factor 0.5: 20 iterations, pass band 0.01,
NormalizeCoordinates on, as Slicer) -> ``vtkTransformPolyDataFilter`` (IJK -> LPS mm). Ours is
``mask_to_mesh(mask)`` with its defaults (same smoothing, plus vertex normals and the conversion
to numpy arrays). Both are warmed up once, then runs alternate (order reversed every other
round); medians are reported. The print-readiness
report, the deviation measurement and the STL write are timed separately, and so is decimation
to a quarter of the triangles (``decimate_mesh``, topology preserving, against
``vtkQuadricDecimation``; topology and, for the sphere, accuracy are compared). Results, with the
machine, versions and load, go to ``benchmarks/results/mesh.json``
(``benchmarks/results/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import vtk
from scipy import ndimage
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkSMPTools
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkQuadricDecimation, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D, vtkTransformPolyDataFilter
from vtkmodules.vtkImagingCore import vtkImageConstantPad

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _machine import RESULTS_DIR, Record  # noqa: E402

from SegDeepLogic import Volume, read_volume  # noqa: E402
from SegDeepLogic.mesh import Mesh, _bounding_box, decimate_mesh, mask_to_mesh, mesh_to_vtk, smoothing_passband  # noqa: E402
from SegDeepLogic.mesh_io import write_mesh  # noqa: E402
from SegDeepLogic.mesh_report import enclosed_volume_mm3, mesh_report, mesh_topology, surface_deviation_mm  # noqa: E402

SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
SMOOTHING_FACTOR = 0.5
BONE_HU = 226.0
SPHERE_RADIUS_MM = 80.0
DECIMATION = 0.75


# --- masks ----------------------------------------------------------------------------------
def bone_mask(size_ijk: tuple[int, int, int]) -> Volume:
    """The sample CT upsampled (linear) to ``size_ijk`` over the same extent, >= 226 HU."""
    ct = read_volume(SAMPLE_CT)
    shape_kji = size_ijk[::-1]
    zoom = [n / o for n, o in zip(shape_kji, ct.array.shape, strict=True)]
    hu = ndimage.zoom(ct.array.astype(np.float32), zoom, order=1, output=np.float32)
    # keep the physical extent: voxel centres of the first/last voxel stay where they were
    spacing = tuple(s * (o - 1) / (n - 1) for s, o, n in zip(ct.spacing, ct.shape_ijk, size_ijk, strict=True))
    return Volume(hu >= BONE_HU, spacing, ct.origin, ct.direction)


def sphere_mask(size_ijk: tuple[int, int, int]) -> tuple[Volume, np.ndarray]:
    """An analytic sphere (voxel centres within the radius) on a shifted anisotropic grid."""
    spacing = (0.7, 0.7, 1.0) if size_ijk[0] >= 512 else (1.4, 1.4, 2.0)
    origin = (-120.0, -95.0, 40.0)
    mask = Volume(np.zeros(size_ijk[::-1], dtype=bool), spacing, origin)
    centre_ijk = (np.array(size_ijk) - 1) / 2 + [0.3, -0.2, 0.4]  # off the voxel lattice
    centre = mask.index_to_physical(centre_ijk)
    d2 = [((np.arange(n) - c) * s) ** 2 for n, c, s in zip(size_ijk, centre_ijk, spacing, strict=True)]
    plane = d2[0][None, :] + d2[1][:, None]
    for k in range(size_ijk[2]):  # slab by slab: no full-size float temporary
        mask.array[k] = plane + d2[2][k] <= SPHERE_RADIUS_MM**2
    return mask, centre


# --- the reference chain (Slicer's vtkBinaryLabelmapToClosedSurfaceConversionRule) -------------
def vtk_chain(mask: Volume, smoothing_factor: float = SMOOTHING_FACTOR) -> vtkPolyData:
    """Slicer's chain on the mask's bounding box (the same crop ``mask_to_mesh`` makes), in LPS mm."""
    box = _bounding_box(mask.array)
    assert box is not None
    array = np.ascontiguousarray(mask.array[box]).view(np.uint8)
    image = vtkImageData()
    image.SetDimensions(array.shape[::-1])
    image.SetExtent(box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1, box[0].start, box[0].stop - 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=False))
    pad = vtkImageConstantPad()
    pad.SetInputData(image)
    pad.SetOutputWholeExtent(box[2].start - 1, box[2].stop, box[1].start - 1, box[1].stop, box[0].start - 1, box[0].stop)
    pad.SetConstant(0)
    surface = vtkDiscreteFlyingEdges3D()
    surface.SetInputConnection(pad.GetOutputPort())
    surface.SetValue(0, 1)
    surface.ComputeGradientsOff()
    surface.ComputeNormalsOff()
    surface.ComputeScalarsOff()
    smoother = vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(surface.GetOutputPort())
    smoother.SetNumberOfIterations(20)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.SetFeatureAngle(120.0)
    smoother.SetPassBand(smoothing_passband(smoothing_factor))
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    transform = vtkTransform()
    transform.SetMatrix(mask.affine("LPS").ravel().tolist())
    to_lps = vtkTransformPolyDataFilter()
    to_lps.SetInputConnection(smoother.GetOutputPort())
    to_lps.SetTransform(transform)
    to_lps.Update()
    return to_lps.GetOutput()


def vtk_quadric(mesh: Mesh, reduction: float) -> Mesh:
    decimator = vtkQuadricDecimation()
    decimator.SetInputData(mesh_to_vtk(mesh))
    decimator.SetTargetReduction(reduction)
    decimator.VolumePreservationOn()
    decimator.Update()
    return as_mesh(decimator.GetOutput())


def as_mesh(polydata: vtkPolyData) -> Mesh:
    v = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    f = numpy_support.vtk_to_numpy(polydata.GetPolys().GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    return Mesh(v, f)


# --- measurement --------------------------------------------------------------------------
def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up: imports, page faults of the first allocations
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(t), "min_s": min(t), "repeats": repeats} for k, t in times.items()}


def once(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def sphere_accuracy(mesh: Mesh, centre: np.ndarray) -> dict[str, float]:
    err = np.abs(np.linalg.norm(mesh.vertices - centre, axis=1) - SPHERE_RADIUS_MM)
    truth = 4 / 3 * math.pi * SPHERE_RADIUS_MM**3
    volume = enclosed_volume_mm3(mesh)
    return {
        "mean_abs_distance_to_true_sphere_mm": float(err.mean()),
        "max_abs_distance_to_true_sphere_mm": float(err.max()),
        "volume_ml": volume / 1000,
        "true_volume_ml": truth / 1000,
        "volume_error_percent": 100 * (abs(volume) - truth) / truth,
    }


def mesh_summary(mesh: Mesh, mask: Volume) -> dict[str, object]:
    topology = mesh_topology(mesh.faces, mesh.n_vertices)
    volume = enclosed_volume_mm3(mesh)
    mask_ml = np.count_nonzero(mask.array) * mask.voxel_volume_mm3 / 1000
    return {
        "triangles": mesh.n_faces,
        "shells": topology.shell_count,
        "watertight": topology.watertight,
        "manifold": topology.manifold,
        "outward_normals": volume > 0,
        "volume_ml": volume / 1000,
        "mask_volume_ml": mask_ml,
        "volume_difference_percent": 100 * (abs(volume) / 1000 - mask_ml) / mask_ml,
    }


def run_case(name: str, mask: Volume, repeats: int, centre: np.ndarray | None) -> dict[str, object]:
    a = mask.array
    print(f"\n[{name}] mask {mask.shape_ijk} voxels (i, j, k), {a.mean() * 100:.2f}% set, spacing {mask.spacing} mm")
    timing = alternate(
        {
            "vtk_chain": lambda: vtk_chain(mask),
            "ours": lambda: mask_to_mesh(mask),
            "ours_no_normals": lambda: mask_to_mesh(mask, compute_normals=False),
        },
        repeats,
    )
    ours = mask_to_mesh(mask)
    reference = as_mesh(vtk_chain(mask))
    ratio = timing["ours"]["median_s"] / timing["vtk_chain"]["median_s"]
    same_vertices = ours.n_vertices == reference.n_vertices
    max_vertex_difference = float(np.abs(ours.vertices - reference.vertices).max()) if same_vertices else None
    result: dict[str, object] = {
        "timing": timing,
        "ratio_ours_over_vtk_chain": ratio,
        "ratio_ours_no_normals_over_vtk_chain": timing["ours_no_normals"]["median_s"] / timing["vtk_chain"]["median_s"],
        "ours": mesh_summary(ours, mask),
        "vtk_chain": mesh_summary(reference, mask),
        "max_vertex_difference_mm": max_vertex_difference,
    }
    for label in ("vtk_chain", "ours", "ours_no_normals"):
        t = timing[label]
        print(f"  {label:<16} median {t['median_s']:.3f} s   min {t['min_s']:.3f} s")
    print(f"  ratio ours / VTK chain: {ratio:.2f} (no normals: {result['ratio_ours_no_normals_over_vtk_chain']:.2f})")
    print(f"  identical geometry: max vertex difference {max_vertex_difference} mm")
    for label in ("ours", "vtk_chain"):
        s = result[label]
        print(
            f"  {label:<10} {s['triangles']} triangles, watertight {s['watertight']}, outward {s['outward_normals']}, "
            f"volume {s['volume_ml']:.2f} mL vs mask {s['mask_volume_ml']:.2f} mL ({s['volume_difference_percent']:+.2f}%)"
        )
    if centre is not None:
        result["accuracy"] = {"ours": sphere_accuracy(ours, centre), "vtk_chain": sphere_accuracy(reference, centre)}
        for label, acc in result["accuracy"].items():
            print(
                f"  {label:<10} |distance to true sphere| mean {acc['mean_abs_distance_to_true_sphere_mm']:.4f} mm, "
                f"max {acc['max_abs_distance_to_true_sphere_mm']:.4f} mm; volume error {acc['volume_error_percent']:+.3f}%"
            )
    # decimation to a quarter: ours (topology preserving) vs vtkQuadricDecimation, timed once
    t_ours, small = once(lambda: decimate_mesh(ours, DECIMATION))
    t_vtk, small_vtk = once(lambda: vtk_quadric(ours, DECIMATION))
    result["decimation"] = {"reduction": DECIMATION}
    for label, t, m in (("ours", t_ours, small), ("vtkQuadricDecimation", t_vtk, small_vtk)):
        topo = mesh_topology(m.faces, m.n_vertices)
        entry = {
            "time_s": t,
            "triangles": m.n_faces,
            "watertight": topo.watertight,
            "manifold": topo.manifold,
            "shells": topo.shell_count,
            "volume_change_percent": 100 * (enclosed_volume_mm3(m) / enclosed_volume_mm3(ours) - 1),
        }
        if centre is not None:
            entry["accuracy"] = sphere_accuracy(m, centre)
        result["decimation"][label] = entry  # type: ignore[index]
        extra = ""
        if centre is not None:
            acc = entry["accuracy"]
            extra = f", |distance to true sphere| mean {acc['mean_abs_distance_to_true_sphere_mm']:.4f} mm max {acc['max_abs_distance_to_true_sphere_mm']:.4f} mm"
        print(
            f"  decimate {DECIMATION:.0%} {label:<21} {t:.2f} s, {m.n_faces} triangles, watertight {topo.watertight}, "
            f"manifold {topo.manifold}, shells {topo.shell_count} (of {result['ours']['shells']}), "
            f"volume {entry['volume_change_percent']:+.2f}%{extra}"
        )
    # the rest of an export, timed once
    mesh, raw = mask_to_mesh(mask, return_raw=True)
    t_dev, deviation = once(lambda: surface_deviation_mm(mesh, raw))
    t_report, report = once(lambda: mesh_report(mesh, mask=mask, deviation_mm=deviation))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.stl"
        t_write, _ = once(lambda: write_mesh(mesh, out, overwrite=True))
    result["export_steps_s"] = {"surface_deviation": t_dev, "report": t_report, "write_stl": t_write}
    result["report"] = report.to_dict()
    print(f"  export extras: deviation {t_dev:.2f} s, report {t_report:.2f} s, STL write {t_write:.2f} s")
    print(
        f"  report: print_ready {report.print_ready}, shells {report.shell_count}, "
        f"deviation max {report.deviation_max_mm:.3f} mm mean {report.deviation_mean_mm:.3f} mm"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 150 masks, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default 5, 3 with --quick)")
    parser.add_argument("--output", type=Path, default=None, help="JSON output (default benchmarks/results/mesh.json)")
    args = parser.parse_args(argv)
    size = (256, 256, 150) if args.quick else (512, 512, 300)
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"VTK {vtk.__version__}, SMP backend {vtkSMPTools.GetBackend()}, {os.cpu_count()} CPUs")

    output = args.output or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR) / "mesh.json"
    record = Record(
        "mask -> smoothed watertight mesh: mask_to_mesh vs Slicer's VTK chain, both on the mask's bounding box",
        {
            "size_ijk": list(size),
            "smoothing_factor": SMOOTHING_FACTOR,
            "smoothing": "vtkWindowedSincPolyDataFilter, 20 iterations, pass band "
            f"{smoothing_passband(SMOOTHING_FACTOR)}, NormalizeCoordinates on, both sides",
            "crop": "bounding box of the mask + 1 voxel of padding, both sides (timed)",
            "vtk_smp_backend": vtkSMPTools.GetBackend(),
            "repeats": repeats,
            "statistic": "median of alternating runs after one warm-up run each; decimation and export steps timed once",
            "decimation_reduction": DECIMATION,
        },
    )
    results: dict[str, object] = {"cases": {}}
    bone = bone_mask(size)
    results["cases"]["bone_ct_226hu"] = run_case("bone_ct_226hu", bone, repeats, None)  # type: ignore[index]
    del bone
    sphere, centre = sphere_mask(size)
    results["cases"]["sphere"] = run_case("sphere", sphere, repeats, centre)  # type: ignore[index]

    record.write(output, results)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
