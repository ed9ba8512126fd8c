"""SegDeep as Slicer installs it: the module folder built with Slicer's own macros, checked on its own.

``Testing/SlicerExtensionInstall`` (a copy of the project's ``slicer-extension-install`` tool) runs
Slicer's ``slicerMacroBuildScriptedModule`` and the CTK copy macro it calls, unchanged, on
``SegDeepExtension`` and installs into a temporary prefix. The installed module folder must hold
exactly the module's scripts, the engine and the resources at relative paths (no absolute or build
path anywhere), and a copy of it, elsewhere and without the repository on ``sys.path``, must import
the engine, find and load the bundled model, parse the panel, find the sample data and segment the
sample CT into a real MRML scene (``installed_module_check.py``). Needs ``cmake`` (Debian package
``cmake``; ``scripts/test.sh`` installs it in CI, where this test is required).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "Testing" / "SlicerExtensionInstall"
SHARED_TOOL = next(
    (p / "shared" / "tools" / "slicer-extension-install" for p in REPO.parents if (p / "shared" / "tools").is_dir()),
    REPO / "no-shared-tool",
)
INSTALLED = Path("lib") / "Slicer-5.10" / "qt-scripted-modules"
TOP_LEVEL = {"SegDeep.py", "SegDeepLib", "SegDeepLogic", "Resources", "Testing"}


def _required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("SEGDEEP_REQUIRE_CMAKE") == "1"


def repository_files() -> set[str]:
    """What the module folder must hold: module scripts, engine scripts, resources, the test model."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "SegDeepExtension", "SegDeepLogic", "Resources"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        files = {f for f in out if (REPO / f).is_file()}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        files = {
            p.relative_to(REPO).as_posix()
            for top in ("SegDeepExtension", "SegDeepLogic", "Resources")
            for p in (REPO / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    expected = set()
    for f in files:
        if f.startswith("SegDeepExtension/"):
            if f.endswith(".py"):
                expected.add(f[len("SegDeepExtension/") :])
        elif f.startswith("SegDeepLogic/"):
            if f.endswith(".py"):
                expected.add(f)
        else:
            expected.add(f)
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "Testing" / "Data" / "test_model").iterdir() if p.is_file()}
    return expected


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The installed module folder (``<prefix>/lib/Slicer-5.10/qt-scripted-modules``)."""
    if os.name == "nt" or shutil.which("bash") is None:
        pytest.skip("the install tool is a bash script")
    if shutil.which("cmake") is None:
        if _required():
            pytest.fail("cmake is required for the install test (Debian: apt-get install cmake)")
        pytest.skip("cmake is not installed (Debian: apt-get install cmake; required in CI)")
    prefix = tmp_path_factory.mktemp("slicer-prefix")
    result = subprocess.run(
        ["bash", str(TOOL / "run.sh"), str(REPO / "SegDeepExtension"), str(prefix)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    listed = {line for line in result.stdout.splitlines() if line}
    assert listed and all(line.startswith(INSTALLED.as_posix() + "/") for line in listed), sorted(listed)[:5]
    return prefix / INSTALLED


def test_install_tool_is_the_projects_tool_unchanged():
    if not SHARED_TOOL.is_dir():
        pytest.skip("the shared tool is not beside this checkout")
    compare = filecmp.dircmp(TOOL, SHARED_TOOL)
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    assert not filecmp.dircmp(TOOL / "cmake", SHARED_TOOL / "cmake").diff_files


def test_installed_module_folder_holds_exactly_the_module_engine_and_resources(installed):
    files = {p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()}
    assert {f.split("/")[0] for f in files} == TOP_LEVEL
    expected = repository_files()
    assert sorted(expected - files) == [], "not installed"
    assert sorted(files - expected) == [], "installed but not in the repository"
    for f in files:  # byte for byte
        source = REPO / "SegDeepExtension" / f if (f == "SegDeep.py" or f.startswith("SegDeepLib/")) else REPO / f
        assert filecmp.cmp(installed / f, source, shallow=False), f


def test_no_absolute_or_build_path_in_the_install_tree(installed):
    prefix = installed.parents[2]
    needles = [str(REPO), str(prefix), os.path.join(tempfile.gettempdir(), "tmp."), "CMakeFiles", "CMAKE_", "/module/Resources"]
    for path in installed.rglob("*"):
        relative = path.relative_to(installed).as_posix()
        parts = path.relative_to(installed).parts
        assert not {"tmp", "module", "CMakeFiles", "work"} & set(parts) and ":" not in relative, relative
        if path.is_file() and path.suffix in {".py", ".ui", ".json", ".txt", ".md", ".csv"}:
            text = path.read_text(encoding="utf-8", errors="replace")
            for needle in needles:
                assert needle not in text, f"{relative} holds {needle!r}"


def test_installed_copy_works_alone_without_the_repository(installed, tmp_path):
    # A copy elsewhere (as an extension package unpacked on a user's machine), the repository not on sys.path.
    module_dir = tmp_path / "Extensions-1" / "SegDeep" / INSTALLED
    shutil.copytree(installed, module_dir)
    helpers = tmp_path / "helpers"
    helpers.mkdir()
    shutil.copy2(REPO / "Testing" / "installed_module_check.py", helpers)
    shutil.copy2(REPO / "Testing" / "slicer_scene.py", helpers)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    result = subprocess.run(
        [sys.executable, "-I", str(helpers / "installed_module_check.py"), str(module_dir), str(helpers), str(REPO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    print("installed module check:", found)
    assert found["models"] == ["headneck-ct"]
    assert found["segments"] == found["model_labels"] and "mandible" in found["segments"]
    assert found["engine_file"].replace("\\", "/") == "SegDeepLogic/__init__.py"
    assert "ct.nii.gz" in found["sample_files"] and found["ui_widgets_bound"] >= 20
    assert found["plausibility"] in ("ok", "caution") and found["mandible_stl_watertight"]
    assert 40 < found["mandible_ml"] < 100  # the CLI measures 65 mL on this CT
    assert found["bad_input_message"]


def test_installed_tree_runs_on_python39_by_vermin(installed):
    # Slicer 5.8 runs Python 3.9: every installed file, checked where Slicer would load it from.
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).exists() and shutil.which(vermin) is None:
        pytest.fail("vermin is not installed (it is in the test extras)")
    result = subprocess.run(
        [vermin, "--target=3.9-", "--violations", "--eval-annotations", "--no-tips", "--no-parse-comments", str(installed)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    files = sorted(installed.rglob("*.py"))
    assert len(files) > 40
