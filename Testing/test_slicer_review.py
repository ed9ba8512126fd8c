"""The review loop in Slicer against real MRML (``slicer-core``): next case to review, correction -> training case.

A corrected segment is saved from the scene and read back by the training data loader (and by
``segdeep train`` itself) with the right labels, the CT's geometry and the unreviewed structures
unlabelled. The review queue's first case loads with its most uncertain structure selected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

import slicer  # noqa: E402
import slicer_scene  # noqa: E402
from cohort_data import make_cohort  # noqa: E402

from SegDeepLogic.cohort import BatchSettings, segment_cohort  # noqa: E402
from SegDeepLogic.errors import SegDeepError  # noqa: E402
from SegDeepLogic.io import read_volume, to_sitk  # noqa: E402
from SegDeepLogic.segmentation_io import read_seg_nrrd  # noqa: E402
from SegDeepLogic.training.data import find_cases, prepare_case  # noqa: E402
from SegDeepLogic.training.train import package_settings  # noqa: E402

slicer_scene.add_module_path()

from SegDeepLib import mrml, selftest  # noqa: E402
from SegDeepLib.logic import SOURCE_VOLUME_REFERENCE, SegDeepLogicBase  # noqa: E402

TEST_MODEL = slicer_scene.TEST_MODEL
ROOT = slicer_scene.REPO


@pytest.fixture()
def headless():
    return slicer_scene.create_scene()


@pytest.fixture()
def logic():
    return SegDeepLogicBase()


def _ras_of(node, ijk) -> np.ndarray:  # noqa: ANN001
    m = mrml.ijk_to_ras_matrix(node)
    return (m @ np.array([*ijk, 1.0]))[:3]


def _scene_with_correction(headless):  # noqa: ANN001, ANN202
    """The sample CT (rotated and shifted), a 'network' segmentation (bone, soft_tissue) and a corrected bone."""
    ct_node = slicer_scene.load_volume(headless.scene, slicer_scene.SAMPLE_CT, "CT pt 236")
    selftest.apply_test_geometry(ct_node)
    hu = slicer.util.arrayFromVolume(ct_node)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > -200) & (hu < 300)] = 2
    labels[hu >= 300] = 1
    seg = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT SegDeep")
    segments = [{"name": "bone", "value": 1, "color": (1, 1, 0.8)}, {"name": "soft_tissue", "value": 2, "color": (0.7, 0.5, 0.4)}]
    mrml.fill_segmentation(seg, labels, segments, ct_node)
    seg.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, ct_node.GetID())
    seg.SetAttribute("SegDeep.ModelPath", str(TEST_MODEL))
    # the user's correction (what a Segment Editor edit leaves): bone loses a slab, gains a block
    corrected = labels == 1
    corrected[60:70] = False
    corrected[20:30, 40:60, 40:60] = True
    bone_id = seg.GetSegmentation().GetSegmentIdBySegmentName("bone")
    slicer.util.updateSegmentBinaryLabelmapFromArray(corrected.astype(np.uint8), seg, bone_id, ct_node)
    return ct_node, seg, corrected


def test_a_corrected_segment_saved_from_the_scene_is_read_back_by_the_training_loader(headless, logic, tmp_path: Path) -> None:
    ct_node, seg, corrected = _scene_with_correction(headless)
    dataset = tmp_path / "corrections"
    case_dir = logic.saveCorrectionAsTrainingCase(seg, dataset, ["bone"], annotator="dr. tester", caseId="pt236_fix")
    assert case_dir == dataset / "pt236_fix"
    assert sorted(p.name for p in case_dir.iterdir()) == ["bone.nii.gz", "correction.json", "ct.nii.gz"]

    # geometry: the files' voxels sit where the node's IJK-to-RAS matrix puts them (LPS = RAS with x, y negated)
    ct = read_volume(case_dir / "ct.nii.gz")
    bone = read_volume(case_dir / "bone.nii.gz")
    assert bone.same_grid(ct)
    assert np.array_equal(ct.array, slicer.util.arrayFromVolume(ct_node))
    for ijk in [(0, 0, 0), (127, 0, 0), (0, 127, 0), (0, 0, 127), (64, 32, 100)]:
        ras = _ras_of(ct_node, ijk)
        lps = np.asarray(ct.index_to_physical(np.array(ijk, float)))
        assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-3), ijk
    # labels: exactly the corrected mask (not the network's bone)
    assert bone.array.dtype == np.uint8 and set(np.unique(bone.array)) == {0, 1}
    assert np.array_equal(bone.array.astype(bool), corrected)

    provenance = json.loads((case_dir / "correction.json").read_text())
    card = json.loads((TEST_MODEL / "model.json").read_text())
    assert provenance["reviewed_structures"] == ["bone"] and provenance["unlabelled_structures"] == ["soft_tissue"]
    assert provenance["annotator"] == "dr. tester" and provenance["saved_utc"]
    assert provenance["model"]["name"] == card["name"] and provenance["model"]["weights_sha256"] == card["weights_sha256"]
    assert provenance["source"]["ct_node"] == "CT pt 236" and provenance["voxels"]["bone"] == int(corrected.sum())

    # the training loader: bone contoured, soft_tissue (not reviewed) unknown -- not background
    (case,) = find_cases(dataset, ["bone", "soft_tissue"])
    assert case.case_id == "pt236_fix" and set(case.masks) == {"bone"}
    settings = package_settings(TEST_MODEL)
    prepared = prepare_case(case, ["bone", "soft_tissue"], settings["spacing_ijk_mm"], settings["orientation"])
    assert prepared.available.tolist() == [True, True, False]
    assert 2 not in np.unique(prepared.labels)
    voxel_ml = float(np.prod(settings["spacing_ijk_mm"])) / 1000
    corrected_ml = corrected.sum() * ct.voxel_volume_mm3 / 1000
    assert (prepared.labels == 1).sum() * voxel_ml == pytest.approx(corrected_ml, rel=0.1)


def test_segdeep_train_reads_a_saved_correction_with_the_unreviewed_structure_uncontoured(
    headless, logic, tmp_path: Path
) -> None:
    _ct_node, seg, _ = _scene_with_correction(headless)
    dataset = tmp_path / "corrections"
    logic.saveCorrectionAsTrainingCase(seg, dataset, ["bone"], annotator="tester", caseId="c1")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    run = subprocess.run(
        [sys.executable, "-m", "SegDeepLogic.cli", "train", "--train", str(dataset), "--init-from", str(TEST_MODEL),
         "--structures", "bone", "soft_tissue", "-o", str(tmp_path / "tuned"), "--work-dir", str(tmp_path / "work"),
         "--device", "cpu", "--iterations", "1", "--batch-size", "1", "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "work" / "train.log").read_text()
    assert "training cases contouring each structure: {'bone': 1, 'soft_tissue': 0}" in log


def test_saving_again_replaces_the_case_and_a_structure_no_longer_reviewed_becomes_unlabelled(
    headless, logic, tmp_path: Path
) -> None:
    _ct_node, seg, _ = _scene_with_correction(headless)
    dataset = tmp_path / "d"
    logic.saveCorrectionAsTrainingCase(seg, dataset, ["bone", "soft_tissue"], caseId="c")
    assert (dataset / "c" / "soft_tissue.nii.gz").exists()
    with pytest.raises(SegDeepError, match="exists: choose another case id"):
        logic.saveCorrectionAsTrainingCase(seg, dataset, ["bone"], caseId="c")
    logic.saveCorrectionAsTrainingCase(seg, dataset, ["bone"], caseId="c", overwrite=True)
    assert not (dataset / "c" / "soft_tissue.nii.gz").exists()
    assert set(find_cases(dataset, ["bone", "soft_tissue"])[0].masks) == {"bone"}


@pytest.mark.parametrize(
    ("reviewed", "kwargs", "message"),
    [
        (["mandible"], {}, "has no segment named 'mandible'"),
        ([], {}, "no reviewed structure given"),
        (["bone"], {"caseId": "../escape"}, "case id '../escape'"),
    ],
)
def test_a_correction_that_cannot_be_a_training_case_is_refused_and_nothing_is_written(
    headless, logic, tmp_path: Path, reviewed: list[str], kwargs: dict, message: str
) -> None:
    _ct_node, seg, _ = _scene_with_correction(headless)
    with pytest.raises(SegDeepError, match=message):
        logic.saveCorrectionAsTrainingCase(seg, tmp_path / "d", reviewed, **kwargs)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_a_segment_outside_the_models_label_set_is_refused(headless, logic, tmp_path: Path) -> None:
    ct_node, seg, corrected = _scene_with_correction(headless)
    mrml.add_mask_segment(seg, corrected, "tumour", (1, 0, 0), ct_node)
    with pytest.raises(SegDeepError, match=r"tumour not in the model's label set \(bone, soft_tissue\)"):
        logic.saveCorrectionAsTrainingCase(seg, tmp_path / "d", ["bone", "tumour"])
    seg.RemoveAttribute("SegDeep.ModelPath")
    with pytest.raises(SegDeepError, match="does not say which model produced it"):
        logic.saveCorrectionAsTrainingCase(seg, tmp_path / "d", ["bone"])


def test_the_next_case_to_review_loads_with_its_most_uncertain_structure_selected(headless, logic, tmp_path: Path) -> None:
    make_cohort(tmp_path / "cohort", n=2)
    out = tmp_path / "batch"
    result = segment_cohort(tmp_path / "cohort", out, str(TEST_MODEL), settings=BatchSettings(report=False, uncertainty=True))
    assert len(result.done) == 2
    queue = logic.reviewQueue(out)
    first = queue[0]
    before = headless.scene.GetNumberOfNodes()
    loaded = logic.loadReviewCase(first)
    seg, volume = loaded["segmentationNode"], loaded["volumeNode"]
    assert headless.scene.GetNumberOfNodes() > before
    assert seg.GetNodeReference(SOURCE_VOLUME_REFERENCE) is volume
    assert seg.GetAttribute("SegDeep.ReviewCase") == first.case_id
    assert seg.GetAttribute("SegDeep.ModelPath") == str(TEST_MODEL)
    assert mrml.segment_names(seg) == ["bone", "soft_tissue"]
    # the Segment Editor is on this segmentation, with the most uncertain structure selected
    editor = loaded["segmentEditorNode"]
    assert editor.GetSegmentationNode() is seg
    assert loaded["segmentId"] == seg.GetSegmentation().GetSegmentIdBySegmentName(first.most_uncertain_structure)
    assert editor.GetSelectedSegmentID() == loaded["segmentId"]
    # the voxels are the batch's: the loaded segment on the CT node's grid (Slicer may store the slices
    # in the other order) holds, voxel for voxel in LPS, the seg.nrrd file's label
    written = read_seg_nrrd(first.segmentation)
    value = next(s.value for s in written.segments if s.name == first.most_uncertain_structure)
    mask = mrml.segment_mask(seg, loaded["segmentId"], volume)
    expected = sitk.Resample(
        to_sitk(written.labelmap.with_array((written.labelmap.array == value).astype(np.uint8))),
        to_sitk(mask.with_array(mask.array.astype(np.uint8))),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
    )
    assert mask.array.any() and np.array_equal(mask.array, sitk.GetArrayFromImage(expected) > 0)
    assert loaded["uncertaintyNode"] is not None
    uncertainty = loaded["uncertaintyNode"]
    assert mrml.volume_from_node(uncertainty).same_grid(mrml.volume_from_node(volume))
    assert slicer.util.arrayFromVolume(uncertainty).max() == pytest.approx(read_volume(first.uncertainty).array.max())
    # and the loop closes: the loaded case is saved as a correction (case id from the queue)
    case_dir = logic.saveCorrectionAsTrainingCase(seg, tmp_path / "d", [first.most_uncertain_structure])
    assert case_dir.name == first.case_id
    provenance = json.loads((case_dir / "correction.json").read_text())
    assert provenance["source"]["batch"] == str(out.resolve())


def test_a_case_without_a_seg_nrrd_is_refused_and_the_scene_is_unchanged(headless, logic, tmp_path: Path) -> None:
    ct = slicer_scene.SAMPLE_CT
    item = {"case_id": "x", "ct": str(ct), "segmentation": None, "status": "failed"}
    before = slicer_scene.scene_snapshot(headless.scene)
    with pytest.raises(SegDeepError, match="no .seg.nrrd segmentation to load"):
        logic.loadReviewCase(item)
    bad = tmp_path / "broken.seg.nrrd"
    bad.write_text("not a nrrd")
    with pytest.raises(SegDeepError, match="Slicer could not read"):
        logic.loadReviewCase({**item, "segmentation": str(bad)})
    assert slicer_scene.scene_snapshot(headless.scene) == before
