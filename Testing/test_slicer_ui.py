"""Static checks of the SegDeep Slicer module: the .ui, the widget code, the build lists, the catalog entry.

The Qt side cannot run without the Slicer application, so it is checked statically: every widget
the code uses exists in ``SegDeep.ui`` with the expected class, every ``SlicerParameterName`` is a
field of the parameter node with a type that widget can show, every logic method the widget calls
exists, and ``SegDeep.py`` imports (with stand-ins for ``qt``, ``ctk`` and Slicer's Python-only
modules) into the Module/ParameterNode/Widget/Logic/Test pattern. The extension's CMake lists
must name every file the module needs, so they cannot silently go stale.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SegDeepExtension"
MODULE_SCRIPT = MODULE_DIR / "SegDeep.py"
UI_FILE = REPO / "Resources" / "UI" / "SegDeep.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
CATALOG = REPO / "SegDeep.json"

# Every widget the code uses, with its class in the .ui.
EXPECTED_WIDGETS = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "loadModelButton": "QPushButton",
    "modelInfoLabel": "QLabel",
    "deviceComboBox": "QComboBox",
    "deviceInfoLabel": "QLabel",
    "ttaCheckBox": "QCheckBox",
    "refineCheckBox": "QCheckBox",
    "uncertaintyCheckBox": "QCheckBox",
    "showUncertaintyCheckBox": "QCheckBox",
    "segmentButton": "QPushButton",
    "cancelButton": "QPushButton",
    "progressBar": "QProgressBar",
    "stageLabel": "QLabel",
    "plausibilityLabel": "QLabel",
    "segmentationSelector": "qMRMLNodeComboBox",
    "segmentNameComboBox": "QComboBox",
    "presetComboBox": "QComboBox",
    "lowerHUSpinBox": "QDoubleSpinBox",
    "upperHUSpinBox": "QDoubleSpinBox",
    "roiMarginSpinBox": "QDoubleSpinBox",
    "keepLargestCheckBox": "QCheckBox",
    "minIslandSpinBox": "QDoubleSpinBox",
    "fillHolesCheckBox": "QCheckBox",
    "toleranceSpinBox": "QDoubleSpinBox",
    "compareButton": "QPushButton",
    "compareStatusLabel": "QLabel",
    "comparisonTableView": "qMRMLTableView",
    "exportSegmentationSelector": "qMRMLNodeComboBox",
    "exportSegmentsListWidget": "QListWidget",
    "formatComboBox": "QComboBox",
    "smoothingSlider": "ctkSliderWidget",
    "decimationSlider": "ctkSliderWidget",
    "coordinateSystemComboBox": "QComboBox",
    "mergeCheckBox": "QCheckBox",
    "hollowWallSpinBox": "QDoubleSpinBox",
    "drainHolesSpinBox": "QSpinBox",
    "drainDiameterSpinBox": "QDoubleSpinBox",
    "cutPlanesSelector": "qMRMLCheckableNodeComboBox",
    "kerfSpinBox": "QDoubleSpinBox",
    "prepSegmentsLineEdit": "QLineEdit",
    "perShellCheckBox": "QCheckBox",
    "thinThresholdSpinBox": "QDoubleSpinBox",
    "buildVolumeLineEdit": "QLineEdit",
    "outputFolderPathLineEdit": "ctkPathLineEdit",
    "exportButton": "QPushButton",
    "exportStatusLabel": "QLabel",
    "printReportTableView": "qMRMLTableView",
    "reviewBatchPathLineEdit": "ctkPathLineEdit",
    "reviewRankButton": "QPushButton",
    "reviewListWidget": "QListWidget",
    "reviewLoadButton": "QPushButton",
    "correctionReviewedLineEdit": "QLineEdit",
    "correctionDatasetPathLineEdit": "ctkPathLineEdit",
    "saveCorrectionButton": "QPushButton",
    "reviewStatusLabel": "QLabel",
}

# Which widget classes the parameter node wrapper can bind to which field types.
BINDABLE = {
    "bool": {"QCheckBox", "QPushButton", "ctkCheckBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget"},
    "str": {"QLineEdit", "QComboBox"},
    "pathlib.Path": {"ctkPathLineEdit"},
}
QT_CLASSES = {
    "QWidget",
    "QLabel",
    "QComboBox",
    "QPushButton",
    "QCheckBox",
    "QProgressBar",
    "QDoubleSpinBox",
    "QListWidget",
    "QSpinBox",
    "QLineEdit",
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    widgets = {}
    for element in root.iter("widget"):
        name = element.get("name")
        assert name not in widgets, f"widget name {name!r} is used twice in {UI_FILE.name}"
        widgets[name] = element
    return widgets


def ui_property(element: ET.Element, name: str) -> ET.Element | None:
    for prop in element.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def module_ast() -> ast.Module:
    return ast.parse(MODULE_SCRIPT.read_text(encoding="utf-8"))


def class_def(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"SegDeep.py has no class {name}")


def parameter_fields() -> dict[str, str]:
    """``{field: annotation source}`` of the ``@parameterNodeWrapper`` class."""
    cls = class_def(module_ast(), "SegDeepParameterNode")
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def attributes_of(tree: ast.AST, owner: str) -> set[str]:
    """Names ``X`` in every ``<owner>.X`` expression (owner like ``self.ui``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == owner:
            found.add(node.attr)
    return found


# --------------------------------------------------------------------------------------------
# The .ui and the widget code
# --------------------------------------------------------------------------------------------
def test_ui_top_level_is_a_qmrmlwidget():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "SegDeep"
    assert root.findtext("class") == "SegDeep"


def test_every_widget_the_code_uses_exists_with_its_class():
    widgets = ui_widgets()
    used = attributes_of(module_ast(), "self.ui")
    unknown = used - set(EXPECTED_WIDGETS)
    assert not unknown, f"SegDeep.py uses widgets this test does not know (add them with their class): {sorted(unknown)}"
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        assert widgets[name].get("class") == EXPECTED_WIDGETS[name], f"{name} is a {widgets[name].get('class')}"


def test_every_expected_widget_is_in_the_ui():
    widgets = ui_widgets()
    missing = [n for n in EXPECTED_WIDGETS if n not in widgets]
    assert not missing, missing


def test_node_selectors_declare_node_types():
    slicer = pytest.importorskip("slicer")
    for name, element in ui_widgets().items():
        if element.get("class") != "qMRMLNodeComboBox":
            continue
        prop = ui_property(element, "nodeTypes")
        assert prop is not None, f"{name} has no nodeTypes"
        types_ = [s.text for s in prop.iter("string")]
        assert types_, f"{name} has an empty nodeTypes"
        for node_type in types_:
            assert hasattr(slicer, node_type), f"{name}: {node_type} is not an MRML node class"


def test_custom_widgets_are_declared_and_connected_to_the_scene():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    for name, element in ui_widgets().items():
        cls = element.get("class")
        assert cls in QT_CLASSES or cls in declared, f"{name}: custom widget class {cls} is not declared in <customwidgets>"
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {n for n, e in ui_widgets().items() if e.get("class", "").startswith("qMRML") and n != "SegDeep"}
    assert mrml_widgets <= receivers, f"not given the scene: {sorted(mrml_widgets - receivers)}"


def _field_kind(annotation: str) -> str:
    match = re.match(r"Annotated\[(\w+(?:\.\w+)?)", annotation)
    return match.group(1) if match else annotation


def test_parameter_bindings_match_the_parameter_node():
    fields = parameter_fields()
    bound = {}
    for name, element in ui_widgets().items():
        prop = ui_property(element, "SlicerParameterName")
        if prop is None:
            continue
        assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property (stdset=0)"
        field = prop.findtext("string")
        assert field in fields, f"{name} binds {field!r}, which SegDeepParameterNode does not have"
        assert field not in bound, f"{field!r} is bound twice ({bound.get(field)} and {name})"
        bound[field] = name
        kind = _field_kind(fields[field])
        cls = element.get("class")
        if kind.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", f"{name} ({cls}) cannot show the node field {field!r}"
            node_types = [s.text for s in ui_property(element, "nodeTypes").iter("string")]
            assert kind in node_types, f"{name} lists {node_types} for a {kind} field"
        else:
            assert cls in BINDABLE[kind], f"{name} ({cls}) cannot show the {kind} field {field!r}"
            if kind == "str":
                assert "Choice(" in fields[field], f"{field!r} is bound to a combo box: annotate it with Choice([...])"
    # Choice fields: the combo box items are exactly the choices.
    for field, annotation in fields.items():
        match = re.search(r"Choice\((\[.*?\])\)", annotation)
        if match and field in bound:
            items = [i.findtext("property/string") for i in ui_widgets()[bound[field]].findall("item")]
            assert items == ast.literal_eval(match.group(1)), f"{bound[field]} items {items}"


def test_code_uses_only_existing_parameter_fields():
    fields = set(parameter_fields())
    tree = class_def(module_ast(), "SegDeepWidget")
    used = attributes_of(tree, "self._parameterNode") | attributes_of(tree, "p")
    used -= {"connectGui", "disconnectGui", "StartModify", "EndModify"}
    assert used <= fields, f"unknown parameter node fields: {sorted(used - fields)}"


def test_widget_calls_only_existing_logic_methods():
    pytest.importorskip("slicer")
    sys.path.insert(0, str(MODULE_DIR))
    from SegDeepLib.logic import SegDeepLogicBase

    used = attributes_of(class_def(module_ast(), "SegDeepWidget"), "self.logic")
    instance = SegDeepLogicBase()
    missing = {name for name in used if not hasattr(instance, name)} - {"getParameterNode"}
    assert not missing, f"SegDeepWidget calls logic methods that do not exist: {sorted(missing)}"


def test_no_installation_at_import_time():
    """pip and PyTorch installation calls appear only inside functions, never at module level."""
    for path in [MODULE_SCRIPT, *sorted((MODULE_DIR / "SegDeepLib").glob("*.py"))]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for statement in tree.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for node in ast.walk(statement):
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    assert not re.search(r"pip_install|pip_ensure|installTorch|launchConsoleProcess|Popen", name), (
                        f"{path.name}: {name}() runs at import time"
                    )


# --------------------------------------------------------------------------------------------
# SegDeep.py imports into the scripted-module pattern (stand-ins for the Qt side)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def segdeep_module(monkeypatch):
    slicer = pytest.importorskip("slicer")

    class _Stub:
        def __init__(self, *args, **kwargs):
            self.args = args

        def __getattr__(self, name):
            return _Stub()

        def __call__(self, *args, **kwargs):
            return _Stub()

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.initialized = True

        def getParameterNode(self):
            return None

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest:
        pass

    qt = types.ModuleType("qt")
    qt.QTimer = _Stub
    ctk = types.ModuleType("ctk")
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = ScriptedLoadableModule
    scripted.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    scripted.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    for name, module in {
        "qt": qt,
        "ctk": ctk,
        "slicer.ScriptedLoadableModule": scripted,
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.i18n": i18n,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "app", _Stub(), raising=False)
    spec = importlib.util.spec_from_file_location("SegDeep", MODULE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_follows_the_scripted_module_pattern(segdeep_module):
    from SegDeepLib.logic import SegDeepLogicBase

    parent = types.SimpleNamespace()
    segdeep_module.SegDeep(parent)
    assert parent.title == "SegDeep" and parent.categories == ["Segmentation"]
    assert "separate process" in parent.helpText and parent.contributors
    logic = segdeep_module.SegDeepLogic()
    assert isinstance(logic, SegDeepLogicBase) and logic.initialized and logic.lastSegmentation is None
    for name in ("segment", "compareWithThreshold", "exportForPrinting", "startSegmentation", "finishSegmentation"):
        assert callable(getattr(logic, name))
    assert issubclass(segdeep_module.SegDeepTest, sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleTest)
    assert hasattr(segdeep_module.SegDeepTest, "runTest") and hasattr(segdeep_module.SegDeepTest, "test_SegDeepScenario")
    assert segdeep_module.SAMPLE_CT.is_file() and segdeep_module.ENGINE_ROOT == REPO
    assert (
        Path(segdeep_module.SegDeepWidget._uiPath(types.SimpleNamespace(resourcePath=lambda p: "/nonexistent/" + p))) == UI_FILE
    )


def test_console_api_signatures():
    pytest.importorskip("slicer")
    import inspect

    sys.path.insert(0, str(MODULE_DIR))
    from SegDeepLib.logic import SegDeepLogicBase

    segment = inspect.signature(SegDeepLogicBase.segment).parameters
    assert list(segment)[:9] == ["self", "volumeNode", "model", "device", "tta", "refine", "uncertainty", "progress", "cancel"]
    assert (segment["model"].default, segment["device"].default, segment["tta"].default) == (None, "auto", False)
    compare = inspect.signature(SegDeepLogicBase.compareWithThreshold).parameters
    assert compare["preset"].default == "bone" and compare["lowerHU"].default is None and "keepLargest" in compare
    export = inspect.signature(SegDeepLogicBase.exportForPrinting).parameters
    assert [export[k].default for k in ("format", "segmentNames", "smoothing", "decimation", "coordinateSystem", "merge")] == [
        "STL",
        None,
        0.5,
        0.0,
        "LPS",
        False,
    ]


# --------------------------------------------------------------------------------------------
# Build lists and catalog entry
# --------------------------------------------------------------------------------------------
def test_cmake_globs_every_file_the_module_needs_at_relative_paths():
    # New engine modules and resources are installed without editing the CMake file; that the installed tree
    # is complete and holds no absolute path is checked by installing it (test_slicer_install.py).
    text = re.sub(r"#[^\n]*", "", MODULE_CMAKE.read_text(encoding="utf-8"))
    assert re.search(
        r"file\(GLOB_RECURSE SEGDEEP_ENGINE_SCRIPTS\s+RELATIVE \$\{SEGDEEP_SOURCE_ROOT\}[^)]*SegDeepLogic/\*\.py", text
    )
    assert re.search(r"file\(GLOB_RECURSE SEGDEEP_ROOT_RESOURCES\s+RELATIVE \$\{SEGDEEP_SOURCE_ROOT\}[^)]*Resources/\*", text)
    assert re.search(
        r"file\(GLOB_RECURSE MODULE_PYTHON_SCRIPTS\s+RELATIVE \$\{CMAKE_CURRENT_SOURCE_DIR\}[^)]*SegDeepLib/\*\.py", text
    )
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\)", text, re.S).group(1).split()
    assert call[call.index("SOURCE_DIR") + 1] == "${SEGDEEP_SOURCE_ROOT}" and "NO_INSTALL_SUBDIR" in call
    assert "${SEGDEEP_ROOT_RESOURCES}" in " ".join(call) and "${SEGDEEP_ENGINE_SCRIPTS}" in " ".join(call)
    assert "configure_file" not in text, "files copied into the build folder install at absolute paths"


def test_cmake_builds_a_scripted_module_with_tests():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1).split()
    assert call[:2] == ["NAME", "${MODULE_NAME}"] and "WITH_GENERIC_TESTS" in call
    assert "${MODULE_PYTHON_SCRIPTS}" in call and "${MODULE_PYTHON_RESOURCES}" in call
    assert re.search(r"if\(BUILD_TESTING\)\s*(#[^\n]*\n\s*)*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    assert "set(MODULE_NAME SegDeep)" in text
    root = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(SegDeepExtension)" in root


def test_catalog_entry_is_valid_against_the_extensions_index_schema():
    # The schema of the Slicer Extensions Index (Slicer/Slicer Schemas/, v1.0.2), kept offline in Testing/Data.
    jsonschema = pytest.importorskip("jsonschema")
    entry = json.loads(CATALOG.read_text(encoding="utf-8"))
    schema = json.loads((REPO / "Testing" / "Data" / "slicer-extension-catalog-entry-schema-v1.0.2.json").read_text("utf-8"))
    assert entry["$schema"] == schema["$id"]
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(entry)]
    assert not errors, errors
    root = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', root).group(1)
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', root).group(1).split()
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', root).group(1)
    assert entry["category"] == category == "Segmentation"
    assert entry["build_dependencies"] == depends == ["PyTorch"]
    assert entry["scm_url"] == homepage + ".git" and entry["scm_revision"]
    assert CATALOG.stem == re.search(r"project\((\w+)\)", root).group(1)  # the index names the file after the extension


def test_license_the_catalog_and_readme_name_is_at_the_root():
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "[LICENSE](LICENSE)" in (REPO / "README.md").read_text(encoding="utf-8")
    root = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = " ".join(re.findall(r'set\(EXTENSION_(?:ICONURL|SCREENSHOTURLS) "([^"]+)"\)', root)).split()
    assert "https://raw.githubusercontent.com/segdeep/SegDeep/main/docs/img/slicer_panel.png" in urls
    for url in urls:  # EXTENSION_SCREENSHOTURLS is a space-separated list
        relative = url.split("/main/", 1)[1]
        assert (REPO / relative).is_file(), f"{url} names a file the repository does not have"


# --------------------------------------------------------------------------------------------
# Panel correctness
# --------------------------------------------------------------------------------------------
def test_every_float_bound_to_a_spin_box_or_slider_has_the_widgets_range():
    # An unbounded float parameter sets the widget's range to -inf..inf when the GUI is connected.
    fields = parameter_fields()
    for name, element in ui_widgets().items():
        prop = ui_property(element, "SlicerParameterName")
        if prop is None or _field_kind(fields[prop.findtext("string")]) != "float":
            continue
        field = prop.findtext("string")
        match = re.search(r"WithinRange\(([-0-9.e]+), ([-0-9.e]+)\)", fields[field])
        assert match, f"{field!r} (bound to {name}) must be Annotated[float, WithinRange(lo, hi)]"
        lo, hi = float(match.group(1)), float(match.group(2))
        ui_lo, ui_hi = ui_property(element, "minimum"), ui_property(element, "maximum")
        if ui_lo is not None and ui_hi is not None:
            assert (lo, hi) == (float(ui_lo.findtext("double")), float(ui_hi.findtext("double"))), field


@pytest.fixture
def widget(segdeep_module, monkeypatch):
    """A panel object with the .ui replaced by plain attributes (no Qt): its state logic runs for real."""
    w = segdeep_module.SegDeepWidget.__new__(segdeep_module.SegDeepWidget)
    w._job = w._probe = w._busy = w._withheld = None
    w.ui = types.SimpleNamespace(
        stageLabel=types.SimpleNamespace(text="x"), progressBar=types.SimpleNamespace(value=50), outputFolderPathLineEdit=None
    )
    states = []
    monkeypatch.setattr(w, "_updateGui", lambda *a: states.append(w._busy), raising=False)
    w.states = states
    return w


def test_compare_and_export_cannot_start_twice_and_recover_after_an_error(widget):
    calls = []

    def compare_again():
        calls.append("compare")
        widget.onCompareButton()  # a second click while the first runs (processEvents in the progress callback)
        widget.onExportButton()
        raise RuntimeError("bad input")

    widget._compare = compare_again
    widget._export = lambda: calls.append("export")
    with pytest.raises(RuntimeError):
        widget.onCompareButton()
    assert calls == ["compare"] and widget._busy is None
    assert widget.states[0] == "compare" and widget.states[-1] is None  # buttons disabled, then restored
    assert widget.ui.stageLabel.text == "" and widget.ui.progressBar.value == 0
    widget.onExportButton()
    assert calls == ["compare", "export"] and widget._busy is None
    widget._job = object()  # a segmentation runs: neither starts
    widget.onCompareButton()
    widget.onExportButton()
    assert calls == ["compare", "export"]


def test_buttons_are_disabled_while_busy():
    source = MODULE_SCRIPT.read_text(encoding="utf-8")
    assert "running = self._job is not None or self._busy is not None" in source
    for button in ("segmentButton", "compareButton", "exportButton"):
        assert re.search(rf"self\.ui\.{button}\.enabled = .*and not running", source), button


def test_reload_reimports_the_module_library_and_the_engine(segdeep_module, monkeypatch):
    import SegDeepLib.logic  # noqa: F401

    reloaded = []
    base = sys.modules["slicer.ScriptedLoadableModule"].ScriptedLoadableModuleWidget
    monkeypatch.setattr(base, "onReload", lambda self: reloaded.append(sorted(sys.modules)), raising=False)
    saved = {name: m for name, m in sys.modules.items() if name.split(".")[0] in ("SegDeepLib", "SegDeepLogic")}
    try:
        segdeep_module.SegDeepWidget.onReload(object())
        assert reloaded and not [n for n in reloaded[0] if n.split(".")[0] in ("SegDeepLib", "SegDeepLogic")]
    finally:
        sys.modules.update(saved)


def test_output_folder_is_remembered_between_sessions():
    tree = module_ast()
    widget_class = class_def(tree, "SegDeepWidget")
    methods = {f.name: ast.unparse(f) for f in widget_class.body if isinstance(f, ast.FunctionDef)}
    assert "QSettings().setValue(OUTPUT_FOLDER_SETTING, folder)" in methods["_export"]
    assert "QSettings().value(OUTPUT_FOLDER_SETTING)" in methods["initializeParameterNode"]
    assert "outputFolder = pathlib.Path" in methods["initializeParameterNode"]


def test_too_old_slicer_gets_one_clear_message(segdeep_module, monkeypatch):
    import slicer

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=6), raising=False)
    message = segdeep_module.unsupportedSlicerMessage()
    assert message.startswith("SegDeep needs 3D Slicer 5.8 or newer; this is 3D Slicer 5.6.")
    parent = types.SimpleNamespace()
    segdeep_module.SegDeep(parent)
    assert parent.helpText == message
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(majorVersion=5, minorVersion=8), raising=False)
    assert segdeep_module.unsupportedSlicerMessage() is None
