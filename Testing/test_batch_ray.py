"""``segdeep batch --ray``: the same batch as Ray tasks on a local Ray instance started here (2 CPUs)."""

from __future__ import annotations

import csv
import os
import re
import shlex
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cohort_data import ROOT, TEST_MODEL, make_cohort

from SegDeepLogic import cli
from SegDeepLogic.cohort import BatchSettings, read_record, segment_cohort
from SegDeepLogic.segmentation_io import read_seg_nrrd

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (starting Ray is slow)."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    yield
    ray.shutdown()


def _task_processes() -> list[psutil.Process]:
    """Ray worker processes running a case (Ray titles a busy worker 'ray::<task name>')."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if cmd.startswith("ray::") and ("segdeep_case" in cmd or "_ray_case" in cmd):
            found.append(proc)
    return found


def _summary(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_ray_batch_survives_a_worker_killed_mid_case_and_matches_the_local_batch(local_ray: None, tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "in", 3)
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:  # kill -9 the first worker seen running a case
        while not stop.is_set() and not killed:
            for proc in _task_processes():
                try:
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.pid)
                    return
                except psutil.Error:
                    pass
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = segment_cohort(manifest, tmp_path / "ray", TEST_MODEL, ray="local")
    finally:
        stop.set()
        thread.join()
    assert killed, "no Ray worker was seen running a case"
    assert sorted(result.done) == ["case0", "case1", "case2"] and not result.failed  # Ray retried the killed task
    rows = _summary(tmp_path / "ray")
    assert [r["status"] for r in rows] == ["done", "done", "done"]

    local = segment_cohort(manifest, tmp_path / "local", TEST_MODEL, settings=BatchSettings(report=False))
    for case in local.done:
        a, b = tmp_path / "ray" / "cases" / case, tmp_path / "local" / "cases" / case
        np.testing.assert_array_equal(
            read_seg_nrrd(a / "segmentation.seg.nrrd").labelmap.array, read_seg_nrrd(b / "segmentation.seg.nrrd").labelmap.array
        )
        assert (a / "report.html").is_file() and (a / "meshes" / "bone.stl").is_file()
        # the report names the mesh where it now is, not the worker's private folder
        assert str(a.resolve() / "meshes" / "bone.stl") in (a / "report.json").read_text()
        assert read_record(tmp_path / "ray", case)["worker"] != read_record(tmp_path / "local", case)["worker"]


def test_readme_ray_example_runs_as_written(local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's cluster command, with its manifest and output folder replaced by test files; the Ray
    instance of this test module stands in for the cluster (a started Ray is used as it is)."""
    text = (ROOT / "README.md").read_text()
    line = next(m.group(0) for m in re.finditer(r"^segdeep batch .*--ray .*$", text, re.M))
    args = shlex.split(line)[1:]
    manifest = make_cohort(tmp_path / "in", 2)
    args[1] = str(manifest)
    args[args.index("-o") + 1] = str(tmp_path / "out")
    if "--model" not in args:
        args += ["--model", str(TEST_MODEL)]
    monkeypatch.chdir(ROOT)
    assert cli.main([*args, "--no-progress"]) == 0
    assert [r["status"] for r in _summary(tmp_path / "out")] == ["done", "done"]


def test_ray_batch_of_a_dicom_series_writes_the_rtstruct_and_dicom_seg_of_the_local_batch(
    local_ray: None, tmp_path: Path
) -> None:
    """A DICOM series case on Ray workers: the same contours and segments as in-process, valid DICOM."""
    from cohort_data import make_dicom_case
    from test_dicom import dciodvfy_errors

    from SegDeepLogic.dicom_seg import read_dicom_seg
    from SegDeepLogic.dicom_series import read_dicom_series
    from SegDeepLogic.rtstruct import read_rtstruct

    series, rtstruct = make_dicom_case(tmp_path / "in", "series0")
    rtstruct.unlink()  # the folder holds one case: the series
    grid, reference = read_dicom_series(series)
    for fmt, name in (("rtstruct", "rtstruct.dcm"), ("dicom-seg", "segmentation.dcm")):
        settings = BatchSettings(output_format=fmt, report=False)
        on_ray = segment_cohort(tmp_path / "in", tmp_path / f"ray_{fmt}", TEST_MODEL, settings=settings, ray="local")
        local = segment_cohort(tmp_path / "in", tmp_path / f"local_{fmt}", TEST_MODEL, settings=settings)
        assert on_ray.done == local.done == ["series0"] and not on_ray.failed
        a, b = tmp_path / f"ray_{fmt}" / "cases" / "series0" / name, tmp_path / f"local_{fmt}" / "cases" / "series0" / name
        assert sorted(p.name for p in a.parent.iterdir()) == ["case.json", name]
        assert dciodvfy_errors(a) == []
        read = (lambda p: read_rtstruct(p, series)) if fmt == "rtstruct" else (lambda p: read_dicom_seg(p, reference, grid))
        masks_ray, masks_local = read(a), read(b)
        assert list(masks_ray) == list(masks_local) and "bone" in masks_ray and masks_ray["bone"].array.any()
        for label in masks_ray:
            np.testing.assert_array_equal(masks_ray[label].array, masks_local[label].array)
        assert (
            read_record(tmp_path / f"ray_{fmt}", "series0")["worker"]
            != read_record(tmp_path / f"local_{fmt}", "series0")["worker"]
        )
