"""The review queue (``segdeep review-queue``, ``segdeep batch --review-queue``, :mod:`SegDeepLogic.review`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cohort_data import ROOT, TEST_MODEL, make_cohort

from SegDeepLogic.cohort import _write_record, read_record
from SegDeepLogic.review import OOD_WEIGHT, VOLUME_FINDING_WEIGHT, ReviewQueueError, review_queue
from SegDeepLogic.uncertainty import summarize_uncertainty
from SegDeepLogic.volume import Volume

SPACING = (1.0, 1.0, 1.0)
SEGMENTS = [{"name": "mandible", "value": 1}, {"name": "parotid_left", "value": 2}]


def _case_uncertainty(uncertain_slabs: dict[int, int]) -> list[dict]:
    """Real uncertainty rows of a synthetic case: two 10^3 cubes, of which ``uncertain_slabs[v]``
    slices (of 10) of structure ``v`` have entropy 0.9 and the rest 0.05 (0.3 in the boundary band
    outside them, below the 0.5 threshold)."""
    labels = np.zeros((20, 40, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    labels[5:15, 25:35, 5:15] = 2
    entropy = np.where(labels > 0, 0.05, 0.3).astype(np.float32)
    for value, n in uncertain_slabs.items():
        j0 = 5 if value == 1 else 25
        entropy[5 : 5 + n, j0 : j0 + 10, 5:15] = 0.9
    return summarize_uncertainty(Volume(labels, SPACING), Volume(entropy, SPACING), SEGMENTS)


def _write_case(outdir: Path, case_id: str, **fields: object) -> None:
    record = {
        "case_id": case_id,
        "status": "done",
        "error": None,
        "error_type": None,
        "ood_verdict": "ok",
        "withheld": [],
        "outputs": [],
        "ct": f"/data/{case_id}/ct.nii.gz",
        "ood_findings": [],
        **fields,
    }
    (outdir / "cases" / case_id).mkdir(parents=True, exist_ok=True)
    _write_record(outdir, record)


def test_cases_are_ranked_by_their_most_uncertain_structure_then_ood_with_failures_first(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    _write_case(out, "calm", uncertainty=_case_uncertainty({1: 0, 2: 1}))
    _write_case(out, "parotid_unsure", uncertainty=_case_uncertainty({1: 1, 2: 9}))
    _write_case(out, "mandible_unsure", uncertainty=_case_uncertainty({1: 8, 2: 0}))
    # as calm as "calm" by uncertainty, but an out-of-distribution caution with a volume finding
    _write_case(
        out,
        "odd_volume",
        uncertainty=_case_uncertainty({1: 0, 2: 1}),
        ood_verdict="caution",
        ood_findings=[{"check": "volume", "severity": "caution", "message": "mandible is 9 mL, larger", "structure": "mandible"}],
    )
    _write_case(out, "broken", status="failed", error="CT not found: x", error_type="BatchError", uncertainty=None)
    _write_case(
        out,
        "abdomen",
        status="failed",
        error_type="MismatchError",
        ood_verdict="mismatch",
        withheld=[{"name": "mandible", "volume_ml": 1.0}],
        uncertainty=_case_uncertainty({1: 0, 2: 0}),
    )
    items = review_queue(out)
    assert [i.case_id for i in items] == ["broken", "abdomen", "parotid_unsure", "mandible_unsure", "odd_volume", "calm"]
    assert [i.rank for i in items] == [1, 2, 3, 4, 5, 6]
    by_id = {i.case_id: i for i in items}
    # mean entropy inside = (n slices at 0.9 + (10 - n) at 0.05) / 10
    assert by_id["parotid_unsure"].most_uncertain_structure == "parotid_left"
    assert by_id["mandible_unsure"].most_uncertain_structure == "mandible"
    assert by_id["parotid_unsure"].structure_scores["parotid_left"] == pytest.approx(0.05 + 0.085 * 9, abs=1e-4)
    assert by_id["mandible_unsure"].structure_scores["mandible"] == pytest.approx(0.05 + 0.085 * 8, abs=1e-4)
    assert by_id["odd_volume"].score == pytest.approx(by_id["calm"].score + OOD_WEIGHT["caution"] + VOLUME_FINDING_WEIGHT)
    assert any("volume: mandible is 9 mL" in r for r in by_id["odd_volume"].reasons)
    assert by_id["broken"].score is None and "CT not found" in by_id["broken"].reasons[0]
    assert "withheld" in by_id["abdomen"].reasons[0]
    assert by_id["parotid_unsure"].reasons[0].startswith("most uncertain structure parotid_left")


def test_a_structure_the_network_did_not_find_is_a_reason_not_a_score(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    rows = _case_uncertainty({1: 2})
    rows[1].update(voxels=0, mean_entropy_inside=None, uncertain_fraction=None)
    _write_case(out, "c", uncertainty=rows)
    (item,) = review_queue(out)
    assert set(item.structure_scores) == {"mandible"}
    assert item.reasons[-1] == "not found by the network: parotid_left"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "not a segdeep batch output folder"),
        (lambda p: (p / "cases").mkdir() or p, "holds no finished case"),
        (lambda p: p / "nowhere", "batch output folder not found"),
    ],
)
def test_a_folder_that_is_not_a_finished_batch_is_refused_with_a_clear_message(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ReviewQueueError, match=message):
        review_queue(make(tmp_path))


def test_records_without_uncertainty_from_an_older_batch_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    _write_case(out, "old")  # a done case with no "uncertainty" key, as batches before the review queue wrote
    with pytest.raises(ReviewQueueError, match="no per-structure uncertainty record"):
        review_queue(out)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _segdeep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegDeepLogic.cli", *args], capture_output=True, text=True, env=_env(), cwd=ROOT)


def test_batch_review_queue_writes_the_ranked_table_and_review_queue_command_gives_the_same_order(tmp_path: Path) -> None:
    make_cohort(tmp_path / "cohort", n=2)
    out = tmp_path / "out"
    run = _segdeep(
        "batch", str(tmp_path / "cohort"), "-o", str(out), "--model", str(TEST_MODEL), "--no-report", "--review-queue", "--no-progress"
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "review queue of 2 case(s)" in run.stderr
    record = read_record(out, "case0")
    names = [row["name"] for row in record["uncertainty"]]
    assert names == ["bone", "soft_tissue"]  # the test model's structures, each with its uncertainty
    assert all(0.0 <= row["uncertain_fraction"] <= 1.0 for row in record["uncertainty"] if row["voxels"])
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert "bone_uncertain_fraction" in summary[0] and "bone_mean_entropy_boundary" in summary[0]
    with open(out / "review_queue.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["rank"] for r in table] == ["1", "2"]
    scores = [float(r["score"]) for r in table]
    assert scores == sorted(scores, reverse=True)
    for row in table:
        assert row["reasons"].startswith("most uncertain structure ")
        assert Path(row["segmentation"]).is_file() and row["segmentation"].endswith("segmentation.seg.nrrd")
    run = _segdeep("review-queue", str(out), "-o", str(tmp_path / "q.json"))
    assert run.returncode == 0, run.stderr
    data = json.loads((tmp_path / "q.json").read_text())
    again = _segdeep("review-queue", str(out), "-o", str(tmp_path / "q.json"))
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert _segdeep("review-queue", str(out), "-o", str(tmp_path / "q.json"), "--overwrite").returncode == 0
    assert [d["case_id"] for d in data] == [r["case_id"] for r in table]
    assert data[0]["structure_scores"] and data[0]["most_uncertain_structure"] in ("bone", "soft_tissue")


def test_review_queue_refuses_a_table_it_cannot_write_and_a_folder_that_is_not_a_batch(tmp_path: Path) -> None:
    run = _segdeep("review-queue", str(tmp_path), "-o", str(tmp_path / "q.txt"))
    assert run.returncode == 1 and "give a .csv or .json file name" in run.stderr
    run = _segdeep("review-queue", str(tmp_path), "-o", str(tmp_path / "q.csv"))
    assert run.returncode == 1 and "not a segdeep batch output folder" in run.stderr
    assert not (tmp_path / "q.csv").exists()


def test_readme_correction_loop_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's loop, in order: batch with the review queue, the queue as JSON, a correction saved
    from Python, fine-tuning with the forgetting guard. Its folders are test files (cases/: crops of the
    sample CT; validation/: another crop with its mandible as 'bone'); --iterations 200 becomes 2."""
    import re
    import shlex

    import SimpleITK as sitk

    from SegDeepLogic import cli

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The correction loop") :]
    section = section[: section.index("\n## ")]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)[0].replace("\\\n", " ").strip().splitlines()
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    make_cohort(tmp_path / "cohort", n=2)
    (tmp_path / "cohort" / "cohort.csv").unlink()
    (tmp_path / "cohort").rename(tmp_path / "cases")
    for case in (tmp_path / "cases").iterdir():
        (case / "reference.nii.gz").unlink()
    validation = tmp_path / "validation" / "v1"
    validation.mkdir(parents=True)
    sample = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
    for src, dst in (("ct.nii.gz", "ct.nii.gz"), ("mandible.nii.gz", "bone.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(sample / src))[48:90, 28:64, 24:58], str(validation / dst))
    # the model path is relative to the repository; the data folders to the working directory
    commands = [
        c.replace("Testing/Data/test_model", str(TEST_MODEL)).replace("--iterations 200", "--iterations 2") for c in commands
    ]
    monkeypatch.chdir(tmp_path)
    assert [c.split()[1] for c in commands] == ["batch", "review-queue", "train"]
    assert cli.main([*shlex.split(commands[0])[1:], "--no-progress"]) == 0
    assert (tmp_path / "batch_out" / "review_queue.csv").is_file()
    assert cli.main(shlex.split(commands[1])[1:]) == 0
    queue = json.loads((tmp_path / "review.json").read_text())
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    saved = tmp_path / "corrections" / queue[0]["case_id"]
    assert (saved / f"{queue[0]['most_uncertain_structure']}.nii.gz").is_file()
    assert json.loads((saved / "correction.json").read_text())["annotator"] == "me"
    assert cli.main([*shlex.split(commands[2])[1:], "--no-progress"]) == 0
    card = json.loads((tmp_path / "tuned" / "model.json").read_text())
    guard = card["training"]["forgetting_guard"]
    assert guard["data"] == ["validation/"] and guard["before"]["dice"]["bone"] is not None
    assert set(guard["change"]) == {"bone", "mean"}


def test_readme_and_docs_quote_the_committed_review_queue_measurement() -> None:
    """The correlations in README.md and docs/review_queue.md are those of docs/review_queue_validation.json
    (written by scripts/review_queue_eval.py)."""
    result = json.loads((ROOT / "docs" / "review_queue_validation.json").read_text())
    case = result["case_level"]
    shipped = case["score_vs_1_minus_mean_dice"]["rho"]
    contoured = case["uncertainty_contoured_structures_only_vs_1_minus_mean_dice"]["rho"]
    assert result["n_cases"] == 33 and case["score_vs_1_minus_mean_dice"]["n"] == 33
    readme = (ROOT / "README.md").read_text()
    assert f"ρ = {shipped:.2f} against 1 − mean Dice" in readme and f"contoured structures only ρ = {contoured:.2f}" in readme
    docs = (ROOT / "docs" / "review_queue.md").read_text()
    assert f"ρ = {shipped:+.2f}" in docs and f"ρ = {contoured:+.2f}" in docs
