"""The README's Python example runs as written and gives the numbers it promises."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_and_compares_inside_the_roi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    monkeypatch.chdir(ROOT)
    code = code.replace('"bone.seg.nrrd"', repr(os.fspath(tmp_path / "bone.seg.nrrd")))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "bone.seg.nrrd").exists()
    comparison = namespace["result"].comparison
    assert comparison.dice > 0.75  # bone threshold near the mandible agrees with the contour
    assert namespace["result"].roi_margin_mm == 10.0 and comparison.tolerance_mm == 2.0
