"""DICOM for radiotherapy: CT series in (choice, validation), RTSTRUCT and DICOM SEG out, RTSTRUCT in.

The bundled sample CT (OpenKBP pt_236, 3.9 x 3.9 x 3 mm, slices superior to inferior) and its
clinical structure masks are written as a DICOM CT series with their true geometry, and again
rotated and shifted (an oblique series). Contours written from the masks must come back as the
masks (Dice, HD95 with SegDeepLogic.metrics.compare_masks), lie on the masks' boundaries, keep
left on the left, and also be read correctly by an independent reader (rt-utils). Every file
SegDeep writes is checked with dciodvfy (dicom3tools).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SegDeepLogic import read_volume
from SegDeepLogic.cli import main
from SegDeepLogic.dicom_common import Algorithm, format_ds
from SegDeepLogic.dicom_seg import read_dicom_seg, write_dicom_seg
from SegDeepLogic.dicom_series import DicomSeriesError, list_series, onto_grid, read_dicom_series, write_ct_series
from SegDeepLogic.errors import GeometryMismatchError
from SegDeepLogic.io import to_sitk
from SegDeepLogic.metrics import compare_masks
from SegDeepLogic.rtstruct import RTStructError, read_rtstruct, rtstruct_segmentation, write_rtstruct
from SegDeepLogic.segmentation_io import SegmentInfo, labelmap_from_masks
from SegDeepLogic.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
CARD = json.loads((ROOT / "Resources" / "Models" / "headneck-ct" / "model.json").read_text())
STRUCTURES = [lab["name"] for lab in CARD["labels"]]
TERMS = {lab["name"]: lab["terminology"] for lab in CARD["labels"]}
ALGORITHM = Algorithm(CARD["name"], CARD["version"], CARD["weights_sha256"])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` (the test fails if dciodvfy is missing in CI)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI") == "true" or os.environ.get("SEGDEEP_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (dicom3tools) is required here but not installed; apt-get install dicom3tools")
        pytest.skip("dciodvfy (dicom3tools) is not installed; scripts/test.sh installs it")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def on_grid(mask: Volume, grid: Volume) -> Volume:
    """Nearest-neighbour resampling onto ``grid`` (exact here: the voxel centres coincide)."""
    image = sitk.Resample(to_sitk(mask), to_sitk(grid), sitk.Transform(), sitk.sitkNearestNeighbor)
    return grid.with_array(sitk.GetArrayFromImage(image) > 0)


def rotated(volume: Volume, angles_deg: tuple[float, float, float], shift: tuple[float, float, float]) -> Volume:
    """The same voxels with a rotated direction and a shifted origin (an oblique series)."""
    a, b, c = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return Volume(volume.array, volume.spacing, np.add(volume.origin, shift), rz @ ry @ rx @ volume.direction)


def sample_masks() -> dict[str, Volume]:
    return {name: read_volume(SAMPLE / f"{name}.nii.gz") for name in STRUCTURES}


@pytest.fixture(scope="module")
def true_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The sample CT as a DICOM series with its true geometry, and its masks on the series' grid."""
    folder = tmp_path_factory.mktemp("true") / "ct"
    ct = read_volume(SAMPLE / "ct.nii.gz")
    write_ct_series(ct, folder, patient_name="OpenKBP^pt_236", patient_id="pt_236")
    grid, reference = read_dicom_series(folder)
    masks = {name: on_grid(m, grid) for name, m in sample_masks().items()}
    return {"folder": folder, "ct": ct, "grid": grid, "reference": reference, "masks": masks}


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same CT and masks rotated (12, -7, 20 degrees) and shifted (31.5, -12.25, 48 mm)."""
    folder = tmp_path_factory.mktemp("oblique") / "ct"
    angles, shift = (12.0, -7.0, 20.0), (31.5, -12.25, 48.0)
    ct = rotated(read_volume(SAMPLE / "ct.nii.gz"), angles, shift)
    write_ct_series(ct, folder)
    grid, reference = read_dicom_series(folder)
    masks = {name: on_grid(rotated(m, angles, shift), grid) for name, m in sample_masks().items()}
    return {"folder": folder, "ct": ct, "grid": grid, "reference": reference, "masks": masks}


def segmentation_of(case: dict):
    keys = {
        SegmentInfo(lab["name"], v, tuple(lab["color"]), TERMS[lab["name"]]): case["masks"][lab["name"]]
        for v, lab in enumerate(CARD["labels"], start=1)
    }
    return labelmap_from_masks(keys, overlap="first")


@pytest.fixture(scope="module")
def true_rtstruct(true_case: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rs") / "rtstruct.dcm"
    infos = {
        SegmentInfo(lab["name"], v, tuple(lab["color"]), lab["terminology"]): true_case["masks"][lab["name"]]
        for v, lab in enumerate(CARD["labels"], start=1)
    }
    write_rtstruct(infos, true_case["reference"], path, ct_grid=true_case["grid"], algorithm=ALGORITHM)
    return path


# --------------------------------------------------------------------------------------------
# CT series
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case_name", ["true_case", "oblique_case"])
def test_ct_series_is_written_and_read_back_with_its_geometry(case_name: str, request: pytest.FixtureRequest) -> None:
    case = request.getfixturevalue(case_name)
    ct, grid = case["ct"], case["grid"]
    assert grid.shape_ijk == ct.shape_ijk
    # same voxels in space: every voxel of the read grid has the original's value at that point
    idx = np.array([[0, 0, 0], [127, 0, 5], [13, 77, 100], [127, 127, 127]], dtype=float)
    for ijk in idx:
        src = np.round(ct.physical_to_index(grid.index_to_physical(ijk))).astype(int)
        assert ct.array[src[2], src[1], src[0]] == grid.array[int(ijk[2]), int(ijk[1]), int(ijk[0])]
    np.testing.assert_allclose(sorted(grid.spacing), sorted(ct.spacing), atol=1e-4)
    assert dciodvfy_errors(case["reference"].files[0]) == []


def test_format_ds_never_exceeds_16_characters() -> None:
    for value in (-123456.7890123456, 1e-9, -0.3333333333333, 99999999.99999, 0.1 + 0.2):
        text = format_ds(value)
        assert len(text) <= 16 and abs(float(text) - value) < 1e-5 * max(1.0, abs(value))


# --------------------------------------------------------------------------------------------
# RTSTRUCT out and back
# --------------------------------------------------------------------------------------------
def _contour_points(path: Path, roi: str) -> list[np.ndarray]:
    ds = pydicom.dcmread(path)
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi)
    rc = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number)
    return [np.asarray(c.ContourData, float).reshape(-1, 3) for c in rc.ContourSequence]


@pytest.mark.parametrize("case_name", ["true_case", "oblique_case"])
def test_rtstruct_round_trip_dice_hd95_and_points_on_the_boundary(
    case_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case = request.getfixturevalue(case_name)
    grid, masks = case["grid"], case["masks"]
    path = write_rtstruct(masks, case["reference"], tmp_path / "rs.dcm", ct_grid=grid, algorithm=ALGORITHM)
    assert dciodvfy_errors(path) == []
    back = read_rtstruct(path, case["folder"])
    assert list(back) == STRUCTURES
    diagonal = float(np.linalg.norm(grid.spacing))
    for name in STRUCTURES:
        result = compare_masks(back[name], masks[name])
        assert result.dice >= 0.95, (name, result.dice)
        assert result.hd95_mm <= diagonal, (name, result.hd95_mm)
    # every point lies on the voxel boundary: the two voxels it separates are one inside, one outside
    for name in ("parotid_left", "mandible"):
        mask = np.pad(masks[name].array, 1)
        for pts in _contour_points(path, name):
            ijk = grid.physical_to_index(pts)
            k = np.round(ijk[:, 2]).astype(int)
            assert np.allclose(ijk[:, 2], k, atol=1e-3)  # on a CT slice plane
            half = np.round(ijk[:, :2] * 2) / 2  # on a voxel edge: one coordinate integer, the other half-integer
            assert np.all(np.abs(ijk[:, :2] - half) < 1e-3)
            lo, hi = np.floor(half).astype(int), np.ceil(half).astype(int)
            a = mask[k + 1, lo[:, 1] + 1, lo[:, 0] + 1]
            b = mask[k + 1, hi[:, 1] + 1, hi[:, 0] + 1]
            assert np.all(a != b), name  # within half a voxel of inside and of outside


def test_rtstruct_references_the_series_and_describes_the_rois(true_case: dict, true_rtstruct: Path) -> None:
    ds = pydicom.dcmread(true_rtstruct)
    ref = true_case["reference"]
    assert ds.StudyInstanceUID == ref.study_uid and ds.PatientID == "pt_236"
    fr = ds.ReferencedFrameOfReferenceSequence[0]
    assert fr.FrameOfReferenceUID == ref.frame_of_reference_uid
    series = fr.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ref.series_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == ref.sop_instance_uids
    for roi, obs, rc, lab in zip(
        ds.StructureSetROISequence, ds.RTROIObservationsSequence, ds.ROIContourSequence, CARD["labels"], strict=True
    ):
        assert roi.ROIName == lab["name"] and roi.ROIGenerationAlgorithm == "AUTOMATIC"
        alg = roi.ROIDerivationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmVersion == CARD["version"] and CARD["weights_sha256"] in alg.AlgorithmParameters
        assert obs.RTROIInterpretedType == "ORGAN"
        for contour in rc.ContourSequence:
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            k = ref.sop_instance_uids.index(uid)
            z = ref.datasets[k].ImagePositionPatient[2]
            assert contour.ContourGeometricType == "CLOSED_PLANAR" and int(contour.NumberOfContourPoints) >= 3
            assert np.allclose(np.asarray(contour.ContourData, float)[2::3], float(z), atol=1e-3)
    # terminology: the card's codes, e.g. the parotid with its SNOMED code
    obs = {o.ROIObservationLabel: o for o in ds.RTROIObservationsSequence}
    code = obs["parotid_left"].RTROIIdentificationCodeSequence[0]
    assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT", "45289007")
    # DS values within 16 characters (as stored)
    raw = ds.ROIContourSequence[0].ContourSequence[0]
    assert all(len(v.original_string or str(v)) <= 16 for v in raw.ContourData)


def test_holes_become_inner_contours_filled_by_even_odd(tmp_path: Path, true_case: dict) -> None:
    grid = true_case["grid"]
    ring = np.zeros(grid.array.shape, bool)
    ring[60:64, 40:80, 40:80] = True
    ring[60:64, 50:70, 50:70] = False  # a hole through the ring
    ring[61, 58:62, 58:62] = True  # an island in the hole on one slice
    path = write_rtstruct({"ring": grid.with_array(ring)}, true_case["reference"], tmp_path / "ring.dcm")
    contours = _contour_points(path, "ring")
    assert len(contours) == 4 * 2 + 1  # 4 slices x (outer + hole) + the island
    back = read_rtstruct(path, true_case["folder"])["ring"]
    np.testing.assert_array_equal(back.array, ring)


def test_left_parotid_is_on_the_patients_left_in_rtstruct_coordinates(true_rtstruct: Path) -> None:
    left = np.concatenate(_contour_points(true_rtstruct, "parotid_left"))
    right = np.concatenate(_contour_points(true_rtstruct, "parotid_right"))
    cord = np.concatenate(_contour_points(true_rtstruct, "spinal_cord"))
    # LPS: +x is the patient's left
    assert left[:, 0].mean() > cord[:, 0].mean() + 20 > right[:, 0].mean() + 40


def test_independent_reader_rt_utils_rasterises_our_contours(true_case: dict, true_rtstruct: Path) -> None:
    rt_utils = pytest.importorskip("rt_utils")
    rt = rt_utils.RTStructBuilder.create_from(dicom_series_path=str(true_case["folder"]), rt_struct_path=str(true_rtstruct))
    order = [str(ds.SOPInstanceUID) for ds in rt.series_data]
    index = [true_case["reference"].sop_instance_uids.index(u) for u in order]
    for name in ("parotid_left", "mandible", "spinal_cord", "brainstem"):
        theirs = rt.get_roi_mask_by_name(name)  # (rows, columns, slices in their order)
        ours = np.zeros(true_case["grid"].array.shape, bool)
        ours[index] = np.moveaxis(theirs, 2, 0)
        truth = true_case["masks"][name].array
        result = compare_masks(true_case["grid"].with_array(ours), true_case["masks"][name])
        # rt-utils (OpenCV fillPoly) rounds the points to pixels and fills the boundary pixels too: it
        # contains every voxel of the mask and adds at most the in-plane ring around it. A flip or a
        # shift of either reader would break both.
        assert result.sensitivity == 1.0, (name, result.sensitivity)
        ring = ndimage.binary_dilation(truth, structure=np.ones((1, 3, 3), bool))
        assert not np.any(ours & ~ring), name
        assert result.hd95_mm <= float(np.linalg.norm(true_case["grid"].spacing)), (name, result.hd95_mm)


# --------------------------------------------------------------------------------------------
# DICOM SEG
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case_name", ["true_case", "oblique_case"])
def test_dicom_seg_round_trip_is_identical_with_its_geometry(
    case_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import highdicom as hd

    case = request.getfixturevalue(case_name)
    seg = segmentation_of(case)
    path = write_dicom_seg(seg, case["reference"], tmp_path / "seg.dcm", ct_grid=case["grid"], algorithm=ALGORITHM)
    assert dciodvfy_errors(path) == []
    back = read_dicom_seg(path, case["reference"], case["grid"])
    for s in seg.segments:
        np.testing.assert_array_equal(back[s.name].array, seg.mask(s.name).array)
    # highdicom's own view: segment descriptions and the volume's geometry
    obj = hd.seg.segread(path)
    desc = obj.get_segment_description(4)
    assert desc.segment_label == "parotid_left" and desc.segmented_property_type.value == "45289007"
    assert desc.algorithm_type.value == "AUTOMATIC" and desc.algorithm_identification[0].AlgorithmVersion == CARD["version"]
    # highdicom's volume and affine place every parotid voxel on the same LPS point as ours
    volume = obj.get_volume(segment_numbers=[4], combine_segments=False)
    array = np.asarray(volume.array).reshape(volume.array.shape[:3])
    idx = np.argwhere(array > 0).astype(float)
    lps = idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    ijk = case["grid"].physical_to_index(lps)
    np.testing.assert_allclose(ijk, np.round(ijk), atol=1e-3)
    ijk = np.round(ijk).astype(int)
    mask = seg.mask("parotid_left").array
    assert len(idx) == int(mask.sum()) and mask[ijk[:, 2], ijk[:, 1], ijk[:, 0]].all()


def test_dicom_seg_keeps_colours_terminology_and_laterality(true_case: dict, tmp_path: Path) -> None:
    from highdicom.color import CIELabColor

    from SegDeepLogic.segmentation_read import read_segmentation
    from SegDeepLogic.terminology import terminology_entry

    seg = segmentation_of(true_case)
    path = write_dicom_seg(seg, true_case["reference"], tmp_path / "seg.dcm", ct_grid=true_case["grid"], algorithm=ALGORITHM)
    assert dciodvfy_errors(path) == []
    # independent reader (pydicom): laterality is the type's modifier, the colour highdicom's CIELab
    ds = pydicom.dcmread(path)
    by_label = {str(d.SegmentLabel): d for d in ds.SegmentSequence}
    for name, side in (("parotid_left", ("7771000", "Left")), ("parotid_right", ("24028007", "Right"))):
        kind = by_label[name].SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodeMeaning) == ("45289007", "Parotid gland")
        modifier = kind.SegmentedPropertyTypeModifierCodeSequence[0]
        assert (modifier.CodingSchemeDesignator, modifier.CodeValue, modifier.CodeMeaning) == ("SCT", *side)
    assert "SegmentedPropertyTypeModifierCodeSequence" not in by_label["mandible"].SegmentedPropertyTypeCodeSequence[0]
    for lab in CARD["labels"]:
        rgb = CIELabColor.from_dicom_value(by_label[lab["name"]].RecommendedDisplayCIELabValue).to_rgb()
        np.testing.assert_allclose(rgb, np.multiply(lab["color"], 255), atol=1.01)
    # ours: every segment comes back with its value, colour and full terminology entry, voxels identical
    back = read_segmentation(path, ct_series=true_case["folder"])
    assert back.labelmap.same_grid(true_case["grid"])
    assert [s.name for s in back.segments] == [s.name for s in seg.segments]
    for original, read in zip(seg.segments, back.segments):
        np.testing.assert_allclose(read.color, original.color, atol=1 / 255)
        assert read.terminology == terminology_entry(TERMS[original.name]) == original.terminology
        np.testing.assert_array_equal(back.mask(read.name).array, seg.mask(original.name).array)
    left, right = (next(s for s in back.segments if s.name == n).terminology for n in ("parotid_left", "parotid_right"))
    assert left != right and left.split("~")[3] == "SCT^7771000^Left" and right.split("~")[3] == "SCT^24028007^Right"


# --------------------------------------------------------------------------------------------
# RTSTRUCT in: specific errors, nothing written
# --------------------------------------------------------------------------------------------
def _edited(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(dst)
    return dst


def _cli_fails_writing_nothing(args: list[str], out: Path, capsys: pytest.CaptureFixture, expected: str) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not out.exists()
    return err


def test_rtstruct_of_another_frame_of_reference_is_refused(true_case: dict, true_rtstruct: Path, tmp_path: Path, capsys) -> None:
    def edit(ds) -> None:  # noqa: ANN001
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4"
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = "1.2.3.4"

    bad = _edited(true_rtstruct, tmp_path / "other_for.dcm", edit)
    out = tmp_path / "metrics.json"
    _cli_fails_writing_nothing(
        [
            "compare",
            str(SAMPLE / "mandible.nii.gz"),
            str(bad),
            "--label-b",
            "mandible",
            "--ct",
            str(true_case["folder"]),
            "-o",
            str(out),
            "--no-progress",
        ],
        out,
        capsys,
        "another Frame of Reference (1.2.3.4)",
    )


def test_rtstruct_referencing_missing_slices_is_refused(true_case: dict, true_rtstruct: Path, tmp_path: Path) -> None:
    def edit(ds) -> None:  # noqa: ANN001
        ds.ROIContourSequence[0].ContourSequence[3].ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5"

    bad = _edited(true_rtstruct, tmp_path / "missing.dcm", edit)
    with pytest.raises(RTStructError, match=r"references 1 CT image\(s\) that are not in the series .*missing slices"):
        read_rtstruct(bad, true_case["folder"])


def test_unknown_roi_name_lists_the_available_ones(true_case: dict, true_rtstruct: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "metrics.json"
    err = _cli_fails_writing_nothing(
        [
            "compare",
            str(SAMPLE / "mandible.nii.gz"),
            str(true_rtstruct),
            "--label-b",
            "Parotid_L",
            "--ct",
            str(true_case["folder"]),
            "-o",
            str(out),
            "--no-progress",
        ],
        out,
        capsys,
        "no ROI named 'Parotid_L'",
    )
    assert "mandible, brainstem, spinal_cord, parotid_left, parotid_right, esophagus, larynx" in err
    # a unique case-insensitive match is accepted
    assert list(read_rtstruct(true_rtstruct, true_case["folder"], names=["PAROTID_LEFT"])) == ["parotid_left"]


def test_open_contour_is_refused_naming_it(true_case: dict, true_rtstruct: Path, tmp_path: Path) -> None:
    def edit(ds) -> None:  # noqa: ANN001
        ds.ROIContourSequence[3].ContourSequence[2].ContourGeometricType = "OPEN_PLANAR"

    bad = _edited(true_rtstruct, tmp_path / "open.dcm", edit)
    with pytest.raises(RTStructError, match=r"ROI 'parotid_left', contour 3 \(slice at .* mm\) is OPEN_PLANAR"):
        read_rtstruct(bad, true_case["folder"], names=["parotid_left"])


def test_self_intersecting_contour_is_refused_or_repaired_on_request(
    true_case: dict, true_rtstruct: Path, tmp_path: Path
) -> None:
    def edit(ds) -> None:  # noqa: ANN001
        c = ds.ROIContourSequence[1].ContourSequence[0]  # brainstem, first contour
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        n = len(pts)
        pts[[1, n // 2]] = pts[[n // 2, 1]]  # swap two points: the polygon crosses itself
        c.ContourData = [format_ds(v) for v in pts.ravel()]

    bad = _edited(true_rtstruct, tmp_path / "bowtie.dcm", edit)
    with pytest.raises(
        RTStructError, match=r"ROI 'brainstem', contour 1 \(slice at .*\) is self-intersecting \(edges \d+ and \d+"
    ):
        read_rtstruct(bad, true_case["folder"], names=["brainstem"])
    with pytest.warns(UserWarning, match="self-intersecting contour filled by the even-odd rule"):
        repaired = read_rtstruct(bad, true_case["folder"], names=["brainstem"], repair=True)["brainstem"]
    assert compare_masks(repaired, true_case["masks"]["brainstem"]).dice > 0.9


def test_rtstruct_is_found_next_to_its_ct_and_overlaps_keep_the_first_roi(
    true_case: dict, true_rtstruct: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "case"
    shutil.copytree(true_case["folder"], folder)
    shutil.copy(true_rtstruct, folder / "RS.dcm")
    seg = rtstruct_segmentation(folder / "RS.dcm", names=["parotid_left", "mandible"])
    assert seg.names == ("parotid_left", "mandible")
    assert np.array_equal(seg.mask("parotid_left").array, true_case["masks"]["parotid_left"].array)


# --------------------------------------------------------------------------------------------
# DICOM input: series choice and refusal of irregular series
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def small_ct() -> Volume:
    ct = read_volume(SAMPLE / "ct.nii.gz")
    return Volume(ct.array[40:52, 30:90, 20:100], ct.spacing, ct.index_to_physical([20, 30, 40]), ct.direction)


def _rewrite(folder: Path, edit) -> None:  # noqa: ANN001
    for n, path in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        if edit(n, ds) is not False:
            ds.save_as(path)


def _convert_refused(folder: Path, tmp_path: Path, capsys, expected: str) -> None:  # noqa: ANN001
    out = tmp_path / "out.dcm"
    _cli_fails_writing_nothing(
        ["convert", str(SAMPLE / "parotid_left.nii.gz"), "--reference-ct", str(folder), "-o", str(out), "--format", "rtstruct"],
        out,
        capsys,
        expected,
    )


def test_gantry_tilted_series_is_refused(small_ct: Volume, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "tilt"
    write_ct_series(small_ct, folder)

    def tilt(n: int, ds) -> None:  # noqa: ANN001
        pos = [float(v) for v in ds.ImagePositionPatient]
        pos[1] += float(np.tan(np.radians(15))) * 3.0 * (ds.InstanceNumber - 1)
        ds.ImagePositionPatient = [format_ds(v) for v in pos]
        ds.GantryDetectorTilt = "15"

    _rewrite(folder, tilt)
    with pytest.raises(DicomSeriesError, match=r"gantry-tilted \(Gantry/Detector Tilt 15 deg\).*15\.00 deg"):
        read_volume(folder)
    _convert_refused(folder, tmp_path, capsys, "gantry-tilted")


def test_irregularly_spaced_series_is_refused(small_ct: Volume, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "gap"
    write_ct_series(small_ct, folder)
    (folder / "CT0006.dcm").unlink()
    with pytest.raises(
        DicomSeriesError, match=r"irregularly spaced: 1 step\(s\) differ from the usual 3\.000 mm \(e\.g\. 6\.000 mm"
    ):
        read_volume(folder)
    _convert_refused(folder, tmp_path, capsys, "irregularly spaced")


def test_single_slice_and_mixed_sizes_are_refused(small_ct: Volume, tmp_path: Path) -> None:
    one = tmp_path / "one"
    write_ct_series(Volume(small_ct.array[:1], small_ct.spacing, small_ct.origin, small_ct.direction), one)
    with pytest.raises(DicomSeriesError, match="has a single slice"):
        read_volume(one)
    mixed = tmp_path / "mixed"
    write_ct_series(small_ct, mixed)

    def shrink(n: int, ds) -> bool | None:  # noqa: ANN001
        if n != 4:
            return False
        pixels = ds.pixel_array
        ds.Rows = 30
        ds.PixelData = pixels[:30].tobytes()
        return None

    _rewrite(mixed, shrink)
    with pytest.raises(DicomSeriesError, match=r"mixes image sizes \(1 slice\(s\) of 30x80, 11 slice\(s\) of 60x80\)"):
        read_volume(mixed)
    assert "mixes image sizes" in list_series(mixed)[0].problem


def test_folder_with_several_series_lists_them_and_series_chooses(small_ct: Volume, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "two"
    write_ct_series(small_ct, folder / "a", series_description="thin")
    second = Volume(small_ct.array[:6] + 7, small_ct.spacing, small_ct.origin, small_ct.direction)
    write_ct_series(second, folder / "b", series_description="short")
    series = list_series(folder)
    assert [len(s.files) for s in series] == [12, 6]
    with pytest.warns(UserWarning, match=r"holds 2 image series; reading the largest readable one.*--series"):
        assert read_volume(folder).shape_ijk == (80, 60, 12)
    chosen = read_volume(folder, series_uid=series[1].series_uid)
    assert chosen.shape_ijk == (80, 60, 6) and chosen.array.min() == small_ct.array[:6].min() + 7
    with pytest.raises(DicomSeriesError, match="has no series 1.2.3; its series:"):
        read_volume(folder, series_uid="1.2.3")
    assert main(["dicom-info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert series[0].series_uid in out and "80x60x12 voxels" in out and "'short'" in out


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"])  # RLE, JPEG-LS lossless
def test_compressed_series_read_identical_values(small_ct: Volume, tmp_path: Path, syntax: str) -> None:
    if syntax.endswith(".80"):
        pytest.importorskip("jpeg_ls", reason="pyjpegls encodes/decodes JPEG-LS")
    folder = tmp_path / "compressed"
    write_ct_series(small_ct, folder, transfer_syntax=syntax)
    assert str(pydicom.dcmread(next(folder.glob("*.dcm"))).file_meta.TransferSyntaxUID) == syntax
    back, _ = read_dicom_series(folder)
    assert back.direction[2, 2] == -small_ct.direction[2, 2]  # the series is read inferior -> superior
    np.testing.assert_array_equal(back.array[::-1], small_ct.array)


def test_onto_grid_moves_flipped_voxels_exactly_and_refuses_interpolation(true_case: dict) -> None:
    nifti = read_volume(SAMPLE / "parotid_left.nii.gz")  # slices superior -> inferior
    moved = onto_grid(nifti, true_case["grid"])  # the series' grid runs inferior -> superior
    np.testing.assert_array_equal(moved.array, true_case["masks"]["parotid_left"].array)
    half = Volume(nifti.array, nifti.spacing, np.add(nifti.origin, (1.0, 0, 0)), nifti.direction)
    with pytest.raises(GeometryMismatchError, match="not on the CT series' voxel grid"):
        onto_grid(half, true_case["grid"])


# --------------------------------------------------------------------------------------------
# Radiotherapy workflow from the command line (README)
# --------------------------------------------------------------------------------------------
def test_cli_segment_writes_rtstruct_and_dicom_seg_from_a_dicom_ct(small_ct: Volume, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ct"
    write_ct_series(small_ct, folder)
    rs, seg = tmp_path / "auto_rs.dcm", tmp_path / "auto_seg.dcm"
    common = ["--model", str(TEST_MODEL), "--allow-mismatch", "--no-progress", "--threads", "1"]
    assert main(["segment", str(folder), "-o", str(rs), "--format", "rtstruct", *common]) == 0
    assert main(["segment", str(folder), "-o", str(seg), "--format", "dicom-seg", *common]) == 0
    assert dciodvfy_errors(rs) == [] and dciodvfy_errors(seg) == []
    card = json.loads((TEST_MODEL / "model.json").read_text())
    ds = pydicom.dcmread(rs)
    assert [r.ROIName for r in ds.StructureSetROISequence] == [lab["name"] for lab in card["labels"]]
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in ds.StructureSetROISequence)
    assert (
        card["weights_sha256"]
        in ds.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmParameters
    )
    # the RTSTRUCT, read back as the reference, agrees with the DICOM SEG of the same run
    grid, reference = read_dicom_series(folder)
    seg_masks = read_dicom_seg(seg, reference, grid)
    rs_masks = read_rtstruct(rs, folder)
    for name, mask in seg_masks.items():
        if mask.array.any():
            assert compare_masks(rs_masks[name], mask).dice >= 0.95
    # nothing is written for a non-DICOM CT (the RTSTRUCT must reference a series)
    out = tmp_path / "x.dcm"
    _cli_fails_writing_nothing(
        ["segment", str(SAMPLE / "ct.nii.gz"), "-o", str(out), "--format", "rtstruct", *common],
        out,
        capsys,
        "give the CT as a DICOM series folder",
    )


def test_cli_convert_and_compare_with_an_rtstruct_reference(true_case: dict, tmp_path: Path) -> None:
    rs = tmp_path / "clinical.dcm"
    assert (
        main(
            [
                "convert",
                str(SAMPLE / "mandible.nii.gz"),
                "--reference-ct",
                str(true_case["folder"]),
                "-o",
                str(rs),
                "--format",
                "rtstruct",
            ]
        )
        == 0
    )
    assert dciodvfy_errors(rs) == []
    assert pydicom.dcmread(rs).StructureSetROISequence[0].ROIGenerationAlgorithm == ""  # unknown author
    back = tmp_path / "back.seg.nrrd"
    assert main(["convert", str(rs), "--reference-ct", str(true_case["folder"]), "-o", str(back)]) == 0
    metrics = tmp_path / "m.json"
    assert (
        main(
            [
                "compare",
                str(back),
                str(rs),
                "--label-b",
                "mandible",
                "--ct",
                str(true_case["folder"]),
                "-o",
                str(metrics),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(metrics.read_text())["dice"] == 1.0


def test_training_and_evaluation_cases_read_rtstruct_labels(true_case: dict, true_rtstruct: Path, tmp_path: Path) -> None:
    from SegDeepLogic.training.data import find_cases, read_case_mask

    case_dir = tmp_path / "data" / "pt_236"
    shutil.copytree(true_case["folder"], case_dir)
    shutil.copy(true_rtstruct, case_dir / "RS.dcm")
    (cases,) = find_cases(tmp_path / "data", ["mandible", "parotid_left", "optic_nerve"])
    assert cases.ct == case_dir and set(cases.masks) == {"mandible", "parotid_left"}
    mask = read_case_mask(cases, "parotid_left")
    grid = read_volume(cases.ct)
    assert mask.same_grid(grid)
    assert compare_masks(mask.with_array(mask.array > 0), true_case["masks"]["parotid_left"]).dice == 1.0
    # segdeep train's case preparation takes the RTSTRUCT's ROIs as the labels (class 2 = parotid_left)
    from SegDeepLogic.training.data import prepare_case

    prepared = prepare_case(cases, ["mandible", "parotid_left"], (3.906, 3.906, 3.0), "LPI")
    assert prepared.available.tolist() == [True, True, True]
    voxels = int((prepared.labels == 2).sum())
    assert abs(voxels - int(true_case["masks"]["parotid_left"].array.sum())) <= 0.02 * voxels


def test_no_warning_for_a_clean_series(true_case: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_dicom_series(true_case["folder"])


def test_readme_radiotherapy_workflow_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The README's DICOM commands, run in order on a crop of the sample CT written as a DICOM series."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Radiotherapy and PACS") :]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    commands = [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith("segdeep ")]
    assert [c[1] for c in commands] == ["dicom-info", "segment", "segment", "convert", "compare", "report"]
    # the crop: both parotids and the mandible, one sliding window of the bundled model
    ct = read_volume(SAMPLE / "ct.nii.gz")
    box = (slice(26, 66), slice(24, 72), slice(36, 92))
    origin = ct.index_to_physical([box[2].start, box[1].start, box[0].start])
    write_ct_series(Volume(ct.array[box], ct.spacing, origin, ct.direction), tmp_path / "CT_DICOM")
    left = read_volume(SAMPLE / "parotid_left.nii.gz")
    from SegDeepLogic.segmentation_io import write_labelmap_nifti

    write_labelmap_nifti(
        Volume(left.array[box], ct.spacing, origin, ct.direction), [SegmentInfo("parotid_left", 1)], tmp_path / "clinical.nii.gz"
    )
    monkeypatch.chdir(tmp_path)
    extra = {"segment": ["--allow-mismatch", "--no-progress"], "report": ["--allow-mismatch", "--no-progress"]}
    for argv in commands:
        assert main(argv[1:] + extra.get(argv[1], [])) == 0, argv
    for name in ("auto_rs.dcm", "auto_seg.dcm", "clinical_rs.dcm"):
        assert dciodvfy_errors(tmp_path / name) == [], name
    metrics = json.loads((tmp_path / "parotid_left.json").read_text())
    assert metrics["segment_a"] == metrics["segment_b"] == "parotid_left" and 0.3 < metrics["dice"] <= 1.0
    facts = json.loads((tmp_path / "case.json").read_text())
    assert facts["reference"]["segments"] == ["parotid_left"]
    row = next(r for r in facts["structures"] if r["name"] == "parotid_left")
    assert row["reference_comparison"]["dice"] == pytest.approx(metrics["dice"], abs=1e-6)  # the report scores the RTSTRUCT
    assert "56x48x40 voxels, 3.906 x 3.906 x 3 mm" in capsys.readouterr().out  # dicom-info


def test_rescale_slope_and_intercept_are_applied_per_slice(tmp_path: Path) -> None:
    ct = Volume((np.arange(2 * 4 * 5).reshape(2, 4, 5) * 10 - 1000).astype(np.int16), (1.0, 1.0, 2.0))
    folder = tmp_path / "unsigned"
    write_ct_series(ct, folder)
    for path in folder.glob("*.dcm"):  # stored unsigned with intercept -1024, as many scanners do
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32) + 1024
        ds.PixelRepresentation = 0
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.RescaleIntercept = "-1024"
        ds.save_as(path)
    back, _ = read_dicom_series(folder)
    assert back.array.dtype == np.int16 and np.array_equal(back.array, ct.array)
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = "0.5"
        ds.save_as(path)
    back, _ = read_dicom_series(folder)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, (ct.array.astype(float) + 1024) * 0.5 - 1024)


def test_cli_evaluate_scores_against_rtstruct_labels(small_ct: Volume, tmp_path: Path, capsys) -> None:
    """segdeep evaluate on a case folder holding a CT series and an RTSTRUCT whose ROI is named like the structure."""
    case = tmp_path / "data" / "case_1"
    write_ct_series(small_ct, case)
    grid, reference = read_dicom_series(case)
    bone = grid.with_array(grid.array >= 300)
    write_rtstruct({"Bone": bone}, reference, case / "RS_clinical.dcm")  # ROI name differs in case only
    out = tmp_path / "evaluation"
    args = ["evaluate", str(TEST_MODEL), str(tmp_path / "data"), "-o", str(out), "--bone", "bone", "--threshold-hu", "300"]
    assert main([*args, "--no-refine", "--no-progress"]) == 0
    rows = (out / "per_case.csv").read_text().splitlines()
    threshold_row = next(r for r in rows if ",bone," in r and "threshold," in r)
    assert "case_1" in threshold_row
    summary = json.loads((out / "summary.json").read_text())
    # the threshold baseline at the reference's own threshold reproduces the RTSTRUCT exactly
    assert summary["structures"]["bone"]["threshold"]["dice"]["median"] == 1.0


def test_cli_convert_writes_a_nifti_ct_as_a_dicom_series(tmp_path: Path, capsys) -> None:
    nifti = tmp_path / "ct.nii.gz"
    ct = read_volume(SAMPLE / "ct.nii.gz")
    from SegDeepLogic import write_volume

    write_volume(Volume(ct.array[60:64], ct.spacing, ct.index_to_physical([0, 0, 60]), ct.direction), nifti)
    out = tmp_path / "CT_DICOM"
    assert main(["convert", str(nifti), "-o", str(out), "--format", "dicom-ct"]) == 0
    assert len(list(out.glob("*.dcm"))) == 4 and dciodvfy_errors(next(out.glob("*.dcm"))) == []
    back = onto_grid(read_volume(nifti), read_volume(out))
    np.testing.assert_array_equal(back.array, read_volume(out).array)
    _cli_fails_writing_nothing(
        ["convert", str(nifti), "-o", str(out), "--format", "dicom-ct"],
        tmp_path / "none",
        capsys,
        "refusing to overwrite existing folder",
    )
