"""The SegDeep Slicer module's logic against real MRML (``slicer-core``) and the real worker process.

The sample CT is read by MRML's own storage node and given a rotated and shifted IJK-to-RAS
matrix; it is segmented in the worker process (the bundled model if there is one, else the tiny
test model), compared with the bone threshold and exported as an STL. Geometry is checked against
an independent computation (SimpleITK + the same rigid transform applied in LPS), the table against
the engine's ``compare_masks``, the STL against the segment's voxels in LPS millimetres.
Cancellation and worker crashes must leave the scene exactly as it was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

import slicer  # noqa: E402
import slicer_scene  # noqa: E402

from SegDeepLogic import Volume, read_volume, write_volume  # noqa: E402
from SegDeepLogic.errors import CancelledError, MismatchError, SegDeepError  # noqa: E402
from SegDeepLogic.metrics import compare_masks, disagreement_masks  # noqa: E402
from SegDeepLogic.options import SegmentOptions  # noqa: E402
from SegDeepLogic.threshold import grow_mask, keep_largest_component, threshold_segment  # noqa: E402

slicer_scene.add_module_path()

from SegDeepLib import dependencies, mrml, selftest  # noqa: E402
from SegDeepLib import logic as liblogic  # noqa: E402
from SegDeepLib.logic import SegDeepLogicBase, SegDeepWorkerError  # noqa: E402
from SegDeepLib.process import WorkerProcess, parse_line  # noqa: E402
from SegDeepLib.worker import FAULT_ENV  # noqa: E402

# The full 128³ scenario uses the tiny test model (seconds on a CPU); the bundled model, much larger,
# runs end to end on a crop of the CT that fits one of its sliding windows (falls back to the test model).
MODEL = slicer_scene.TEST_MODEL
BUNDLED_MODEL = selftest.default_test_model()
THREADS = 1  # the CI machine has 2 cores; one worker thread is the fastest there


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def headless():
    return slicer_scene.create_scene()


@pytest.fixture(scope="module")
def logic():
    return SegDeepLogicBase()


@pytest.fixture(scope="module")
def ct_node(headless):
    node = slicer_scene.load_volume(headless.scene, slicer_scene.SAMPLE_CT, "CT")
    selftest.apply_test_geometry(node)
    return node


@pytest.fixture(scope="module")
def scenario(headless, ct_node, logic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("print")
    return selftest.run_scenario(logic, ct_node, folder, model=MODEL, numThreads=THREADS)


@pytest.fixture(scope="module")
def crop_node(headless, ct_node):
    """A 48 x 64 x 40 crop of the rotated CT (its own node, same orientation, shifted origin)."""
    array = slicer.util.arrayFromVolume(ct_node)[50:90, 30:94, 40:88].copy()
    matrix = mrml.ijk_to_ras_matrix(ct_node)
    matrix[:3, 3] = (matrix @ np.array([40.0, 30.0, 50.0, 1.0]))[:3]
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=matrix, name="CT crop")
    return node


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """Make the logic's temporary job folders land in ``tmp_path`` so leftovers can be seen."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def independent_ct() -> Volume:
    """The sample CT read with SimpleITK, moved by the scenario's rigid transform applied in LPS."""
    ct = read_volume(slicer_scene.SAMPLE_CT)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = flip @ selftest.scenario_transform() @ flip @ ct.affine("LPS")
    spacing = np.asarray(ct.spacing)
    return Volume(ct.array, tuple(spacing), tuple(affine[:3, 3]), affine[:3, :3] / spacing)


def gather_on_grid(reference: Volume, grid: Volume) -> np.ndarray:
    """``reference``'s voxels at the physical positions of ``grid``'s voxels (the grids must coincide)."""
    nk, nj, ni = grid.array.shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    index = reference.physical_to_index(grid.index_to_physical(ijk))
    rounded = np.rint(index).astype(int)
    assert np.abs(index - rounded).max() < 1e-3, "the two grids do not coincide voxel for voxel"
    assert rounded.min() >= 0 and np.all(rounded.max(axis=0) < reference.shape_ijk), "the grids cover different regions"
    return reference.array[rounded[:, 2], rounded[:, 1], rounded[:, 0]].reshape(grid.array.shape)


@pytest.fixture(scope="module")
def reference_ct(ct_node) -> Volume:
    """The independent CT on the node's voxel order (MRML's reader may flip axes that SimpleITK keeps)."""
    grid = mrml.volume_from_node(ct_node)
    return grid.with_array(gather_on_grid(independent_ct(), grid))


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def segment_tag(segment, name: str) -> str | None:
    """A segment's tag value (None if it has none)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else None


def segment_array(segmentation_node, name: str, volume_node) -> np.ndarray:
    """A segment exported by Slicer's own code (``slicer.util``) on a volume's grid."""
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node) > 0


# --------------------------------------------------------------------------------------------
# Geometry conversions
# --------------------------------------------------------------------------------------------
def test_volume_from_node_is_the_independent_geometry(ct_node):
    """Every voxel of the converted volume sits, through its LPS geometry, where SimpleITK has the same value."""
    volume = mrml.volume_from_node(ct_node)
    reference = independent_ct()
    np.testing.assert_array_equal(volume.array, gather_on_grid(reference, volume))
    lo, hi = volume.bounds()
    ref_lo, ref_hi = reference.bounds()
    np.testing.assert_allclose(lo, ref_lo, atol=1e-4)
    np.testing.assert_allclose(hi, ref_hi, atol=1e-4)
    assert not np.allclose(np.abs(volume.direction), np.eye(3), atol=0.1), "the test geometry must be oblique"
    matrix = mrml.ijk_to_ras_matrix(ct_node)
    ijk = np.random.default_rng(0).integers(0, 128, size=(20, 3)).astype(float)
    np.testing.assert_allclose(volume.index_to_physical(ijk, space="RAS"), ijk @ matrix[:3, :3].T + matrix[:3, 3], atol=1e-9)
    assert not volume.array.flags.writeable, "the engine must get a read-only view of the node's voxels"


def test_worker_input_file_has_the_node_geometry(ct_node, tmp_path):
    """What the worker reads (NRRD written from the Volume) is what MRML reads back: same grid and voxels."""
    path = write_volume(mrml.volume_from_node(ct_node), tmp_path / "input.nrrd", compress=False)
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    np.testing.assert_allclose(mrml.ijk_to_ras_matrix(node), mrml.ijk_to_ras_matrix(ct_node), atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(ct_node))


def test_terminology_entry_uses_slicer_format():
    expected = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        "Segmentation category and type - 3D Slicer General Anatomy list",
        "85756007",
        "SCT",
        "Tissue",
        "272673000",
        "SCT",
        "Bone",
        "",
        "",
        "",
        "Anatomic codes - DICOM master list",
        "",
        "",
        "",
        "",
        "",
        "",
    )
    assert mrml.terminology_entry("SCT^272673000^Bone", "bone") == expected
    assert "SCT^123037004^Anatomical Structure~SCT^91609006^Mandible" in mrml.terminology_entry("SCT^91609006^Mandible")
    assert mrml.terminology_entry(expected) == expected
    left = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        "Segmentation category and type - 3D Slicer General Anatomy list",
        "123037004",
        "SCT",
        "Anatomical Structure",
        "45289007",
        "SCT",
        "Parotid gland",
        "7771000",
        "SCT",
        "Left",
        "Anatomic codes - DICOM master list",
        "",
        "",
        "",
        "",
        "",
        "",
    )
    assert mrml.terminology_entry("SCT^45289007^Parotid gland (left)", "parotid_left") == left
    assert mrml.terminology_entry(None) is None and mrml.terminology_entry("nonsense") is None


# --------------------------------------------------------------------------------------------
# The scenario: segment, compare, export
# --------------------------------------------------------------------------------------------
def test_segmentation_node_matches_model_card(scenario, ct_node, logic):
    seg = scenario["segmentation"]
    info = logic.modelInfo(MODEL)
    assert mrml.segment_names(seg) == info.label_names
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1, "the structures share one labelmap layer"
    for label in info.labels:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(label["name"]))
        tag = segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())
        assert tag == mrml.terminology_entry(label.get("terminology"), label["name"])
    bone = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("bone"))
    assert "~SCT^85756007^Tissue~SCT^272673000^Bone~" in segment_tag(bone, slicer.vtkSegment.GetTerminologyEntryTagName())
    assert seg.GetAttribute(liblogic.ROLE_ATTRIBUTE) == liblogic.ROLE_SEGMENTATION
    assert seg.GetNodeReference(liblogic.SOURCE_VOLUME_REFERENCE) is ct_node
    assert seg.GetScene() is ct_node.GetScene() and seg.GetDisplayNode() is not None
    summary = logic.lastSegmentation
    assert summary["device"] == "cpu" and summary["segmentationNodeID"] == seg.GetID()
    assert {s["name"] for s in summary["segments"]} == set(info.label_names)
    # the out-of-distribution check travels from the worker to the node (the test model's card has no
    # reference statistics: "unchecked", saying so) and to the console API
    check = json.loads(seg.GetAttribute(liblogic.PLAUSIBILITY_ATTRIBUTE))
    assert check == summary["plausibility"] == logic.plausibility(seg) == scenario["plausibility"]
    assert check["verdict"] == "unchecked" == seg.GetAttribute(liblogic.PLAUSIBILITY_VERDICT_ATTRIBUTE)
    assert check["findings"][0]["check"] == "reference" and "no reference statistics" in check["findings"][0]["message"]


def test_labels_sit_on_the_volume_geometry(scenario, ct_node, reference_ct):
    """Segment voxels, placed through the independent geometry, land where the CT shows that tissue."""
    seg = scenario["segmentation"]
    reference = independent_ct()
    segmentation = seg.GetSegmentation()
    name = scenario["segment_name"]
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
    image = segment.GetRepresentation(mrml.BINARY_LABELMAP)
    labels = mrml.array_from_image(image)
    world_to_image = np.linalg.inv(slicer.util.arrayFromVTKMatrix(_image_to_world(image)))
    rng = np.random.default_rng(1)
    kji = np.argwhere(labels == segment.GetLabelValue())
    picks = kji[rng.choice(len(kji), size=200, replace=False)]
    # the physical RAS positions of the picked voxels, through the segment's own labelmap geometry ...
    image_to_world = np.linalg.inv(world_to_image)
    ras = picks[:, ::-1].astype(float) @ image_to_world[:3, :3].T + image_to_world[:3, 3]
    # ... hold, in the independent CT (SimpleITK + transform), the tissue the segment is named after
    index = np.rint(reference.physical_to_index(ras, space="RAS")).astype(int)
    hu = reference.array[index[:, 2], index[:, 1], index[:, 0]]
    np.testing.assert_array_equal(hu, reference_ct.array[picks[:, 0], picks[:, 1], picks[:, 2]])
    assert name == "bone" and np.median(hu) > 226, f"the bone segment should lie on bone, median HU {np.median(hu)}"
    soft_hu = reference_ct.array[segment_array(seg, "soft_tissue", ct_node)]
    assert -200 < np.median(soft_hu) < 300, np.median(soft_hu)
    assert np.mean(reference_ct.array[scenario["network_mask"]] >= 226) > 0.6


def _image_to_world(image):
    import vtk

    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return m


def test_uncertainty_volume_overlay(scenario, ct_node):
    seg = scenario["segmentation"]
    node = seg.GetNodeReference(liblogic.UNCERTAINTY_REFERENCE)
    assert node.GetAttribute(liblogic.ROLE_ATTRIBUTE) == liblogic.ROLE_UNCERTAINTY
    assert node.GetNodeReference(liblogic.SOURCE_VOLUME_REFERENCE) is ct_node
    values = slicer.util.arrayFromVolume(node)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.1
    display = node.GetDisplayNode()
    assert display is not None and (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    # Uncertain voxels concentrate on the segment's boundary, not deep inside it.
    from scipy import ndimage

    mask = scenario["network_mask"]
    boundary = mask ^ ndimage.binary_erosion(mask)
    inner = ndimage.binary_erosion(mask, iterations=3)
    if inner.any():
        assert values[boundary].mean() > values[inner].mean()


def test_comparison_table_holds_the_engine_values(scenario, ct_node, reference_ct):
    table = scenario["table"]
    rows = selftest.table_values(table)
    assert set(rows) == {key for key, _label, _unit in liblogic.METRIC_ROWS}
    expected = scenario["expected"]
    for key in expected:
        if key in rows:
            value = expected[key]
            assert (math.isnan(rows[key]) and value is None) or rows[key] == value, key
    # the threshold counts inside the segment grown by the default 10 mm (the report's and the CLI's region)
    region = grow_mask(reference_ct.with_array(scenario["network_mask"]), 10.0).array
    independent = compare_masks(
        reference_ct.with_array(scenario["network_mask"]),
        reference_ct.with_array(threshold_segment(reference_ct, preset="bone").mask.array & region),
    )
    assert rows["dice"] == independent.dice and rows["hd95_mm"] == independent.hd95_mm
    assert rows["roi_margin_mm"] == 10.0 and rows["volume_b_ml"] == independent.volume_b_ml
    units = {
        table.GetTable().GetValueByName(r, "Key").ToString(): table.GetTable().GetValueByName(r, "Unit").ToString()
        for r in range(table.GetNumberOfRows())
    }
    assert units["hd95_mm"] == "mm" and units["volume_a_ml"] == "mL" and units["lower_hu"] == "HU"
    assert table.GetAttribute(liblogic.ROLE_ATTRIBUTE) == liblogic.ROLE_COMPARISON and table.GetLocked()
    assert json.loads(table.GetAttribute("SegDeep.Threshold"))["preset"] == "bone"


def test_disagreement_segments(scenario, ct_node, reference_ct):
    table = scenario["table"]
    node = table.GetNodeReference(liblogic.DISAGREEMENT_REFERENCE)
    assert node.GetAttribute(liblogic.ROLE_ATTRIBUTE) == liblogic.ROLE_DISAGREEMENT
    assert mrml.segment_names(node) == [liblogic.NETWORK_ONLY, liblogic.THRESHOLD_ONLY, liblogic.THRESHOLD_SEGMENT]
    ct = reference_ct
    region = grow_mask(ct.with_array(scenario["network_mask"]), 10.0).array
    threshold = ct.with_array(threshold_segment(ct, preset="bone").mask.array & region)
    only_network, only_threshold = disagreement_masks(ct.with_array(scenario["network_mask"]), threshold)
    np.testing.assert_array_equal(segment_array(node, liblogic.NETWORK_ONLY, ct_node), only_network.array)
    np.testing.assert_array_equal(segment_array(node, liblogic.THRESHOLD_ONLY, ct_node), only_threshold.array)
    np.testing.assert_array_equal(segment_array(node, liblogic.THRESHOLD_SEGMENT, ct_node), threshold.array)
    display = node.GetDisplayNode()
    threshold_id = node.GetSegmentation().GetSegmentIdBySegmentName(liblogic.THRESHOLD_SEGMENT)
    assert not display.GetSegmentVisibility(threshold_id)


def test_stl_is_lps_millimetres_with_the_segment_extent(scenario):
    from SegDeepLogic.mesh_io import read_mesh

    report = scenario["reports"][0]
    path = Path(report["path"])
    assert report["segment"] == scenario["segment_name"] and report["format"] == "STL"
    assert report["watertight"] and report["manifold"] and report["shell_count"] >= 1
    mesh = read_mesh(path)
    assert mesh.space == "LPS"
    lo, hi = selftest.stl_bounds(path)
    mask_lo, mask_hi = selftest.mask_bounds_lps(scenario["network_mask"], scenario["ijk_to_ras"])
    diagonal = float(np.linalg.norm(independent_ct().spacing))
    np.testing.assert_allclose(lo, mask_lo, atol=diagonal)
    np.testing.assert_allclose(hi, mask_hi, atol=diagonal)
    # in RAS the same box would be mirrored in x and y: make sure the file is not
    assert not np.allclose(lo[:2], -mask_hi[:2], atol=diagonal)
    voxel_ml = float(np.prod(independent_ct().spacing)) / 1000.0
    assert report["mask_volume_ml"] == pytest.approx(scenario["network_mask"].sum() * voxel_ml)


def test_export_ras_obj_and_merge_of_a_user_segmentation(headless, logic, tmp_path):
    """A segmentation the user made (no reference volume, own geometry) exports per segment and merged."""
    spacing, origin = (0.8, 0.8, 2.0), (-20.0, 10.0, 5.0)
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = origin
    node = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "User model")
    a = np.zeros((20, 40, 40), bool)
    a[5:15, 5:20, 5:20] = True
    b = np.zeros_like(a)
    b[5:15, 25:35, 10:30] = True
    reference = slicer.util.addVolumeFromArray(np.zeros(a.shape, np.int16), ijkToRAS=matrix, name="user reference")
    node.GetSegmentation().SetSourceRepresentationName(mrml.BINARY_LABELMAP)
    mrml.add_mask_segment(node, a, "Left block", (1, 0, 0), reference)
    mrml.add_mask_segment(node, b, "Right block", (0, 1, 0), reference)
    headless.scene.RemoveNode(reference)

    lps = logic.exportForPrinting(node, tmp_path / "lps", format="STL", smoothing=0.0)
    ras = logic.exportForPrinting(node, tmp_path / "ras", format="obj", coordinateSystem="RAS", smoothing=0.0)
    assert [r["file"] for r in lps] == ["User model_Left block.stl", "User model_Right block.stl"]
    assert [r["file"] for r in ras] == ["User model_Left block.obj", "User model_Right block.obj"]
    for r_lps, r_ras in zip(lps, ras, strict=True):
        assert r_lps["print_ready"] and r_ras["coordinate_system"] == "RAS"
        np.testing.assert_allclose(r_ras["bounds_min_mm"][:2], -np.asarray(r_lps["bounds_max_mm"][:2]), atol=1e-4)
        np.testing.assert_allclose(r_ras["bounds_max_mm"][2], r_lps["bounds_max_mm"][2], atol=1e-4)
    # Left block: voxel centres i = 5..19 at RAS x = -16 .. -4.8 mm; the unsmoothed surface lies half a
    # voxel beyond them, so LPS x (= -RAS x) spans 4.4 .. 16.4 mm.
    assert lps[0]["bounds_min_mm"][0] == pytest.approx(-(origin[0] + 19.5 * spacing[0]), abs=1e-3)
    assert lps[0]["bounds_max_mm"][0] == pytest.approx(-(origin[0] + 4.5 * spacing[0]), abs=1e-3)
    assert lps[0]["volume_ml"] == pytest.approx(a.sum() * np.prod(spacing) / 1000.0, rel=0.05)

    merged = logic.exportForPrinting(node, tmp_path / "merged", format="PLY", merge=True, decimation=0.2)
    assert len(merged) == 2 and {r["file"] for r in merged} == {"User model.ply"}
    with pytest.raises(FileExistsError):
        logic.exportForPrinting(node, tmp_path / "merged", format="PLY", merge=True)
    table = logic.createPrintReportTable(merged, node)
    assert table.GetNumberOfRows() == 2 and table.GetTable().GetValueByName(0, "Print ready").ToString() == "yes"
    assert logic.createPrintReportTable(merged, node) is table, "the report table is replaced, not duplicated"
    with pytest.raises(ValueError, match="format"):
        logic.exportForPrinting(node, tmp_path, format="VRML")
    with pytest.raises(ValueError, match="no segment named"):
        logic.exportForPrinting(node, tmp_path, segmentNames=["Femur"])


def test_compare_options_and_errors(scenario, logic, ct_node, headless, reference_ct):
    seg = scenario["segmentation"]
    names = mrml.segment_names(seg)
    other = names[-1]
    table = logic.compareWithThreshold(seg, ct_node, segmentName=other, lowerHU=300, keepLargest=True, disagreement=False)
    rows = selftest.table_values(table)
    assert rows["lower_hu"] == 300 and math.isnan(rows["upper_hu"]), "explicit bounds win over the default preset"
    assert table.GetNodeReference(liblogic.DISAGREEMENT_REFERENCE) is None
    ct = reference_ct
    segment = ct.with_array(segment_array(seg, other, ct_node))
    # clean-up after the restriction to the region: the largest threshold component inside it
    threshold = keep_largest_component(
        ct.with_array(threshold_segment(ct, lower_hu=300).mask.array & grow_mask(segment, 10.0).array)
    )
    expected = compare_masks(segment, threshold)
    assert rows["dice"] == expected.dice and rows["hd95_mm"] == expected.hd95_mm
    whole = selftest.table_values(
        logic.compareWithThreshold(seg, ct_node, segmentName=other, lowerHU=300, roiMarginMm=None, disagreement=False)
    )
    assert whole["dice"] == compare_masks(segment, threshold_segment(ct, lower_hu=300).mask).dice, "no region: the whole CT"
    assert math.isnan(whole["roi_margin_mm"])
    otsu = selftest.table_values(logic.compareWithThreshold(seg, ct_node, segmentName=other, method="otsu", disagreement=False))
    assert -1024 < otsu["lower_hu"] < 3071
    with pytest.raises(ValueError, match="no segment named 'femur'"):
        logic.compareWithThreshold(seg, ct_node, segmentName="femur")
    transform = headless.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    seg.SetAndObserveTransformNodeID(transform.GetID())
    try:
        with pytest.raises(SegDeepError, match="parent transforms"):
            logic.compareWithThreshold(seg, ct_node)
    finally:
        seg.SetAndObserveTransformNodeID(None)
        headless.scene.RemoveNode(transform)


def test_bundled_model_end_to_end_on_a_crop(headless, logic, ct_node):
    """The bundled model package (else the test model) through the worker: card names, colours, terminology, grid."""
    array = slicer.util.arrayFromVolume(ct_node)[30:83, 24:104, 24:104].copy()
    matrix = mrml.ijk_to_ras_matrix(ct_node)
    matrix[:3, 3] = (matrix @ np.array([24.0, 24.0, 30.0, 1.0]))[:3]
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=matrix, name="CT head crop")
    info = logic.modelInfo(BUNDLED_MODEL)
    seg = logic.segment(node, model=str(BUNDLED_MODEL), numThreads=THREADS)
    assert mrml.segment_names(seg) == info.label_names
    segmentation = seg.GetSegmentation()
    for label in info.labels:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(label["name"]))
        np.testing.assert_allclose(segment.GetColor(), label["color"], atol=1e-6)
        assert segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName()) == mrml.terminology_entry(
            label.get("terminology"), label["name"]
        )
        image = segment.GetRepresentation(mrml.BINARY_LABELMAP)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(_image_to_world(image)), matrix, atol=1e-9)
    assert logic.lastSegmentation["parameters"]["model"]["name"] == info.name
    # the run's options: built once by the logic, written to the job file, read back by the worker and recorded
    built = SegmentOptions(num_threads=THREADS, uncertainty=False)
    assert json.loads(seg.GetAttribute("SegDeep.Options")) == built.to_dict()
    assert SegmentOptions.from_dict(logic.lastSegmentation["options"]) == built, "what the worker ran"
    # the bundled model's card has reference statistics: the crop is really checked against them
    check = logic.plausibility(seg)
    card = json.loads((Path(BUNDLED_MODEL) / "model.json").read_text()) if Path(BUNDLED_MODEL).is_dir() else {}
    if (card.get("reference_statistics") or {}).get("training"):
        assert check["verdict"] in ("ok", "caution", "mismatch"), check
    assert check == logic.lastSegmentation["plausibility"]
    assert seg.GetAttribute(liblogic.PLAUSIBILITY_VERDICT_ATTRIBUTE) == check["verdict"]


# --------------------------------------------------------------------------------------------
# Re-running, exactness on a small volume
# --------------------------------------------------------------------------------------------
def test_rerun_replaces_own_outputs_and_never_the_users(headless, logic, crop_node):
    scene = headless.scene
    user = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My bone")
    mask = np.zeros(slicer.util.arrayFromVolume(crop_node).shape, bool)
    mask[10:20, 10:30, 10:30] = True
    mrml.add_mask_segment(user, mask, "bone", (1, 1, 0), crop_node)
    user_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "My table")
    user_nodes = [user, user_table]
    before = [e for e in slicer_scene.scene_snapshot(scene) if e[0] in {n.GetID() for n in user_nodes}]

    first = logic.segment(crop_node, model=str(MODEL), uncertainty=True, numThreads=THREADS)
    uncertainty = first.GetNodeReference(liblogic.UNCERTAINTY_REFERENCE)
    table = logic.compareWithThreshold(first, crop_node)
    uncertainty_display = uncertainty.GetDisplayNode()
    second = logic.segment(crop_node, model=str(MODEL), uncertainty=False, numThreads=THREADS)
    assert second is first, "re-running reuses the module's own segmentation node"
    assert second.GetNodeReference(liblogic.UNCERTAINTY_REFERENCE) is None
    assert uncertainty.GetScene() is None and uncertainty_display.GetScene() is None, "the stale uncertainty map is removed"
    assert logic.compareWithThreshold(second, crop_node) is table
    after = [e for e in slicer_scene.scene_snapshot(scene) if e[0] in {n.GetID() for n in user_nodes}]
    assert after == before, "the user's nodes must never change"
    outputs = logic.outputNodes(scene, liblogic.ROLE_SEGMENTATION)
    assert sum(n.GetNodeReference(liblogic.SOURCE_VOLUME_REFERENCE) is crop_node for n in outputs) == 1

    # Bit-exact against the engine run in this process on the same Volume.
    from SegDeepLogic.segment import segment_volume

    result = segment_volume(
        mrml.volume_from_node(crop_node, copy=True), str(MODEL), device="cpu", uncertainty=False, num_threads=THREADS
    )
    for info in result.segments:
        np.testing.assert_array_equal(
            segment_array(second, info.name, crop_node), result.labels.array == info.value, err_msg=info.name
        )


# --------------------------------------------------------------------------------------------
# The out-of-distribution check
# --------------------------------------------------------------------------------------------
def mismatch_model(folder: Path) -> Path:
    """The test model with reference statistics saying every training CT had a bone of 100 to 200 litres."""
    model = folder / "mismatch_model"
    shutil.copytree(MODEL, model)
    card = json.loads((model / "model.json").read_text(encoding="utf-8"))
    q = {"n": 3, "min": 1.0e5, "p01": 1.0e5, "median": 1.5e5, "p99": 2.0e5, "max": 2.0e5}
    card["reference_statistics"] = {
        "training": {
            "source": "test",
            "n_cases": 3,
            "image": {},
            "volumes_ml": {"bone": q},
            "contoured_fraction": {"bone": 1.0},
            "core_structures": ["bone"],
        }
    }
    (model / "model.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
    return model


def test_mismatch_adds_nothing_to_the_scene_and_says_what_was_withheld(headless, logic, crop_node, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="SegDeep")
    count = headless.scene.GetNumberOfNodes()
    with pytest.raises(MismatchError, match="nothing added to the scene") as info:
        logic.segment(crop_node, model=str(mismatch_model(tmp_path)), numThreads=THREADS)
    assert headless.scene.GetNumberOfNodes() == count
    last = logic.lastSegmentation
    assert last["segmentationNodeID"] is None and last["plausibility"]["verdict"] == "mismatch"
    assert [w["name"] for w in last["withheld"]] == ["bone", "soft_tissue"]
    assert all(w["volume_ml"] > 0 for w in last["withheld"])
    bone_ml = next(w["volume_ml"] for w in last["withheld"] if w["name"] == "bone")
    assert f"Withheld: bone {bone_ml:.3g} mL, soft_tissue" in str(info.value) and "allowMismatch=True" in str(info.value)
    warnings_logged = [r for r in caplog.records if r.name == "SegDeep" and r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1 and "Out-of-distribution check: MISMATCH" in warnings_logged[0].getMessage()


def test_allowed_mismatch_verdict_reaches_the_node_the_console_api_and_the_log(headless, logic, crop_node, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="SegDeep")
    seg = logic.segment(crop_node, model=str(mismatch_model(tmp_path)), numThreads=THREADS, allowMismatch=True)
    assert seg.GetAttribute(liblogic.PLAUSIBILITY_VERDICT_ATTRIBUTE) == "mismatch"
    check = json.loads(seg.GetAttribute(liblogic.PLAUSIBILITY_ATTRIBUTE))
    assert check == logic.plausibility(seg) == logic.lastSegmentation["plausibility"]
    assert check["verdict"] == "mismatch" and check["features"]["body_area_cm2"] > 0
    anatomy = [f for f in check["findings"] if f["check"] == "anatomy"]
    assert len(anatomy) == 1 and anatomy[0]["severity"] == "mismatch" and "do not use" in anatomy[0]["message"]
    # what the panel and the log show: the verdict and every finding
    text = logic.plausibilityText(check)
    assert text.startswith("Out-of-distribution check: MISMATCH. ") and "do not use this segmentation" in text
    rich = logic.plausibilityText(check, richText=True)
    assert "<b>Out-of-distribution check: MISMATCH</b>" in rich
    for finding in check["findings"]:
        assert f"- {finding['message']}" in text and "<li>" in rich
    warnings_logged = [r for r in caplog.records if r.name == "SegDeep" and r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1 and seg.GetName() in warnings_logged[0].getMessage()
    assert anatomy[0]["message"] in warnings_logged[0].getMessage()
    # re-running with a model without reference statistics replaces the verdict on the same node
    caplog.clear()
    again = logic.segment(crop_node, model=str(MODEL), numThreads=THREADS)
    assert again is seg and logic.plausibility(seg)["verdict"] == "unchecked"
    assert seg.GetAttribute(liblogic.PLAUSIBILITY_VERDICT_ATTRIBUTE) == "unchecked"
    assert [r.levelno for r in caplog.records if r.name == "SegDeep"] == [logging.INFO]


def test_plausibility_of_other_nodes_and_of_old_results(headless, logic):
    user = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    try:
        assert logic.plausibility(user) is None and logic.plausibility(None) is None
        assert logic.plausibilityText(None) == ""
        user.SetAttribute(liblogic.PLAUSIBILITY_ATTRIBUTE, "not json")
        assert logic.plausibility(user) is None
        # a worker result without a check (an older engine) is "unchecked", saying why: never nothing
        check = SegDeepLogicBase._normalise_plausibility(None)
        assert check["verdict"] == "unchecked" and "no out-of-distribution check" in check["findings"][0]["message"]
        user.SetAttribute(liblogic.PLAUSIBILITY_ATTRIBUTE, json.dumps({"verdict": "caution", "findings": [{"message": "m"}]}))
        assert logic.plausibility(user)["verdict"] == "caution"
        assert logic.plausibilityText(logic.plausibility(user)).splitlines()[1:] == ["- m"]
    finally:
        headless.scene.RemoveNode(user)


# --------------------------------------------------------------------------------------------
# Cancel, crash, out of memory: the scene stays exactly as it was
# --------------------------------------------------------------------------------------------
def test_cancel_kills_the_worker_tree_and_leaves_the_scene(headless, logic, crop_node, monkeypatch, temp_root):
    monkeypatch.setenv(FAULT_ENV, "hang")
    before = slicer_scene.scene_snapshot(headless.scene)
    job = logic.startSegmentation(crop_node, model=str(MODEL))
    deadline = time.monotonic() + 60
    while not job.children and time.monotonic() < deadline:
        job.poll(timeout=0.2)
    assert job.children, "the hanging worker did not report its child process"
    assert job.fraction == 0.0 and job.stage == "starting" and job.running
    worker_pid = job.process.pid
    job.cancel()
    assert job.cancelled and job.finished
    assert not alive(worker_pid) and not alive(job.children[0]), "cancel must kill the whole process tree"
    assert not job.workdir.exists() and not list(temp_root.glob("SegDeep-*"))
    with pytest.raises(CancelledError):
        logic.finishSegmentation(job)
    assert slicer_scene.scene_snapshot(headless.scene) == before


def test_cancel_from_the_progress_callback_or_a_token(headless, logic, crop_node, monkeypatch, temp_root):
    from SegDeepLogic.progress import CancelToken

    monkeypatch.setenv(FAULT_ENV, "hang")
    before = slicer_scene.scene_snapshot(headless.scene)

    def stop(fraction, stage):
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        logic.segment(crop_node, model=str(MODEL), progress=stop)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        logic.segment(crop_node, model=str(MODEL), cancel=token)
    assert slicer_scene.scene_snapshot(headless.scene) == before
    assert not list(temp_root.glob("SegDeep-*"))


@pytest.mark.parametrize(
    ("fault", "kind", "text"),
    [
        ("exit", "crash", "exit code 7"),
        ("kill", "out-of-memory", "killed"),
        ("oom", "out-of-memory", "out of memory"),
        ("no-result", "incomplete", "without writing its result"),
    ],
)
def test_worker_failure_leaves_the_scene_unchanged(headless, logic, crop_node, monkeypatch, temp_root, fault, kind, text):
    monkeypatch.setenv(FAULT_ENV, fault)
    before = slicer_scene.scene_snapshot(headless.scene)
    count = headless.scene.GetNumberOfNodes()
    with pytest.raises(SegDeepWorkerError, match=text) as info:
        logic.segment(crop_node, model=str(MODEL))
    assert info.value.kind == kind
    assert headless.scene.GetNumberOfNodes() == count
    assert slicer_scene.scene_snapshot(headless.scene) == before
    assert not list(temp_root.glob("SegDeep-*")), "the temporary folder must be removed"


def test_engine_error_in_the_worker_is_reported(headless, logic, crop_node, temp_root):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: requesting it is not an error here")
    before = slicer_scene.scene_snapshot(headless.scene)
    with pytest.raises(SegDeepWorkerError, match="CUDA is not available") as info:
        logic.segment(crop_node, model=str(MODEL), device="cuda")
    assert info.value.kind == "input" and info.value.returncode == 1
    assert slicer_scene.scene_snapshot(headless.scene) == before


def test_invalid_inputs_fail_before_starting(logic, crop_node, headless, temp_root):
    with pytest.raises(ValueError, match="device"):
        logic.startSegmentation(crop_node, model=str(MODEL), device="tpu")
    with pytest.raises(ValueError, match="scalar"):
        logic.startSegmentation(None, model=str(MODEL))
    labelmap = headless.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="scalar"):
        logic.startSegmentation(labelmap, model=str(MODEL))
    headless.scene.RemoveNode(labelmap)
    with pytest.raises(SegDeepError, match="no model package"):
        logic.startSegmentation(crop_node, model="/nonexistent/model")
    assert not list(temp_root.glob("SegDeep-*"))


# --------------------------------------------------------------------------------------------
# Models, devices, dependencies, worker protocol
# --------------------------------------------------------------------------------------------
def test_models(logic, monkeypatch):
    from SegDeepLogic.resources import list_bundled_models

    assert [Path(m.path) for m in logic.availableModels()] == list_bundled_models()
    info = logic.modelInfo(slicer_scene.TEST_MODEL)
    assert info.label_names == ["bone", "soft_tissue"] and info.display_text().endswith("bone, soft_tissue")
    assert logic.resolveModel(slicer_scene.TEST_MODEL) == slicer_scene.TEST_MODEL.resolve()
    monkeypatch.setattr(SegDeepLogicBase, "bundledModelPaths", staticmethod(lambda: []))
    with pytest.raises(SegDeepError, match="no model package is bundled"):
        logic.resolveModel(None)


def test_model_info_reads_zip_packages(logic, tmp_path):
    import zipfile

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(slicer_scene.TEST_MODEL / "model.json", "test_model/model.json")
    assert logic.modelInfo(archive).label_names == ["bone", "soft_tissue"]
    with pytest.raises(SegDeepError):
        logic.modelInfo(tmp_path)


def test_detect_devices(logic):
    import torch

    expected = "cuda" if torch.cuda.is_available() else None
    devices = logic.detectDevices()
    assert devices["error"] is None and devices["torch"] == torch.__version__
    assert devices["auto"] == (expected or ("mps" if devices["mps"] else "cpu"))
    # as the panel does: poll the probe from a timer, then read the result
    probe = logic.startDeviceProbe()
    deadline = time.monotonic() + 120
    while not probe.finished and time.monotonic() < deadline:
        probe.poll(timeout=0.2)
    assert logic.deviceProbeResult(probe) == devices


def test_dependencies_outside_slicer(monkeypatch):
    assert dependencies.missing_packages(["numpy>=1", "surely-not-a-package-segdeep>=1"]) == ["surely-not-a-package-segdeep>=1"]
    dependencies.ensure_dependencies(torch=True)  # everything is installed in the test environment
    monkeypatch.setattr(dependencies, "ENGINE_REQUIREMENTS", ("surely-not-a-package-segdeep>=1",))
    with pytest.raises(dependencies.MissingDependencyError, match="pip install"):
        dependencies.ensure_dependencies()


def test_engine_requirements_follow_pyproject():
    import tomllib

    pyproject = tomllib.loads((slicer_scene.REPO / "pyproject.toml").read_text())
    declared = {dependencies.requirement_name(r).lower(): r for r in pyproject["project"]["dependencies"]}
    for requirement in (*dependencies.ENGINE_REQUIREMENTS, dependencies.TORCH_REQUIREMENT):
        name = dependencies.requirement_name(requirement).lower()
        assert declared.get(name) == requirement, f"{requirement} differs from pyproject's {declared.get(name)}"


def test_worker_protocol_lines():
    assert parse_line('SEGDEEP-EVENT {"event": "progress", "fraction": 0.5, "stage": "network"}') == {
        "event": "progress",
        "fraction": 0.5,
        "stage": "network",
    }
    assert parse_line("SEGDEEP-EVENT {broken")["event"] == "log"
    assert parse_line("Traceback (most recent call last):") == {"event": "log", "line": "Traceback (most recent call last):"}
    import sys

    process = WorkerProcess([sys.executable, "-c", "print('hello'); print('SEGDEEP-EVENT {\"event\": \"done\"}')"]).start()
    assert process.wait(30) == 0
    events = process.poll()
    assert process.finished and process.returncode == 0 and process.log_tail() == "hello"
    assert [e["event"] for e in events] == ["log", "done"]
