"""A regular (non-editable) install ships and finds the bundled model and the sample CT.

The wheel is built from a copy of the sources (the checkout is left untouched), installed into a
fresh virtual environment (``--system-site-packages`` reuses this environment's torch, SimpleITK, ...;
SegDeep itself is not installed there) and run from a folder outside the checkout with isolated
Python (``-I``: no PYTHONPATH, no current folder on ``sys.path``), so the import can only resolve to
the installed wheel. Then ``segdeep segment`` segments the installed sample CT with the installed
bundled model, the default when no ``--model`` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from SegDeepLogic.model_card import load_model_card
from SegDeepLogic.resources import DATA_ENV, MODELS_ENV, bundled_model_dir, list_bundled_models, sample_ct_path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "SegDeepLogic", "Resources")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MODELS_ENV, DATA_ENV, "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    run = subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{args} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def test_setuptools_package_list_is_every_engine_package() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = sorted(
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "SegDeepLogic").rglob("__init__.py")
        if "__pycache__" not in p.parts
    )
    assert sorted(p for p in config["packages"] if p != "SegDeepLogic._resources") == folders
    assert config["package-dir"]["SegDeepLogic._resources"] == "Resources"


@pytest.mark.skipif(not list_bundled_models() or not sample_ct_path().is_file(), reason="no bundled model or sample CT")
def test_wheel_install_in_a_fresh_venv_finds_the_bundled_model_and_segments_the_sample(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)], src)
    (wheel,) = wheels.glob("segdeep-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    # This interpreter may itself be a virtual environment (then --system-site-packages reaches only the base
    # Python): its site-packages, which hold the dependencies and no SegDeep, are added by a .pth file.
    installed = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip())
    # A virtual environment inside the checkout (CI's .venv) holds the dependencies too: only a folder with the
    # SegDeep sources in it is left out. Its editable-install hook (a .pth file) is not run from a .pth line.
    deps = [p for p in site.getsitepackages() if not (Path(p) / "SegDeepLogic").exists()]
    assert deps, site.getsitepackages()
    (installed / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = (
        "import json, SegDeepLogic, sys; from SegDeepLogic.resources import bundled_model_dir, list_bundled_models, "
        "sample_ct_path; print(json.dumps({'package': SegDeepLogic.__file__, 'models': [str(p) for p in "
        "list_bundled_models()], 'models_dir': str(bundled_model_dir()), 'sample': str(sample_ct_path()), "
        "'torch': 'torch' in sys.modules}))"
    )
    found = json.loads(_run([str(python), "-I", "-c", probe], work).stdout)
    package = Path(found["package"]).resolve().parent
    assert package.is_relative_to(venv.resolve()), found  # the installed wheel, not the checkout
    assert Path(found["models_dir"]) == package / "_resources" / "Models"
    assert [Path(p).name for p in found["models"]] == [p.name for p in list_bundled_models()]
    assert Path(found["sample"]) == package / "_resources" / "SampleData" / sample_ct_path().parent.name / "ct.nii.gz"
    assert Path(found["sample"]).read_bytes() == sample_ct_path().read_bytes()
    assert not found["torch"]  # listing models never imports torch

    out = work / "sample.seg.nrrd"
    segdeep = venv / "bin" / "segdeep"
    _run([str(python), "-I", str(segdeep), "segment", found["sample"], "-o", str(out), "--no-progress"], work, timeout=600)
    check = (
        "import json, sys; from SegDeepLogic.segmentation_io import read_seg_nrrd; seg = read_seg_nrrd(sys.argv[1]); "
        "print(json.dumps({'names': seg.names, 'voxels': int((seg.labelmap.array > 0).sum())}))"
    )
    result = json.loads(_run([str(python), "-I", "-c", check, str(out)], work).stdout)
    card = load_model_card(list_bundled_models()[0])
    assert result["names"] == card.label_names and result["voxels"] > 0


def test_environment_variables_point_the_lookup_to_other_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    assert bundled_model_dir() == tmp_path / "models" and list_bundled_models() == []
    assert sample_ct_path() == tmp_path / "data" / "openkbp_pt_236" / "ct.nii.gz"
    monkeypatch.delenv(MODELS_ENV)
    monkeypatch.delenv(DATA_ENV)
    assert bundled_model_dir() == ROOT / "Resources" / "Models"
    assert sample_ct_path() == ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
