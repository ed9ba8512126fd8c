"""The end-to-end scenario of the SegDeep module, shared by ``SegDeepTest`` (inside Slicer) and pytest.

:func:`run_scenario` segments a CT volume node in the worker process (with the uncertainty map),
compares a bone-like segment with the bone threshold (226-3071 HU) and exports it as an STL, and
checks on the way:

* the segment names and colours are the model card's;
* every segment's labelmap sits exactly on the volume's voxel grid (same IJK-to-RAS matrix and
  extent) and the uncertainty volume has the volume's geometry and values in [0, 1];
* the comparison table holds exactly what the engine's ``compare_masks`` gives for the segment as
  Slicer itself exports it (``slicer.util.arrayFromSegmentBinaryLabelmap``) and the threshold
  inside the segment grown by 10 mm (the default region);
* the STL is watertight, in LPS millimetres (``SPACE=LPS`` header), and its bounds are those of
  the segment's voxels within one voxel diagonal.

Use :func:`apply_test_geometry` first so the volume has a non-trivial (rotated, shifted) geometry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from . import mrml
from .logic import ENGINE_ROOT, UNCERTAINTY_REFERENCE, SegDeepLogicBase

MODULE_DIR = Path(__file__).resolve().parents[1]
SAMPLE_CT = Path("Resources") / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
TEST_MODEL = Path("Testing") / "Data" / "test_model"
COMPARED_KEYS = (
    "dice",
    "jaccard",
    "sensitivity",
    "precision",
    "hd_mm",
    "hd95_mm",
    "assd_mm",
    "surface_dice",
    "volume_a_ml",
    "volume_b_ml",
)


def _find(relative: Path) -> Path:
    for root in (ENGINE_ROOT, MODULE_DIR, MODULE_DIR.parent):
        if (root / relative).exists():
            return root / relative
    raise FileNotFoundError(f"cannot find {relative} next to the module or the engine")


def sample_ct_path() -> Path:
    """The bundled head-and-neck CT (OpenKBP pt_236, 128³ voxels)."""
    return _find(SAMPLE_CT)


def small_model_path() -> Path:
    """The tiny test model package (``Testing/Data/test_model``)."""
    return _find(TEST_MODEL)


def default_test_model() -> Path:
    """The first bundled model package, else the tiny test model."""
    bundled = SegDeepLogicBase.bundledModelPaths()
    return bundled[0] if bundled else small_model_path()


def scenario_transform() -> np.ndarray:
    """A rigid RAS transform (20° about an oblique axis, then a shift) that makes a geometry non-trivial."""
    axis = np.array([1.0, -2.0, 3.0]) / math.sqrt(14.0)
    angle = math.radians(20.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = (12.5, -30.25, 7.0)
    return transform


def apply_test_geometry(volumeNode: Any) -> np.ndarray:
    """Rotate and shift a volume node's IJK-to-RAS matrix by :func:`scenario_transform`; returns the new matrix."""
    matrix = scenario_transform() @ mrml.ijk_to_ras_matrix(volumeNode)
    volumeNode.SetIJKToRASMatrix(mrml.vtk_matrix(matrix))
    return matrix


def table_values(tableNode: Any) -> dict[str, float]:
    """``{Key: Value}`` of a comparison table."""
    table = tableNode.GetTable()
    keys, values = table.GetColumnByName("Key"), table.GetColumnByName("Value")
    return {keys.GetValue(r): values.GetValue(r) for r in range(table.GetNumberOfRows())}


def _same(a: float | None, b: float | None) -> bool:
    a = math.nan if a is None else float(a)
    b = math.nan if b is None else float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


def stl_bounds(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (min, max) of an STL file's points, read with VTK's own reader."""
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    b = reader.GetOutput().GetBounds()
    return np.array(b[0::2]), np.array(b[1::2])


def mask_bounds_lps(mask: np.ndarray, ijkToRas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounds of the centres of a ``[k, j, i]`` mask's voxels, from an IJK-to-RAS matrix."""
    ijk = np.argwhere(mask)[:, ::-1].astype(float)
    ras = ijk @ ijkToRas[:3, :3].T + ijkToRas[:3, 3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    return lps.min(axis=0), lps.max(axis=0)


def run_scenario(
    logic: Any,
    volumeNode: Any,
    folder: str | os.PathLike,
    model: str | os.PathLike | None = None,
    numThreads: int | None = None,
) -> dict[str, Any]:
    """Segment, compare with the bone threshold and export an STL, checking each result (AssertionError).

    ``model`` defaults to :func:`default_test_model`; ``numThreads`` limits the worker's CPU threads.
    Returns the nodes, the table values, the engine's expected values, the export reports, the
    segment's mask as Slicer exports it, the progress received and the out-of-distribution check.
    """
    from SegDeepLogic.metrics import compare_masks
    from SegDeepLogic.threshold import grow_mask, threshold_segment

    model = Path(model) if model else default_test_model()
    info = logic.modelInfo(model)
    ijk_to_ras = mrml.ijk_to_ras_matrix(volumeNode)
    dims = volumeNode.GetImageData().GetDimensions()

    progress: list[tuple[float, str]] = []
    seg = logic.segment(
        volumeNode, model=str(model), uncertainty=True, numThreads=numThreads, progress=lambda f, s: progress.append((f, s))
    )

    # Names, colours and geometry of the segments.
    names = mrml.segment_names(seg)
    assert names == info.label_names, f"segment names {names} differ from the model card's {info.label_names}"
    segmentation = seg.GetSegmentation()
    for label in info.labels:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(label["name"]))
        assert np.allclose(segment.GetColor(), label["color"], atol=1e-6), f"colour of {label['name']!r}"
        assert segment.GetLabelValue() == label["value"], f"label value of {label['name']!r}"
        image = segment.GetRepresentation(mrml.BINARY_LABELMAP)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        assert np.allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras, atol=1e-9), "labelmap not on the volume's grid"
        assert tuple(image.GetExtent()) == (0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1), "labelmap extent"
    check = logic.plausibility(seg)
    assert check is not None and check["verdict"] in ("ok", "caution", "mismatch", "unchecked"), (
        f"no out-of-distribution check on the segmentation node: {check}"
    )
    assert check == logic.lastSegmentation["plausibility"], "the node's check is not the one the worker reported"
    assert progress and progress[-1][0] == 1.0, f"progress did not reach 100%: {progress[-3:]}"
    assert all(b[0] >= a[0] for a, b in zip(progress, progress[1:])), "progress went backwards"

    uncertainty = seg.GetNodeReference(UNCERTAINTY_REFERENCE)
    assert uncertainty is not None, "no uncertainty volume"
    assert np.allclose(mrml.ijk_to_ras_matrix(uncertainty), ijk_to_ras, atol=1e-9), "uncertainty volume geometry"
    values = slicer.util.arrayFromVolume(uncertainty)
    assert values.shape == (dims[2], dims[1], dims[0]) and values.min() >= 0.0 and values.max() <= 1.0, "uncertainty values"

    # Comparison with the bone threshold, against the engine on Slicer's own export of the segment.
    segment_name = logic.defaultSegmentName(seg)
    table = logic.compareWithThreshold(seg, volumeNode, segmentName=segment_name, preset="bone")
    segment_id = segmentation.GetSegmentIdBySegmentName(segment_name)
    network = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, volumeNode) > 0
    ct = mrml.volume_from_node(volumeNode)
    # the threshold inside the segment grown by the panel's default region margin (10 mm)
    region = grow_mask(ct.with_array(network), 10.0).array
    expected = compare_masks(
        ct.with_array(network), ct.with_array(threshold_segment(ct, preset="bone").mask.array & region)
    ).to_dict()
    rows = table_values(table)
    for key in COMPARED_KEYS:
        assert _same(rows[key], expected[key]), f"table {key} = {rows[key]} but compare_masks gives {expected[key]}"
    assert rows["lower_hu"] == 226.0 and rows["upper_hu"] == 3071.0, "threshold bounds in the table"

    # Export for printing: LPS millimetres, watertight, extent of the segment's voxels.
    reports = logic.exportForPrinting(seg, folder, format="STL", segmentNames=[segment_name], overwrite=True)
    assert len(reports) == 1, reports
    report = reports[0]
    path = Path(report["path"])
    assert path.is_file() and path.name == f"{seg.GetName()}_{segment_name}.stl", path
    assert b"SPACE=LPS" in path.read_bytes()[:80], "the STL header does not say LPS"
    assert report["watertight"] and report["coordinate_system"] == "LPS", report
    lo, hi = stl_bounds(path)
    mask_lo, mask_hi = mask_bounds_lps(network, ijk_to_ras)
    diagonal = float(np.linalg.norm(volumeNode.GetSpacing()))
    assert np.all(np.abs(lo - mask_lo) <= diagonal) and np.all(np.abs(hi - mask_hi) <= diagonal), (
        f"STL bounds {lo}..{hi} are not the segment's LPS extent {mask_lo}..{mask_hi} (tolerance {diagonal:.2f} mm)"
    )
    return {
        "segmentation": seg,
        "table": table,
        "rows": rows,
        "expected": expected,
        "reports": reports,
        "segment_name": segment_name,
        "network_mask": network,
        "ijk_to_ras": ijk_to_ras,
        "progress": progress,
        "model": model,
        "plausibility": check,
    }


def skip_message(missing: Sequence[str]) -> str:
    """Why ``SegDeepTest`` skips in Slicer's testing mode when Python packages are missing (none is installed there).

    Examples
    --------
    >>> print(skip_message(["torch>=2.2"]))
    SegDeep self-test skipped: torch>=2.2 not installed (packages are never installed in testing mode; install them with slicer.util.pip_install or the PyTorch extension to run it)
    """
    return (
        f"SegDeep self-test skipped: {', '.join(missing)} not installed (packages are never installed in testing mode; "
        "install them with slicer.util.pip_install or the PyTorch extension to run it)"
    )
