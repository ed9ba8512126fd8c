"""MRML side of the review loop: load the next case to review, save a correction as training data.

* :func:`loadReviewCase` -- one entry of the review queue (:func:`SegDeepLogic.review.review_queue`
  of a ``segdeep batch`` output folder) into the scene: the CT, its segmentation (``.seg.nrrd``)
  and, when the batch wrote it, the uncertainty map; the Segment Editor is pointed at the
  segmentation with the most uncertain structure selected.
* :func:`saveCorrectionAsTrainingCase` -- the (edited) segmentation node and its CT into a dataset
  folder that ``segdeep train`` reads (:func:`SegDeepLogic.corrections.save_training_case`):
  reviewed structures as masks, the others unlabelled, provenance recorded.

Both are reached from :class:`SegDeepLib.logic.SegDeepLogicBase` (``reviewQueue``,
``loadReviewCase``, ``saveCorrectionAsTrainingCase``) and tested headless on real MRML.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import slicer

from SegDeepLogic.errors import SegDeepError

from . import mrml

REVIEW_CASE_ATTRIBUTE = "SegDeep.ReviewCase"
REVIEW_BATCH_ATTRIBUTE = "SegDeep.ReviewBatch"
MODEL_PATH_ATTRIBUTE = "SegDeep.ModelPath"


def _get(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _read_node(scene: Any, nodeClass: str, storageClass: str, path: Path, name: str, added: list[Any]) -> Any:
    """A new node read from ``path`` by its MRML storage node (kept, as Slicer's "Add data" does)."""
    node = scene.AddNewNodeByClass(nodeClass, scene.GetUniqueNameByString(name))
    added.append(node)
    storage = scene.AddNewNodeByClass(storageClass)
    added.append(storage)
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        raise SegDeepError(f"Slicer could not read {path}")
    return node


def segmentEditorNode(scene: Any) -> Any:
    """The scene's Segment Editor parameter node (the first one; created if there is none)."""
    node = scene.GetFirstNodeByClass("vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "SegmentEditor")
    return node


def loadReviewCase(
    item: Any,
    scene: Any = None,
    *,
    roleAttribute: str,
    roleSegmentation: str,
    roleUncertainty: str,
    sourceReference: str,
    uncertaintyReference: str,
) -> dict[str, Any]:
    """Load one review-queue case into the scene (see the module notes).

    Parameters
    ----------
    item : ReviewItem or dict
        An entry of :func:`SegDeepLogic.review.review_queue` (or its JSON table row).
    scene : vtkMRMLScene, optional
        Default ``slicer.mrmlScene``.
    roleAttribute, roleSegmentation, roleUncertainty, sourceReference, uncertaintyReference : str
        The module's output tags (:mod:`SegDeepLib.logic`), so the loaded nodes are what a
        segmentation by the panel would have made.

    Returns
    -------
    dict
        ``volumeNode``, ``segmentationNode``, ``segmentId`` (the most uncertain structure's, or
        None), ``uncertaintyNode`` (or None), ``segmentEditorNode``.

    Raises
    ------
    SegDeepError
        The case has no CT file or no ``.seg.nrrd`` segmentation (a failed case, a DICOM
        series, another output format), or Slicer cannot read them. Nothing is added then.
    """
    scene = scene or slicer.mrmlScene
    case_id = str(_get(item, "case_id"))
    ct, segmentation = _get(item, "ct"), _get(item, "segmentation")
    if not ct or not Path(ct).is_file():
        raise SegDeepError(f"review case {case_id}: its CT {ct} is not a file (a DICOM series: load it with the DICOM module)")
    if not segmentation or not str(segmentation).endswith(".seg.nrrd") or not Path(segmentation).is_file():
        status = _get(item, "status")
        raise SegDeepError(
            f"review case {case_id}: no .seg.nrrd segmentation to load ({segmentation or 'none'}; status {status}); "
            "run the batch with the default --format seg.nrrd"
        )
    added: list[Any] = []
    try:
        volumeNode = _read_node(scene, "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", Path(ct), case_id, added)
        segmentationNode = _read_node(
            scene, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", Path(segmentation), f"{case_id} SegDeep", added
        )
        segmentationNode.SetAttribute(roleAttribute, roleSegmentation)
        segmentationNode.SetAttribute(REVIEW_CASE_ATTRIBUTE, case_id)
        if _get(item, "batch"):
            segmentationNode.SetAttribute(REVIEW_BATCH_ATTRIBUTE, str(_get(item, "batch")))
        if _get(item, "model"):
            segmentationNode.SetAttribute(MODEL_PATH_ATTRIBUTE, str(_get(item, "model")))
        segmentationNode.SetNodeReferenceID(sourceReference, volumeNode.GetID())
        uncertaintyNode = None
        uncertainty = _get(item, "uncertainty")
        if uncertainty and Path(uncertainty).is_file():
            uncertaintyNode = _read_node(
                scene,
                "vtkMRMLScalarVolumeNode",
                "vtkMRMLVolumeArchetypeStorageNode",
                Path(uncertainty),
                f"{case_id} uncertainty",
                added,
            )
            uncertaintyNode.SetAttribute(roleAttribute, roleUncertainty)
            uncertaintyNode.SetNodeReferenceID(sourceReference, volumeNode.GetID())
            segmentationNode.SetNodeReferenceID(uncertaintyReference, uncertaintyNode.GetID())
        structure = _get(item, "most_uncertain_structure")
        segmentId = None
        if structure:
            segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(str(structure)) or None
        for node in (volumeNode, segmentationNode, uncertaintyNode):  # once everything was read
            if node is not None:
                node.CreateDefaultDisplayNodes()
                added.extend(node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes()))
        editor = segmentEditorNode(scene)
        editor.SetAndObserveSegmentationNode(segmentationNode)
        setSource = getattr(editor, "SetAndObserveSourceVolumeNode", None) or editor.SetAndObserveMasterVolumeNode
        setSource(volumeNode)
        editor.SetSelectedSegmentID(segmentId)
    except BaseException:
        for node in reversed(added):
            if node is not None and node.GetScene() is not None:
                scene.RemoveNode(node)
        raise
    return {
        "volumeNode": volumeNode,
        "segmentationNode": segmentationNode,
        "segmentId": segmentId,
        "uncertaintyNode": uncertaintyNode,
        "segmentEditorNode": editor,
    }


def _model_card(modelInfo: Any, path: Path) -> dict[str, Any]:
    """Name, version, labels and weights SHA-256 of a model package (folder or .zip)."""
    card = {"name": modelInfo.name, "version": modelInfo.version, "labels": modelInfo.labels, "weights_sha256": None}
    try:
        if path.is_dir():
            data = json.loads((path / "model.json").read_text(encoding="utf-8"))
        else:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "model.json"]
                data = json.loads(archive.read(min(names, key=len)).decode("utf-8"))
        card["weights_sha256"] = data.get("weights_sha256")
    except (OSError, ValueError, KeyError):
        pass
    return card


def saveCorrectionAsTrainingCase(
    logic: Any,
    segmentationNode: Any,
    datasetDir: str | os.PathLike,
    reviewedStructures: Sequence[str],
    *,
    volumeNode: Any = None,
    caseId: str | None = None,
    annotator: str | None = None,
    model: str | os.PathLike | None = None,
    sourceReference: str,
    overwrite: bool = False,
    notes: str = "",
) -> Path:
    """Save an edited segmentation node and its CT as a training case (see the module notes).

    Parameters
    ----------
    logic : SegDeepLogicBase
        For the model package (``resolveModel``, ``modelInfo``).
    segmentationNode : vtkMRMLSegmentationNode
        The corrected segmentation: segments named as the model's structures.
    datasetDir : path-like
        The dataset folder ``segdeep train --train`` is given.
    reviewedStructures : sequence of str
        The segments the user checked; the model's other structures stay unlabelled.
    volumeNode : vtkMRMLScalarVolumeNode, optional
        The CT (default: the segmentation's source volume, as the panel or
        :func:`loadReviewCase` set it). The masks are taken on its voxel grid.
    caseId : str, optional
        Default: the review case id, else the CT node's name (spaces as ``_``).
    annotator : str, optional
        Default: the login name.
    model : path-like, optional
        The model package that produced the starting segmentation (default: the node's
        ``SegDeep.ModelPath``); its label set is the dataset's.
    sourceReference : str
        The node reference role naming the source volume.
    overwrite : bool
        Replace an existing case of that id.
    notes : str
        Free text, recorded in the provenance.

    Returns
    -------
    Path
        The case folder.
    """
    from SegDeepLogic.corrections import save_training_case

    if segmentationNode is None:
        raise SegDeepError("no segmentation node given")
    if volumeNode is None:
        volumeNode = segmentationNode.GetNodeReference(sourceReference)
    if volumeNode is None:
        raise SegDeepError(
            f"segmentation {segmentationNode.GetName()!r} has no source CT: pass volumeNode= (the CT it was drawn on)"
        )
    model = model or segmentationNode.GetAttribute(MODEL_PATH_ATTRIBUTE)
    if not model:
        raise SegDeepError(
            f"segmentation {segmentationNode.GetName()!r} does not say which model produced it: pass model= (a package path)"
        )
    modelPath = logic.resolveModel(model)
    card = _model_card(logic.modelInfo(modelPath), modelPath)
    names = mrml.segment_names(segmentationNode)
    masks = {}
    for name in reviewedStructures:
        if name not in names:
            raise SegDeepError(
                f"segmentation {segmentationNode.GetName()!r} has no segment named {name!r} (segments: {', '.join(names)})"
            )
        masks[name] = mrml.segment_mask(segmentationNode, mrml.segment_id_by_name(segmentationNode, name), volumeNode)
    ct = mrml.volume_from_node(volumeNode)
    if caseId is None:
        caseId = segmentationNode.GetAttribute(REVIEW_CASE_ATTRIBUTE) or volumeNode.GetName().strip().replace(" ", "_")
    source = {
        "ct_node": volumeNode.GetName(),
        "segmentation_node": segmentationNode.GetName(),
        "ct_file": _storage_file(volumeNode),
        "batch": segmentationNode.GetAttribute(REVIEW_BATCH_ATTRIBUTE),
        "model_path": str(modelPath),
        "saved_from": "3D Slicer (SegDeep module)",
    }
    return save_training_case(
        ct,
        masks,
        card,
        list(reviewedStructures),
        datasetDir,
        str(caseId),
        annotator=annotator,
        source=source,
        notes=notes,
        overwrite=overwrite,
    )


def _storage_file(node: Any) -> str | None:
    storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
    return storage.GetFileName() if storage is not None else None
