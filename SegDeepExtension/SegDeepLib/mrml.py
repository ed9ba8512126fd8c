"""Exact conversions between MRML nodes and the SegDeep engine's :class:`~SegDeepLogic.volume.Volume`.

MRML works in RAS, the engine (like ITK and every file format) in LPS; both index arrays
``[k, j, i]``. A volume node's geometry is its spacing, its origin (RAS position of voxel
(0, 0, 0)) and its IJK-to-RAS direction matrix; the engine's is the same spacing, the LPS origin
``(-x, -y, z)`` and the LPS direction ``diag(-1, -1, 1) @ directions``. Negating a float is exact,
so the conversion loses nothing.

Label maps go back into segments as one shared binary-labelmap layer (a
``vtkOrientedImageData`` whose image-to-world matrix is the volume's IJK-to-RAS matrix), exactly
on the volume's voxel grid. Segment masks come out of a segmentation either on their own
labelmap grid or resampled (nearest neighbour) onto a reference volume's grid.

Nothing here adds nodes to the scene or removes any (unlike some ``slicer.util`` helpers, which
create temporary nodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from SegDeepLogic.terminology import slicer_terminology_entry
from SegDeepLogic.volume import Volume

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
BINARY_LABELMAP = "Binary labelmap"


# --------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------
def ijk_to_ras_matrix(volumeNode: Any) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node (local coordinates: no parent transform)."""
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A ``vtkMatrix4x4`` holding a 4x4 numpy array."""
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def volume_geometry(volumeNode: Any) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """``(spacing, LPS origin, LPS direction)`` of a volume node, exactly (no matrix inversion)."""
    spacing = tuple(float(s) for s in volumeNode.GetSpacing())
    ox, oy, oz = (float(o) for o in volumeNode.GetOrigin())
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(m)
    directions_ras = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    return spacing, (-ox, -oy, oz), LPS_FROM_RAS @ directions_ras  # type: ignore[return-value]


def volume_from_node(volumeNode: Any, *, copy: bool = False) -> Volume:
    """The engine :class:`Volume` of a scalar volume node: voxels ``[k, j, i]``, LPS geometry.

    Parameters
    ----------
    volumeNode : vtkMRMLScalarVolumeNode
        A 3D single-component volume.
    copy : bool
        Copy the voxels. By default the array is a **read-only view** of the node's voxels (no
        memory is duplicated and the engine cannot modify the node).

    Raises
    ------
    ValueError
        If the node has no image data or is not a 3D scalar volume.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("the volume node has no image data")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume {volumeNode.GetName()!r} is not a scalar volume (it has several components per voxel)")
    array = slicer.util.arrayFromVolume(volumeNode)
    if array is None or array.ndim != 3:
        raise ValueError(f"volume {volumeNode.GetName()!r} is not a 3D scalar volume")
    if copy:
        array = array.copy()
    else:
        array = array.view()
        array.flags.writeable = False
    spacing, origin, direction = volume_geometry(volumeNode)
    return Volume(array, spacing, origin, direction)


def geometry_signature(volumeNode: Any) -> tuple:
    """Dimensions and IJK-to-RAS matrix of a volume node, to detect a change during a long job."""
    image = volumeNode.GetImageData()
    dims = tuple(image.GetDimensions()) if image is not None else None
    return dims, tuple(np.round(ijk_to_ras_matrix(volumeNode).ravel(), 9))


# --------------------------------------------------------------------------------------------
# Oriented image data
# --------------------------------------------------------------------------------------------
def oriented_image(array: np.ndarray, ijkToRas: np.ndarray) -> Any:
    """A ``vtkOrientedImageData`` holding a copy of ``array`` ([k, j, i]) with this IJK-to-RAS matrix."""
    array = np.ascontiguousarray(array)
    nk, nj, ni = array.shape
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    image.SetImageToWorldMatrix(vtk_matrix(ijkToRas))
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def geometry_image(volumeNode: Any) -> Any:
    """A ``vtkOrientedImageData`` with a volume node's grid (extent and matrix) and no voxels."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volumeNode.GetImageData().GetExtent())
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    return image


def array_from_image(image: Any) -> np.ndarray:
    """A ``[k, j, i]`` copy of an image's scalars."""
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    shape = (z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    scalars = image.GetPointData().GetScalars()
    if scalars is None or min(shape) <= 0:
        return np.zeros((max(shape[0], 0), max(shape[1], 0), max(shape[2], 0)), np.uint8)
    return numpy_support.vtk_to_numpy(scalars).reshape(shape).copy()


def volume_from_image(image: Any, array: np.ndarray) -> Volume:
    """A :class:`Volume` of ``array`` on an oriented image's grid (its extent start becomes the origin)."""
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    start = np.array([image.GetExtent()[0], image.GetExtent()[2], image.GetExtent()[4], 1.0])
    origin_ras = (ijk_to_ras @ start)[:3]
    spacing = np.array(image.GetSpacing(), dtype=float)
    directions = ijk_to_ras[:3, :3] / spacing
    origin = (-origin_ras[0], -origin_ras[1], origin_ras[2])
    return Volume(array, tuple(spacing), origin, LPS_FROM_RAS @ directions)


# --------------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------------
terminology_entry = slicer_terminology_entry
"""A Slicer ``TerminologyEntry`` tag from a model card's terminology: the engine's
:func:`SegDeepLogic.terminology.slicer_terminology_entry` (None for a terminology it cannot interpret)."""


def fill_segmentation(
    segmentationNode: Any,
    labels: np.ndarray,
    segments: Sequence[dict[str, Any]],
    referenceVolumeNode: Any,
) -> list[str]:
    """Replace every segment of ``segmentationNode`` by the structures of a label map.

    Parameters
    ----------
    segmentationNode : vtkMRMLSegmentationNode
        Target node (in the scene or not); its existing segments are removed.
    labels : ndarray [k, j, i]
        Integer label map on ``referenceVolumeNode``'s voxel grid (0 = background).
    segments : sequence of dict
        ``{"name", "value", "color", "terminology"}`` per structure (model card order).
    referenceVolumeNode : vtkMRMLScalarVolumeNode
        Gives the grid: the labelmap's image-to-world matrix is its IJK-to-RAS matrix.

    Returns
    -------
    list of str
        The segment IDs, in ``segments`` order.
    """
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    if tuple(labels.shape) != (dims[2], dims[1], dims[0]):
        raise ValueError(f"label map shape {labels.shape} does not match the volume's grid {dims[::-1]} (k, j, i)")
    dtype = np.uint8 if max((int(s["value"]) for s in segments), default=0) <= 255 else np.uint16
    image = oriented_image(labels.astype(dtype, copy=False), ijk_to_ras_matrix(referenceVolumeNode))
    wasModifying = segmentationNode.StartModify()
    try:
        segmentation = segmentationNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        ids = []
        for info in segments:
            segment = slicer.vtkSegment()
            segment.SetName(str(info["name"]))
            segment.SetColor(*[float(c) for c in info.get("color") or (0.5, 0.5, 0.5)])
            segment.SetLabelValue(int(info["value"]))
            entry = terminology_entry(info.get("terminology"), str(info["name"]))
            if entry:
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
            segment.AddRepresentation(BINARY_LABELMAP, image)  # one shared layer for all structures
            segment_id = segmentation.GenerateUniqueSegmentID(str(info["name"]))
            segmentation.AddSegment(segment, segment_id)
            ids.append(segment_id)
    finally:
        segmentationNode.EndModify(wasModifying)
    return ids


def add_mask_segment(segmentationNode: Any, mask: np.ndarray, name: str, color: Sequence[float], referenceVolumeNode: Any) -> str:
    """Add one segment holding a boolean mask (its own labelmap layer) on a volume's grid."""
    image = oriented_image(mask.astype(np.uint8), ijk_to_ras_matrix(referenceVolumeNode))
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*[float(c) for c in color])
    segment.SetLabelValue(1)
    segment.AddRepresentation(BINARY_LABELMAP, image)
    segmentation = segmentationNode.GetSegmentation()
    segment_id = segmentation.GenerateUniqueSegmentID(name)
    segmentation.AddSegment(segment, segment_id)
    return segment_id


def segment_id_by_name(segmentationNode: Any, name: str) -> str:
    """The ID of the segment called ``name`` (ValueError listing the names otherwise)."""
    segmentation = segmentationNode.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(name)
    if not segment_id:
        names = segment_names(segmentationNode)
        raise ValueError(
            f"segmentation {segmentationNode.GetName()!r} has no segment named {name!r}; segments: {', '.join(names) or '(none)'}"
        )
    return segment_id


def segment_names(segmentationNode: Any) -> list[str]:
    """Names of the segments of a segmentation node, in order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _segment_labelmap(segmentationNode: Any, segmentId: str, applyParentTransform: bool) -> tuple[Any, int]:
    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(segmentId)
    if segment is None:
        raise ValueError(f"segmentation {segmentationNode.GetName()!r} has no segment with ID {segmentId!r}")
    if not segmentation.ContainsRepresentation(BINARY_LABELMAP):
        segmentationNode.CreateBinaryLabelmapRepresentation()
    image = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, image, applyParentTransform
    )
    if not ok:
        raise ValueError(f"cannot get the binary labelmap of segment {segment.GetName()!r}")
    return image, int(segment.GetLabelValue())


def segment_mask(segmentationNode: Any, segmentId: str, referenceVolumeNode: Any | None = None) -> Volume | None:
    """A segment as a boolean :class:`Volume` (None when the segment is empty and has no grid).

    With ``referenceVolumeNode`` the mask is resampled (nearest neighbour, in the segmentation's
    local coordinates) onto that volume's grid; otherwise it is on the segment's own labelmap
    grid. The segment's label value is extracted from shared layers.
    """
    image, value = _segment_labelmap(segmentationNode, segmentId, applyParentTransform=referenceVolumeNode is None)
    if referenceVolumeNode is not None:
        reference = geometry_image(referenceVolumeNode)
        resampled = slicer.vtkOrientedImageData()
        extent = image.GetExtent()
        if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            dims = referenceVolumeNode.GetImageData().GetDimensions()
            mask = np.zeros((dims[2], dims[1], dims[0]), bool)
        else:
            ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                image, reference, resampled, False, False, None, 0
            )
            if not ok:
                raise ValueError("cannot resample the segment onto the volume's grid")
            mask = array_from_image(resampled) == value
        spacing, origin, direction = volume_geometry(referenceVolumeNode)
        return Volume(mask, spacing, origin, direction)
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None
    return volume_from_image(image, array_from_image(image) == value)


# --------------------------------------------------------------------------------------------
# Subject hierarchy (DICOM patient / study)
# --------------------------------------------------------------------------------------------
def place_under_volume_study(dataNode: Any, volumeNode: Any) -> int | None:
    """Put ``dataNode`` in the subject hierarchy under the study of ``volumeNode``.

    A CT loaded from DICOM sits under its patient and study items; a segmentation placed beside
    it (same study) is what Slicer's DICOM export (Data module: right-click the study or the
    segmentation, "Export to DICOM...", with SlicerRT for RTSTRUCT or QuantitativeReporting for
    DICOM SEG) offers to send on, referencing that CT. Returns the study item ID, or None when the
    volume is not under a study (then nothing changes).
    """
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
    if shNode is None:
        return None
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    if not volumeItem:
        return None
    study = shNode.GetItemParent(volumeItem)
    while study and shNode.GetItemLevel(study) != slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
        study = shNode.GetItemParent(study)
    if not study or study == shNode.GetSceneItemID():
        return None
    dataItem = shNode.GetItemByDataNode(dataNode)
    if not dataItem:
        dataItem = shNode.CreateItem(study, dataNode)
    elif shNode.GetItemParent(dataItem) != study:
        shNode.SetItemParent(dataItem, study)
    return study
