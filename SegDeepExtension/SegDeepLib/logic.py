"""MRML side of the SegDeep module: segment, compare with a threshold, export for printing.

:class:`SegDeepLogicBase` is everything the module does, usable from the Python console and
tested headless against ``slicer-core`` (real MRML, no Qt). ``SegDeep.py``'s ``SegDeepLogic``
adds Slicer's ``ScriptedLoadableModuleLogic`` (parameter node) on top of it.

Outputs are tagged with the attribute ``SegDeep.Role`` and a node reference to their source, so
re-running replaces the module's own outputs and never touches the user's nodes:

=================  ===============================  =======================================
role               node                              replaced per
=================  ===============================  =======================================
``segmentation``   vtkMRMLSegmentationNode           input volume
``uncertainty``    vtkMRMLScalarVolumeNode           input volume
``comparison``     vtkMRMLTableNode                  segmentation node and segment name
``disagreement``   vtkMRMLSegmentationNode           segmentation node and segment name
``printReport``    vtkMRMLTableNode                  segmentation node
=================  ===============================  =======================================

Segmentation runs in a separate process (:mod:`SegDeepLib.worker`); the scene is modified only
after that process finished successfully and its result files were read and checked, so a
cancellation, a crash or an out-of-memory kill leaves the scene exactly as it was.

Every segmentation carries the engine's out-of-distribution check
(:func:`SegDeepLogic.plausibility.check_plausibility`): the segmentation node gets the attributes
``SegDeep.Plausibility`` (the check as JSON: verdict, findings, image features) and
``SegDeep.PlausibilityVerdict`` (``ok``, ``caution``, ``mismatch`` or ``unchecked``), saved with
the scene; :meth:`SegDeepLogicBase.plausibility` reads them back, and the verdict is logged. A
"mismatch" means the CT is not the anatomy the model was trained on: do not use the output.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from SegDeepLogic._compat import zip_strict
from SegDeepLogic.errors import CancelledError, MismatchError, SegDeepError
from SegDeepLogic.model_card import load_model_card
from SegDeepLogic.presets import PRESETS as PRESETS  # re-exported for SegDeep.py
from SegDeepLogic.presets import is_bone_like
from SegDeepLogic.resources import list_bundled_models
from SegDeepLogic.resources import sample_ct_path as sample_ct_path  # re-exported for SegDeep.py
from SegDeepLogic.verdicts import PLAUSIBILITY_COLORS as PLAUSIBILITY_COLORS  # re-exported for SegDeep.py
from SegDeepLogic.verdicts import PLAUSIBILITY_HEADLINES, PLAUSIBILITY_LABELS

from . import mrml
from .dependencies import ensure_dependencies
from .process import WorkerProcess, python_executable

ProgressCallback = Callable[[float, str], None]
_log = logging.getLogger("SegDeep")

WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")
ENGINE_ROOT = Path(__import__("SegDeepLogic").__file__).resolve().parents[1]

ROLE_ATTRIBUTE = "SegDeep.Role"
SEGMENT_NAME_ATTRIBUTE = "SegDeep.SegmentName"
ROLE_SEGMENTATION = "segmentation"
ROLE_UNCERTAINTY = "uncertainty"
ROLE_COMPARISON = "comparison"
ROLE_DISAGREEMENT = "disagreement"
ROLE_PRINT_REPORT = "printReport"
SOURCE_VOLUME_REFERENCE = "SegDeepSourceVolume"
SOURCE_SEGMENTATION_REFERENCE = "SegDeepSourceSegmentation"
UNCERTAINTY_REFERENCE = "SegDeepUncertainty"
DISAGREEMENT_REFERENCE = "SegDeepDisagreement"
PLAUSIBILITY_ATTRIBUTE = "SegDeep.Plausibility"
PLAUSIBILITY_VERDICT_ATTRIBUTE = "SegDeep.PlausibilityVerdict"

NETWORK_ONLY = "network only"
THRESHOLD_ONLY = "threshold only"
THRESHOLD_SEGMENT = "threshold"
NETWORK_ONLY_COLOR = (0.9, 0.2, 0.2)
THRESHOLD_ONLY_COLOR = (0.2, 0.45, 1.0)
THRESHOLD_COLOR = (0.95, 0.84, 0.57)

DEVICES = ("auto", "cuda", "cpu", "mps")
MESH_FORMATS = ("STL", "OBJ", "PLY", "3MF")
COORDINATE_SYSTEMS = ("LPS", "RAS")

METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("dice", "Dice", ""),
    ("jaccard", "Jaccard", ""),
    ("sensitivity", "Sensitivity (of the network, threshold as reference)", ""),
    ("precision", "Precision", ""),
    ("hd_mm", "Hausdorff distance", "mm"),
    ("hd95_mm", "Hausdorff distance 95%", "mm"),
    ("assd_mm", "Average symmetric surface distance", "mm"),
    ("surface_dice", "Surface Dice", ""),
    ("tolerance_mm", "Surface Dice tolerance", "mm"),
    ("volume_a_ml", "Network volume", "mL"),
    ("volume_b_ml", "Threshold volume", "mL"),
    ("volume_difference_ml", "Volume difference (network - threshold)", "mL"),
    ("only_a_ml", "Network only", "mL"),
    ("only_b_ml", "Threshold only", "mL"),
    ("lower_hu", "Threshold lower bound", "HU"),
    ("upper_hu", "Threshold upper bound", "HU"),
    ("roi_margin_mm", "Region: the segment grown by", "mm"),
    ("roi_volume_ml", "Region volume", "mL"),
)
"""Rows of the comparison table: (key of ``MaskComparison.to_dict()`` or threshold bound, label, unit)."""


def removeStaleWorkFolders(parent: str | None = None) -> list[Path]:
    """Delete ``SegDeep-<pid>-*`` worker folders (patient CT copies) whose Slicer process is gone."""
    from SegDeepLogic.atomic import pid_alive

    removed = []
    folder = Path(parent or tempfile.gettempdir())
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = re.match(r"SegDeep-(\d+)-", entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and not pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class SegDeepWorkerError(SegDeepError):
    """The segmentation process failed: it crashed, was killed, ran out of memory or reported an error.

    Attributes
    ----------
    kind : str
        ``out-of-memory``, ``killed``, ``crash``, ``input``, ``missing-dependency``,
        ``internal`` or ``incomplete``.
    returncode : int or None
    log : str
        The last lines the process printed (tracebacks, warnings).
    """

    def __init__(self, message: str, *, kind: str = "crash", returncode: int | None = None, log: str = "") -> None:
        super().__init__(message)
        self.kind, self.returncode, self.log = kind, returncode, log


@dataclasses.dataclass
class ModelInfo:
    """What the panel shows about a model package (read from its ``model.json``)."""

    path: str
    name: str
    version: str = ""
    description: str = ""
    labels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    limitations: str = ""
    bundled: bool = False

    @property
    def label_names(self) -> list[str]:
        return [str(label.get("name")) for label in self.labels]

    def display_text(self) -> str:
        """``"name version: label, label"`` for a combo box."""
        version = f" {self.version}" if self.version else ""
        return f"{self.name}{version}: {', '.join(self.label_names)}"


# --------------------------------------------------------------------------------------------
# A running segmentation
# --------------------------------------------------------------------------------------------
class SegmentationJob:
    """A segmentation running in the worker process; the GUI polls it from a ``qt.QTimer``.

    Use :meth:`poll` to receive progress, :attr:`finished` to know when to call
    :meth:`SegDeepLogicBase.finishSegmentation`, and :meth:`cancel` to kill the worker.
    """

    def __init__(self, volumeNode: Any, workdir: Path, process: WorkerProcess, options: dict[str, Any], grid: Any) -> None:
        self.volumeNode = volumeNode
        self.workdir = workdir
        self.process = process
        self.options = options
        self.grid = grid  # the engine Volume geometry the worker was given (array not kept)
        self.signature = mrml.geometry_signature(volumeNode)
        self.fraction = 0.0
        self.stage = "starting"
        self.error: dict[str, Any] | None = None
        self.done = False
        self.cancelled = False
        self.children: list[int] = []

    @property
    def finished(self) -> bool:
        """True once the worker exited (successfully or not) and its output was read."""
        return self.process.finished

    @property
    def running(self) -> bool:
        return not self.finished

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events since the last call; updates :attr:`fraction`, :attr:`stage` and :attr:`error`."""
        events = self.process.poll(timeout)
        for event in events:
            kind = event.get("event")
            if kind == "progress":
                self.fraction = float(event.get("fraction", self.fraction))
                self.stage = str(event.get("stage", self.stage))
            elif kind == "error":
                self.error = event
            elif kind == "done":
                self.done = True
            elif kind == "child" and isinstance(event.get("pid"), int):
                self.children.append(event["pid"])
        return events

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until the worker exited (for scripts and tests); returns the events received."""
        self.process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        """Kill the worker and every process it started; nothing is added to the scene."""
        if not self.process.finished:
            self.process.kill()
            self.cancelled = True
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the job's temporary folder."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def check(self) -> None:
        """Raise :class:`CancelledError` or :class:`SegDeepWorkerError` unless the run succeeded."""
        if self.cancelled:
            raise CancelledError("segmentation cancelled by the user")
        if not self.finished:
            raise SegDeepError("the segmentation is still running")
        rc = self.process.returncode
        log = self.process.log_tail()
        if self.error is not None:
            kind = str(self.error.get("kind", "internal"))
            message = str(self.error.get("message", "unknown error"))
            if kind == "out-of-memory":
                message = (
                    f"The segmentation ran out of memory: {message}. Try the CPU device, turn test-time augmentation off, "
                    "or close other programs."
                )
            elif kind == "missing-dependency":
                message = f"The segmentation process is missing a Python package: {message}"
            else:
                message = f"Segmentation failed: {message}"
            raise SegDeepWorkerError(message, kind=kind, returncode=rc, log=log)
        if rc is not None and rc < 0:
            number = -rc
            name = signal.Signals(number).name if number in {s.value for s in signal.Signals} else str(number)
            raise SegDeepWorkerError(
                f"The segmentation process was killed ({name}) before it finished. This usually means the computer "
                "ran out of memory; try the CPU device, turn test-time augmentation off, or close other programs.",
                kind="out-of-memory" if number == getattr(signal, "SIGKILL", 9) else "killed",
                returncode=rc,
                log=log,
            )
        if rc != 0:
            detail = f"\n\nLast output:\n{log}" if log else ""
            raise SegDeepWorkerError(
                f"The segmentation process stopped with exit code {rc}.{detail}", kind="crash", returncode=rc, log=log
            )
        if not self.done or not (self.workdir / "result.json").is_file():
            raise SegDeepWorkerError(
                "The segmentation process ended without writing its result.", kind="incomplete", returncode=rc, log=log
            )


# --------------------------------------------------------------------------------------------
# The logic
# --------------------------------------------------------------------------------------------
class SegDeepLogicBase:
    """Segment CT volumes, compare with a Hounsfield threshold, export printable meshes.

    The console API (camelCase, as Slicer's)::

        logic = slicer.util.getModuleLogic("SegDeep")
        seg = logic.segment(volumeNode, device="auto", uncertainty=True)
        check = logic.plausibility(seg)  # {"verdict": "ok" | "caution" | "mismatch" | "unchecked", "findings": [...]}
        # a CT the model does not know raises MismatchError and adds nothing, unless allowMismatch=True
        table = logic.compareWithThreshold(seg, volumeNode, segmentName="bone", preset="bone")
        reports = logic.exportForPrinting(seg, "/tmp/print", format="STL", smoothing=0.5)

    Attributes
    ----------
    lastSegmentation : dict or None
        Summary of the last segmentation (device, fallbacks, timings, segments, uncertainty,
        ``plausibility``: the out-of-distribution check; ``withheld``: on a mismatch, what the
        network predicted and was not added).
    lastComparison : dict or None
        ``MaskComparison.to_dict()`` of the last comparison, with the threshold parameters.
    lastExport : list of dict or None
        The print-readiness reports of the last export.
    """

    def __init__(self) -> None:
        self.lastSegmentation: dict[str, Any] | None = None
        self.lastComparison: dict[str, Any] | None = None
        self.lastExport: list[dict[str, Any]] | None = None

    # --- environment -----------------------------------------------------------------------
    def ensureDependencies(self, torch: bool = False, ask: bool = True) -> None:
        """Install missing Python packages with the user's consent (inside Slicer); see :mod:`SegDeepLib.dependencies`."""
        ensure_dependencies(torch=torch, ask=ask)

    @staticmethod
    def temporaryDirectory() -> str | None:
        """Slicer's temporary folder inside the application, the system's elsewhere."""
        app = getattr(slicer, "app", None)
        path = getattr(app, "temporaryPath", None) if app is not None else None
        return str(path) if path else None

    def detectDevices(self, timeout: float = 120.0) -> dict[str, Any]:
        """What PyTorch finds here, probed in a separate process (Slicer never imports torch).

        Returns
        -------
        dict
            ``{"torch": version or None, "cuda": [GPU names], "mps": bool, "auto": "cuda" | "mps" | "cpu" | None,
            "error": message or None}``.
        """
        process = self.startDeviceProbe()
        if process.wait(timeout) is None:
            process.kill()
        return self.deviceProbeResult(process)

    def startDeviceProbe(self) -> WorkerProcess:
        """Start the device probe without waiting (the GUI polls it); see :meth:`deviceProbeResult`."""
        return WorkerProcess([python_executable(), str(WORKER_SCRIPT), "--probe"], env=self._worker_env()).start()

    @staticmethod
    def deviceProbeResult(process: WorkerProcess) -> dict[str, Any]:
        """The devices reported by a finished probe process (see :meth:`detectDevices`)."""
        process.poll()
        result: dict[str, Any] = {"torch": None, "cuda": [], "mps": False, "auto": None, "error": None}
        for event in process.history:
            if event.get("event") == "devices":
                result.update({k: event.get(k, result[k]) for k in ("torch", "cuda", "mps", "auto")})
            elif event.get("event") == "error":
                result["error"] = event.get("message")
        if result["auto"] is None and result["error"] is None:
            result["error"] = process.log_tail(3) or "the device probe did not answer"
        return result

    # --- models ----------------------------------------------------------------------------
    @staticmethod
    def bundledModelPaths() -> list[Path]:
        """The bundled model packages (:func:`SegDeepLogic.resources.list_bundled_models`), sorted.

        Never imports PyTorch (the card and the lookup are torch-free modules), so the
        panel lists models in Slicer's process while torch lives only in the worker process.
        """
        return list(list_bundled_models())

    @staticmethod
    def modelInfo(path: str | os.PathLike, bundled: bool = False) -> ModelInfo:
        """Name, version, description and labels of a model package folder, ``model.json`` or ``.zip``.

        The card is read and validated by the engine's torch-free :func:`SegDeepLogic.model_card.load_model_card`
        (no weights are read); an invalid card is a :class:`SegDeepError` naming the problem.
        """
        card = load_model_card(path)
        return ModelInfo(
            path=str(path),
            name=card.name,
            version=card.version,
            description=card.description,
            labels=[dict(label) for label in card.labels],
            limitations=card.limitations,
            bundled=bundled,
        )

    def availableModels(self) -> list[ModelInfo]:
        """The bundled model packages, with their labels (unreadable packages are skipped with a warning)."""
        models = []
        for path in self.bundledModelPaths():
            try:
                models.append(self.modelInfo(path, bundled=True))
            except (OSError, ValueError, SegDeepError, zipfile.BadZipFile) as exc:
                warnings.warn(f"skipping model package {path}: {exc}", stacklevel=2)
        return models

    def resolveModel(self, model: str | os.PathLike | None = None) -> Path:
        """The model package to use: a path, the name of a bundled model, or None for the first bundled one."""
        if model is None or str(model) == "":
            bundled = self.bundledModelPaths()
            if not bundled:
                raise SegDeepError(
                    "no model package is bundled with SegDeep; load one with 'Load a model package...' or pass model=PATH"
                )
            return bundled[0]
        path = Path(model).expanduser()
        if path.exists():
            return path.resolve()
        for info in self.availableModels():
            if str(model) in (info.name, Path(info.path).name):
                return Path(info.path)
        raise SegDeepError(f"no model package at {model} (and no bundled model has that name)")

    # --- segmentation ----------------------------------------------------------------------
    @staticmethod
    def _worker_env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def startSegmentation(
        self,
        volumeNode: Any,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        tta: bool = False,
        refine: bool = False,
        uncertainty: bool = False,
        numThreads: int | None = None,
        allowMismatch: bool = False,
    ) -> SegmentationJob:
        """Start segmenting ``volumeNode`` in the worker process and return at once.

        The input volume is written to a temporary folder (NRRD, LPS, exactly the node's grid).
        Poll the returned job, then call :meth:`finishSegmentation` (the GUI does this from a
        ``qt.QTimer``; :meth:`segment` does it in a loop).
        """
        self._check_volume(volumeNode)
        model_path = self.resolveModel(model)
        device = self._check_device(device)
        from SegDeepLogic.io import write_volume
        from SegDeepLogic.options import SegmentOptions

        # the run's options, built once here and read back by the worker (SegmentOptions.from_dict)
        segment_options = SegmentOptions(
            device=device,
            tta=bool(tta),
            refine=bool(refine),
            uncertainty=bool(uncertainty),
            num_threads=None if numThreads is None else int(numThreads),
            allow_mismatch=bool(allowMismatch),
        )

        ct = mrml.volume_from_node(volumeNode)
        removeStaleWorkFolders(self.temporaryDirectory())
        workdir = Path(tempfile.mkdtemp(prefix=f"SegDeep-{os.getpid()}-", dir=self.temporaryDirectory()))
        try:
            write_volume(ct, workdir / "input.nrrd", compress=False)
            options = {
                "engine_root": str(ENGINE_ROOT),
                "input": str(workdir / "input.nrrd"),
                "output_dir": str(workdir),
                "model": str(model_path),
                "options": segment_options.to_dict(),
                "parent_pid": os.getpid(),  # the worker removes this folder if Slicer dies
            }
            from SegDeepLogic.atomic import write_text

            write_text(workdir / "job.json", json.dumps(options, indent=1))
            process = WorkerProcess(
                [python_executable(), str(WORKER_SCRIPT), str(workdir / "job.json")], env=self._worker_env(), cwd=workdir
            ).start()
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        grid = (ct.array.shape, ct.spacing, ct.origin, ct.direction)
        return SegmentationJob(volumeNode, workdir, process, options, grid)

    def finishSegmentation(self, job: SegmentationJob) -> Any:
        """Read a finished job's result into the scene and return the segmentation node.

        Raises :class:`CancelledError` for a cancelled job and :class:`SegDeepWorkerError` for a
        failed one; in both cases the scene is not modified. The job's temporary folder is
        deleted in every case.
        """
        try:
            job.check()
            return self._load_result(job)
        finally:
            job.cleanup()

    def segment(
        self,
        volumeNode: Any,
        model: str | os.PathLike | None = None,
        device: str = "auto",
        tta: bool = False,
        refine: bool = False,
        uncertainty: bool = False,
        progress: ProgressCallback | None = None,
        cancel: Any = None,
        numThreads: int | None = None,
        allowMismatch: bool = False,
    ) -> Any:
        """Segment a CT volume with a U-Net model package; returns a ``vtkMRMLSegmentationNode``.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            CT in Hounsfield units (any orientation and spacing).
        model : str or path, optional
            Model package folder or ``.zip``, or a bundled model's name; default: the first
            bundled model.
        device : {"auto", "cuda", "cpu", "mps"}
            Where the network runs; ``"auto"`` takes a GPU when there is one.
        tta : bool
            Mirroring test-time augmentation (8 flips; slower, slightly better, and gives the
            variance across flips).
        refine : bool
            Refine bone structures at the CT's native resolution with a HU threshold.
        uncertainty : bool
            Also create the uncertainty map (normalised entropy, 0 certain .. 1 uncertain) as a
            volume node, referenced from the segmentation node (role ``SegDeepUncertainty``).
        progress : callable, optional
            ``progress(fraction, stage)``; raising :class:`~SegDeepLogic.errors.CancelledError`
            (or any exception) from it cancels the run.
        cancel : CancelToken, optional
            Checked about ten times a second; cancelling kills the worker.
        numThreads : int, optional
            CPU threads for the network in the worker.
        allowMismatch : bool
            Add the segments even when the out-of-distribution check says "mismatch". Default
            False: a CT that is not the anatomy the model knows gets no segments at all.

        Returns
        -------
        vtkMRMLSegmentationNode
            One segment per structure (names, colours and terminology from the model card) on the
            volume's voxel grid, under the volume's parent transform. It replaces the segmentation
            this module made earlier for the same volume. Its out-of-distribution check is in the
            attributes ``SegDeep.Plausibility`` (JSON) and ``SegDeep.PlausibilityVerdict``; read it
            with :meth:`plausibility` (also in :attr:`lastSegmentation`). Verdict "mismatch" (the
            CT is not the anatomy the model was trained on) is only possible with
            ``allowMismatch=True``: do not use the result (logged as a warning, as is "caution").

        Raises
        ------
        MismatchError
            The out-of-distribution check said "mismatch" and ``allowMismatch`` is False: the
            message gives the reasons and what the network had predicted; nothing was added,
            and :attr:`lastSegmentation` holds the check (``plausibility``) and ``withheld``.
        SegDeepWorkerError
            The worker crashed, was killed, ran out of memory or reported an error.
        CancelledError
            Cancelled through ``progress`` or ``cancel``. The scene is unchanged in both cases.
        """
        self.ensureDependencies(torch=True)
        job = self.startSegmentation(volumeNode, model, device, tta, refine, uncertainty, numThreads, allowMismatch)
        try:
            while not job.finished:
                for event in job.poll(timeout=0.1):
                    if event.get("event") == "progress" and progress is not None:
                        progress(job.fraction, job.stage)
                if cancel is not None and getattr(cancel, "cancelled", False):
                    raise CancelledError("segmentation cancelled by the user")
            return self.finishSegmentation(job)
        except BaseException:
            job.cancel()
            raise
        finally:
            job.cleanup()

    def _load_result(self, job: SegmentationJob) -> Any:
        from SegDeepLogic.io import read_volume
        from SegDeepLogic.plausibility import mismatch_message  # scipy: not at Slicer start-up

        volumeNode = job.volumeNode
        scene = volumeNode.GetScene()
        if scene is None:
            raise SegDeepError("the input volume was removed from the scene during the segmentation")
        if mrml.geometry_signature(volumeNode) != job.signature:
            raise SegDeepError("the input volume's size or geometry changed during the segmentation; run it again")
        result = json.loads((job.workdir / "result.json").read_text(encoding="utf-8"))
        files = result.get("files") or {}
        labels = read_volume(job.workdir / files.get("labels", "labels.nrrd"))
        self._check_same_grid(labels, job.grid, "the label map")
        uncertainty = None
        if job.options["options"]["uncertainty"] and files.get("uncertainty"):
            uncertainty = read_volume(job.workdir / files["uncertainty"])
            self._check_same_grid(uncertainty, job.grid, "the uncertainty map")
        segments = result.get("segments") or []
        if not segments:
            raise SegDeepError("the segmentation result lists no segments")
        plausibility = self._normalise_plausibility(result.get("plausibility"))
        if plausibility["verdict"] == "mismatch" and not job.options["options"]["allow_mismatch"]:
            # The engine withheld the labels: add nothing (an empty node would look like "nothing there").
            result["plausibility"] = plausibility
            result["segmentationNodeID"] = None
            self.lastSegmentation = result
            message = (
                "nothing added to the scene: "
                + mismatch_message(plausibility, result.get("withheld") or [], volumeNode.GetName())
                + " Pass allowMismatch=True to add the segments anyway (not for use).\n"
                + self.plausibilityText(plausibility)
            )
            _log.warning("SegDeep: %s", message)
            raise MismatchError(message, result)

        # Everything is read and checked: now (and only now) the scene changes.
        added: list[Any] = []
        try:
            segmentationNode = self._output_node(
                scene, "vtkMRMLSegmentationNode", ROLE_SEGMENTATION, SOURCE_VOLUME_REFERENCE, volumeNode
            )
            if segmentationNode is None:
                segmentationNode = scene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", scene.GetUniqueNameByString(f"{volumeNode.GetName()} SegDeep")
                )
                added.append(segmentationNode)
            model_name = Path(job.options["model"]).name
            segmentationNode.SetAttribute(ROLE_ATTRIBUTE, ROLE_SEGMENTATION)
            segmentationNode.SetAttribute(
                "SegDeep.Model", str(result.get("parameters", {}).get("model", {}).get("name") or model_name)
            )
            segmentationNode.SetAttribute("SegDeep.ModelPath", job.options["model"])
            segmentationNode.SetAttribute("SegDeep.Device", str(result.get("device", "")))
            segmentationNode.SetAttribute("SegDeep.Options", json.dumps(job.options["options"]))
            segmentationNode.SetAttribute(PLAUSIBILITY_ATTRIBUTE, json.dumps(plausibility, default=str))
            segmentationNode.SetAttribute(PLAUSIBILITY_VERDICT_ATTRIBUTE, plausibility["verdict"])
            segmentationNode.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volumeNode.GetID())
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
            mrml.fill_segmentation(segmentationNode, labels.array, segments, volumeNode)
            if segmentationNode.GetDisplayNode() is None:
                segmentationNode.CreateDefaultDisplayNodes()
            # a CT loaded from DICOM: the segmentation goes under its study, ready for DICOM export
            mrml.place_under_volume_study(segmentationNode, volumeNode)

            old_uncertainty = self._output_node(
                scene, "vtkMRMLScalarVolumeNode", ROLE_UNCERTAINTY, SOURCE_VOLUME_REFERENCE, volumeNode
            )
            if uncertainty is not None:
                uncertaintyNode = old_uncertainty
                if uncertaintyNode is None:
                    uncertaintyNode = scene.AddNewNodeByClass(
                        "vtkMRMLScalarVolumeNode", scene.GetUniqueNameByString(f"{volumeNode.GetName()} SegDeep uncertainty")
                    )
                    added.append(uncertaintyNode)
                self._fill_uncertainty(uncertaintyNode, uncertainty.array.astype(np.float32, copy=False), volumeNode)
                segmentationNode.SetNodeReferenceID(UNCERTAINTY_REFERENCE, uncertaintyNode.GetID())
            else:
                segmentationNode.RemoveNodeReferenceIDs(UNCERTAINTY_REFERENCE)
                if old_uncertainty is not None:
                    self._remove_node(scene, old_uncertainty)
        except BaseException:
            for node in reversed(added):
                self._remove_node(scene, node)
            raise
        result["segmentationNodeID"] = segmentationNode.GetID()
        result["plausibility"] = plausibility
        self.lastSegmentation = result
        self._log_plausibility(segmentationNode, plausibility)
        return segmentationNode

    # --- out-of-distribution check -----------------------------------------------------------
    @staticmethod
    def _normalise_plausibility(check: Any) -> dict[str, Any]:
        """The worker's check, or an "unchecked" one saying why there is none (never nothing)."""
        if not isinstance(check, dict) or not check.get("verdict"):
            return {
                "verdict": "unchecked",
                "findings": [
                    {
                        "check": "reference",
                        "severity": "info",
                        "message": "the segmentation process reported no out-of-distribution check",
                    }
                ],
                "features": None,
            }
        out = dict(check)
        out["verdict"] = str(check["verdict"])
        out["findings"] = [f for f in check.get("findings") or [] if isinstance(f, dict)]
        return out

    def plausibility(self, segmentationNode: Any) -> dict[str, Any] | None:
        """The out-of-distribution check of a segmentation this module made (None for any other node).

        Returns
        -------
        dict or None
            ``{"verdict": "ok" | "caution" | "mismatch" | "unchecked", "findings": [{"check",
            "severity", "message", ...}], "features": {...}}`` from the ``SegDeep.Plausibility``
            attribute (see :func:`SegDeepLogic.plausibility.check_plausibility`). "mismatch": the
            CT is not the anatomy the model was trained on; do not use the segmentation.
        """
        text = segmentationNode.GetAttribute(PLAUSIBILITY_ATTRIBUTE) if segmentationNode is not None else None
        if not text:
            return None
        try:
            check = json.loads(text)
        except ValueError:
            return None
        return self._normalise_plausibility(check)

    @staticmethod
    def plausibilityText(check: dict[str, Any] | None, richText: bool = False) -> str:
        """The verdict with its headline and every finding, as plain text (one finding a line) or as HTML."""
        if not check:
            return ""
        verdict = str(check.get("verdict"))
        label = PLAUSIBILITY_LABELS.get(verdict, verdict.upper())
        headline = PLAUSIBILITY_HEADLINES.get(verdict, "")
        messages = [str(f.get("message", "")) for f in check.get("findings") or []]
        if richText:
            items = "".join(f"<li>{html.escape(m)}</li>" for m in messages)
            return f"<b>Out-of-distribution check: {html.escape(label)}</b>. {html.escape(headline)}" + (
                f"<ul style='margin:2px 0 0 -20px'>{items}</ul>" if items else ""
            )
        return "\n".join([f"Out-of-distribution check: {label}. {headline}".rstrip(), *(f"- {m}" for m in messages)])

    def _log_plausibility(self, segmentationNode: Any, check: dict[str, Any]) -> None:
        level = logging.WARNING if check.get("verdict") in ("mismatch", "caution") else logging.INFO
        _log.log(level, "SegDeep: %s: %s", segmentationNode.GetName(), self.plausibilityText(check))

    @staticmethod
    def _check_same_grid(volume: Any, grid: tuple, what: str) -> None:
        shape, spacing, origin, direction = grid
        if (
            tuple(volume.array.shape) != tuple(shape)
            or not np.allclose(volume.spacing, spacing, atol=1e-4)
            or not np.allclose(volume.origin, origin, atol=1e-3)
            or not np.allclose(volume.direction, direction, atol=1e-5)
        ):
            raise SegDeepError(f"{what} from the worker is not on the input volume's grid ({volume!r})")

    @staticmethod
    def _fill_uncertainty(node: Any, array: np.ndarray, volumeNode: Any) -> None:
        image = vtk.vtkImageData()
        nk, nj, ni = array.shape
        image.SetDimensions(ni, nj, nk)
        scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
        scalars.SetName("uncertainty")
        image.GetPointData().SetScalars(scalars)
        node.SetAndObserveImageData(image)
        node.CopyOrientation(volumeNode)
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        node.SetAttribute(ROLE_ATTRIBUTE, ROLE_UNCERTAINTY)
        node.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volumeNode.GetID())
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            scene = node.GetScene()
            for color_id in (
                "vtkMRMLColorTableNodeFileInferno.txt",
                "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
                "vtkMRMLColorTableNodeRainbow",
            ):
                if scene is not None and scene.GetNodeByID(color_id) is not None:
                    display.SetAndObserveColorNodeID(color_id)
                    break

    # --- comparison with a threshold ------------------------------------------------------------
    def compareWithThreshold(
        self,
        segmentationNode: Any,
        volumeNode: Any,
        segmentName: str | None = None,
        preset: str | None = "bone",
        lowerHU: float | None = None,
        upperHU: float | None = None,
        method: str | None = None,
        keepLargest: bool = False,
        minIslandMm3: float = 0.0,
        fillHoles: bool = False,
        toleranceMm: float = 1.0,
        disagreement: bool = True,
        progress: ProgressCallback | None = None,
        roiMarginMm: float | None = 10.0,
    ) -> Any:
        """Compare a segment with a Hounsfield threshold of the CT; returns a ``vtkMRMLTableNode``.

        The engine's :func:`SegDeepLogic.compare.compare_with_threshold` (the report, ``segdeep
        compare --threshold`` and the evaluation baselines call the same function): the segment
        is mask A (test), the threshold mask B (reference), both on the CT's voxel grid, and the
        threshold counts only inside the segment grown by ``roiMarginMm``.

        Parameters
        ----------
        segmentationNode : vtkMRMLSegmentationNode
            Holds the segment to compare (the network's, or any segmentation).
        volumeNode : vtkMRMLScalarVolumeNode
            The CT (Hounsfield units); the comparison runs on its voxel grid.
        segmentName : str, optional
            Default: the first segment named after a bone, else the first segment.
        preset : str, optional
            Threshold preset (``"bone"`` 226-3071 HU, ``"compact_bone_adult"``,
            ``"teeth_enamel_adult"``). Ignored when ``lowerHU``, ``upperHU`` or ``method`` is given.
        lowerHU, upperHU : float, optional
            Explicit inclusive HU range (an omitted bound is open).
        method : str, optional
            Automatic lower bound: ``"otsu"``, ``"li"``, ``"yen"``, ``"triangle"``, ``"isodata"``.
        keepLargest, minIslandMm3, fillHoles
            Clean-up of the threshold mask: keep the largest component, remove islands below this
            volume (mm³), fill enclosed holes.
        toleranceMm : float
            Tolerance of the surface Dice.
        disagreement : bool
            Also create the disagreement segmentation (segments ``network only``, ``threshold only``
            and the hidden ``threshold``), referenced from the table (role ``SegDeepDisagreement``).
        progress : callable, optional
            ``progress(fraction, stage)``.
        roiMarginMm : float or None
            The region around the segment (mm) in which the threshold is compared; default 10
            (``SegDeepLogic.compare.DEFAULT_ROI_MARGIN_MM``). None: the whole CT.

        Returns
        -------
        vtkMRMLTableNode
            Columns ``Metric``, ``Value``, ``Unit`` and ``Key`` (the keys of
            ``MaskComparison.to_dict()``, plus ``lower_hu``/``upper_hu``); infinite distances are
            NaN. It replaces this module's earlier comparison of the same segment.
        """
        self.ensureDependencies()
        from SegDeepLogic.compare import compare_with_threshold
        from SegDeepLogic.metrics import disagreement_masks

        self._check_volume(volumeNode)
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise ValueError("segmentationNode must be a vtkMRMLSegmentationNode")
        if (segmentationNode.GetTransformNodeID() or "") != (volumeNode.GetTransformNodeID() or ""):
            raise SegDeepError(
                "the segmentation and the volume are under different parent transforms; harden or align them first"
            )
        if segmentName is None:
            segmentName = self.defaultSegmentName(segmentationNode)
        segment_id = mrml.segment_id_by_name(segmentationNode, segmentName)
        scene = segmentationNode.GetScene() or volumeNode.GetScene()

        def stage(lo: float, hi: float) -> ProgressCallback | None:
            if progress is None:
                return None
            return lambda fraction, name: progress(lo + (hi - lo) * fraction, name)

        if progress is not None:
            progress(0.0, f"reading segment {segmentName!r}")
        ct = mrml.volume_from_node(volumeNode)
        network = mrml.segment_mask(segmentationNode, segment_id, volumeNode)
        if lowerHU is not None or upperHU is not None or method:
            preset = None
        compared = compare_with_threshold(
            ct,
            network,
            preset=preset,
            lower_hu=lowerHU,
            upper_hu=upperHU,
            method=method or None,
            keep_largest=bool(keepLargest),
            min_island_mm3=float(minIslandMm3),
            fill_holes=bool(fillHoles),
            roi_margin_mm=None if roiMarginMm is None else float(roiMarginMm),
            tolerance_mm=float(toleranceMm),
            progress=stage(0.05, 0.9),
        )
        threshold_mask = compared.threshold_mask
        values = compared.to_dict()
        values["segment"] = segmentName
        only_network, only_threshold = disagreement_masks(network, threshold_mask) if disagreement else (None, None)
        if progress is not None:
            progress(0.9, "creating the results")

        added: list[Any] = []
        try:
            tableNode = self._output_node(
                scene, "vtkMRMLTableNode", ROLE_COMPARISON, SOURCE_SEGMENTATION_REFERENCE, segmentationNode, segmentName
            )
            if tableNode is None:
                tableNode = scene.AddNewNodeByClass(
                    "vtkMRMLTableNode", scene.GetUniqueNameByString(f"{segmentName} vs threshold")
                )
                added.append(tableNode)
            rows = [(label, self._table_value(values.get(key)), unit, key) for key, label, unit in METRIC_ROWS]
            self._fill_table(tableNode, [("Metric", "string"), ("Value", "double"), ("Unit", "string"), ("Key", "string")], rows)
            tableNode.SetAttribute(ROLE_ATTRIBUTE, ROLE_COMPARISON)
            tableNode.SetAttribute(SEGMENT_NAME_ATTRIBUTE, segmentName)
            tableNode.SetAttribute("SegDeep.Threshold", json.dumps(compared.parameters))
            tableNode.SetNodeReferenceID(SOURCE_SEGMENTATION_REFERENCE, segmentationNode.GetID())
            tableNode.SetNodeReferenceID(SOURCE_VOLUME_REFERENCE, volumeNode.GetID())

            old = self._output_node(
                scene, "vtkMRMLSegmentationNode", ROLE_DISAGREEMENT, SOURCE_SEGMENTATION_REFERENCE, segmentationNode, segmentName
            )
            if disagreement:
                disagreementNode = old
                if disagreementNode is None:
                    disagreementNode = scene.AddNewNodeByClass(
                        "vtkMRMLSegmentationNode", scene.GetUniqueNameByString(f"{segmentName} vs threshold disagreement")
                    )
                    added.append(disagreementNode)
                disagreementNode.GetSegmentation().RemoveAllSegments()
                disagreementNode.GetSegmentation().SetSourceRepresentationName(mrml.BINARY_LABELMAP)
                disagreementNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
                disagreementNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
                ids = [
                    mrml.add_mask_segment(disagreementNode, only_network.array, NETWORK_ONLY, NETWORK_ONLY_COLOR, volumeNode),
                    mrml.add_mask_segment(
                        disagreementNode, only_threshold.array, THRESHOLD_ONLY, THRESHOLD_ONLY_COLOR, volumeNode
                    ),
                    mrml.add_mask_segment(disagreementNode, threshold_mask.array, THRESHOLD_SEGMENT, THRESHOLD_COLOR, volumeNode),
                ]
                disagreementNode.SetAttribute(ROLE_ATTRIBUTE, ROLE_DISAGREEMENT)
                disagreementNode.SetAttribute(SEGMENT_NAME_ATTRIBUTE, segmentName)
                disagreementNode.SetNodeReferenceID(SOURCE_SEGMENTATION_REFERENCE, segmentationNode.GetID())
                if disagreementNode.GetDisplayNode() is None:
                    disagreementNode.CreateDefaultDisplayNodes()
                display = disagreementNode.GetDisplayNode()
                if display is not None:
                    display.SetSegmentVisibility(ids[2], False)
                tableNode.SetNodeReferenceID(DISAGREEMENT_REFERENCE, disagreementNode.GetID())
            else:
                tableNode.RemoveNodeReferenceIDs(DISAGREEMENT_REFERENCE)
                if old is not None:
                    self._remove_node(scene, old)
        except BaseException:
            for node in reversed(added):
                self._remove_node(scene, node)
            raise
        self.lastComparison = values
        if progress is not None:
            progress(1.0, "done")
        return tableNode

    @staticmethod
    def defaultSegmentName(segmentationNode: Any) -> str:
        """The first segment named after a bone (mandible, skull, ...), else the first segment."""
        names = mrml.segment_names(segmentationNode)
        if not names:
            raise SegDeepError(f"segmentation {segmentationNode.GetName()!r} has no segments")
        for name in names:
            if is_bone_like(name):
                return name
        return names[0]

    @staticmethod
    def _table_value(value: Any) -> float:
        if value is None:
            return math.nan
        return float(value)

    @staticmethod
    def _fill_table(tableNode: Any, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
        table = vtk.vtkTable()
        arrays = []
        for name, kind in columns:
            array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkIntArray() if kind == "int" else vtk.vtkStringArray()
            array.SetName(name)
            array.SetNumberOfValues(len(rows))
            arrays.append((array, kind))
            table.AddColumn(array)
        for r, row in enumerate(rows):
            for (array, kind), value in zip_strict(arrays, row):
                if kind == "double":
                    array.SetValue(r, math.nan if value is None else float(value))
                elif kind == "int":
                    array.SetValue(r, int(value))
                else:
                    array.SetValue(r, "" if value is None else str(value))
        wasModifying = tableNode.StartModify()
        tableNode.SetAndObserveTable(table)
        tableNode.SetUseColumnNameAsColumnHeader(True)
        tableNode.SetLocked(True)
        tableNode.EndModify(wasModifying)

    # --- export for 3D printing ------------------------------------------------------------------
    def exportForPrinting(
        self,
        segmentationNode: Any,
        folder: str | os.PathLike,
        format: str = "STL",
        segmentNames: Sequence[str] | None = None,
        smoothing: float = 0.5,
        decimation: float = 0.0,
        coordinateSystem: str = "LPS",
        merge: bool = False,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
        hollowWallMm: float | None = None,
        drainHoles: int = 0,
        drainDiameterMm: float = 3.0,
        cutPlanes: Sequence[Any] | None = None,
        kerfMm: float = 0.0,
        perShell: bool = False,
        thinThresholdMm: float | None = None,
        buildVolumeMm: Sequence[float] | None = None,
        prepSegmentNames: Sequence[str] | None = None,
        voxelMm: float | None = None,
    ) -> list[dict[str, Any]]:
        """Write printable closed surfaces of segments and return their print-readiness reports.

        Parameters
        ----------
        segmentationNode : vtkMRMLSegmentationNode
        folder : path-like
            Output folder (created if missing).
        format : {"STL", "OBJ", "PLY", "3MF"}
            3MF: one file ``<SegmentationNodeName>.3mf`` with one object per part, named after the
            segment (or piece/shell), in the segment's colour, in mm, the coordinate system stated
            in its metadata.
        segmentNames : sequence of str, optional
            Segments to export (default: all; empty segments are skipped).
        smoothing : float
            Slicer's smoothing factor in [0, 1] (windowed-sinc, volume preserving).
        decimation : float
            Fraction of triangles to remove, in [0, 1).
        coordinateSystem : {"LPS", "RAS"}
            Coordinates of the files, in millimetres; LPS is what Slicer writes and reads by default.
        merge : bool
            One file ``<SegmentationNodeName>.<ext>`` with every segment instead of one file
            ``<SegmentationNodeName>_<SegmentName>.<ext>`` per segment (Slicer's names).
        overwrite : bool
            Replace existing files (default: ``FileExistsError`` before any work).
        progress : callable, optional
            ``progress(fraction, stage)``.
        hollowWallMm : float, optional
            Hollow with this wall thickness (mm); the report gives the measured wall and the saved volume.
        drainHoles, drainDiameterMm : int, float
            Drain holes at the cavity's lowest (inferior) points, and their diameter (mm).
        cutPlanes : sequence, optional
            Cutting planes: ``vtkMRMLMarkupsPlaneNode`` nodes (their world origin and normal,
            RAS), or ``(point, normal)`` pairs in RAS mm (Slicer's world coordinates), or
            ``SegDeepLogic.mesh_cut.CutPlane`` objects. Pieces are capped, watertight and named
            by side (``mandible_cut1-left_cut2-right``; a markups plane gives its node name).
        kerfMm : float
            Saw gap removed around each plane (mm).
        perShell : bool
            One part per connected shell.
        thinThresholdMm : float, optional
            Measure the wall thickness and report regions thinner than this (mm).
        buildVolumeMm : (3,) floats, optional
            The printer's build volume (mm) to check each part's bounding box against.
        prepSegmentNames : sequence of str, optional
            Hollow/cut/split only these segments (default: all); the checks apply to all.
        voxelMm : float, optional
            Voxel size of the hollowing grid (default: wall / 4).

        Returns
        -------
        list of dict
            One report per exported part: ``SegDeepLogic.mesh_report.MeshReport.to_dict()``
            (watertight, manifold, shells, volume, deviation, bounds, ``print_ready``, hollowing,
            cut, wall thickness, thin regions, build volume ...) plus ``segment``, ``path``,
            ``file``, ``format`` and ``coordinate_system``.
        """
        self.ensureDependencies()
        from SegDeepLogic.mesh_io import export_segments

        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise ValueError("segmentationNode must be a vtkMRMLSegmentationNode")
        fmt = str(format).upper().lstrip(".")
        if fmt not in MESH_FORMATS:
            raise ValueError(f"format must be one of {', '.join(MESH_FORMATS)}, got {format!r}")
        space = str(coordinateSystem).upper()
        if space not in COORDINATE_SYSTEMS:
            raise ValueError(f"coordinateSystem must be 'LPS' or 'RAS', got {coordinateSystem!r}")
        names = list(segmentNames) if segmentNames else mrml.segment_names(segmentationNode)
        if not names:
            raise SegDeepError(f"segmentation {segmentationNode.GetName()!r} has no segments to export")
        prefix = segmentationNode.GetName() or "Segmentation"
        masks = {}
        keys: dict[str, str] = {}
        colors: dict[str, tuple[float, float, float]] = {}
        segmentation = segmentationNode.GetSegmentation()
        for name in names:
            segment_id = mrml.segment_id_by_name(segmentationNode, name)
            mask = mrml.segment_mask(segmentationNode, segment_id)
            if mask is None or not mask.array.any():
                warnings.warn(f"segment {name!r} is empty; no mesh written for it", stacklevel=2)
                continue
            key = name if fmt == "3MF" else f"{prefix}_{name}"  # 3MF: objects in one file <prefix>.3mf
            masks[key] = mask
            keys[key] = name
            colors[key] = tuple(float(c) for c in segmentation.GetSegment(segment_id).GetColor())  # type: ignore[assignment]
        options = self._printOptions(
            hollowWallMm, drainHoles, drainDiameterMm, cutPlanes, kerfMm, perShell, thinThresholdMm, buildVolumeMm, voxelMm
        )
        if prepSegmentNames:
            unknown = [n for n in prepSegmentNames if n not in names]
            if unknown:
                raise SegDeepError(f"prepSegmentNames: no segment {unknown[0]!r} among the exported ones ({', '.join(names)})")
            from SegDeepLogic.print_prep import PrintOptions

            checks = PrintOptions(thin_threshold_mm=options.thin_threshold_mm, build_volume_mm=options.build_volume_mm)
            options = {k: options if keys[k] in prepSegmentNames else checks for k in masks}
        if not masks:
            raise SegDeepError("every selected segment is empty; there is no surface to export")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = export_segments(
                masks,
                folder,
                format=fmt.lower(),
                merge=bool(merge),
                merged_name=prefix,
                space=space,
                smoothing_factor=float(smoothing),
                decimation=float(decimation),
                overwrite=bool(overwrite),
                colors=colors,
                print_options=options,
                progress=progress,
            )
        reports = []
        for path, report in results:
            d = report.to_dict()
            source = d.get("segment") or d.get("name")
            d["segment"] = keys.get(str(source), source)
            d["part"] = d.get("name")
            d["name"] = d["segment"] if d["part"] == source else d["part"]
            d["path"] = str(path)
            d["file"] = Path(path).name
            d["format"] = fmt
            d["coordinate_system"] = space
            reports.append(d)
        self.lastExport = reports
        return reports

    @staticmethod
    def _printOptions(
        hollowWallMm: float | None,
        drainHoles: int,
        drainDiameterMm: float,
        cutPlanes: Sequence[Any] | None,
        kerfMm: float,
        perShell: bool,
        thinThresholdMm: float | None,
        buildVolumeMm: Sequence[float] | None,
        voxelMm: float | None,
    ) -> Any:
        """``SegDeepLogic.print_prep.PrintOptions`` from the console/panel arguments (planes from markups in RAS)."""
        from SegDeepLogic.mesh_cut import CutPlane
        from SegDeepLogic.print_prep import PrintOptions

        planes = []
        for i, plane in enumerate(cutPlanes or []):
            if isinstance(plane, CutPlane):
                planes.append(plane)
            elif hasattr(plane, "GetOriginWorld") and hasattr(plane, "GetNormalWorld"):
                origin = [0.0, 0.0, 0.0]
                normal = [0.0, 0.0, 0.0]
                plane.GetOriginWorld(origin)
                plane.GetNormalWorld(normal)
                planes.append(CutPlane(tuple(origin), tuple(normal), "RAS", plane.GetName() or f"cut{i + 1}"))  # type: ignore[arg-type]
            else:
                point, normal = plane
                planes.append(CutPlane(tuple(point), tuple(normal), "RAS", f"cut{i + 1}"))
        return PrintOptions(
            wall_mm=None if hollowWallMm in (None, 0) else float(hollowWallMm),  # type: ignore[arg-type]
            voxel_mm=voxelMm,
            drain_holes=int(drainHoles),
            drain_diameter_mm=float(drainDiameterMm),
            planes=tuple(planes),
            kerf_mm=float(kerfMm),
            per_shell=bool(perShell),
            thin_threshold_mm=None if not thinThresholdMm else float(thinThresholdMm),
            build_volume_mm=tuple(float(x) for x in buildVolumeMm) if buildVolumeMm else None,  # type: ignore[arg-type]
        )

    def createPrintReportTable(self, reports: Sequence[dict[str, Any]], segmentationNode: Any = None) -> Any:
        """A ``vtkMRMLTableNode`` showing export reports (replaces this module's earlier one for the segmentation)."""
        scene = segmentationNode.GetScene() if segmentationNode is not None else slicer.mrmlScene
        tableNode = None
        if segmentationNode is not None:
            tableNode = self._output_node(
                scene, "vtkMRMLTableNode", ROLE_PRINT_REPORT, SOURCE_SEGMENTATION_REFERENCE, segmentationNode
            )
        if tableNode is None:
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GetUniqueNameByString("SegDeep print report"))
        columns = [
            ("Segment", "string"),
            ("Part", "string"),
            ("File", "string"),
            ("Print ready", "string"),
            ("Watertight", "string"),
            ("Manifold", "string"),
            ("Shells", "int"),
            ("Triangles", "int"),
            ("Volume (mL)", "double"),
            ("Mask volume (mL)", "double"),
            ("Volume difference (%)", "double"),
            ("Max deviation (mm)", "double"),
            ("Size (mm)", "string"),
            ("Min wall (mm)", "double"),
            ("Thin regions", "int"),
            ("Saved by hollowing (mL)", "double"),
            ("Fits build volume", "string"),
        ]

        def yes(value: Any) -> str:
            return "yes" if value else "NO"

        rows = []
        for r in reports:
            size = np.asarray(r["bounds_max_mm"], float) - np.asarray(r["bounds_min_mm"], float)
            hollowing = r.get("hollowing") or {}
            fits = r.get("fits_build_volume")
            rows.append(
                (
                    r.get("segment"),
                    r.get("part") or r.get("name"),
                    r.get("file"),
                    yes(r.get("print_ready")),
                    yes(r.get("watertight")),
                    yes(r.get("manifold")),
                    r.get("shell_count", 0),
                    r.get("triangle_count", 0),
                    r.get("volume_ml"),
                    r.get("mask_volume_ml"),
                    r.get("volume_difference_percent"),
                    r.get("deviation_max_mm"),
                    " x ".join(f"{s:.1f}" for s in size),
                    hollowing.get("measured_wall_min_mm", r.get("min_wall_thickness_mm")),
                    len(r.get("thin_regions") or []),
                    hollowing.get("saved_volume_ml"),
                    "" if fits is None else ("yes" if fits else ("only rotated" if r.get("fits_build_volume_rotated") else "NO")),
                )
            )
        self._fill_table(tableNode, columns, rows)
        tableNode.SetAttribute(ROLE_ATTRIBUTE, ROLE_PRINT_REPORT)
        if segmentationNode is not None:
            tableNode.SetNodeReferenceID(SOURCE_SEGMENTATION_REFERENCE, segmentationNode.GetID())
        return tableNode

    # --- helpers -----------------------------------------------------------------------------
    # --- review loop: next case to review, correction -> training case ------------------------
    @staticmethod
    def reviewQueue(batchDir: str | os.PathLike) -> list[Any]:
        """The cases of a ``segdeep batch`` output folder, ranked for review (:func:`SegDeepLogic.review.review_queue`)."""
        from SegDeepLogic.review import review_queue

        return review_queue(batchDir)

    def loadReviewCase(self, item: Any, scene: Any = None) -> dict[str, Any]:
        """Load a review-queue case (CT, segmentation, uncertainty) with its most uncertain structure selected.

        See :func:`SegDeepLib.review.loadReviewCase`; returns its dict of nodes and the segment ID.
        """
        from .review import loadReviewCase

        return loadReviewCase(
            item,
            scene,
            roleAttribute=ROLE_ATTRIBUTE,
            roleSegmentation=ROLE_SEGMENTATION,
            roleUncertainty=ROLE_UNCERTAINTY,
            sourceReference=SOURCE_VOLUME_REFERENCE,
            uncertaintyReference=UNCERTAINTY_REFERENCE,
        )

    def saveCorrectionAsTrainingCase(
        self,
        segmentationNode: Any,
        datasetDir: str | os.PathLike,
        reviewedStructures: Sequence[str],
        **kwargs: Any,
    ) -> Path:
        """Save the edited segmentation and its CT as a training case ``segdeep train`` reads.

        Reviewed structures become masks, the model's others stay unlabelled for this case;
        provenance (model, annotator, time, reviewed structures) goes to ``correction.json``.
        Keyword arguments: ``volumeNode``, ``caseId``, ``annotator``, ``model``, ``overwrite``,
        ``notes`` (see :func:`SegDeepLib.review.saveCorrectionAsTrainingCase`).
        """
        from .review import saveCorrectionAsTrainingCase

        path = saveCorrectionAsTrainingCase(
            self, segmentationNode, datasetDir, reviewedStructures, sourceReference=SOURCE_VOLUME_REFERENCE, **kwargs
        )
        _log.info("SegDeep: saved the correction of %s as training case %s", ", ".join(reviewedStructures), path)
        return path

    @staticmethod
    def _check_volume(volumeNode: Any) -> None:
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError("select a scalar (CT) volume node as input")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"volume {volumeNode.GetName()!r} has no voxels")

    @staticmethod
    def _check_device(device: str) -> str:
        name = str(device or "auto").strip().lower()
        if name == "gpu":
            name = "cuda"
        if name.split(":")[0] not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {device!r}")
        return name

    @staticmethod
    def _remove_node(scene: Any, node: Any) -> None:
        """Remove a node with its display and storage nodes."""
        if node is None or node.GetScene() is None:
            return
        dependents = []
        for getter, counter in (
            ("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
            ("GetNthStorageNode", "GetNumberOfStorageNodes"),
        ):
            if hasattr(node, counter):
                dependents += [getattr(node, getter)(i) for i in range(getattr(node, counter)())]
        scene.RemoveNode(node)
        for dependent in dependents:
            if dependent is not None and dependent.GetScene() is not None:
                scene.RemoveNode(dependent)

    @staticmethod
    def outputNodes(scene: Any, role: str | None = None) -> list[Any]:
        """Every node of ``scene`` this module created (optionally only those with ``role``)."""
        nodes = []
        for i in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(i)
            value = node.GetAttribute(ROLE_ATTRIBUTE)
            if value and (role is None or value == role):
                nodes.append(node)
        return nodes

    @staticmethod
    def _output_node(
        scene: Any, className: str, role: str, referenceRole: str, source: Any, segmentName: str | None = None
    ) -> Any:
        """This module's earlier output with ``role`` for ``source`` (and segment name), or None."""
        collection = scene.GetNodesByClass(className)
        collection.UnRegister(scene)  # GetNodesByClass returns a new reference (as in slicer.util.getNodesByClass)
        for i in range(collection.GetNumberOfItems()):
            node = collection.GetItemAsObject(i)
            if node.GetAttribute(ROLE_ATTRIBUTE) != role or node.GetNodeReferenceID(referenceRole) != source.GetID():
                continue
            if segmentName is not None and node.GetAttribute(SEGMENT_NAME_ATTRIBUTE) != segmentName:
                continue
            return node
        return None
