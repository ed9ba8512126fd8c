"""The ``segdeep`` command line on the real sample CT: outputs, exit codes and messages."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SegDeepLogic.cli import COMMANDS, main
from SegDeepLogic.io import read_volume
from SegDeepLogic.metrics import compare_masks
from SegDeepLogic.segmentation_io import read_labelmap_nifti, read_seg_nrrd
from SegDeepLogic.threshold import threshold_segment

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236"
CT = SAMPLE / "ct.nii.gz"
MANDIBLE = SAMPLE / "mandible.nii.gz"


def test_every_subcommand_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "SegDeepLogic.cli", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert command in out.stdout
        sub = subprocess.run([sys.executable, "-m", "SegDeepLogic.cli", command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
        assert "usage: segdeep " + command in sub.stdout


def test_threshold_writes_a_slicer_segmentation_equal_to_the_engine_result(tmp_path: Path) -> None:
    out = tmp_path / "bone.seg.nrrd"
    assert (
        main(["threshold", str(CT), "-o", str(out), "--keep-largest", "--no-progress", "--json", str(tmp_path / "t.json")]) == 0
    )
    seg = read_seg_nrrd(out)
    assert seg.names == ("bone",)
    ct = read_volume(CT)
    assert seg.labelmap.same_grid(ct)
    expected = threshold_segment(ct, preset="bone", keep_largest=True).mask.array
    np.testing.assert_array_equal(seg.mask("bone").array, expected)
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["lower_hu"] == 226.0 and summary["upper_hu"] == 3071.0
    assert summary["geometry"]["coordinate_system"] == "LPS"


def test_threshold_writes_nifti_label_map_with_sidecars(tmp_path: Path) -> None:
    out = tmp_path / "teeth.nii.gz"
    assert main(["threshold", str(CT), "-o", str(out), "--preset", "teeth_enamel_adult", "--no-progress"]) == 0
    seg = read_labelmap_nifti(out)
    assert seg.names == ("teeth_enamel_adult",)
    assert (tmp_path / "teeth.labels.json").exists()


def test_compare_reports_the_engine_metrics_as_json_and_csv(tmp_path: Path) -> None:
    bone = tmp_path / "bone.seg.nrrd"
    main(["threshold", str(CT), "-o", str(bone), "--no-progress"])
    assert main(["compare", str(bone), str(MANDIBLE), "-o", str(tmp_path / "m.json"), "--no-progress"]) == 0
    assert main(["compare", str(bone), str(MANDIBLE), "-o", str(tmp_path / "m.csv"), "--no-progress"]) == 0
    expected = compare_masks(read_seg_nrrd(bone).mask("bone"), read_volume(MANDIBLE).array.astype(bool))
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["segment_b"] == "mandible"
    for key in ("dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "surface_dice", "volume_a_ml", "volume_b_ml"):
        assert got[key] == pytest.approx(getattr(expected, key), rel=1e-9)
    row = next(csv.DictReader((tmp_path / "m.csv").open()))
    assert float(row["dice"]) == pytest.approx(expected.dice)


def test_compare_inside_a_grown_roi_and_disagreement_segments(tmp_path: Path) -> None:
    bone = tmp_path / "bone.seg.nrrd"
    main(["threshold", str(CT), "-o", str(bone), "--no-progress"])
    args = ["compare", str(bone), str(MANDIBLE), "--roi", str(MANDIBLE), "--roi-margin-mm", "10", "--no-progress"]
    assert main([*args, "-o", str(tmp_path / "roi.json"), "--disagreement", str(tmp_path / "dis.seg.nrrd")]) == 0
    whole = compare_masks(read_seg_nrrd(bone).mask("bone"), read_volume(MANDIBLE).array.astype(bool))
    roi = json.loads((tmp_path / "roi.json").read_text())
    assert roi["dice"] > whole.dice + 0.3  # the ROI removes the rest of the skeleton
    dis = read_seg_nrrd(tmp_path / "dis.seg.nrrd")
    assert dis.names[0].startswith("only in A") and dis.names[1].startswith("only in B")
    assert np.count_nonzero(dis.labelmap.array == 2) * dis.labelmap.voxel_volume_mm3 / 1000 == pytest.approx(roi["only_b_ml"])


def test_missing_input_exits_1_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["threshold", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "x.seg.nrrd"), "--no-progress"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_existing_output_is_not_overwritten_without_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bone.seg.nrrd"
    out.write_text("user data")
    assert main(["threshold", str(CT), "-o", str(out), "--no-progress"]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert out.read_text() == "user data"


def test_contradictory_thresholds_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["threshold", str(CT), "-o", str(tmp_path / "x.seg.nrrd"), "--lower-hu", "500", "--upper-hu", "100", "--no-progress"]
    )
    assert code == 1
    assert "lower" in capsys.readouterr().err.lower()


def test_compare_on_different_grids_names_the_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.nii.gz"
    main(["threshold", str(tmp_path / "missing"), "-o", str(small)])  # error path, writes nothing
    from SegDeepLogic import Volume, write_volume

    write_volume(Volume(np.ones((4, 4, 4), np.uint8), spacing=(1, 1, 1)), small)
    assert main(["compare", str(small), str(MANDIBLE), "--no-progress"]) == 1
    assert "differ in size" in capsys.readouterr().err


def test_threshold_then_export_gives_a_watertight_lps_stl_with_the_mask_extent(tmp_path: Path) -> None:
    from SegDeepLogic.mesh_io import read_mesh
    from SegDeepLogic.mesh_report import mesh_topology

    bone = tmp_path / "bone.seg.nrrd"
    main(["threshold", str(CT), "-o", str(bone), "--keep-largest", "--no-progress"])
    report = tmp_path / "report.json"
    assert main(["export", str(bone), "-o", str(tmp_path / "meshes"), "--report", str(report), "--no-progress"]) == 0
    rows = json.loads(report.read_text())
    assert rows["print_ready"] and rows["watertight"] and rows["space"] == "LPS"
    mesh = read_mesh(tmp_path / "meshes" / "bone.stl")
    assert mesh_topology(mesh.faces).watertight
    mask = read_seg_nrrd(bone).mask("bone")
    kji = np.argwhere(mask.array)
    centres = mask.index_to_physical(kji[:, ::-1])  # LPS mm of every bone voxel centre
    voxel = np.array(mask.spacing)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    # The voxel surface lies half a voxel outside the outermost voxel centres; smoothing moves it
    # by less than half a voxel more, so the extent matches the mask to within one voxel per side.
    np.testing.assert_array_less(np.abs(lo - (centres.min(axis=0) - voxel / 2)), voxel / 2)
    np.testing.assert_array_less(np.abs(hi - (centres.max(axis=0) + voxel / 2)), voxel / 2)
    # RAS export is the same surface with x and y negated.
    assert main(["export", str(bone), "-o", str(tmp_path / "ras"), "--space", "RAS", "--report", "-", "--no-progress"]) == 0
    ras = read_mesh(tmp_path / "ras" / "bone.stl", space="RAS")
    np.testing.assert_allclose(ras.vertices.min(axis=0), [-hi[0], -hi[1], lo[2]], atol=1e-3)


def test_export_of_an_unknown_segment_names_the_available_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bone = tmp_path / "bone.seg.nrrd"
    main(["threshold", str(CT), "-o", str(bone), "--no-progress"])
    assert main(["export", str(bone), "-o", str(tmp_path / "m"), "--segments", "skull", "--no-progress"]) == 1
    assert "bone" in capsys.readouterr().err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
