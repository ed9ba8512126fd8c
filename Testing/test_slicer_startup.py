"""Slicer's own process stays light, and the module's dependency handling inside Slicer.

Opening the panel imports ``SegDeep.py`` (which imports ``SegDeepLib.mrml`` and ``SegDeepLib.logic``)
and lists the models; PyTorch must never be imported there (it lives in the worker process), and
SimpleITK, SciPy and scikit-image only when an action needs them. Checked in a fresh process with
PyTorch made unimportable, against a real slicer-core scene.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from SegDeepLogic.errors import SegDeepError

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SegDeepExtension"
HEAVY = ("torch", "SimpleITK", "scipy", "skimage")

pytest.importorskip("slicer")
sys.path.insert(0, str(MODULE_DIR))

from SegDeepLib import dependencies  # noqa: E402

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = [REPO, MODULE_DIR, TESTING]

    class Unimportable:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ModuleNotFoundError("No module named 'torch' (made unimportable by the test)")
            return None

    sys.meta_path.insert(0, Unimportable())
    import slicer_scene
    from SegDeepLib import dependencies, logic, mrml, process  # what SegDeep.py imports at start-up

    headless = slicer_scene.create_scene()
    base = logic.SegDeepLogicBase()
    models = base.availableModels()          # the panel's model list
    info = base.modelInfo(models[0].path)
    first = base.resolveModel(None)
    problem = dependencies.torch_problem()   # read from metadata, not by importing torch
    startup = [m for m in HEAVY if m in sys.modules]

    # Compare and export run in Slicer's process: they need SciPy/scikit-image/VTK, never torch.
    volume = slicer_scene.load_volume(headless.scene)
    array = slicer.util.arrayFromVolume(volume)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user")
    mrml.add_mask_segment(seg, (array >= 226) & (array <= 3071), "bone", (1.0, 0.9, 0.8), volume)
    table = base.compareWithThreshold(seg, volume, segmentName="bone", preset="bone")
    reports = base.exportForPrinting(seg, OUT, format="STL", segmentNames=["bone"], decimation=0.5)
    print(json.dumps({
        "models": [m.name for m in models], "labels": info.label_names, "first": str(first),
        "torch_problem": problem, "startup": startup, "after_actions": [m for m in HEAVY if m in sys.modules],
        "dice": base.lastComparison["dice"], "files": [r["file"] for r in reports],
    }))
    """
)


def test_panel_process_never_imports_torch_and_loads_scipy_simpleitk_only_when_needed(tmp_path):
    import slicer  # noqa: F401  (slicer-core must import on its own)

    prelude = (
        f"REPO, MODULE_DIR, TESTING, OUT = {str(REPO)!r}, {str(MODULE_DIR)!r}, {str(REPO / 'Testing')!r}, {str(tmp_path)!r}\n"
    )
    prelude += f"HEAVY = {HEAVY!r}\nimport slicer\n"
    result = subprocess.run([sys.executable, "-c", prelude + SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["models"] == ["headneck-ct"] and "mandible" in found["labels"]
    assert found["startup"] == [], f"imported when the panel opens: {found['startup']}"
    assert "torch" not in found["after_actions"] and found["dice"] == pytest.approx(1.0)
    assert found["files"] and found["torch_problem"] is None


def test_segdeep_py_imports_nothing_heavy_at_module_level():
    tree = ast.parse((MODULE_DIR / "SegDeep.py").read_text(encoding="utf-8"))
    allowed = {"logging", "os", "pathlib", "sys", "tempfile", "traceback", "typing", "__future__", "ctk", "qt", "vtk"}
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "SegDeepLib" else [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in allowed | {"slicer"} or name in ("SegDeepLib.mrml", "SegDeepLib.logic", "SegDeepLib.dependencies"), (
                f"SegDeep.py imports {name} when Slicer starts"
            )


# --------------------------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------------------------
def test_requirements_count_versions_not_only_presence():
    assert dependencies.missing_packages(["numpy>=1.0", "SimpleITK>=2.0"]) == []
    assert dependencies.missing_packages(["numpy>=999"]) == ["numpy>=999"]
    assert dependencies.missing_packages(["segdeep-surely-not-a-package>=1"]) == ["segdeep-surely-not-a-package>=1"]
    assert dependencies.satisfies("2.1.2+cu121", "torch>=2.2") is False
    assert dependencies.satisfies("2.2", "torch>=2.2.0") and dependencies.satisfies("10.0", "torch>=2.2")


def test_installed_torch_is_checked_without_importing_it():
    import importlib.metadata

    assert dependencies.torch_problem() is None  # torch 2.x of the test environment
    assert dependencies.satisfies(importlib.metadata.version("torch"), dependencies.TORCH_REQUIREMENT)


def test_requirements_match_the_engines(tmp_path):
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    by_name = {dependencies.requirement_name(r): r for r in project}
    for requirement in (*dependencies.ENGINE_REQUIREMENTS, dependencies.TORCH_REQUIREMENT):
        assert by_name[dependencies.requirement_name(requirement)] == requirement


def test_outside_slicer_a_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(dependencies, "ENGINE_REQUIREMENTS", ("numpy>=999",))
    with pytest.raises(dependencies.MissingDependencyError, match='pip install "numpy>=999"') as info:
        dependencies.ensure_dependencies()
    assert isinstance(info.value, SegDeepError)


def test_minimum_slicer_version():
    assert dependencies.MINIMUM_SLICER_VERSION == (5, 8)
    assert dependencies.slicer_version_problem(5, 7).startswith("SegDeep needs 3D Slicer 5.8 or newer; this is 3D Slicer 5.7.")
    assert dependencies.slicer_version_problem(6, 0) is None


def test_self_test_skip_message_names_what_is_missing():
    from SegDeepLib import selftest

    assert "torch>=2.2 not installed" in selftest.skip_message(["torch>=2.2"])
    source = (MODULE_DIR / "SegDeep.py").read_text(encoding="utf-8")
    assert "if missing and slicer.app.testingEnabled():" in source and "self.skipTest(message)" in source
