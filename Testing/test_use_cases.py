"""The engine's use-case functions: read_segmentation (every format, onto a reference),
build_print_mesh (one build for export and report), compare_with_threshold's parameters,
card terminology -> Slicer entry, and SegmentOptions built once and recorded in the result.

Real files throughout: the sample CT (cropped around the mandible), its clinical contours, DICOM
series/RTSTRUCT/SEG written by our writers and read back, the test model package.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegDeepLogic.cli import main
from SegDeepLogic.compare import compare_with_threshold
from SegDeepLogic.dicom_seg import write_dicom_seg
from SegDeepLogic.dicom_series import read_dicom_series, write_ct_series
from SegDeepLogic.errors import GeometryMismatchError, SegDeepError
from SegDeepLogic.io import read_volume, to_sitk
from SegDeepLogic.mesh_io import build_print_mesh, export_segments
from SegDeepLogic.metrics import compare_masks
from SegDeepLogic.options import SegmentOptions
from SegDeepLogic.refine import RefineOptions
from SegDeepLogic.report import ReportOptions, build_report
from SegDeepLogic.rtstruct import write_rtstruct
from SegDeepLogic.segment import segment_volume
from SegDeepLogic.segmentation_io import (
    SegmentationFileError,
    SegmentInfo,
    labelmap_from_masks,
    write_labelmap_nifti,
    write_seg_nrrd,
)
from SegDeepLogic.segmentation_read import read_segmentation
from SegDeepLogic.terminology import slicer_terminology_entry, terminology_entry
from SegDeepLogic.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
CROP = (slice(40, 88), slice(26, 68), slice(26, 64))  # SimpleITK x, y, z: around the mandible


def _crop(name: str) -> Volume:
    from SegDeepLogic.io import from_sitk

    return from_sitk(sitk.ReadImage(str(SAMPLE / name))[CROP])


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The cropped CT as a DICOM series and its mandible and left parotid on the series' grid."""
    folder = tmp_path_factory.mktemp("usecase")
    ct = _crop("ct.nii.gz")
    write_ct_series(ct, folder / "ct")
    grid, reference = read_dicom_series(folder / "ct")
    masks = {}
    for name in ("mandible", "parotid_left"):
        m = _crop(f"{name}.nii.gz")
        masks[name] = grid.with_array(m.array > 0)
    assert all(m.array.any() for m in masks.values())
    seg = labelmap_from_masks(
        {
            SegmentInfo("mandible", 1, (0.9, 0.8, 0.6), "SCT^91609006^Mandible"): masks["mandible"],
            SegmentInfo("parotid_left", 2, (0.4, 0.7, 0.9), "SCT^45289007^Parotid gland (left)"): masks["parotid_left"],
        },
        overlap="first",
    )
    return {"folder": folder, "ct": grid, "reference": reference, "seg": seg}


# --------------------------------------------------------------------------------------------
# read_segmentation
# --------------------------------------------------------------------------------------------
def test_read_segmentation_gives_the_same_segments_from_every_format(case: dict) -> None:
    folder, seg, grid = case["folder"], case["seg"], case["ct"]
    files = {
        "seg.nrrd": write_seg_nrrd(seg.labelmap, seg.segments, folder / "s.seg.nrrd"),
        "nii.gz": write_labelmap_nifti(seg.labelmap, seg.segments, folder / "s.nii.gz")["labelmap"],
        "dicom-seg": write_dicom_seg(seg, case["reference"], folder / "seg.dcm", ct_grid=grid),
        "rtstruct": write_rtstruct(seg, case["reference"], folder / "rs.dcm", ct_grid=grid),
    }
    for kind, path in files.items():
        back = read_segmentation(path, reference=grid, ct_series=folder / "ct")
        assert back.names == ("mandible", "parotid_left"), kind
        assert back.labelmap.same_grid(grid), kind
        for name in back.names:
            if kind == "rtstruct":  # contours: the rasterisation agrees closely, not voxel for voxel
                assert compare_masks(back.mask(name), seg.mask(name)).dice > 0.9, (kind, name)
            else:
                np.testing.assert_array_equal(back.mask(name).array, seg.mask(name).array, err_msg=f"{kind} {name}")
        if kind in ("seg.nrrd", "nii.gz"):  # the formats that carry Slicer's terminology entry
            assert back.segment("mandible").terminology == terminology_entry("SCT^91609006^Mandible", "mandible"), kind
    with pytest.raises(SegmentationFileError, match="DICOM SEG: give its CT series"):
        read_segmentation(files["dicom-seg"])


def test_read_segmentation_names_a_single_label_file_after_itself(tmp_path: Path) -> None:
    seg = read_segmentation(SAMPLE / "mandible.nii.gz")
    assert (
        seg.names == ("mandible",)
        and seg.mask("mandible").array.sum() == (read_volume(SAMPLE / "mandible.nii.gz").array > 0).sum()
    )


def test_read_segmentation_moves_exactly_or_resamples_only_on_request(case: dict, tmp_path: Path) -> None:
    seg, grid = case["seg"], case["ct"]
    # the same voxels stored with the slice axis reversed: moved exactly onto the grid
    flipped = Volume(
        seg.labelmap.array[::-1].copy(),
        seg.labelmap.spacing,
        seg.labelmap.index_to_physical([0, 0, seg.labelmap.array.shape[0] - 1]),
        seg.labelmap.direction @ np.diag([1.0, 1.0, -1.0]),
    )
    path = write_labelmap_nifti(flipped, seg.segments, tmp_path / "flipped.nii.gz")["labelmap"]
    back = read_segmentation(path, reference=grid)
    np.testing.assert_array_equal(back.labelmap.array, seg.labelmap.array)
    # a coarser grid: refused unless resampling is asked for
    coarse = Volume(
        seg.labelmap.array[:, ::2, ::2].copy(), tuple(np.multiply(grid.spacing, (2, 2, 1))), grid.origin, grid.direction
    )
    path = write_labelmap_nifti(coarse, seg.segments, tmp_path / "coarse.nii.gz")["labelmap"]
    with pytest.raises(GeometryMismatchError):
        read_segmentation(path, reference=grid)
    resampled = read_segmentation(path, reference=grid, resample=True)
    assert resampled.labelmap.same_grid(grid) and resampled.names == seg.names
    # exactly SimpleITK's nearest-neighbour resampling of the file onto the grid
    expected = sitk.Resample(sitk.ReadImage(str(path)), to_sitk(grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(resampled.labelmap.array, sitk.GetArrayFromImage(expected))
    assert compare_masks(resampled.mask("mandible"), seg.mask("mandible")).dice > 0.6  # a coarser grid loses detail


# --------------------------------------------------------------------------------------------
# build_print_mesh
# --------------------------------------------------------------------------------------------
def test_export_and_report_build_the_print_mesh_and_its_report_once(case: dict, tmp_path: Path) -> None:
    seg = case["seg"]
    mandible = seg.mask("mandible")
    part = build_print_mesh(mandible, "mandible", label_value=1, smoothing_factor=0.5, decimation=0.2)
    assert part.report.watertight and part.label_value == 1 and "deviation_mm" in part.mesh.scalars
    exported = dict(
        (r.name, r)
        for _, r in export_segments(seg, tmp_path / "meshes", format="stl", smoothing_factor=0.5, decimation=0.2, overwrite=True)
    )
    assert exported["mandible"].to_dict() == part.report.to_dict()
    facts = build_report(case["ct"], seg, ReportOptions(threshold=None, smoothing=0.5, decimation=0.2))
    row = next(s for s in facts.data["structures"] if s["name"] == "mandible")
    # the report meshes a crop around the structure: the same surface up to float rounding of the coordinates
    expected = json.loads(json.dumps(part.report.to_dict(), default=float))
    assert set(row["mesh"]) == set(expected)
    for key, value in expected.items():
        if isinstance(value, (int, bool, str)) or value is None:
            assert row["mesh"][key] == value, key
        else:
            assert row["mesh"][key] == pytest.approx(value, rel=1e-4, abs=5e-3), key  # percentages: 0.005 points


# --------------------------------------------------------------------------------------------
# compare_with_threshold: the margin is a parameter
# --------------------------------------------------------------------------------------------
def test_the_region_margin_changes_the_comparison_and_none_is_the_whole_ct(case: dict) -> None:
    ct = read_volume(case["folder"] / "ct")
    mandible = case["seg"].mask("mandible")
    results = {m: compare_with_threshold(ct, mandible, roi_margin_mm=m) for m in (0.0, 5.0, 10.0, 20.0, None)}
    volumes = [results[m].comparison.volume_b_ml for m in (0.0, 5.0, 10.0, 20.0, None)]
    assert volumes == sorted(volumes) and volumes[0] < volumes[-1], volumes
    assert results[None].roi is None and results[10.0].roi is not None
    assert results[0.0].comparison.only_b_ml == 0.0, "margin 0: the threshold only inside the structure itself"
    with pytest.raises(SegDeepError, match="roi_margin_mm"):
        compare_with_threshold(ct, mandible, roi_margin_mm=-1.0)


def test_compare_with_threshold_on_the_command_line_checks_its_usage(case: dict, tmp_path: Path, capsys) -> None:
    path = write_labelmap_nifti(case["seg"].labelmap, case["seg"].segments, tmp_path / "s.nii.gz")["labelmap"]
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(path), str(path), "--threshold", "bone", "--ct", str(case["folder"] / "ct")])
    assert exc.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(path), "--threshold", "bone"])
    assert exc.value.code == 2 and "--ct" in capsys.readouterr().err
    out = tmp_path / "whole.json"
    rc = main(
        [
            "compare",
            str(path),
            "--label-a",
            "mandible",
            "--threshold",
            "bone",
            "--ct",
            str(case["folder"] / "ct"),
            "--whole-ct",
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    whole = json.loads(out.read_text())
    ct = read_volume(case["folder"] / "ct")
    expected = compare_with_threshold(ct, case["seg"].mask("mandible"), preset="bone", roi_margin_mm=None).comparison
    assert whole["roi_margin_mm"] is None and whole["dice"] == expected.dice


# --------------------------------------------------------------------------------------------
# terminology
# --------------------------------------------------------------------------------------------
def test_card_terminology_to_slicer_entry_is_the_file_writers_entry() -> None:
    from SegDeepLogic.model_package import load_model_package

    card = load_model_package(ROOT / "Resources" / "Models" / "headneck-ct").card
    for segment, label in zip(card.segments, card.labels):  # noqa: B905 - Python 3.9
        assert slicer_terminology_entry(label.get("terminology"), label["name"]) == segment.terminology
        assert segment.terminology and segment.terminology.count("~") == 6
    assert slicer_terminology_entry("not a code") is None


# --------------------------------------------------------------------------------------------
# SegmentOptions
# --------------------------------------------------------------------------------------------
def test_segment_options_are_frozen_validated_and_round_trip_through_json() -> None:
    opts = SegmentOptions(
        overlap=0.25,
        tta=True,
        tta_flips=[(), (4,)],
        thresholds={"mandible": 0.4},
        keep_largest={"mandible": True},
        refine=True,
        refine_labels=["mandible"],
        refine_options=RefineOptions(grow_mm=4.0),
        num_threads=1,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.tta = False  # type: ignore[misc]
    back = SegmentOptions.from_dict(json.loads(json.dumps(opts.to_dict())))
    assert back == opts and back.per_label("thresholds") == {"mandible": 0.4}
    assert back.refine_options == RefineOptions(grow_mm=4.0) and back.tta_flips == ((), (4,))
    with pytest.raises(SegDeepError, match="unknown segmentation option"):
        SegmentOptions.from_dict({"overlapp": 0.5})
    with pytest.raises(SegDeepError, match="overlap"):
        SegmentOptions(overlap=1.0)


def test_the_options_object_and_keywords_give_the_same_result_and_are_recorded(case: dict) -> None:
    ct = read_volume(case["folder"] / "ct")
    opts = SegmentOptions(device="cpu", overlap=0.25, keep_largest=True, uncertainty=False, num_threads=1, allow_mismatch=True)
    a = segment_volume(ct, str(TEST_MODEL), opts)
    b = segment_volume(
        ct, str(TEST_MODEL), device="cpu", overlap=0.25, keep_largest=True, uncertainty=False, num_threads=1, allow_mismatch=True
    )
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert a.options == b.options == opts
    assert a.summary()["options"] == opts.to_dict() and a.parameters["overlap"] == 0.25
    # options given and one changed on top
    c = segment_volume(ct, str(TEST_MODEL), opts, overlap=0.5)
    assert c.options == opts.replace(overlap=0.5) and c.parameters["overlap"] == 0.5


def test_segment_command_records_its_options_in_the_json_summary(case: dict, tmp_path: Path) -> None:
    out = tmp_path / "seg.nii.gz"
    rc = main(
        [
            "segment",
            str(case["folder"] / "ct"),
            "-o",
            str(out),
            "--model",
            str(TEST_MODEL),
            "--device",
            "cpu",
            "--overlap",
            "0.25",
            "--keep-largest",
            "--threads",
            "1",
            "--allow-mismatch",
            "--json",
            str(tmp_path / "summary.json"),
            "--no-progress",
        ]
    )
    assert rc == 0
    recorded = json.loads((tmp_path / "summary.json").read_text())["options"]
    expected = SegmentOptions(
        device="cpu", overlap=0.25, keep_largest=True, num_threads=1, allow_mismatch=True, uncertainty=True
    ).to_dict()
    assert recorded == expected
