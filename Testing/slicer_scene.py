"""Headless 3D Slicer for tests: a real MRML scene from ``slicer-core`` (no Qt, no application).

:func:`create_scene` builds a ``vtkMRMLScene`` with the application logic and the Colors, Volumes,
SubjectHierarchy and Segmentations module logics, sets ``slicer.mrmlScene`` and gives
``slicer.modules`` the ``<name>.logic()`` accessors that ``slicer.util`` uses. :func:`load_volume`
reads an image with the real MRML storage node. :func:`scene_snapshot` describes every node and its
content, to assert that an operation left the scene exactly as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SegDeepExtension"
SAMPLE_CT = REPO / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
TEST_MODEL = REPO / "Testing" / "Data" / "test_model"

_MODULE_LOGICS = (
    ("Colors", "vtkSlicerColorLogic", "colors"),
    ("Volumes", "vtkSlicerVolumesLogic", "volumes"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic", "subjecthierarchy"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic", "segmentations"),
)


def add_module_path() -> None:
    """Make ``SegDeepLib`` (inside ``SegDeepExtension/``) importable."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


@dataclasses.dataclass
class HeadlessSlicer:
    """A scene with its application logic and module logics (kept alive together)."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any]


def create_scene() -> HeadlessSlicer:
    """A fresh scene registered as ``slicer.mrmlScene``, with the module logics SegDeep needs."""
    import slicer
    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)  # missing colour/terminology files
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}
    for name, class_name, _attribute in _MODULE_LOGICS:
        logic = getattr(slicer, class_name)()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        **{attribute: types.SimpleNamespace(logic=(lambda logic=logics[name]: logic)) for name, _c, attribute in _MODULE_LOGICS}
    )
    return HeadlessSlicer(scene, app_logic, logics)


def load_volume(scene: Any, path: str | Path = SAMPLE_CT, name: str = "CT") -> Any:
    """Read an image file into a new scalar volume node with MRML's archetype storage node."""
    import slicer

    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"cannot read {path}")
    node.CreateDefaultDisplayNodes()
    return node


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part.tobytes() if hasattr(part, "tobytes") else repr(part).encode())
    return h.hexdigest()


def _node_content(node: Any) -> str:
    import numpy as np
    import slicer
    from vtk.util import numpy_support

    if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
        matrix = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(node))
        return _digest(slicer.util.arrayFromVolume(node), matrix)
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        parts = []
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            parts.append((segmentation.GetNthSegmentID(i), segment.GetName(), segment.GetColor(), segment.GetLabelValue()))
            image = segment.GetRepresentation("Binary labelmap")
            if image is not None and image.GetPointData().GetScalars() is not None:
                parts.append(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).copy())
                parts.append(image.GetExtent())
        return _digest(*parts)
    if node.IsA("vtkMRMLTableNode") and node.GetTable() is not None:
        table = node.GetTable()
        cells = [
            [table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())
        ]
        return _digest(cells)
    return _digest(np.zeros(0))


def _ijk_to_ras(node: Any) -> Any:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def scene_snapshot(scene: Any) -> list[tuple]:
    """One entry per node: ID, class, name, attributes, references and a digest of its content."""
    entries = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        attributes = tuple(sorted((name, node.GetAttribute(name)) for name in node.GetAttributeNames()))
        references = tuple(
            sorted(
                (role, node.GetNthNodeReferenceID(role, n))
                for role in (node.GetNthNodeReferenceRole(r) for r in range(node.GetNumberOfNodeReferenceRoles()))
                for n in range(node.GetNumberOfNodeReferences(role))
            )
        )
        entries.append((node.GetID(), node.GetClassName(), node.GetName(), attributes, references, _node_content(node)))
    return entries
