"""``segdeep batch`` / :func:`segment_cohort`: resumable cohort segmentation on one machine."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cohort_data import ROOT, TEST_MODEL, make_cohort, make_dicom_case

from SegDeepLogic import cli
from SegDeepLogic.cohort import (
    BatchLockedError,
    BatchSettings,
    ManifestError,
    _Lock,
    discover_cases,
    read_manifest,
    read_record,
    segment_cohort,
)
from SegDeepLogic.segmentation_io import read_seg_nrrd

VOLATILE = {"time_total_s", "time_segment_s", "time_network_s", "time_report_s", "worker", "finished_utc"}
FAST = BatchSettings(report=False)  # segmentation only, for the tests about bookkeeping


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _batch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "SegDeepLogic.cli", "batch", *args, "--model", str(TEST_MODEL), "--no-progress"]


def _summary(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _stable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the batch ended (status {proc.returncode}) before the expected point")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the batch")
        time.sleep(0.02)


def _done(outdir: Path, case_id: str) -> bool:
    record = read_record(outdir, case_id)
    return record is not None and record["status"] == "done"


def test_batch_killed_after_first_case_resumes_without_redoing_it_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 3)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_batch_cmd(str(manifest), "-o", str(killed)), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _done(killed, "case0"), proc)
    proc.send_signal(signal.SIGKILL)  # a real kill -9 of the real process
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first = (killed / "cases" / "case0" / "case.json").read_bytes()
    finished_before = [c for c in ("case0", "case1", "case2") if _done(killed, c)]

    again = subprocess.run(_batch_cmd(str(manifest), "-o", str(killed)), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{len(finished_before)} case(s) already finished" in again.stderr
    for case in finished_before:  # not redone: the record (worker pid, finish time) is untouched
        assert f"] {case}: done" not in again.stderr
    assert (killed / "cases" / "case0" / "case.json").read_bytes() == first

    # the same outputs as an uninterrupted run (through the Python API, which the CLI uses)
    clean = tmp_path / "clean"
    result = segment_cohort(manifest, clean, TEST_MODEL)
    assert result.done == ["case0", "case1", "case2"] and not result.failed
    assert _stable(_summary(killed)) == _stable(_summary(clean))
    for case in ("case0", "case1", "case2"):
        a, b = killed / "cases" / case, clean / "cases" / case
        assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(p.relative_to(b) for p in b.rglob("*"))
        np.testing.assert_array_equal(
            read_seg_nrrd(a / "segmentation.seg.nrrd").labelmap.array, read_seg_nrrd(b / "segmentation.seg.nrrd").labelmap.array
        )
        assert (a / "meshes" / "bone.stl").read_bytes() == (b / "meshes" / "bone.stl").read_bytes()
        assert read_record(killed, case)["structures"] == read_record(clean, case)["structures"]

    # each label map is the one `segdeep segment` writes for that case
    for case in ("case0", "case2"):
        single = tmp_path / f"{case}.seg.nrrd"
        ct = tmp_path / "in" / case / "ct.nii.gz"
        assert cli.main(["segment", str(ct), "-o", str(single), "--model", str(TEST_MODEL), "--no-progress"]) == 0
        np.testing.assert_array_equal(
            read_seg_nrrd(single).labelmap.array, read_seg_nrrd(clean / "cases" / case / "segmentation.seg.nrrd").labelmap.array
        )


def test_summary_has_a_row_per_case_with_status_verdict_volumes_metrics_timings_and_device(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 1)
    result = segment_cohort(manifest, tmp_path / "out", TEST_MODEL, settings=BatchSettings(uncertainty=True))
    (row,) = _summary(tmp_path / "out")
    assert row["status"] == "done" and row["error"] == ""
    assert row["ood_verdict"] == "unchecked"  # the test model has no reference statistics
    assert row["device"] == "cpu" and float(row["time_total_s"]) > 0
    assert float(row["bone_volume_ml"]) > 0
    assert 0.2 < float(row["bone_dice_reference"]) < 1  # the mandible reference, paired by the manifest (bone is more)
    assert 0.5 < float(row["bone_dice_threshold"]) <= 1
    assert row["bone_watertight"] == "True"
    case = tmp_path / "out" / "cases" / "case0"
    for name in ("segmentation.seg.nrrd", "uncertainty.nii.gz", "report.html", "report.json", "meshes/bone.stl"):
        assert (case / name).is_file(), name
    assert result.rows[0]["bone_dice_reference"] == pytest.approx(float(row["bone_dice_reference"]), abs=1e-4)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "summary.parquet").to_pylist()
    assert table[0]["case_id"] == "case0" and table[0]["bone_volume_ml"] == pytest.approx(float(row["bone_volume_ml"]))


def test_failed_cases_are_recorded_with_their_error_the_batch_goes_on_and_retry_failed_redoes_them(tmp_path: Path) -> None:
    make_cohort(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.nii.gz").write_bytes(b"not an image at all")
    manifest = tmp_path / "in" / "m.csv"
    manifest.write_text("case_id,ct\ncase0,case0/ct.nii.gz\nmissing,nowhere/ct.nii.gz\nbroken,broken.nii.gz\n")
    out = tmp_path / "out"
    result = segment_cohort(manifest, out, TEST_MODEL, settings=FAST)
    assert result.done == ["case0"] and sorted(result.failed) == ["broken", "missing"]
    rows = {r["case_id"]: r for r in _summary(out)}
    assert rows["missing"]["status"] == "failed" and "CT not found" in rows["missing"]["error"]
    assert rows["broken"]["status"] == "failed" and "cannot read" in rows["broken"]["error"]
    assert rows["broken"]["error_type"] == "VolumeReadError"

    again = segment_cohort(manifest, out, TEST_MODEL, settings=FAST)  # failures are not retried by default
    assert again.done == [] and again.failed == [] and sorted(again.skipped) == ["broken", "case0", "missing"]

    shutil.copy(tmp_path / "in" / "case0" / "ct.nii.gz", tmp_path / "in" / "broken.nii.gz")  # fixed: new hash, redone
    fixed = segment_cohort(manifest, out, TEST_MODEL, settings=FAST)
    assert fixed.done == ["broken"] and fixed.failed == []
    retried = segment_cohort(manifest, out, TEST_MODEL, settings=FAST, retry_failed=True)
    assert retried.failed == ["missing"] and retried.done == []


def test_a_changed_ct_options_or_model_redo_the_cases_they_concern(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert segment_cohort(manifest, out, TEST_MODEL, settings=FAST).done == ["case0", "case1"]
    ct = tmp_path / "in" / "case1" / "ct.nii.gz"
    image = sitk.ReadImage(str(ct))
    image[0, 0, 0] = image[0, 0, 0] + 1
    sitk.WriteImage(image, str(ct))
    assert segment_cohort(manifest, out, TEST_MODEL, settings=FAST).done == ["case1"]
    changed = BatchSettings(report=False, segment_options={"keep_largest": True})
    assert segment_cohort(manifest, out, TEST_MODEL, settings=changed).done == ["case0", "case1"]
    model = tmp_path / "model"
    shutil.copytree(TEST_MODEL, model)
    card = json.loads((model / "model.json").read_text())
    card["description"] += " (copy)"
    (model / "model.json").write_text(json.dumps(card))
    assert segment_cohort(manifest, out, model, settings=changed).done == ["case0", "case1"]
    # the device is not part of a case's identity
    same = BatchSettings(report=False, segment_options={"keep_largest": True, "device": "cpu", "num_threads": 1})
    assert segment_cohort(manifest, out, model, settings=same).skipped == ["case0", "case1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,ct\na,a.nii.gz\n", "missing column(s) case_id; unknown column(s) 'id'"),
        ("case_id,ct,colour\na,a.nii.gz,red\n", "unknown column(s) 'colour'"),
        ("case_id,ct\na,a.nii.gz\nA,b.nii.gz\n", "duplicate case ids (compared ignoring case): a"),
        ("case_id,ct\n../up,a.nii.gz\n", "case ids must be non-empty"),
        ("case_id,ct,tta\na,a.nii.gz,maybe\n", "line 2: column 'tta' must be true/false"),
        ("case_id,ct\n", "lists no case"),
    ],
)
def test_bad_manifests_give_one_clear_message(tmp_path: Path, text: str, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(ManifestError, match=None) as info:
        read_manifest(manifest)
    assert message in str(info.value)


def test_a_bad_manifest_is_refused_before_anything_and_finished_cases_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_cohort(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert cli.main(["batch", str(manifest), "-o", str(out), "--model", str(TEST_MODEL), "--no-report", "--no-progress"]) == 0
    record = (out / "cases" / "case0" / "case.json").read_bytes()
    bad = tmp_path / "in" / "bad.csv"
    bad.write_text(manifest.read_text() + "case0,case0/ct.nii.gz,,\n")
    capsys.readouterr()
    assert cli.main(["batch", str(bad), "-o", str(out), "--model", str(TEST_MODEL), "--no-report", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "segdeep batch: error: manifest" in err and "duplicate case ids" in err
    assert (out / "cases" / "case0" / "case.json").read_bytes() == record


def test_a_second_batch_on_the_same_output_folder_is_refused(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 1)
    out = tmp_path / "out"
    with _Lock(out), pytest.raises(BatchLockedError, match="another segdeep batch is writing to"):
        segment_cohort(manifest, out, TEST_MODEL, settings=FAST)
    assert not (out / "cases").exists()
    assert segment_cohort(manifest, out, TEST_MODEL, settings=FAST).done == ["case0"]  # free again


def test_ctrl_c_finishes_the_case_in_progress_and_leaves_a_resumable_batch(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 2)
    out = tmp_path / "out"
    proc = subprocess.Popen(_batch_cmd(str(manifest), "-o", str(out)), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "cases" / "case0").is_dir(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "stopping after the cases in progress" in err
    assert _done(out, "case0") and not (out / "cases" / "case1").exists()
    assert [r["status"] for r in _summary(out)] == ["done", "pending"]
    again = subprocess.run(_batch_cmd(str(manifest), "-o", str(out)), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "1 case(s) already finished" in again.stderr
    assert [r["status"] for r in _summary(out)] == ["done", "done"]


def test_folder_discovery_finds_ct_files_case_folders_and_dicom_series(tmp_path: Path) -> None:
    make_cohort(tmp_path, 1)
    shutil.copy(tmp_path / "case0" / "ct.nii.gz", tmp_path / "loose.nii.gz")
    (tmp_path / "loose_seg.seg.nrrd").write_bytes(b"")  # a segmentation, never a CT
    (tmp_path / "empty").mkdir()
    dicom = tmp_path / "series"
    dicom.mkdir()
    (dicom / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / ".hidden").mkdir()
    cases, notes = discover_cases(tmp_path)
    assert [(c.case_id, Path(c.ct).name, c.reference and Path(c.reference).name) for c in cases] == [
        ("case0", "ct.nii.gz", "reference.nii.gz"),
        ("loose", "loose.nii.gz", None),
        ("series", "series", None),
    ]
    assert any("empty/" in n for n in notes) and any("loose_seg.seg.nrrd" in n for n in notes)


def test_two_worker_processes_give_the_labels_of_one(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 2)
    one = segment_cohort(manifest, tmp_path / "one", TEST_MODEL, settings=FAST)
    two = segment_cohort(manifest, tmp_path / "two", TEST_MODEL, settings=FAST, workers=2)
    assert sorted(two.done) == one.done == ["case0", "case1"]
    workers = {read_record(tmp_path / "two", c)["worker"] for c in two.done}
    assert str(os.getpid()) not in " ".join(workers)  # ran in the worker processes
    for case in one.done:
        np.testing.assert_array_equal(
            read_seg_nrrd(tmp_path / "one" / "cases" / case / "segmentation.seg.nrrd").labelmap.array,
            read_seg_nrrd(tmp_path / "two" / "cases" / case / "segmentation.seg.nrrd").labelmap.array,
        )


def test_readme_cohort_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's `segdeep batch` command and manifest columns, with test files for its paths."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Cohorts: `segdeep batch`") :]
    line = next(m.group(0) for m in re.finditer(r"^segdeep batch .*$", section, re.M))
    header = next(m.group(0) for m in re.finditer(r"^case_id,ct,.*$", section, re.M))
    make_cohort(tmp_path / "in", 2)
    columns = header.split(",")
    rows = [dict.fromkeys(columns, "") | {"case_id": c, "ct": f"{c}/ct.nii.gz"} for c in ("case0", "case1")]
    rows[0] |= {"reference": "case0/reference.nii.gz", "reference_labels": "bone=reference"}
    rows[1] |= {"tta": "true"} if "tta" in columns else {}
    manifest = tmp_path / "in" / "cohort.csv"
    manifest.write_text("\n".join([header] + [",".join(r[c] for c in columns) for r in rows]) + "\n")
    args = shlex.split(line)[1:]
    args[1] = str(manifest)
    args[args.index("-o") + 1] = str(tmp_path / "out")
    monkeypatch.chdir(ROOT)
    assert cli.main([*args, "--no-progress"]) == 0
    summary = _summary(tmp_path / "out")
    assert [r["status"] for r in summary] == ["done", "done"]
    assert summary[0]["bone_dice_reference"] and not summary[1]["bone_dice_reference"]
    assert (tmp_path / "out" / "cases" / "case1" / "uncertainty.nii.gz").is_file()


def test_an_out_of_distribution_mismatch_and_an_out_of_memory_fail_their_case_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test model has no reference statistics, so the engine's verdicts are simulated here."""
    import torch

    from SegDeepLogic import segment
    from SegDeepLogic.errors import MismatchError
    from SegDeepLogic.io import read_volume

    real = segment.segment_file

    def fake(ct_path, output, model, **kwargs):  # noqa: ANN001, ANN202
        if "case1" in str(ct_path):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if "case0" in str(ct_path):  # as segment_file on a mismatch: the result, nothing written
            for key in ("output_format", "uncertainty_path", "overwrite"):
                kwargs.pop(key)
            result = segment.segment_volume(read_volume(ct_path), model, **kwargs)
            result.plausibility = {
                "verdict": "mismatch",
                "findings": [{"check": "x", "severity": "error", "message": "not a head"}],
            }
            raise MismatchError("nothing written: ct.nii.gz does not look like a head and neck CT", result)
        return real(ct_path, output, model, **kwargs)

    monkeypatch.setattr(segment, "segment_file", fake)
    manifest = make_cohort(tmp_path / "in", 3)
    out = tmp_path / "out"
    result = segment_cohort(manifest, out, TEST_MODEL, settings=BatchSettings(meshes=False))
    assert result.done == ["case2"] and result.failed == ["case0", "case1"]
    rows = {r["case_id"]: r for r in _summary(out)}
    assert rows["case0"]["error_type"] == "MismatchError" and rows["case0"]["ood_verdict"] == "mismatch"
    assert "does not look like a head and neck CT" in rows["case0"]["error"]
    assert (out / "cases" / "case0" / "report.html").is_file()  # the report says why
    assert not (out / "cases" / "case0" / "segmentation.seg.nrrd").exists()
    assert rows["case1"]["error_type"] == "OutOfMemoryError" and "out of memory" in rows["case1"]["error"]


def test_worker_processes_die_with_a_killed_batch_so_none_writes_into_the_output_afterwards(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux-only")
    manifest = make_cohort(tmp_path / "in", 2)
    out = tmp_path / "out"
    cmd = _batch_cmd(str(manifest), "-o", str(out), "--no-report", "--workers", "2")
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "cases" / "case0").is_dir(), proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=90)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"


# --------------------------------------------------------------------------------------------
# DICOM: series cases, RTSTRUCT / DICOM SEG outputs, an RTSTRUCT as the reference
# --------------------------------------------------------------------------------------------
def test_a_dicom_series_case_gives_the_labels_of_segment_and_rtstruct_dicom_seg_need_a_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_dicom import dciodvfy_errors  # dicom3tools' validator, as for `segdeep segment`

    from SegDeepLogic.dicom_seg import read_dicom_seg
    from SegDeepLogic.dicom_series import read_dicom_series
    from SegDeepLogic.rtstruct import read_rtstruct

    make_cohort(tmp_path / "in", 1)  # case0: a CT file (with a reference)
    series, _ = make_dicom_case(tmp_path / "in", "series0")  # series0: a real DICOM series (sub-folder)
    (tmp_path / "in" / "series0_rs.dcm").unlink()  # only the two cases in the folder
    single = tmp_path / "single.seg.nrrd"
    assert cli.main(["segment", str(series), "-o", str(single), "--model", str(TEST_MODEL), "--no-progress"]) == 0
    expected = read_seg_nrrd(single).mask("bone").array
    grid, reference = read_dicom_series(series)

    # the default format: the series case's label map is the one `segdeep segment` writes for it
    plain = segment_cohort(tmp_path / "in", tmp_path / "plain", TEST_MODEL, settings=FAST)
    assert plain.done == ["case0", "series0"]
    np.testing.assert_array_equal(
        read_seg_nrrd(tmp_path / "plain" / "cases" / "series0" / "segmentation.seg.nrrd").mask("bone").array, expected
    )

    # --format rtstruct: the series case gets rtstruct.dcm; the file case fails alone, with the reason
    out = tmp_path / "rt"
    result = segment_cohort(tmp_path / "in", out, TEST_MODEL, settings=BatchSettings(output_format="rtstruct", report=False))
    assert result.done == ["series0"] and result.failed == ["case0"]
    rows = {r["case_id"]: r for r in _summary(out)}
    assert "references the CT's DICOM series" in rows["case0"]["error"] and "ct.nii.gz" in rows["case0"]["error"]
    assert sorted(p.name for p in (out / "cases" / "case0").iterdir()) == ["case.json"]  # nothing half-written
    assert sorted(p.name for p in (out / "cases" / "series0").iterdir()) == ["case.json", "rtstruct.dcm"]
    contours = read_rtstruct(out / "cases" / "series0" / "rtstruct.dcm", series)
    np.testing.assert_array_equal(contours["bone"].array, expected)
    assert dciodvfy_errors(out / "cases" / "series0" / "rtstruct.dcm") == []

    # --format dicom-seg through the command line (exit 1: one case failed)
    out = tmp_path / "seg"
    args = ["batch", str(tmp_path / "in"), "-o", str(out), "--model", str(TEST_MODEL), "--format", "dicom-seg"]
    assert cli.main([*args, "--no-report", "--no-progress"]) == 1
    assert "1 case(s) failed" in capsys.readouterr().err
    masks = read_dicom_seg(out / "cases" / "series0" / "segmentation.dcm", reference, grid)
    np.testing.assert_array_equal(masks["bone"].array, expected)
    assert dciodvfy_errors(out / "cases" / "series0" / "segmentation.dcm") == []
    assert read_record(out, "case0")["error_type"] == "BatchError"


def test_an_rtstruct_reference_gives_the_metrics_of_the_same_contour_as_a_label_map(tmp_path: Path) -> None:
    make_cohort(tmp_path / "in", 1)  # case0: CT file + the mandible as a label map
    make_dicom_case(tmp_path / "in", "series0", crop=0)  # the same crop as a series + the mandible as an RTSTRUCT
    manifest = tmp_path / "in" / "m.csv"
    manifest.write_text(
        "case_id,ct,reference,reference_labels\n"
        "nifti,case0/ct.nii.gz,case0/reference.nii.gz,bone=reference\n"
        "dicom,series0,series0_rs.dcm,bone=Mandible\n"
        "wrong_roi,series0,series0_rs.dcm,bone=Parotid\n"
    )
    result = segment_cohort(manifest, tmp_path / "out", TEST_MODEL, settings=BatchSettings(meshes=False))
    assert result.done == ["nifti", "dicom"] and result.failed == ["wrong_roi"]
    rows = {r["case_id"]: r for r in _summary(tmp_path / "out")}
    assert float(rows["dicom"]["bone_volume_ml"]) == pytest.approx(float(rows["nifti"]["bone_volume_ml"]), rel=1e-3)
    assert 0.2 < float(rows["dicom"]["bone_dice_reference"]) < 1
    assert float(rows["dicom"]["bone_dice_reference"]) == pytest.approx(float(rows["nifti"]["bone_dice_reference"]), abs=0.02)
    assert "Parotid" in rows["wrong_roi"]["error"] and "Mandible" in rows["wrong_roi"]["error"]  # the ROIs it has


def test_batch_option_ranges_and_output_folder_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = make_cohort(tmp_path / "in", 1)
    base = ["batch", str(manifest), "--model", str(TEST_MODEL), "--no-progress"]
    for option, value, needle in (
        ("--workers", "0", "--workers: 0 is out of range"),
        ("--workers", "1.5", "'1.5' is not a whole number"),
        ("--ray-cpus-per-task", "0", "--ray-cpus-per-task: 0 is out of range"),
        ("--overlap", "1", "--overlap: 1 is out of range"),
        ("--min-island-mm3", "-1", "out of range"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main([*base, "-o", str(tmp_path / "out"), option, value])
        assert info.value.code == 2
        assert needle in capsys.readouterr().err
    assert cli.main([*base, "-o", str(manifest)]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    series = tmp_path / "in" / "series.csv"  # a case given as a folder (a DICOM series) is an input too
    series.write_text("case_id,ct\nd,case0\n")
    assert cli.main(["batch", str(series), "-o", str(tmp_path / "in" / "case0"), "--model", str(TEST_MODEL)]) == 1
    assert "is the input CT of case d" in capsys.readouterr().err
    assert cli.main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--model", str(TEST_MODEL)]) == 1
    assert "is the input INPUT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "in" / "cases").exists()
    bad = tmp_path / "in" / "bad.csv"
    bad.write_text("case_id,ct,overlap\ncase0,case0/ct.nii.gz,1.5\n")
    with pytest.raises(ManifestError, match=r"line 2: column 'overlap': 1.5 is out of range"):
        read_manifest(bad)


def test_the_case_files_are_written_all_or_nothing_and_through_the_verified_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case that fails after its segmentation (here: the report) leaves no file but its record."""
    from SegDeepLogic import report

    manifest = make_cohort(tmp_path / "in", 2)

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", broken)
    out = tmp_path / "out"
    result = segment_cohort(manifest, out, TEST_MODEL, settings=BatchSettings(meshes=False))
    assert result.failed == ["case0", "case1"]
    for case in ("case0", "case1"):
        assert sorted(p.name for p in (out / "cases" / case).iterdir()) == ["case.json"]
        record = read_record(out, case)
        assert record["outputs"] == [] and "No space left" in record["error"]
    assert not [p for p in out.rglob("*") if "segdeep-tmp" in p.name]  # no temporary left behind
