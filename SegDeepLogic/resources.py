"""Where the bundled model packages and the sample data are, for every way SegDeep is installed.

One lookup, in this order:

1. an environment variable: ``SEGDEEP_MODELS_DIR`` (model packages) or ``SEGDEEP_DATA_DIR``
   (sample data), when set to a non-empty value -- used as given, even if missing, so a wrong
   setting is not silently replaced by something else;
2. the package data of an installed wheel (``pip install .``): ``SegDeepLogic/_resources/Models``
   and ``SegDeepLogic/_resources/SampleData`` (pyproject maps the repository's ``Resources`` there);
3. the folder beside the package: ``<checkout>/Resources/...`` in a source checkout or an
   editable install, and ``<module folder>/Resources/...`` in the installed Slicer extension (its
   CMake install puts ``SegDeepLogic`` and ``Resources`` side by side).

Torch-free and light: the Slicer panel lists models with it at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from .model_card import CARD_FILE

__all__ = [
    "DATA_ENV",
    "MODELS_ENV",
    "bundled_model_dir",
    "list_bundled_models",
    "resource_dir",
    "sample_ct_path",
    "sample_data_dir",
]

MODELS_ENV = "SEGDEEP_MODELS_DIR"
DATA_ENV = "SEGDEEP_DATA_DIR"
_PACKAGE = Path(__file__).resolve().parent
_KINDS = {"Models": MODELS_ENV, "SampleData": DATA_ENV}
SAMPLE_CASE = "openkbp_pt_236"


def resource_dir(kind: str) -> Path:
    """The folder of one kind of shipped resource: ``"Models"`` or ``"SampleData"`` (see the module notes).

    Returns the first candidate that exists (the environment variable's value in any case when
    it is set); when none exists, the folder beside the package, so error messages name the
    place where SegDeep looked.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; one of {', '.join(_KINDS)}")
    override = os.environ.get(_KINDS[kind], "").strip()
    if override:
        return Path(override).expanduser()
    candidates = [_PACKAGE / "_resources" / kind, _PACKAGE.parent / "Resources" / kind]
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def bundled_model_dir() -> Path:
    """Where shipped model packages live (``$SEGDEEP_MODELS_DIR``, the wheel's package data or ``Resources/Models``)."""
    return resource_dir("Models")


def sample_data_dir() -> Path:
    """Where the sample CT lives (``$SEGDEEP_DATA_DIR``, the wheel's package data or ``Resources/SampleData``)."""
    return resource_dir("SampleData")


def sample_ct_path() -> Path:
    """The bundled sample CT: OpenKBP ``pt_236``, 128³ voxels, head and neck (may not exist)."""
    return sample_data_dir() / SAMPLE_CASE / "ct.nii.gz"


def list_bundled_models() -> list[Path]:
    """Model packages in :func:`bundled_model_dir`: folders with ``model.json`` and ``.zip`` files, sorted."""
    folder = bundled_model_dir()
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if (p.is_dir() and (p / CARD_FILE).is_file()) or (p.is_file() and p.suffix.lower() == ".zip")
    )
