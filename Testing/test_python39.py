"""Everything installed into 3D Slicer parses and runs on Python 3.9 (Slicer 5.8).

Three checks: ``vermin --target=3.9-`` on the installed module folder (``test_slicer_install.py``,
which installs it with Slicer's macros), ``py39_check.py`` (run-time ``X | Y`` unions and the other
constructs vermin does not see) on every file the install copies, and, where a Python 3.9
interpreter exists (``SEGDEEP_PYTHON39`` or ``python3.9``), byte-compilation with it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from py39_check import problems, python_files

REPO = Path(__file__).resolve().parents[1]
INSTALLED_SOURCES = [REPO / "SegDeepLogic", REPO / "SegDeepExtension"]


def python39() -> str | None:
    candidates = [os.environ.get("SEGDEEP_PYTHON39"), shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 9)":
            return candidate
    return None


def test_installed_sources_have_no_python310_constructs():
    found = [
        p for f in python_files(INSTALLED_SOURCES) for p in problems(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source, what",
    [
        ("X = int | None\n", "type union evaluated at run time"),
        ("isinstance(v, int | float)\n", "type union evaluated at run time"),
        ("def f(x: int | None): pass\n", "without 'from __future__ import annotations'"),
        ("match x:\n    case 1:\n        pass\n", "match statement"),
        ("with (open(a) as f, open(b) as g):\n    pass\n", "parenthesised context managers"),
        ("import dataclasses\n@dataclasses.dataclass(kw_only=True)\nclass A:\n    x: int\n", "dataclass(kw_only=...)"),
        ("zip(a, b, strict=True)\n", "zip(strict=...)"),
        ("import datetime\ndatetime.datetime.now(datetime.UTC)\n", "datetime.UTC"),
    ],
)
def test_the_checker_finds_what_python39_cannot_run(source, what):
    assert any(what in p for p in problems(source)), problems(source)


def test_the_checker_accepts_what_python39_runs():
    source = (
        "from __future__ import annotations\nfrom typing import Optional, Union\nX = Optional[int]\n"
        "def f(x: int | None, m: np.ndarray) -> list[int] | None:\n    return m | (m > 0)\n"
        "isinstance(v, (int, float))\nwith open(a) as f, open(b) as g:\n    pass\nflags = A_FLAG | B_FLAG\n"
    )
    assert problems(source) == []


def test_installed_sources_compile_with_python39(tmp_path):
    interpreter = python39()
    if interpreter is None:
        pytest.skip("no Python 3.9 interpreter (set SEGDEEP_PYTHON39); vermin and py39_check still ran")
    files = [str(f) for f in python_files(INSTALLED_SOURCES)]
    script = (
        "import sys\nbad = []\nfor f in sys.argv[1:]:\n    try:\n        compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
        "    except SyntaxError as e:\n        bad.append(f'{f}: {e}')\nprint('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([interpreter, "-c", script, *files], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
