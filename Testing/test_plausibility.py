"""Out-of-distribution check: image features, reference statistics, verdicts, and the pipeline."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from SegDeepLogic.cli import main
from SegDeepLogic.errors import MismatchError
from SegDeepLogic.evaluate import evaluate_model, record_in_card, training_reference
from SegDeepLogic.io import read_volume, write_volume
from SegDeepLogic.model_package import load_model_package
from SegDeepLogic.plausibility import check_plausibility, image_features, reference_statistics
from SegDeepLogic.segment import segment_file, segment_volume
from SegDeepLogic.training.data import PreparedCase
from SegDeepLogic.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
BUNDLED = ROOT / "Resources" / "Models" / "headneck-ct"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"  # labels "bone" and "soft_tissue"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def phantom() -> np.ndarray:
    """20 slices of a 20 x 20 voxel body: soft tissue, a 4 x 4 bone rod, a 2 x 2 airway, fat rim."""
    hu = np.full((20, 40, 40), -1000, np.int16)
    hu[:, 10:30, 10:30] = -100  # fat
    hu[:, 11:29, 11:29] = 40  # soft tissue
    hu[:, 18:22, 18:22] = 700  # bone
    hu[:, 12:14, 12:14] = -1000  # air inside the body (an airway)
    hu[:, 36:39, 5:35] = 200  # a table, separate from the body
    return hu


# --------------------------------------------------------------------------------------------
# Image features
# --------------------------------------------------------------------------------------------
def test_image_features_measure_area_and_tissue_fractions_of_the_body_exactly() -> None:
    f = image_features(phantom(), (2.5, 4.0, 4.0))
    assert f is not None
    assert f["body_area_cm2"] == 400 * 0.16  # 20 x 20 voxels of 4 x 4 mm, the airway filled in
    assert f["bone_fraction"] == 16 / 400
    assert f["air_fraction"] == 4 / 400
    assert f["fat_fraction"] == (400 - 324) / 400
    assert f["soft_tissue_fraction"] == (324 - 16 - 4) / 400


def test_image_features_ignore_the_table_and_follow_the_axial_axis() -> None:
    hu = phantom()
    without_table = hu.copy()
    without_table[:, 36:39] = -1000
    assert image_features(hu, (2.5, 4.0, 4.0)) == image_features(without_table, (2.5, 4.0, 4.0))
    # the same CT stored with the inferior-superior axis last gives the same numbers
    moved = np.moveaxis(hu, 0, 2)
    assert image_features(moved, (4.0, 4.0, 2.5), axial_axis=2) == image_features(hu, (2.5, 4.0, 4.0))


def test_image_without_a_body_has_no_features() -> None:
    assert image_features(np.full((4, 4, 4), -1000, np.int16), (1.0, 1.0, 1.0)) is None


# --------------------------------------------------------------------------------------------
# Reference statistics and verdicts
# --------------------------------------------------------------------------------------------
def cases() -> list[PreparedCase]:
    out = []
    for n in range(10):
        labels = np.zeros((20, 40, 40), np.uint8)
        labels[5:10, 15 : 15 + n + 1, 15:20] = 1  # "cord": 25 * (n + 1) voxels
        labels[12:14, 15:20, 15:20] = 2  # "gland": 50 voxels, contoured in half of the cases
        available = np.array([True, True, n % 2 == 0])
        if not available[2]:
            labels[labels == 2] = 0
        out.append(PreparedCase(f"c{n}", phantom(), labels, available))
    return out


def test_reference_counts_volumes_only_where_a_structure_is_contoured() -> None:
    ref = reference_statistics(cases(), ["cord", "gland"], (2.5, 4.0, 4.0), source="synthetic")
    voxel_ml = 2.5 * 4 * 4 / 1000
    assert ref["n_cases"] == 10 and ref["source"] == "synthetic"
    assert ref["volumes_ml"]["cord"]["n"] == 10
    assert ref["volumes_ml"]["cord"]["min"] == pytest.approx(25 * voxel_ml)
    assert ref["volumes_ml"]["cord"]["max"] == pytest.approx(250 * voxel_ml)
    assert ref["volumes_ml"]["gland"]["n"] == 5
    assert ref["contoured_fraction"] == {"cord": 1.0, "gland": 0.5}
    assert ref["core_structures"] == ["cord"]
    assert ref["image"]["bone_fraction"]["median"] == 16 / 400
    json.dumps(ref)  # goes into the model card


@pytest.fixture
def reference() -> dict:
    return reference_statistics(cases(), ["cord", "gland"], (2.5, 4.0, 4.0))


def test_a_case_like_the_training_cases_is_ok(reference: dict) -> None:
    check = check_plausibility(image_features(phantom(), (2.5, 4.0, 4.0)), {"cord": 1.0, "gland": 0.0}, reference)
    assert check["verdict"] == "ok" and check["findings"] == []


def test_no_core_structure_of_plausible_size_is_a_mismatch(reference: dict) -> None:
    features = image_features(phantom(), (2.5, 4.0, 4.0))
    tiny = reference["volumes_ml"]["cord"]["min"] * 0.4  # below half the smallest training contour
    check = check_plausibility(features, {"cord": tiny, "gland": 2.0}, reference)
    assert check["verdict"] == "mismatch"
    assert [f["check"] for f in check["findings"]] == ["volume", "anatomy"]
    assert "cord" in check["findings"][-1]["message"]
    assert check_plausibility(features, {"cord": 0.0, "gland": 0.0}, reference)["verdict"] == "mismatch"


def test_a_core_structure_the_network_is_unsure_of_does_not_count_as_anatomy(reference: dict) -> None:
    features = image_features(phantom(), (2.5, 4.0, 4.0))
    entropy_ref = {"cord": {"n": 30, "min": 0.03, "max": 0.06}}
    sure = check_plausibility(
        features, {"cord": 1.0}, reference, mean_entropy_inside={"cord": 0.08}, entropy_reference=entropy_ref
    )
    assert sure["verdict"] == "caution"  # above the validation maximum, within 1.5 times it
    unsure = check_plausibility(
        features, {"cord": 1.0}, reference, mean_entropy_inside={"cord": 0.2}, entropy_reference=entropy_ref
    )
    assert unsure["verdict"] == "mismatch"
    assert [f["check"] for f in unsure["findings"]] == ["anatomy", "uncertainty"]


def test_unusual_image_or_volume_or_entropy_is_a_caution_naming_the_cause(reference: dict) -> None:
    hu = phantom()
    hu[:, 11:29, 11:29] = 700  # far more bone than any training CT
    hu[:, 12:14, 12:14] = -1000  # the airway kept
    check = check_plausibility(image_features(hu, (2.5, 4.0, 4.0)), {"cord": 1.0}, reference)
    assert check["verdict"] == "caution"
    assert [f.get("feature") for f in check["findings"]] == ["bone_fraction", "soft_tissue_fraction"]
    assert "above every training CT" in check["findings"][0]["message"]

    big = check_plausibility(None, {"cord": 20.0}, reference)  # the largest training cord is 10 mL
    assert "larger than any training contour" in big["findings"][-1]["message"]

    entropy_ref = {"cord": {"n": 3, "min": 0.05, "max": 0.12}}
    features = image_features(phantom(), (2.5, 4.0, 4.0))
    calm = check_plausibility(
        features, {"cord": 1.0}, reference, mean_entropy_inside={"cord": 0.1}, entropy_reference=entropy_ref
    )
    assert calm["verdict"] == "ok"
    unsure = check_plausibility(
        features, {"cord": 1.0}, reference, mean_entropy_inside={"cord": 0.15}, entropy_reference=entropy_ref
    )
    assert unsure["verdict"] == "caution" and unsure["findings"][0]["check"] == "uncertainty"


def test_three_image_features_outside_the_training_range_are_a_mismatch_mr_like_or_raw_values(reference: dict) -> None:
    hu = phantom()
    mr_like = np.interp(hu, [-1024, -200, -100, 40, 300, 3000], [0, 900, 800, 420, 120, 60]).astype(np.int16)
    raw = hu.astype(np.int32) + 1024  # stored values without the rescale intercept
    for image in (mr_like, raw):
        check = check_plausibility(image_features(image, (2.5, 4.0, 4.0)), {"cord": 1.0}, reference)
        assert check["verdict"] == "mismatch"
        last = check["findings"][-1]
        assert last["check"] == "image" and last["severity"] == "mismatch" and len(last["features"]) >= 3
        assert "Hounsfield units" in last["message"]


def test_without_reference_statistics_the_check_says_it_did_not_run() -> None:
    check = check_plausibility(None, {"cord": 1.0}, None)
    assert check["verdict"] == "unchecked"
    assert "no reference statistics" in check["findings"][0]["message"]


# --------------------------------------------------------------------------------------------
# The bundled model: the sample CT passes, a CT without anatomy is flagged
# --------------------------------------------------------------------------------------------
def test_bundled_model_card_holds_training_reference_statistics() -> None:
    ref = load_model_package(BUNDLED).card.reference_statistics
    assert ref["training"]["n_cases"] == 170
    assert set(ref["training"]["core_structures"]) >= {"brainstem", "spinal_cord"}


def test_bundled_model_passes_the_sample_head_and_neck_ct() -> None:
    result = segment_volume(read_volume(SAMPLE / "ct.nii.gz"), BUNDLED, overlap=0.25)
    assert result.plausibility["verdict"] in ("ok", "caution")
    assert not [f for f in result.plausibility["findings"] if f["severity"] == "mismatch"]
    assert result.summary()["plausibility"] == result.plausibility
    # the entropy behind the check is interpolated only near structures unless the map is asked for:
    # the same labels and the same verdict either way
    full = segment_volume(read_volume(SAMPLE / "ct.nii.gz"), BUNDLED, overlap=0.25, uncertainty=True)
    assert np.array_equal(full.labels.array, result.labels.array)
    assert full.plausibility == result.plausibility


def water_cylinder() -> Volume:
    """A 30 cm water cylinder with a 2 cm bone rod: a CT with no head-and-neck anatomy at all."""
    k, j, i = np.mgrid[0:60, 0:80, 0:80]
    r2 = ((j - 40) * 4.0) ** 2 + ((i - 40) * 4.0) ** 2
    hu = np.where(r2 <= 150.0**2, 0, -1000).astype(np.int16)
    hu[r2 <= 10.0**2] = 1000
    return Volume(hu, (4.0, 4.0, 3.0), (-160.0, -160.0, 0.0))


def test_mismatch_withholds_every_label_and_says_what_was_withheld() -> None:
    ct = water_cylinder()
    kept = segment_volume(ct, BUNDLED, overlap=0.25, allow_mismatch=True)
    assert kept.plausibility["verdict"] == "mismatch" and not kept.withheld
    predicted = {s["name"]: s["volume_mm3"] / 1000 for s in kept.summary()["segments"] if s["volume_mm3"] > 0}
    assert predicted, "the network paints something on the cylinder: the case this rule exists for"

    withheld = segment_volume(ct, BUNDLED, overlap=0.25, return_probabilities=True)  # default: no mismatch allowed
    assert withheld.plausibility == kept.plausibility
    assert not withheld.labels.array.any() and withheld.labels.same_grid(ct)
    assert withheld.probabilities is None
    assert {w["name"]: w["volume_ml"] for w in withheld.withheld} == pytest.approx(predicted, abs=1e-3)
    summary = withheld.summary()
    assert summary["withheld"] == withheld.withheld and summary["parameters"]["allow_mismatch"] is False
    assert all(s["volume_mm3"] == 0 for s in summary["segments"])
    assert withheld.uncertainty is not None  # the reason stays inspectable


def test_segment_file_writes_nothing_on_a_mismatch_unless_allowed(tmp_path: Path) -> None:
    ct_path = tmp_path / "cylinder.nrrd"
    write_volume(water_cylinder(), ct_path)
    out = tmp_path / "c.nii.gz"
    with pytest.raises(MismatchError, match="nothing written.*Withheld: ") as info:
        segment_file(ct_path, out, BUNDLED, overlap=0.25)
    assert info.value.result.plausibility["verdict"] == "mismatch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cylinder.nrrd"]
    result, written = segment_file(ct_path, out, BUNDLED, overlap=0.25, allow_mismatch=True)
    assert out in written and read_volume(out).array.any() and not result.withheld


def test_bundled_model_flags_a_ct_without_head_and_neck_anatomy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ct_path = tmp_path / "cylinder.nrrd"
    write_volume(water_cylinder(), ct_path)
    out = tmp_path / "c.seg.nrrd"
    args = ["segment", str(ct_path), "-o", str(out), "--overlap", "0.25", "--no-progress"]
    assert main(args) == 1  # the command line writes nothing for a mismatch by default
    err = capsys.readouterr().err
    assert "nothing written" in err and "--allow-mismatch" in err
    assert "does not look like the anatomy the model was trained on" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cylinder.nrrd"]

    assert main([*args, "--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: this CT does not look like the model's training data" in err
    assert out.exists()


# --------------------------------------------------------------------------------------------
# Recording the reference in a card (training data) and the entropy (validation data)
# --------------------------------------------------------------------------------------------
def test_evaluation_records_training_reference_and_validation_entropy_in_the_card(bone_data: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(TEST_MODEL, model)
    assert load_model_package(model).card.reference_statistics == {}
    result = evaluate_model(model, bone_data, refine=False)
    assert result.summary["plausibility"]["verdicts"] == {"unchecked": 1}
    entropy = result.summary["plausibility"]["entropy_inside"]["bone"]
    assert entropy["n"] == 1 and 0.0 <= entropy["max"] <= 1.0
    ref = training_reference(model, bone_data)
    assert ref["volumes_ml"]["bone"]["n"] == 1 and ref["core_structures"] == ["bone"]
    record_in_card(model, result, reference=ref)
    card = load_model_package(model).card
    assert card.reference_statistics["training"] == ref
    assert card.reference_statistics["validation_entropy"]["bone"] == entropy
    # now the check runs: the image matches its own reference, but the test model's "bone" is every
    # bone in the crop (a 300 HU threshold), four times the mandible it is compared with
    again = evaluate_model(model, bone_data, refine=False)
    assert again.summary["plausibility"]["verdicts"] == {"caution": 1}
    (finding,) = again.summary["plausibility"]["cases"]["pt_236"]["findings"]
    assert finding.startswith("bone is") and "larger than any training contour" in finding
    before = load_model_package(TEST_MODEL).network.state_dict()
    after = load_model_package(model).network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reference_from_without_record_in_card_is_refused(bone_data: Path, tmp_path: Path, capsys) -> None:
    args = ["evaluate", str(TEST_MODEL), str(bone_data), "-o", str(tmp_path / "o"), "--reference-from", str(bone_data)]
    assert main([*args, "--no-progress"]) == 1
    assert "--reference-from only makes sense with --record-in-card" in capsys.readouterr().err


def test_card_reference_statistics_round_trip_and_old_cards_still_load(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(TEST_MODEL, model)
    card = json.loads((model / "model.json").read_text())
    assert "reference_statistics" not in card  # a card written before the field existed
    package = load_model_package(model)
    assert package.card.reference_statistics == {}
    replaced = dataclasses.replace(package.card, reference_statistics={"training": {"n_cases": 1}})
    assert replaced.to_dict()["reference_statistics"] == {"training": {"n_cases": 1}}
