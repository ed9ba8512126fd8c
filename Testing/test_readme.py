"""The README's Python example runs as written and gives the numbers it promises."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_and_compares_inside_the_roi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    monkeypatch.chdir(ROOT)
    code = code.replace('"bone.seg.nrrd"', repr(os.fspath(tmp_path / "bone.seg.nrrd")))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "bone.seg.nrrd").exists()
    comparison = namespace["result"].comparison
    assert comparison.dice > 0.75  # bone threshold near the mandible agrees with the contour
    assert namespace["result"].roi_margin_mm == 10.0 and comparison.tolerance_mm == 2.0


def test_readme_model_table_is_the_bundled_cards_validation_and_the_ship_rule_held() -> None:
    """The README's table of the bundled model quotes the card's recorded 33-case evaluation, and the
    comparison that justified shipping it satisfies the rule written down before it was run."""
    import json

    from SegDeepLogic.model_card import load_model_card

    card = load_model_card(ROOT / "Resources" / "Models" / "headneck-ct")
    evaluation = card.validation_metrics["evaluation_validation"]
    assert evaluation["cases"] == 33
    structures = evaluation["structures"]
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### The bundled head-and-neck model") :]
    section = section[: section.index("The issue's targets")]
    assert f"version {card.version})" in section
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| ([a-z /]+) \| (.*)$", section, re.M)}
    names = {"mandible": ["mandible"], "brainstem": ["brainstem"], "spinal cord": ["spinal_cord"]}
    names |= {"parotid left / right": ["parotid_left", "parotid_right"], "larynx": ["larynx"], "oesophagus": ["esophagus"]}
    for row, keys in names.items():
        for key in keys:
            model = structures[key]["model"]
            assert f"{model['dice']['median']:.3f}" in rows[row], (row, key)
            assert f"{model['hd95_mm']['median']:.1f}" in rows[row], (row, key)
    assert f"{structures['mandible']['model+refine']['dice']['median']:.3f} with native-resolution refinement" in rows["mandible"]
    means = (
        evaluation.get("mean_dice_over_structures")
        or json.loads((ROOT / "docs" / "validation_summary.json").read_text())["mean_dice_over_structures"]
    )
    assert f"{means['of_means']:.3f} (of the means), {means['of_medians']:.3f} (of the medians)" in rows["mean over the seven"]
    # the rule of docs/finetune_1.1.0/ship_rule.md, on the committed comparison
    result = json.loads((ROOT / "docs" / "finetune_1.1.0" / "comparison.json").read_text())["finetune_vs_shipped"]
    assert result["pairs"] == 176 and result["ci95"][0] > 0 and result["largest_median_dice_drop"] <= 0.01
    lo, hi = result["ci95"]
    assert f"+{result['mean_paired_dice_difference']:.4f}, 95 % CI [+{lo:.4f}, +{hi:.4f}]" in section
    assert card.training["init_from"]["version"] == "1.0.0" and card.training["steps"] == 1800
