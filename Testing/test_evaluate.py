"""Evaluation: per-case CSV, summary JSON and plot; threshold chosen on training cases only."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from SegDeepLogic.cli import main
from SegDeepLogic.evaluate import (
    BASELINE_METHODS,
    CSV_COLUMNS,
    choose_threshold,
    evaluate_model,
    record_in_card,
    summarise,
    write_evaluation,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"  # labels "bone" and "soft_tissue"


def test_threshold_is_chosen_on_the_given_training_cases(bone_data: Path) -> None:
    t = choose_threshold(bone_data, "bone", candidates_hu=(150, 300, 450))
    assert t["threshold_hu"] in (150, 300, 450)
    assert t["n_cases"] == 1 and set(t["curve"]) == {"150", "300", "450"}
    assert t["mean_dice"] == max(t["curve"].values()) > 0.5


def test_evaluation_writes_per_case_csv_summary_and_plot(bone_data: Path, tmp_path: Path) -> None:
    result = evaluate_model(TEST_MODEL, bone_data, threshold={"threshold_hu": 300.0}, bone_structure="bone")
    paths = write_evaluation(result, tmp_path / "out")
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    methods = [r["method"] for r in rows]
    assert methods == ["model", "model+refine", *BASELINE_METHODS]
    assert {r["case"] for r in rows} == {"pt_236"} and {r["structure"] for r in rows} == {"bone"}
    summary = json.loads(paths["summary"].read_text())
    stats = summary["structures"]["bone"]["threshold-roi"]["dice"]
    assert set(stats) >= {"n", "median", "q1", "q3", "iqr", "mean"}
    assert summary["threshold"]["threshold_hu"] == 300.0
    # the ROI cannot hurt the threshold: it only removes voxels far from the reference bone
    dice = {r["method"]: float(r["dice"]) for r in rows}
    assert dice["threshold-roi"] >= dice["threshold"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recording_the_evaluation_in_the_card_keeps_the_weights(bone_data: Path, tmp_path: Path) -> None:
    from SegDeepLogic.model_package import load_model_package

    model = tmp_path / "model"
    shutil.copytree(TEST_MODEL, model)
    result = evaluate_model(model, bone_data, threshold=300.0, bone_structure="bone", refine=False)
    record_in_card(model, result)
    card = load_model_package(model).card
    assert card.validation_metrics["evaluation_data"]["structures"]["bone"]["model"]["dice"]["n"] == 1
    assert card.extra["baseline_threshold"]["threshold_hu"] == 300.0
    before = load_model_package(TEST_MODEL).network.state_dict()
    after = load_model_package(model).network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_evaluate_command_line_writes_results(bone_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "evaluate",
            str(TEST_MODEL),
            str(bone_data),
            "-o",
            str(out),
            "--bone",
            "bone",
            "--threshold-hu",
            "300",
            "--no-refine",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["dice_boxplot.png", "per_case.csv", "summary.json"]
    assert main(["evaluate", str(TEST_MODEL), str(bone_data), "-o", str(out), "--no-progress"]) == 1  # refuses to overwrite


def test_summary_keeps_infinite_distances_visible() -> None:
    rows = [
        {"structure": "s", "method": "model", "dice": 0.0, "hd95_mm": float("inf"), "assd_mm": float("inf")},
        {"structure": "s", "method": "model", "dice": 0.8, "hd95_mm": 3.0, "assd_mm": 1.0},
        {"structure": "s", "method": "model", "dice": 0.9, "hd95_mm": 2.0, "assd_mm": 0.5},
    ]
    hd = summarise(rows)["structures"]["s"]["model"]["hd95_mm"]
    assert hd["median"] == 3.0 and hd["n_infinite"] == 1 and hd["mean"] == pytest.approx(2.5)
    assert np.isclose(summarise(rows)["structures"]["s"]["model"]["dice"]["mean"], 1.7 / 3, atol=1e-4)
