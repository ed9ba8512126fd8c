"""Slicer: a segmentation of a CT loaded from DICOM goes under that CT's study (real MRML, slicer-core).

Slicer's DICOM loader puts a series' volume under a patient item and a study item of the subject
hierarchy (with the DICOM UIDs as item UIDs). The segmentation SegDeep adds must sit in the same
study, which is where Slicer's DICOM export (SlicerRT: RTSTRUCT; QuantitativeReporting: DICOM SEG)
picks it up with the CT it references.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

import slicer  # noqa: E402
import slicer_scene  # noqa: E402

slicer_scene.add_module_path()

from SegDeepLib import mrml  # noqa: E402
from SegDeepLib.logic import SegDeepLogicBase  # noqa: E402

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"


@pytest.fixture(scope="module")
def headless():
    return slicer_scene.create_scene()


def _crop_node(scene, name: str):
    full = slicer_scene.load_volume(scene, slicer_scene.SAMPLE_CT, f"{name} full")
    array = slicer.util.arrayFromVolume(full)[50:90, 30:94, 40:88].copy()
    matrix = mrml.ijk_to_ras_matrix(full)
    matrix[:3, 3] = (matrix @ np.array([40.0, 30.0, 50.0, 1.0]))[:3]
    scene.RemoveNode(full)
    return slicer.util.addVolumeFromArray(array, ijkToRAS=matrix, name=name)


def _as_loaded_from_dicom(scene, node) -> tuple[int, int]:
    """Patient -> study -> series volume, as Slicer's DICOM scalar volume plugin builds it."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "OpenKBP^pt_236")
    sh.SetItemUID(patient, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName(), "pt_236")
    study = sh.CreateStudyItem(patient, "CT study")
    sh.SetItemUID(study, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName(), STUDY_UID)
    item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)  # headless MRML may not have made one
    sh.SetItemParent(item, study)
    sh.SetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName(), SERIES_UID)
    return patient, study


def test_segmentation_of_a_dicom_ct_is_placed_under_its_study(headless):
    node = _crop_node(headless.scene, "CT from DICOM")
    _, study = _as_loaded_from_dicom(headless.scene, node)
    seg = SegDeepLogicBase().segment(node, model=str(slicer_scene.TEST_MODEL), numThreads=1, allowMismatch=True)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(headless.scene)
    seg_item = sh.GetItemByDataNode(seg)
    assert sh.GetItemParent(seg_item) == study
    assert sh.GetItemUID(sh.GetItemParent(seg_item), slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()) == STUDY_UID
    assert seg.GetSegmentation().GetNumberOfSegments() > 0


def test_segmentation_of_a_plain_volume_stays_at_the_scene_level(headless):
    node = _crop_node(headless.scene, "CT from NIfTI")
    seg = SegDeepLogicBase().segment(node, model=str(slicer_scene.TEST_MODEL), numThreads=1, allowMismatch=True)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(headless.scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) in (0, sh.GetSceneItemID())  # not moved into any study
    assert mrml.place_under_volume_study(seg, node) is None
