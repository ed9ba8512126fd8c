"""SegDeep: U-Net segmentation of CT compared with Hounsfield thresholding, exported for 3D printing.

The Slicer scripted module (Module, ParameterNode, Widget, Logic, Test). Everything scriptable is
in :class:`SegDeepLogic`, whose work is done by ``SegDeepLib.logic.SegDeepLogicBase`` (MRML glue,
importable without Qt and tested against ``slicer-core``); the widget only wires ``SegDeep.ui`` to it.
The engine (``SegDeepLogic`` package: volumes, thresholds, metrics, meshes, inference) is pure
Python and never imports Slicer. Inference runs in a separate ``PythonSlicer`` process.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import tempfile
import traceback
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _engineRoot() -> pathlib.Path:
    """The folder holding the engine package ``SegDeepLogic`` (and ``Resources``), put on ``sys.path``.

    Installed extension: the module folder itself (``SegDeepLogic/`` is copied next to ``SegDeep.py``).
    Source tree (module path added in the Application settings): the repository root.
    """
    moduleDir = pathlib.Path(__file__).resolve().parent
    for candidate in (moduleDir, moduleDir.parent):
        if (candidate / "SegDeepLogic" / "__init__.py").is_file():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            return candidate
    return moduleDir


ENGINE_ROOT = _engineRoot()

from SegDeepLib import mrml  # noqa: E402  (needs ENGINE_ROOT on sys.path)
from SegDeepLib.dependencies import (  # noqa: E402
    ENGINE_REQUIREMENTS,
    TORCH_REQUIREMENT,
    missing_packages,
    slicer_version_problem,
)
from SegDeepLib.logic import (  # noqa: E402
    DISAGREEMENT_REFERENCE,
    PLAUSIBILITY_COLORS,
    PRESETS,
    UNCERTAINTY_REFERENCE,
    CancelledError,
    MismatchError,
    SegDeepLogicBase,
    SegDeepWorkerError,
    sample_ct_path,
)

SAMPLE_CT = sample_ct_path()  # the engine's lookup: Resources/SampleData beside SegDeepLogic, or $SEGDEEP_DATA_DIR
OUTPUT_FOLDER_SETTING = "SegDeep/OutputFolder"
ENGINE_PACKAGES = ("SegDeepLib", "SegDeepLogic")
"""Packages the developer Reload re-imports with ``SegDeep.py``."""


def unsupportedSlicerMessage() -> str | None:
    """The one message shown in a 3D Slicer older than SegDeep supports (None in a supported one)."""
    try:
        version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    except (AttributeError, TypeError, ValueError):
        return None
    return slicer_version_problem(*version)


PRESET_ITEMS = (
    # (label, data): data is "preset:<name>", "method:<name>" or "custom"
    *((f"{p.title} ({p.lower_hu:g} to {p.upper_hu:g} HU)", f"preset:{name}") for name, p in PRESETS.items()),
    ("Otsu (automatic lower bound)", "method:otsu"),
    ("Li (automatic lower bound)", "method:li"),
    ("Yen (automatic lower bound)", "method:yen"),
    ("Triangle (automatic lower bound)", "method:triangle"),
    ("Isodata (automatic lower bound)", "method:isodata"),
    ("Custom range", "custom"),
)
PRESET_RANGES = {f"preset:{name}": (p.lower_hu, p.upper_hu) for name, p in PRESETS.items()}
"""HU range of each preset item (:data:`SegDeepLogic.presets.PRESETS`, the engine's own table)."""


#
# SegDeep
#
class SegDeep(ScriptedLoadableModule):
    """Module description shown in Slicer's Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegDeep")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegDeep developers"]
        self.parent.helpText = _(
            "Segment a CT with a U-Net model package (GPU when there is one, CPU otherwise), compare the result with "
            "Hounsfield thresholding (Dice, Hausdorff distances, surface Dice, volumes, disagreement regions) and export "
            "watertight, print-checked meshes (STL/OBJ/PLY) with a print-readiness report. The network runs in a "
            "separate process: Slicer stays responsive and a crash or an out-of-memory error leaves the scene untouched. "
            "Every segmentation is checked against the model's training data (out-of-distribution check): a MISMATCH "
            "verdict means the CT is not the anatomy the model was trained on and the result must not be used. "
            "Python packages (and PyTorch, through the PyTorch extension) are installed on first use, after asking."
        )
        self.parent.acknowledgementText = _(
            "SegDeep is Apache-2.0 licensed. The sample CT is case pt_236 of the OpenKBP challenge data set "
            "(Babier et al., Medical Physics 48(9), 2021). Threshold presets come from InVesalius 3."
        )
        problem = unsupportedSlicerMessage()
        if problem:  # one clear message instead of failing on every action
            self.parent.helpText = problem
            logging.error(problem)
            return
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the bundled head-and-neck CT to the Sample Data module (category SegDeep)."""
    try:
        import SampleData
    except ImportError:
        return
    if not SAMPLE_CT.is_file():
        return
    icon = ENGINE_ROOT / "Resources" / "Icons" / "SegDeep.png"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="SegDeep",
        sampleName="SegDeepHeadNeckCT",
        thumbnailFileName=str(icon),
        uris=SAMPLE_CT.as_uri(),
        fileNames="SegDeepHeadNeckCT.nii.gz",
        nodeNames="SegDeepHeadNeckCT",
        loadFileType="VolumeFile",
    )


#
# SegDeepParameterNode
#
@parameterNodeWrapper
class SegDeepParameterNode:
    """The panel's state, saved with the scene.

    Segment: ``inputVolume``, ``model`` (package path, empty for the first bundled one),
    ``device`` (auto, cuda, cpu, mps), ``tta``, ``refine``, ``uncertainty``, ``allowMismatch``
    (keep a result the out-of-distribution check calls a mismatch; default off).
    Compare: ``segmentation``, ``segmentName``, ``thresholdPreset`` (``preset:<name>``,
    ``method:<name>`` or ``custom``), ``lowerHU``/``upperHU``, clean-up options, ``toleranceMm``, ``roiMarginMm``
    (the threshold is compared inside the segment grown by this margin), ``compareWholeCT`` (over
    the whole CT instead),
    ``comparisonTable``. Export: ``exportSegmentation``, ``exportFormat``, ``smoothing``,
    ``decimation``, ``coordinateSystem``, ``merge``, ``outputFolder``, ``printReportTable``; print
    preparation: ``hollowWallMm`` (0: solid), ``drainHoles``, ``drainDiameterMm``, ``kerfMm``,
    ``perShell``, ``thinThresholdMm`` (0: off); the cutting planes are the markups planes checked
    in the panel's selector, the build volume ("X Y Z" mm) and the segments to hollow/cut are typed in line edits.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: str = "auto"
    tta: bool = False
    refine: bool = False
    uncertainty: bool = False
    showUncertainty: bool = True
    allowMismatch: bool = False
    segmentation: vtkMRMLSegmentationNode
    segmentName: str = ""
    thresholdPreset: str = "preset:bone"
    lowerHU: Annotated[float, WithinRange(-3024.0, 10000.0)] = 226.0  # the spin boxes' range: unbounded floats reset it
    upperHU: Annotated[float, WithinRange(-3024.0, 10000.0)] = 3071.0
    keepLargest: bool = False
    minIslandMm3: Annotated[float, WithinRange(0.0, 1.0e7)] = 0.0
    fillHoles: bool = False
    toleranceMm: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    roiMarginMm: Annotated[float, WithinRange(0.0, 200.0)] = 10.0  # SegDeepLogic.compare.DEFAULT_ROI_MARGIN_MM
    compareWholeCT: bool = False  # True: roiMarginMm=None (the threshold over the whole CT)
    comparisonTable: vtkMRMLTableNode
    exportSegmentation: vtkMRMLSegmentationNode
    exportFormat: Annotated[str, Choice(["STL", "OBJ", "PLY", "3MF"])] = "STL"
    smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    decimation: Annotated[float, WithinRange(0.0, 0.95)] = 0.0
    coordinateSystem: Annotated[str, Choice(["LPS", "RAS"])] = "LPS"
    merge: bool = False
    hollowWallMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    drainHoles: Annotated[int, WithinRange(0, 10)] = 0
    drainDiameterMm: Annotated[float, WithinRange(0.0, 20.0)] = 3.0
    kerfMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    perShell: bool = False
    thinThresholdMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    outputFolder: pathlib.Path
    printReportTable: vtkMRMLTableNode


#
# SegDeepWidget
#
class SegDeepWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires ``Resources/UI/SegDeep.ui`` to :class:`SegDeepLogic`; no processing here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._probe = None
        self._withheld = None  # (volume node, check) of the last run whose result was withheld
        self._busy = None  # "compare" or "export" while one runs (they run in this process)
        self._observedSegmentations = []
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._onTimer)

    # --- setup -------------------------------------------------------------------------------
    def _uiPath(self) -> str:
        path = self.resourcePath("UI/SegDeep.ui")
        if not os.path.isfile(path):  # source tree: Resources/ is at the repository root
            path = str(ENGINE_ROOT / "Resources" / "UI" / "SegDeep.ui")
        return path

    def setup(self) -> None:
        """Load the .ui, create the logic, connect signals and observers."""
        ScriptedLoadableModuleWidget.setup(self)
        problem = unsupportedSlicerMessage()
        if problem:
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self._uiPath())
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegDeepLogic()

        for label, data in PRESET_ITEMS:
            self.ui.presetComboBox.addItem(label, data)
        self.ui.outputFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.outputFolderPathLineEdit.settingKey = OUTPUT_FOLDER_SETTING  # the folder history
        self._populateModels()
        self._populateDevices(None)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertaintyToggled)
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentNameComboBox.connect("currentIndexChanged(int)", self.onSegmentNameChanged)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.exportSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onExportSegmentationChanged)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.reviewBatchPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.correctionDatasetPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.reviewRankButton.connect("clicked(bool)", self.onReviewRankButton)
        self.ui.reviewLoadButton.connect("clicked(bool)", self.onReviewLoadButton)
        self.ui.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrectionButton)
        self._reviewItems = []
        self._reviewSegmentation = None

        self.initializeParameterNode()
        self._startDeviceProbe()

    def onReload(self) -> None:
        """Developer Reload: re-import ``SegDeepLib`` and the engine too, not only ``SegDeep.py``.

        ``slicer.util.reloadScriptedModule`` (called by the base class) cleans this widget up and
        re-executes ``SegDeep.py``, whose imports then load the edited packages.
        """
        for name in sorted(sys.modules, reverse=True):
            if name.split(".")[0] in ENGINE_PACKAGES:
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._cancelJob()
        if self._probe is not None:
            self._probe.kill()
            self._probe = None
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        if self.logic is None:  # an unsupported Slicer: the panel only shows the message
            return
        self.setParameterNode(self.logic.getParameterNode())
        if str(self._parameterNode.outputFolder or "") in ("", "."):
            remembered = qt.QSettings().value(OUTPUT_FOLDER_SETTING)
            if remembered and os.path.isdir(str(remembered)):
                self._parameterNode.outputFolder = pathlib.Path(str(remembered))
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # --- GUI state ---------------------------------------------------------------------------
    def _updateGui(self, caller=None, event=None) -> None:
        """Sync the combo boxes not bound by the wrapper and enable the buttons."""
        p = self._parameterNode
        if p is None:
            return
        self._selectComboData(self.ui.modelComboBox, p.model)
        self._selectComboData(self.ui.deviceComboBox, p.device)
        self._selectComboData(self.ui.presetComboBox, p.thresholdPreset)
        custom = p.thresholdPreset == "custom"
        method = p.thresholdPreset.startswith("method:")
        self.ui.lowerHUSpinBox.enabled = custom
        self.ui.upperHUSpinBox.enabled = custom or method
        self.ui.roiMarginSpinBox.enabled = not p.compareWholeCT
        self._refreshSegmentNames()
        running = self._job is not None or self._busy is not None
        hasModel = bool(p.model) or bool(self.ui.modelComboBox.currentData)
        self.ui.segmentButton.enabled = bool(p.inputVolume) and hasModel and not running
        self.ui.segmentButton.toolTip = _("Segment the input volume") if p.inputVolume else _("Select an input volume")
        self.ui.cancelButton.enabled = running
        self.ui.compareButton.enabled = bool(p.segmentation and p.inputVolume and p.segmentName) and not running
        self.ui.exportButton.enabled = bool(p.exportSegmentation and str(p.outputFolder or "") not in ("", ".")) and not running
        self._showPlausibility(p.segmentation)

    def _showPlausibility(self, segmentationNode) -> None:
        """Show the out-of-distribution verdict of a SegDeep segmentation (hidden for any other
        node), or of the last run if its result was withheld."""
        label = self.ui.plausibilityLabel
        check = self.logic.plausibility(segmentationNode) if segmentationNode is not None else None
        name = segmentationNode.GetName() if check else ""
        withheld = self._withheld
        if withheld is not None and self._parameterNode is not None and self._parameterNode.inputVolume is withheld[0]:
            name, check = withheld[0].GetName() + " " + _("(nothing added)"), withheld[1]
        if not check:
            label.text = ""
            label.visible = False
            return
        background, border, color = PLAUSIBILITY_COLORS.get(check["verdict"], PLAUSIBILITY_COLORS["unchecked"])
        label.styleSheet = (
            f"QLabel {{ background-color: {background}; color: {color}; border: 1px solid {border}; "
            f"border-left: 6px solid {border}; padding: 4px 8px; }}"
        )
        label.text = f"{name}: " + self.logic.plausibilityText(check, richText=True)
        label.toolTip = self.logic.plausibilityText(check)
        label.visible = True

    @staticmethod
    def _selectComboData(combo, data) -> None:
        index = combo.findData(data)
        if index >= 0 and index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)

    def _populateModels(self) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in self.logic.availableModels():
            combo.addItem(info.display_text(), info.path)
        if combo.count == 0:
            combo.addItem(_("No bundled model: load a model package..."), "")
        combo.blockSignals(wasBlocked)
        self._showModelInfo()

    def _showModelInfo(self) -> None:
        path = self.ui.modelComboBox.currentData
        if not path:
            self.ui.modelInfoLabel.text = ""
            return
        try:
            info = self.logic.modelInfo(path)
        except Exception as exc:
            self.ui.modelInfoLabel.text = str(exc)
            return
        parts = []
        for label in info.labels:
            r, g, b = (int(round(255 * float(c))) for c in (label.get("color") or (0.5, 0.5, 0.5)))
            parts.append(f'<span style="color:rgb({r},{g},{b})">&#9632;</span> {label.get("name")}')
        self.ui.modelInfoLabel.text = "Structures: " + ", ".join(parts)
        self.ui.modelInfoLabel.toolTip = "\n\n".join(t for t in (info.description, info.limitations) if t)

    def _populateDevices(self, devices) -> None:
        """Fill the device combo box from a probe result (None: not probed yet)."""
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        if devices is None:
            combo.addItem(_("Auto (detecting devices...)"), "auto")
            self.ui.deviceInfoLabel.text = _("Detecting GPUs...")
        elif devices.get("torch") is None:
            combo.addItem(_("Auto"), "auto")
            combo.addItem(_("CPU"), "cpu")
            self.ui.deviceInfoLabel.text = _("PyTorch is not installed yet: it is installed on first use.")
        else:
            gpus = devices.get("cuda") or []
            auto = f"GPU ({gpus[0]})" if gpus else ("Apple GPU (MPS)" if devices.get("mps") else "CPU, no GPU found")
            combo.addItem(_("Auto: {device}").format(device=auto), "auto")
            for i, name in enumerate(gpus):
                combo.addItem(_("GPU {index}: {name}").format(index=i, name=name), f"cuda:{i}")
            if devices.get("mps"):
                combo.addItem(_("Apple GPU (MPS)"), "mps")
            combo.addItem(_("CPU"), "cpu")
            self.ui.deviceInfoLabel.text = _("PyTorch {version}; detected: {devices}").format(
                version=devices["torch"], devices=", ".join(gpus) or ("Apple GPU" if devices.get("mps") else "CPU only")
            )
        combo.blockSignals(wasBlocked)
        if self._parameterNode is not None:
            self._selectComboData(combo, self._parameterNode.device)

    def _startDeviceProbe(self) -> None:
        try:
            self._probe = self.logic.startDeviceProbe()
            self._timer.start()
        except Exception as exc:
            logging.warning(f"SegDeep: device detection failed: {exc}")
            self._populateDevices({"torch": None})

    def _refreshSegmentNames(self) -> None:
        p = self._parameterNode
        self._observeSegmentations([p.segmentation, p.exportSegmentation])
        names = mrml.segment_names(p.segmentation) if p.segmentation else []
        combo = self.ui.segmentNameComboBox
        if [combo.itemText(i) for i in range(combo.count)] != names:
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for name in names:
                combo.addItem(name, name)
            combo.blockSignals(wasBlocked)
        if names and p.segmentName not in names:
            p.segmentName = SegDeepLogicBase.defaultSegmentName(p.segmentation)
        self._selectComboData(combo, p.segmentName)

        exportNames = mrml.segment_names(p.exportSegmentation) if p.exportSegmentation else []
        listWidget = self.ui.exportSegmentsListWidget
        if [listWidget.item(i).text() for i in range(listWidget.count)] != exportNames:
            listWidget.clear()
            for name in exportNames:
                item = qt.QListWidgetItem(name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked)
                listWidget.addItem(item)

    def _observeSegmentations(self, nodes) -> None:
        nodes = [n for n in nodes if n is not None]
        if nodes == self._observedSegmentations:
            return
        for node in self._observedSegmentations:
            for event in (
                slicer.vtkSegmentation.SegmentAdded,
                slicer.vtkSegmentation.SegmentRemoved,
                slicer.vtkSegmentation.SegmentModified,
            ):
                self.removeObserver(node, event, self._onSegmentsChanged)
        self._observedSegmentations = nodes
        for node in nodes:
            for event in (
                slicer.vtkSegmentation.SegmentAdded,
                slicer.vtkSegmentation.SegmentRemoved,
                slicer.vtkSegmentation.SegmentModified,
            ):
                if not self.hasObserver(node, event, self._onSegmentsChanged):
                    self.addObserver(node, event, self._onSegmentsChanged)

    def _onSegmentsChanged(self, caller=None, event=None) -> None:
        qt.QTimer.singleShot(0, self._updateGui)

    # --- segment -----------------------------------------------------------------------------
    def onModelChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.model = self.ui.modelComboBox.currentData or ""
        self._showModelInfo()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.device = self.ui.deviceComboBox.currentData or "auto"

    def onLoadModelButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Load a SegDeep model package"), "", _("Model package (model.json *.zip)")
        )
        if not path:
            return
        if os.path.basename(path) == "model.json":
            path = os.path.dirname(path)
        with slicer.util.tryWithErrorDisplay(_("Cannot load this model package."), waitCursor=True):
            info = self.logic.modelInfo(path)
            combo = self.ui.modelComboBox
            if combo.findData(info.path) < 0:
                if combo.count == 1 and not combo.itemData(0):
                    combo.clear()
                combo.addItem(info.display_text(), info.path)
            self._parameterNode.model = info.path
            self._selectComboData(combo, info.path)
            self._showModelInfo()

    def onSegmentButton(self) -> None:
        if self._job is not None or self._busy is not None:  # one action at a time
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The segmentation could not start."), waitCursor=True):
            self.logic.ensureDependencies(torch=True)
            self._job = self.logic.startSegmentation(
                p.inputVolume,
                model=p.model or self.ui.modelComboBox.currentData or None,
                device=p.device,
                tta=p.tta,
                refine=p.refine,
                uncertainty=p.uncertainty,
                allowMismatch=p.allowMismatch,
            )
            self._withheld = None
            self.ui.progressBar.value = 0
            self.ui.stageLabel.text = _("Starting the segmentation process...")
            self._timer.start()
        self._updateGui()

    def onCancelButton(self) -> None:
        self._cancelJob()
        self.ui.stageLabel.text = _("Cancelled; the scene was not changed.")
        self.ui.progressBar.value = 0
        self._updateGui()

    def _cancelJob(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job = None

    def _onTimer(self) -> None:
        if self._probe is not None:
            self._probe.poll()
            if self._probe.finished:
                self._populateDevices(self.logic.deviceProbeResult(self._probe))
                self._probe = None
        if self._job is not None:
            job = self._job
            job.poll()
            self.ui.progressBar.value = int(round(100 * job.fraction))
            self.ui.stageLabel.text = job.stage
            if job.finished:
                self._job = None
                self._finishJob(job)
        if self._job is None and self._probe is None:
            self._timer.stop()

    def _finishJob(self, job) -> None:
        try:
            segmentationNode = self.logic.finishSegmentation(job)
        except CancelledError:
            self.ui.stageLabel.text = _("Cancelled; the scene was not changed.")
        except MismatchError as exc:
            # Not the anatomy the model knows: nothing was added; say why and what was withheld.
            self._withheld = (job.volumeNode, (self.logic.lastSegmentation or {}).get("plausibility"))
            self.ui.stageLabel.text = _("Withheld (out-of-distribution mismatch); the scene was not changed.")
            if not slicer.app.testingEnabled():
                slicer.util.warningDisplay(str(exc), windowTitle=_("SegDeep: no segments added"))
        except Exception as exc:
            self.ui.stageLabel.text = _("Failed; the scene was not changed.")
            detail = getattr(exc, "log", "") or traceback.format_exc()
            slicer.util.errorDisplay(_("Segmentation failed.") + f"\n\n{exc}", detailedText=detail)
        else:
            summary = self.logic.lastSegmentation or {}
            seconds = sum((summary.get("timings_s") or {}).values())
            self.ui.stageLabel.text = _("Done on {device} in {seconds:.1f} s.").format(
                device=summary.get("device", "?"), seconds=seconds
            )
            if summary.get("fallbacks"):
                self.ui.stageLabel.text += " " + _("Fallbacks: {fallbacks}").format(fallbacks="; ".join(summary["fallbacks"]))
            self._parameterNode.segmentation = segmentationNode
            self._parameterNode.exportSegmentation = segmentationNode
            self._showSegmentation(segmentationNode, job.volumeNode)
            self._warnIfImplausible(segmentationNode)
        finally:
            self._updateGui()

    def _warnIfImplausible(self, segmentationNode) -> None:
        """Show the out-of-distribution verdict; a "mismatch" also in a message box (not while testing)."""
        self._showPlausibility(segmentationNode)
        check = self.logic.plausibility(segmentationNode)
        if check and check["verdict"] == "mismatch" and not slicer.app.testingEnabled():
            slicer.util.warningDisplay(
                self.logic.plausibilityText(check),
                windowTitle=_("SegDeep: do not use this segmentation"),
            )

    def _showSegmentation(self, segmentationNode, volumeNode) -> None:
        segmentationNode.CreateClosedSurfaceRepresentation()
        uncertaintyNode = segmentationNode.GetNodeReference(UNCERTAINTY_REFERENCE)
        if uncertaintyNode is not None and self._parameterNode.showUncertainty:
            slicer.util.setSliceViewerLayers(background=volumeNode, foreground=uncertaintyNode, foregroundOpacity=0.5)
        else:
            slicer.util.setSliceViewerLayers(background=volumeNode)

    def onShowUncertaintyToggled(self, checked: bool) -> None:
        segmentationNode = self._parameterNode.segmentation if self._parameterNode else None
        uncertaintyNode = segmentationNode.GetNodeReference(UNCERTAINTY_REFERENCE) if segmentationNode else None
        if uncertaintyNode is not None:
            slicer.util.setSliceViewerLayers(
                foreground=uncertaintyNode if checked else None, foregroundOpacity=0.5 if checked else 0.0
            )

    # --- compare -----------------------------------------------------------------------------
    def onSegmentationChanged(self, node) -> None:
        self._updateGui()

    def onSegmentNameChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.segmentName = self.ui.segmentNameComboBox.itemData(index) or ""

    def onPresetChanged(self, index: int) -> None:
        data = self.ui.presetComboBox.itemData(index)
        if self._parameterNode is None or not data:
            return
        p = self._parameterNode
        if data in PRESET_RANGES:
            p.lowerHU, p.upperHU = PRESET_RANGES[data]
        elif data.startswith("method:"):
            p.upperHU = 3071.0
        p.thresholdPreset = data

    def _progress(self, fraction: float, stage: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.stageLabel.text = stage
        slicer.app.processEvents()

    def _startBusy(self, what: str) -> bool:
        """Mark Compare or Export as running (buttons disabled); False if one already runs."""
        if self._busy is not None or self._job is not None:
            return False
        self._busy = what
        self._updateGui()
        return True

    def _endBusy(self) -> None:
        self._busy = None
        self.ui.stageLabel.text = ""
        self.ui.progressBar.value = 0
        self._updateGui()

    def onCompareButton(self) -> None:
        if not self._startBusy("compare"):
            return
        try:
            self._compare()
        finally:  # also on an error: the buttons come back
            self._endBusy()

    def _compare(self) -> None:
        p = self._parameterNode
        kind, _sep, name = p.thresholdPreset.partition(":")
        options = {}
        if kind == "preset":
            options["preset"] = name
        elif kind == "method":
            options.update(preset=None, method=name, upperHU=p.upperHU)
        else:
            options.update(preset=None, lowerHU=p.lowerHU, upperHU=p.upperHU)
        with slicer.util.tryWithErrorDisplay(_("The comparison failed."), waitCursor=True):
            table = self.logic.compareWithThreshold(
                p.segmentation,
                p.inputVolume,
                segmentName=p.segmentName,
                keepLargest=p.keepLargest,
                minIslandMm3=p.minIslandMm3,
                fillHoles=p.fillHoles,
                toleranceMm=p.toleranceMm,
                roiMarginMm=None if p.compareWholeCT else p.roiMarginMm,
                progress=self._progress,
                **options,
            )
            p.comparisonTable = table
            self.ui.comparisonTableView.setMRMLTableNode(table)
            values = self.logic.lastComparison or {}
            self.ui.compareStatusLabel.text = _(
                "Threshold {lower} to {upper} HU: Dice {dice:.3f}, HD95 {hd95} mm. Red: network only; blue: threshold only."
            ).format(
                lower=_fmt(values.get("lower_hu")),
                upper=_fmt(values.get("upper_hu")),
                dice=values.get("dice", float("nan")),
                hd95=_fmt(values.get("hd95_mm")),
            )
            disagreementNode = table.GetNodeReference(DISAGREEMENT_REFERENCE)
            if disagreementNode is not None:
                slicer.util.setSliceViewerLayers(background=p.inputVolume)

    # --- export ------------------------------------------------------------------------------
    def onExportSegmentationChanged(self, node) -> None:
        self._updateGui()

    def onExportButton(self) -> None:
        if not self._startBusy("export"):
            return
        try:
            self._export()
        finally:  # also on an error or a declined overwrite: the buttons come back
            self._endBusy()

    def _export(self) -> None:
        p = self._parameterNode
        listWidget = self.ui.exportSegmentsListWidget
        names = [listWidget.item(i).text() for i in range(listWidget.count) if listWidget.item(i).checkState() == qt.Qt.Checked]
        if not names:
            slicer.util.errorDisplay(_("Select at least one segment to export."))
            return
        options = {
            "format": p.exportFormat,
            "segmentNames": names,
            "smoothing": p.smoothing,
            "decimation": p.decimation,
            "coordinateSystem": p.coordinateSystem,
            "merge": p.merge,
            "progress": self._progress,
            "hollowWallMm": p.hollowWallMm or None,
            "drainHoles": p.drainHoles if p.hollowWallMm else 0,
            "drainDiameterMm": p.drainDiameterMm,
            "cutPlanes": list(self.ui.cutPlanesSelector.checkedNodes()),
            "kerfMm": p.kerfMm,
            "perShell": p.perShell,
            "thinThresholdMm": p.thinThresholdMm or None,
            "prepSegmentNames": [n.strip() for n in self.ui.prepSegmentsLineEdit.text.split(",") if n.strip()] or None,
        }
        buildVolume = str(self.ui.buildVolumeLineEdit.text).strip()
        if buildVolume:
            try:
                size = [float(v) for v in buildVolume.replace("x", " ").replace(",", " ").split()]
            except ValueError:
                size = []
            if len(size) != 3:
                slicer.util.errorDisplay(_("Build volume: give three sizes in mm, e.g. 250 210 220."))
                return
            options["buildVolumeMm"] = size
        with slicer.util.tryWithErrorDisplay(_("The export failed."), waitCursor=True):
            folder = str(p.outputFolder)
            try:
                reports = self.logic.exportForPrinting(p.exportSegmentation, folder, overwrite=False, **options)
            except FileExistsError as exc:
                if not slicer.util.confirmYesNoDisplay(f"{exc}\n\n" + _("Replace the existing files?")):
                    return
                reports = self.logic.exportForPrinting(p.exportSegmentation, folder, overwrite=True, **options)
            qt.QSettings().setValue(OUTPUT_FOLDER_SETTING, folder)  # remembered for the next session
            self.ui.outputFolderPathLineEdit.addCurrentPathToHistory()
            table = self.logic.createPrintReportTable(reports, p.exportSegmentation)
            p.printReportTable = table
            self.ui.printReportTableView.setMRMLTableNode(table)
            notReady = [r["segment"] for r in reports if not r.get("print_ready")]
            files = sorted({r["file"] for r in reports})
            self.ui.exportStatusLabel.text = _("{count} file(s) written to {folder}. ").format(
                count=len(files), folder=folder
            ) + (
                _("Not print-ready: {names}.").format(names=", ".join(notReady))
                if notReady
                else _("All surfaces are print-ready.")
            )

    # --- review and correct: the logic does the work (SegDeepLib.review), this only wires the panel
    def onReviewRankButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Ranking the batch's cases failed."), waitCursor=True):
            self._reviewItems = self.logic.reviewQueue(str(self.ui.reviewBatchPathLineEdit.currentPath))
            self.ui.reviewListWidget.clear()
            for item in self._reviewItems:
                score = "-" if item.score is None else f"{item.score:.3f}"
                reason = item.reasons[0] if item.reasons else ""
                self.ui.reviewListWidget.addItem(f"{item.rank}. {item.case_id} (score {score}): {reason}")
            if self._reviewItems:
                self.ui.reviewListWidget.setCurrentRow(0)
            self.ui.reviewStatusLabel.text = _("{count} case(s) ranked; the first needs review most.").format(
                count=len(self._reviewItems)
            )

    def onReviewLoadButton(self) -> None:
        row = self.ui.reviewListWidget.currentRow
        if row < 0 or row >= len(self._reviewItems):
            slicer.util.errorDisplay(_("Rank the cases and select one first."))
            return
        item = self._reviewItems[row]
        with slicer.util.tryWithErrorDisplay(_("Loading the case failed."), waitCursor=True):
            loaded = self.logic.loadReviewCase(item)
            self._reviewSegmentation = loaded["segmentationNode"]
            slicer.util.setSliceViewerLayers(background=loaded["volumeNode"], fit=True)
            if loaded["segmentId"]:
                center = loaded["segmentationNode"].GetSegmentCenterRAS(loaded["segmentId"])
                if center is not None:
                    slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *center)
            self.ui.correctionReviewedLineEdit.text = item.most_uncertain_structure or ""
            self.ui.reviewStatusLabel.text = _(
                "Loaded {case}: correct {structure} in the Segment Editor, then save the correction."
            ).format(case=item.case_id, structure=item.most_uncertain_structure or _("the segments"))

    def onSaveCorrectionButton(self) -> None:
        from SegDeepLogic.corrections import CorrectionError

        node = self._reviewSegmentation
        if node is None or node.GetScene() is None:
            node = self.ui.segmentationSelector.currentNode()
        reviewed = [n.strip() for n in str(self.ui.correctionReviewedLineEdit.text).split(",") if n.strip()]
        with slicer.util.tryWithErrorDisplay(_("Saving the correction failed."), waitCursor=True):
            dataset = str(self.ui.correctionDatasetPathLineEdit.currentPath)
            try:
                path = self.logic.saveCorrectionAsTrainingCase(node, dataset, reviewed)
            except CorrectionError as exc:
                if "exists" not in str(exc) or not slicer.util.confirmYesNoDisplay(f"{exc}\n\n" + _("Replace it?")):
                    raise
                path = self.logic.saveCorrectionAsTrainingCase(node, dataset, reviewed, overwrite=True)
            self.ui.reviewStatusLabel.text = _("Saved as training case {path}.").format(path=path)


def _fmt(value) -> str:
    return "open" if value is None else f"{value:.1f}"


#
# SegDeepLogic
#
class SegDeepLogic(ScriptedLoadableModuleLogic, SegDeepLogicBase):
    """Everything the module does, scriptable from the Python console.

    .. code-block:: python

        logic = slicer.util.getModuleLogic("SegDeep")
        seg = logic.segment(volumeNode, device="auto", uncertainty=True, progress=lambda f, s: print(f"{f:4.0%} {s}"))
        table = logic.compareWithThreshold(seg, volumeNode, segmentName="bone", preset="bone")
        reports = logic.exportForPrinting(seg, "/tmp/print", format="STL", smoothing=0.5, decimation=0.3)

    See ``SegDeepLib.logic.SegDeepLogicBase`` for every method and its parameters.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegDeepLogicBase.__init__(self)

    def getParameterNode(self):
        return SegDeepParameterNode(super().getParameterNode())


#
# SegDeepTest
#
class SegDeepTest(ScriptedLoadableModuleTest):
    """Runs the end-to-end scenario of ``SegDeepLib.selftest`` (the same one pytest runs with slicer-core)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_SegDeepScenario()

    def test_SegDeepScenario(self) -> None:
        from SegDeepLib import selftest

        problem = unsupportedSlicerMessage()
        if problem:
            self.skipTest(problem)
        missing = missing_packages([*ENGINE_REQUIREMENTS, TORCH_REQUIREMENT])
        if missing and slicer.app.testingEnabled():  # never install packages on a build machine
            message = selftest.skip_message(missing)
            self.delayDisplay(message)
            self.skipTest(message)
        self.delayDisplay("Loading the sample CT and rotating/shifting its geometry")
        volumeNode = slicer.util.loadVolume(str(selftest.sample_ct_path()))
        selftest.apply_test_geometry(volumeNode)
        logic = SegDeepLogic()
        self.delayDisplay("Segmenting, comparing with the bone threshold and exporting an STL")
        with tempfile.TemporaryDirectory() as folder:
            results = selftest.run_scenario(logic, volumeNode, folder, model=selftest.default_test_model())
        self.assertIsNotNone(results["segmentation"])
        self.delayDisplay("SegDeep scenario passed")


__all__ = [
    "SegDeep",
    "SegDeepLogic",
    "SegDeepParameterNode",
    "SegDeepTest",
    "SegDeepWidget",
    "SegDeepWorkerError",
    "registerSampleData",
]
