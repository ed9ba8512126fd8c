"""Render the SegDeep module panel from its real UI file to a PNG, without Slicer.

The Extensions catalog needs a picture of the module. This script loads
``Resources/UI/SegDeep.ui`` with Qt's ``QUiLoader`` on the offscreen platform, after
rewriting (in a temporary copy; the .ui itself is not changed) Slicer's and CTK's own
widget classes to their nearest Qt base classes:

* ``qMRMLWidget`` -> ``QWidget``
* ``ctkCollapsibleButton`` -> ``QGroupBox`` (its text becomes the group title)
* ``qMRMLNodeComboBox``, ``qMRMLCheckableNodeComboBox`` -> ``QComboBox``
* ``ctkSliderWidget`` -> ``QSlider`` next to a ``QDoubleSpinBox`` (its range and value kept)
* ``ctkPathLineEdit`` -> ``QLineEdit``
* ``qMRMLTableView`` -> ``QTableView``

The combo boxes are filled the way the module fills them (model list from the bundled model
card, threshold presets, a CPU-only device list), with realistic scene node names. The
picture is therefore *not* a screenshot of a running Slicer: Slicer's widgets are drawn as
their Qt base classes, with Qt's default style.

Run it (PySide6 is needed only here, it is not a dependency of SegDeep)::

    pip install PySide6-Essentials
    QT_QPA_PLATFORM=offscreen python scripts/render_panel.py [--output docs/img/slicer_panel.png] [--width 420]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UI_FILE = REPO / "Resources" / "UI" / "SegDeep.ui"
MODEL_CARD = REPO / "Resources" / "Models" / "headneck-ct" / "model.json"
DEFAULT_OUTPUT = REPO / "docs" / "img" / "slicer_panel.png"

# Slicer/CTK class -> (Qt class, properties kept; None keeps them all)
QT_CLASSES: dict[str, tuple[str, set[str] | None]] = {
    "qMRMLWidget": ("QWidget", None),
    "ctkCollapsibleButton": ("QGroupBox", {"text"}),
    "qMRMLNodeComboBox": ("QComboBox", {"toolTip"}),
    "qMRMLCheckableNodeComboBox": ("QComboBox", {"toolTip"}),
    "ctkSliderWidget": ("QDoubleSpinBox", {"toolTip", "decimals", "singleStep", "minimum", "maximum", "value"}),
    "ctkPathLineEdit": ("QLineEdit", {"toolTip"}),
    "qMRMLTableView": ("QTableView", {"toolTip"}),
}

# As SegDeepExtension/SegDeep.py's PRESET_ITEMS (copied: that module imports Slicer).
PRESET_LABELS = (
    "Bone (226 to 3071 HU)",
    "Compact bone, adult (662 to 1988 HU)",
    "Tooth enamel, adult (1553 to 2850 HU)",
    "Otsu (automatic lower bound)",
    "Li (automatic lower bound)",
    "Yen (automatic lower bound)",
    "Triangle (automatic lower bound)",
    "Isodata (automatic lower bound)",
    "Custom range",
)


def qt_ui_text(path: Path) -> tuple[str, list[str]]:
    """The .ui text with Slicer/CTK classes rewritten to Qt ones, and the names of the slider widgets."""
    tree = ET.parse(path)
    root = tree.getroot()
    custom = root.find("customwidgets")
    if custom is not None:
        known = {c.findtext("class") for c in custom.iter("customwidget")}
        unknown = known - set(QT_CLASSES)
        if unknown:
            raise SystemExit(f"{path}: no Qt class given for {sorted(unknown)}; add them to QT_CLASSES")
        root.remove(custom)
    connections = root.find("connections")
    if connections is not None:  # setMRMLScene(vtkMRMLScene*) and the like: Slicer-only signals and slots
        for connection in connections.findall("connection"):
            if "MRML" in connection.findtext("signal", "") + connection.findtext("slot", ""):
                connections.remove(connection)
    sliders = []
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls not in QT_CLASSES:
            continue
        qt_class, kept = QT_CLASSES[cls]
        widget.set("class", qt_class)
        if cls == "ctkSliderWidget":
            sliders.append(widget.get("name"))
        for prop in widget.findall("property"):
            name = prop.get("name")
            if kept is not None and name not in kept:
                widget.remove(prop)
            elif qt_class == "QGroupBox" and name == "text":
                prop.set("name", "title")
    return ET.tostring(root, encoding="unicode"), sliders


def fill(panel, sliders: list[str]) -> None:
    """Put the entries the module would show into the panel's widgets."""
    from PySide6 import QtCore, QtWidgets

    def child(cls, name):
        widget = panel.findChild(cls, name)
        if widget is None:
            raise SystemExit(f"{UI_FILE} has no {cls.__name__} named {name!r}")
        return widget

    card = json.loads(MODEL_CARD.read_text(encoding="utf-8"))
    names = [label["name"] for label in card["labels"]]
    # As SegDeepLib.logic.ModelInfo.display_text and SegDeepWidget._showModelInfo.
    child(QtWidgets.QComboBox, "modelComboBox").addItem(f"{card['name']} {card['version']}: {', '.join(names)}")
    squares = []
    for label in card["labels"]:
        r, g, b = (round(255 * float(c)) for c in label["color"])
        squares.append(f'<span style="color:rgb({r},{g},{b})">&#9632;</span> {label["name"]}')
    child(QtWidgets.QLabel, "modelInfoLabel").setText("Structures: " + ", ".join(squares))
    # As SegDeepWidget._populateDevices on a computer without a GPU (the PyTorch of this project's test environment).
    device = child(QtWidgets.QComboBox, "deviceComboBox")
    device.addItems(["Auto: CPU, no GPU found", "CPU"])
    child(QtWidgets.QLabel, "deviceInfoLabel").setText("PyTorch 2.13.0+cpu; detected: CPU only")

    child(QtWidgets.QComboBox, "inputVolumeSelector").addItem("SegDeepHeadNeckCT")
    for name in ("segmentationSelector", "exportSegmentationSelector"):
        child(QtWidgets.QComboBox, name).addItem("SegDeepHeadNeckCT segmentation")
    child(QtWidgets.QComboBox, "segmentNameComboBox").addItems(names)
    child(QtWidgets.QComboBox, "presetComboBox").addItems(PRESET_LABELS)
    child(QtWidgets.QComboBox, "cutPlanesSelector").addItem("None")
    segments = child(QtWidgets.QListWidget, "exportSegmentsListWidget")
    for name in names:
        item = QtWidgets.QListWidgetItem(name, segments)
        item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(QtCore.Qt.CheckState.Checked if name == "mandible" else QtCore.Qt.CheckState.Unchecked)
    segments.setMaximumHeight(4 * segments.sizeHintForRow(0) + 2 * segments.frameWidth())
    child(QtWidgets.QLineEdit, "outputFolderPathLineEdit").setText("~/SegDeep/meshes")
    for name in ("comparisonTableView", "printReportTableView"):
        child(QtWidgets.QTableView, name).setMaximumHeight(80)

    # ctkSliderWidget is a slider and a spin box side by side.
    for name in sliders:
        spin = child(QtWidgets.QDoubleSpinBox, name)
        layout = spin.parentWidget().layout()
        scale = 10 ** spin.decimals()
        slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        slider.setRange(round(spin.minimum() * scale), round(spin.maximum() * scale))
        slider.setValue(round(spin.value() * scale))
        box = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        layout.replaceWidget(spin, box)
        row.addWidget(slider, 1)
        row.addWidget(spin)


def render(output: Path, width: int) -> Path:
    """Load the rewritten .ui, fill it, and save the panel as a PNG at ``output``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    text, sliders = qt_ui_text(UI_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "SegDeep.ui"
        copy.write_text(text, encoding="utf-8")
        ui_file = QtCore.QFile(str(copy))
        if not ui_file.open(QtCore.QIODevice.OpenModeFlag.ReadOnly):
            raise SystemExit(f"cannot open {copy}")
        loader = QUiLoader()
        panel = loader.load(ui_file)
        ui_file.close()
    if panel is None:
        raise SystemExit(f"QUiLoader could not load {UI_FILE}: {loader.errorString()}")
    fill(panel, sliders)
    panel.setFixedWidth(width)
    # Laid out as on screen (word-wrapped labels get their height, spin boxes their text) but never drawn there.
    panel.setAttribute(QtCore.Qt.WidgetAttribute.WA_DontShowOnScreen)
    panel.show()
    for _ in range(3):  # the height of wrapped labels settles once the widths are known
        app.processEvents()
        # QFormLayout does not give a spanning word-wrapped label the height of its wrapped lines.
        for label in panel.findChildren(QtWidgets.QLabel):
            if label.wordWrap() and label.text():
                label.setMinimumHeight(label.heightForWidth(label.width()))
        panel.resize(width, panel.layout().totalMinimumSize().height())
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise SystemExit(f"could not write {output}")
    panel.close()
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write (default: %(default)s)")
    parser.add_argument("--width", type=int, default=420, help="panel width in pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    print(render(args.output, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
