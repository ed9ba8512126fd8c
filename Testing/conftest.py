"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236"


@pytest.fixture
def bone_data(tmp_path: Path) -> Path:
    """The sample case cropped around the mandible (OpenKBP layout), its mandible as the test model's 'bone'."""
    case = tmp_path / "data" / "pt_236"
    case.mkdir(parents=True)
    for src, dst in (("ct.nii.gz", "ct.nii.gz"), ("mandible.nii.gz", "bone.nii.gz")):
        image = sitk.ReadImage(str(SAMPLE / src))
        sitk.WriteImage(image[40:88, 26:68, 26:64], str(case / dst))  # x (i), y (j), z (k): keeps the geometry
    (tmp_path / "data" / "pt_1").mkdir()  # a case folder without any file is ignored
    return tmp_path / "data"
