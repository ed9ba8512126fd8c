"""One threshold comparison: the Slicer panel, the report, ``segdeep compare --threshold`` and the
evaluation's ``threshold-roi`` baseline give the same numbers for the same CT and mask.

The CT is the sample case cropped around the mandible (``bone_data`` in conftest.py), the mask its
clinical mandible contour, the threshold 300 HU and up; every front end uses its default region
(the structure grown by :data:`SegDeepLogic.compare.DEFAULT_ROI_MARGIN_MM`). The panel runs on a
real MRML scene (slicer-core), the CLI through ``main`` with real files, the evaluation with the
test model package.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from SegDeepLogic.cli import main
from SegDeepLogic.compare import DEFAULT_ROI_MARGIN_MM, compare_with_threshold
from SegDeepLogic.evaluate import evaluate_model
from SegDeepLogic.io import read_volume
from SegDeepLogic.metrics import compare_masks
from SegDeepLogic.report import build_report
from SegDeepLogic.threshold import grow_mask, threshold_segment

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"  # labels "bone" and "soft_tissue"
LOWER_HU = 300.0


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import SimpleITK as sitk

    sample = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
    folder = tmp_path_factory.mktemp("data") / "pt_236"
    folder.mkdir()
    for src, dst in (("ct.nii.gz", "ct.nii.gz"), ("mandible.nii.gz", "bone.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(sample / src))[40:88, 26:68, 26:64], str(folder / dst))
    ct = read_volume(folder / "ct.nii.gz")
    bone = read_volume(folder / "bone.nii.gz")
    bone = bone.with_array(bone.array > 0)
    # what the comparison must give, written out by hand from the threshold, the region and compare_masks
    region = grow_mask(bone, DEFAULT_ROI_MARGIN_MM).array
    threshold = ct.with_array(threshold_segment(ct, lower_hu=LOWER_HU).mask.array & region)
    return {"folder": folder, "ct": ct, "bone": bone, "expected": compare_masks(bone, threshold)}


def test_engine_function_is_the_threshold_inside_the_grown_structure(case: dict) -> None:
    result = compare_with_threshold(case["ct"], case["bone"], lower_hu=LOWER_HU)
    expected = case["expected"]
    assert result.comparison == expected
    assert result.roi_margin_mm == DEFAULT_ROI_MARGIN_MM == 10.0
    assert 0.3 < expected.dice < 1.0, "a real, imperfect agreement (the test could fail)"
    whole = compare_with_threshold(case["ct"], case["bone"], lower_hu=LOWER_HU, roi_margin_mm=None)
    assert whole.comparison.volume_b_ml > expected.volume_b_ml, "the region removes the other bone of the crop"


def test_cli_report_evaluation_and_panel_give_the_same_numbers(case: dict, tmp_path: Path) -> None:
    expected = case["expected"]
    folder = case["folder"]

    # CLI
    out = tmp_path / "cli.json"
    rc = main(
        [
            "compare",
            str(folder / "bone.nii.gz"),
            "--threshold",
            f"{LOWER_HU:g}:",
            "--ct",
            str(folder / "ct.nii.gz"),
            "-o",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    cli = json.loads(out.read_text())
    assert cli["roi_margin_mm"] == DEFAULT_ROI_MARGIN_MM and cli["lower_hu"] == LOWER_HU
    assert (cli["dice"], cli["hd95_mm"], cli["assd_mm"], cli["volume_b_ml"]) == (
        expected.dice,
        pytest.approx(expected.hd95_mm, rel=1e-6),
        pytest.approx(expected.assd_mm, rel=1e-6),
        pytest.approx(expected.volume_b_ml, rel=1e-12),
    )

    # report (the segmentation read from the same label file)
    facts = build_report(folder / "ct.nii.gz", segmentation=folder / "bone.nii.gz", threshold=f"{LOWER_HU:g}:")
    row = next(s for s in facts.data["structures"] if s["name"] == "bone")["threshold_comparison"]
    assert row["applies"] and facts.data["threshold"]["margin_mm"] == DEFAULT_ROI_MARGIN_MM
    assert row["dice"] == expected.dice
    assert row["hd95_mm"] == pytest.approx(expected.hd95_mm, rel=1e-6)
    assert row["assd_mm"] == pytest.approx(expected.assd_mm, rel=1e-6)
    assert row["volume_b_ml"] == pytest.approx(expected.volume_b_ml, rel=1e-12)

    # evaluation: the threshold-roi baseline compares the reference with the threshold in its region
    result = evaluate_model(TEST_MODEL, folder.parent, threshold=LOWER_HU, bone_structure="bone", refine=False)
    roi_row = next(r for r in result.rows if r["method"] == "threshold-roi")
    assert roi_row["dice"] == round(expected.dice, 5)
    assert roi_row["hd95_mm"] == round(expected.hd95_mm, 4) and roi_row["assd_mm"] == pytest.approx(expected.assd_mm, abs=1e-4)
    assert roi_row["volume_pred_ml"] == round(expected.volume_b_ml, 3) and roi_row["volume_ref_ml"] == round(
        expected.volume_a_ml, 3
    )

    # the Slicer panel's logic on a real MRML scene
    pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")
    import slicer_scene

    slicer_scene.add_module_path()
    from SegDeepLib import mrml, selftest
    from SegDeepLib.logic import SegDeepLogicBase

    headless = slicer_scene.create_scene()
    ct_node = slicer_scene.load_volume(headless.scene, folder / "ct.nii.gz", "CT")
    bone_node = slicer_scene.load_volume(headless.scene, folder / "bone.nii.gz", "bone label")
    mask = np.asarray(mrml.volume_from_node(bone_node).array) > 0
    assert mask.sum() == case["bone"].array.sum()
    seg = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user")
    mrml.add_mask_segment(seg, mask, "bone", (1.0, 0.9, 0.8), ct_node)
    logic = SegDeepLogicBase()
    table = logic.compareWithThreshold(seg, ct_node, segmentName="bone", lowerHU=LOWER_HU, disagreement=False)
    panel = selftest.table_values(table)
    assert panel["roi_margin_mm"] == DEFAULT_ROI_MARGIN_MM and panel["lower_hu"] == LOWER_HU and math.isnan(panel["upper_hu"])
    assert panel["dice"] == pytest.approx(expected.dice, rel=1e-12)
    assert panel["hd95_mm"] == pytest.approx(expected.hd95_mm, rel=1e-6)
    assert panel["assd_mm"] == pytest.approx(expected.assd_mm, rel=1e-6)
    assert panel["volume_b_ml"] == pytest.approx(expected.volume_b_ml, rel=1e-9)


def test_every_front_end_defaults_to_the_same_region_margin() -> None:
    """The panel's spin box and parameter node, the logic, the CLI, the report and the evaluation."""
    import ast
    import inspect
    import re
    import xml.etree.ElementTree as ET

    from SegDeepLogic.cli import build_parser
    from SegDeepLogic.report import ReportOptions

    ui = ET.parse(ROOT / "Resources" / "UI" / "SegDeep.ui").getroot()
    spin = next(w for w in ui.iter("widget") if w.get("name") == "roiMarginSpinBox")
    values = {p.get("name"): p for p in spin.findall("property")}
    assert float(values["value"].findtext("double")) == DEFAULT_ROI_MARGIN_MM
    assert values["SlicerParameterName"].findtext("string") == "roiMarginMm"
    module = (ROOT / "SegDeepExtension" / "SegDeep.py").read_text(encoding="utf-8")
    assert float(re.search(r"\n    roiMarginMm: [^=]+= ([0-9.]+)", module).group(1)) == DEFAULT_ROI_MARGIN_MM
    assert "roiMarginMm=None if p.compareWholeCT else p.roiMarginMm" in module, "the panel passes its margin to the logic"
    # the "Whole CT" switch: bound to the parameter node, off by default, disables the margin
    box = next(w for w in ui.iter("widget") if w.get("name") == "compareWholeCTCheckBox")
    assert {p.get("name"): p for p in box.findall("property")}["SlicerParameterName"].findtext("string") == "compareWholeCT"
    assert re.search(r"\n    compareWholeCT: bool = False", module)
    assert "self.ui.roiMarginSpinBox.enabled = not p.compareWholeCT" in module
    logic = ast.parse((ROOT / "SegDeepExtension" / "SegDeepLib" / "logic.py").read_text(encoding="utf-8"))
    method = next(n for n in ast.walk(logic) if isinstance(n, ast.FunctionDef) and n.name == "compareWithThreshold")
    defaults = dict(zip([a.arg for a in method.args.args][-len(method.args.defaults) :], method.args.defaults))  # noqa: B905
    assert ast.literal_eval(defaults["roiMarginMm"]) == DEFAULT_ROI_MARGIN_MM

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]

    def default(command: str, dest: str) -> object:
        return next(a.default for a in commands[command]._actions if a.dest == dest)

    assert default("report", "threshold_margin_mm") == DEFAULT_ROI_MARGIN_MM
    assert default("evaluate", "roi_mm") == DEFAULT_ROI_MARGIN_MM
    assert default("compare", "roi_margin_mm") is None  # resolved to DEFAULT_ROI_MARGIN_MM with --threshold
    assert ReportOptions().threshold_margin_mm == DEFAULT_ROI_MARGIN_MM
    assert inspect.signature(evaluate_model).parameters["roi_mm"].default == DEFAULT_ROI_MARGIN_MM
    assert inspect.signature(compare_with_threshold).parameters["roi_margin_mm"].default == DEFAULT_ROI_MARGIN_MM
