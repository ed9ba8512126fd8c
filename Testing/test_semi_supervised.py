"""Semi-supervised training (``segdeep train --unlabeled``): mean teacher on unlabelled CTs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SegDeepLogic.errors import CancelledError, SegDeepError
from SegDeepLogic.progress import CancelToken
from SegDeepLogic.training.augment import flip_left_right, lateral_pairs
from SegDeepLogic.training.mean_teacher import align_teacher, consistency_loss, ema_update, sigmoid_rampup
from SegDeepLogic.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
STRUCTURES = ["mandible", "brainstem", "spinal_cord", "parotid_left", "parotid_right", "esophagus", "larynx"]


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """A labelled folder (the sample case) and an unlabelled one (its CT only, under another name)."""
    labelled = tmp_path / "labelled"
    shutil.copytree(SAMPLE, labelled / "pt_236")
    unlabelled = tmp_path / "unlabelled" / "u_1"
    unlabelled.mkdir(parents=True)
    shutil.copy(SAMPLE / "ct.nii.gz", unlabelled / "ct.nii.gz")
    return {"labelled": labelled, "unlabelled": unlabelled.parent}


def _config(data: dict[str, Path], work: Path, **kw) -> TrainConfig:
    settings = dict(
        train_data=[str(data["labelled"])],
        unlabeled_data=[str(data["unlabelled"])],
        work_dir=str(work),
        output=str(work / "model"),
        spacing_ijk_mm=(7.8, 7.8, 5.0),
        architecture_params={"channels": [4, 8]},
        patch_size_kji=(16, 16, 16),
        batch_size=1,
        iterations=6,
        checkpoint_every=3,
        log_every=2,
        threads=1,
        warmup=2,
        consistency_rampup=4,
        consistency_weight=2.0,
    )
    settings.update(kw)
    return TrainConfig(**settings)


# --- the pieces --------------------------------------------------------------------------------
def test_teacher_alignment_mirrors_and_swaps_channels_like_the_label_flip() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(4, 5, 6)).astype(np.uint8)  # 0 bg, 1 mandible, 2/3 parotid left/right
    pairs = lateral_pairs(["mandible", "parotid_left", "parotid_right"])
    _, flipped_labels, _ = flip_left_right(np.zeros(labels.shape), labels, np.ones(4, bool), pairs, axis=2)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 4).permute(3, 0, 1, 2)[None].float()
    expected = torch.nn.functional.one_hot(torch.from_numpy(flipped_labels).long(), 4).permute(3, 0, 1, 2)[None].float()
    both = torch.cat([one_hot, one_hot])
    aligned = align_teacher(both, torch.tensor([True, False]), pairs, axis=2)
    assert torch.equal(aligned[0], expected[0])  # mirrored: parotid left became right where the student sees it
    assert torch.equal(aligned[1], one_hot[0])  # not mirrored: untouched


def test_ema_teacher_averages_early_and_then_follows_the_decay() -> None:
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = teacher.weight.detach().clone()
    assert ema_update(teacher, student, decay=0.99, step=1) == 0.5
    assert torch.allclose(teacher.weight, 0.5 * t0 + 0.5 * student.weight)
    t1 = teacher.weight.detach().clone()
    assert ema_update(teacher, student, decay=0.9, step=1000) == 0.9
    assert torch.allclose(teacher.weight, 0.9 * t1 + 0.1 * student.weight)


def test_consistency_is_zero_for_agreeing_predictions_and_ramps_up() -> None:
    logits = torch.randn(2, 3, 4, 4, 4)
    assert float(consistency_loss(logits, torch.softmax(logits, 1))) == pytest.approx(0.0, abs=1e-7)
    assert float(consistency_loss(logits, torch.softmax(-logits, 1))) > 0.01
    weights = [sigmoid_rampup(s, 10) for s in range(12)]
    assert weights == sorted(weights) and weights[0] < 0.01 and weights[10] == 1.0


# --- training ----------------------------------------------------------------------------------
def test_unlabelled_cases_are_read_and_drive_a_nonzero_consistency_term(data: dict[str, Path], tmp_path: Path) -> None:
    from SegDeepLogic.model_package import load_model_package

    cfg = _config(data, tmp_path / "run", validation_data=[str(data["labelled"])], val_every=6, val_cases=1)
    summary = train(cfg, progress_bar=False)
    history = summary["history"]
    assert all(h["consistency"] > 0 for h in history)
    assert [h["consistency_weight"] for h in history] == sorted(h["consistency_weight"] for h in history)
    assert history[-1]["consistency_weight"] == 2.0
    for h in history:  # the loss is the supervised term plus the weighted consistency term
        assert h["loss"] == pytest.approx(h["supervised"] + h["consistency_weight"] * h["consistency"], abs=2e-5)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "loaded 1 unlabelled cases" in log and "consistency" in log
    assert summary["semi_supervised"]["unlabeled_cases"] == ["u_1"]
    assert summary["validation"][-1]["model"] == "teacher" and "mean_dice" in summary["validation"][-1]["student"]
    # the package ships the teacher (the selected step is the last one, so its weights are the final teacher's)
    package = load_model_package(summary["package"])
    assert package.card.training["semi_supervised"]["shipped_weights"] == "teacher"
    assert package.card.training["split"]["train"] == ["pt_236"]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    shipped = package.network.state_dict()
    assert all(torch.equal(shipped[k], state["teacher"][k]) for k in shipped)
    assert not all(torch.equal(shipped[k], state["network"][k]) for k in shipped)


def test_resumed_mean_teacher_run_equals_an_uninterrupted_one(data: dict[str, Path], tmp_path: Path) -> None:
    straight = train(_config(data, tmp_path / "a"), write_package=False, progress_bar=False)
    token = CancelToken()

    def stop_after_3(step: int, loss: float) -> None:
        if step == 3:
            token.cancel()

    cfg_b = _config(data, tmp_path / "b")
    with pytest.raises(CancelledError):
        train(cfg_b, write_package=False, progress_bar=False, cancel=token, on_step=stop_after_3)
    resumed = train(cfg_b, resume=True, write_package=False, progress_bar=False)

    def without_time(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "s"} for h in history]

    assert without_time(resumed["history"]) == without_time(straight["history"])
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for part in ("network", "teacher"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_resuming_a_supervised_checkpoint_with_unlabelled_data_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(data, tmp_path / "run", unlabeled_data=[], iterations=2, checkpoint_every=2)
    train(cfg, write_package=False, progress_bar=False)
    with pytest.raises(SegDeepError, match="no mean-teacher weights"):
        train(_config(data, tmp_path / "run", iterations=4), resume=True, write_package=False, progress_bar=False)


def test_unlabelled_data_that_is_a_validation_ct_is_refused(data: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(data, tmp_path / "run", validation_data=[str(data["unlabelled"])])
    with pytest.raises(SegDeepError, match="validation CTs .*u_1"):
        train(cfg, write_package=False, progress_bar=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegDeepLogic.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "missing"),
        (lambda root: (root / "empty").mkdir() or root / "empty", "--unlabeled .*no case with a CT found"),
        (lambda root: (root / "list.txt").write_text("x") and root / "list.txt", "--unlabeled .*must be .csv or .json"),
    ],
    ids=["missing-folder", "folder-without-ct", "not-a-case-list"],
)
def test_train_cli_rejects_bad_unlabeled_input_in_one_line(data: dict[str, Path], tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    bad = make(tmp_path)
    result = _cli(
        "train", "--train", str(data["labelled"]), "--unlabeled", str(bad), "-o", str(tmp_path / "m"),
        "--work-dir", str(tmp_path / "w"), "--spacing", "7.8", "7.8", "5.0", "--channels", "4", "8",
        "--patch", "16", "16", "16", "--iterations", "1", "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segdeep train: error:")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "m").exists()


def test_train_cli_rejects_an_ema_decay_of_one(data: dict[str, Path], tmp_path: Path) -> None:
    result = _cli(
        "train", "--train", str(data["labelled"]), "--unlabeled", str(data["unlabelled"]), "-o", str(tmp_path / "m"),
        "--work-dir", str(tmp_path / "w"), "--ema-decay", "1",
    )  # fmt: skip
    assert result.returncode == 2 and "--ema-decay" in result.stderr


def test_readme_semi_supervised_command_parses_with_the_real_cli() -> None:
    from SegDeepLogic.cli import build_parser

    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if x.startswith("segdeep train") and "--unlabeled" in x)
    args = build_parser().parse_args(line.split()[1:])
    assert args.unlabeled == ["CT_ONLY"] and args.ema_decay == 0.99 and args.consistency_weight == 1.0
    assert (ROOT / "docs" / "semi_supervised.md").exists()


def test_the_experiment_numbers_in_the_docs_are_the_committed_results():
    """docs/semi_supervised.md quotes the JSON files the two experiment scripts wrote."""
    import json
    import re

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = (docs / "semi_supervised.md").read_text()
    semi = json.loads((docs / "semi_supervised.json").read_text())["arms"]
    for label, value in (
        ("| 20 labelled only |", semi["supervised"]["final"]),
        ("| 20 labelled + 150 unlabelled, teacher", semi["mean_teacher"]["final"]),
    ):
        row = next(line for line in text.splitlines() if line.startswith(label))
        numbers = [float(x) for x in re.findall(r"\d\.\d{3}", row)]
        cases = [value["per_case"][c]["mandible"] for c in ("pt_201", "pt_202", "pt_207", "pt_209")]
        assert numbers == [round(x, 3) for x in [*cases, value["mean_dice"]]], row
    student = next(line for line in text.splitlines() if line.startswith("| 20 labelled + 150 unlabelled, student"))
    assert f"{semi['mean_teacher']['final']['student']['mean_dice']:.3f}" in student
    arms = json.loads((docs / "active_learning.json").read_text())["arms"]
    for uncertain, random in zip(arms["uncertainty"], arms["random"]):  # noqa: B905 - Python 3.9
        n = uncertain["n_labelled"]
        row = next(line for line in text.splitlines() if re.match(rf"\| {n}( \(shared start\))? \|", line))
        expected = [round(uncertain["validation"]["mean_dice"], 3), round(random["validation"]["mean_dice"], 3)]
        assert [float(x) for x in re.findall(r"\d\.\d{3}", row)] == expected, row
