"""Small cohorts cut from the sample CT, for the batch tests (no data outside the repository)."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"

# Crops (x, y, z) around the mandible; each keeps its geometry (origin follows the crop).
CROPS = (
    (slice(40, 88), slice(26, 68), slice(26, 64)),
    (slice(44, 84), slice(30, 66), slice(30, 62)),
    (slice(36, 80), slice(24, 62), slice(28, 60)),
    (slice(48, 90), slice(28, 64), slice(24, 58)),
)


def make_cohort(folder: Path, n: int = 3) -> Path:
    """``folder/case<i>/ct.nii.gz`` + ``reference.nii.gz`` (the mandible) and ``folder/cohort.csv``.

    The manifest pairs the test model's "bone" with the reference's "mandible" segment.
    """
    ct = sitk.ReadImage(str(SAMPLE / "ct.nii.gz"))
    mandible = sitk.ReadImage(str(SAMPLE / "mandible.nii.gz"))
    rows = ["case_id,ct,reference,reference_labels"]
    for i in range(n):
        case = folder / f"case{i}"
        case.mkdir(parents=True, exist_ok=True)
        x, y, z = CROPS[i % len(CROPS)]
        sitk.WriteImage(ct[x, y, z], str(case / "ct.nii.gz"))
        sitk.WriteImage(mandible[x, y, z], str(case / "reference.nii.gz"))
        rows.append(f"case{i},case{i}/ct.nii.gz,case{i}/reference.nii.gz,bone=reference")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


def make_dicom_case(folder: Path, name: str = "series0", crop: int = 0) -> tuple[Path, Path]:
    """``folder/<name>/``: a crop of the sample CT as a real DICOM CT series, and
    ``folder/<name>_rs.dcm``: an RT Structure Set of the crop's mandible (ROI "Mandible") on it.

    Written by SegDeep's own DICOM writers (:func:`~SegDeepLogic.dicom_series.write_ct_series`,
    :func:`~SegDeepLogic.rtstruct.write_rtstruct`), the same crop as ``make_cohort``'s case ``crop``.
    """
    import tempfile

    from SegDeepLogic.dicom_series import onto_grid, read_dicom_series, write_ct_series
    from SegDeepLogic.io import read_volume
    from SegDeepLogic.rtstruct import write_rtstruct

    x, y, z = CROPS[crop % len(CROPS)]
    with tempfile.TemporaryDirectory() as tmp:
        sitk.WriteImage(sitk.ReadImage(str(SAMPLE / "ct.nii.gz"))[x, y, z], str(Path(tmp) / "ct.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(SAMPLE / "mandible.nii.gz"))[x, y, z], str(Path(tmp) / "mandible.nii.gz"))
        ct = read_volume(Path(tmp) / "ct.nii.gz")
        mandible = read_volume(Path(tmp) / "mandible.nii.gz")
    series = folder / name
    write_ct_series(ct, series, patient_id=name)
    grid, reference = read_dicom_series(series)
    rtstruct = folder / f"{name}_rs.dcm"
    mask = onto_grid(mandible.with_array(mandible.array > 0), grid, what="the mandible")
    write_rtstruct({"Mandible": mask}, reference, rtstruct, ct_grid=grid)
    return series, rtstruct
