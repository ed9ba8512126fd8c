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


def write_seg_nrrd_with_slicer(
    path: str | Path,
    data: Any,
    segments: list[dict],
    *,
    spacing: tuple[float, float, float] = (0.5, 0.7, 2.0),
    origin_lps: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    direction_lps: Any = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    compress: bool = False,
    crop: bool = False,
) -> Path:
    """A .seg.nrrd written by real 3D Slicer code: MRML's ``vtkMRMLSegmentationStorageNode`` (slicer-core).

    ``data`` is a label map ``(k, j, i)`` or one per layer ``(k, j, i, layers)``, on the LPS grid
    ``spacing``, ``origin_lps``, ``direction_lps`` (default: a volume aligned with RAS, as most are); ``segments`` are ``{"name", "value", "layer", "color", "terminology"}``
    (``layer`` 0, ``color`` grey and ``terminology`` none by default). Segments of one layer share
    one labelmap image, as Slicer keeps them. ``crop``: Slicer's "crop to minimum extent" (the file
    then holds the bounding box of the segments, with the origin moved accordingly).
    """
    import numpy as np
    import slicer
    import vtk

    add_module_path()
    from SegDeepLib import mrml

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    layers = data[..., None] if data.ndim == 3 else data
    ijk_to_ras = np.eye(4)
    ras_from_lps = np.diag([-1.0, -1.0, 1.0])
    ijk_to_ras[:3, :3] = ras_from_lps @ np.asarray(direction_lps, dtype=float) @ np.diag(spacing)
    ijk_to_ras[:3, 3] = ras_from_lps @ np.asarray(origin_lps, dtype=float)
    images = [
        mrml.oriented_image(np.ascontiguousarray(layers[..., n], dtype=np.uint8), ijk_to_ras) for n in range(layers.shape[3])
    ]
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(mrml.BINARY_LABELMAP)
    if not crop:  # the reference geometry is the whole grid (as for a segmentation made on a volume)
        converter = slicer.vtkSegmentationConverter
        segmentation.SetConversionParameter(
            converter.GetReferenceImageGeometryParameterName(), converter.SerializeImageGeometry(images[0])
        )
    for n, info in enumerate(segments):
        segment = slicer.vtkSegment()
        segment.SetName(info["name"])
        segment.SetColor(*info.get("color", (0.5, 0.5, 0.5)))
        segment.SetLabelValue(int(info["value"]))
        if info.get("terminology"):
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), info["terminology"])
        segment.AddRepresentation(mrml.BINARY_LABELMAP, images[info.get("layer", 0)])
        segmentation.AddSegment(segment, f"Segment_{n + 1}")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetUseCompression(bool(compress))
    storage.SetCropToMinimumExtent(bool(crop))
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)  # no reference-geometry parameter: not needed
    try:
        written = storage.WriteData(node)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    if not written:
        raise OSError(f"slicer-core could not write {path}")
    return Path(path)


def read_seg_nrrd_with_slicer(path: str | Path) -> Any:
    """A vtkMRMLSegmentationNode read from a .seg.nrrd by MRML's storage node (slicer-core)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"slicer-core could not read {path}")
    node._scene = scene  # keep the scene alive with the node
    return node
