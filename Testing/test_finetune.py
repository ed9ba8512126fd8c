"""Training on a chosen device and fine-tuning from a model package (``--device``, ``--init-from``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from SegDeepLogic.errors import SegDeepError
from SegDeepLogic.model_package import load_model_package
from SegDeepLogic.training.train import TrainConfig, _build, initialise_from_package, package_settings, train

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"


def _fresh_network(structures: list[str], seed: int = 0) -> torch.nn.Module:
    cfg = TrainConfig(train_data=[], labels=[{"name": s} for s in structures], **package_settings(TEST_MODEL))
    torch.manual_seed(seed)
    return _build(cfg)


def test_init_from_keeps_known_output_channels_and_leaves_new_ones_freshly_initialised() -> None:
    source = load_model_package(TEST_MODEL).network.state_dict()  # channels: background, bone, soft_tissue
    network = _fresh_network(["kidney", "bone"])
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    inherited = initialise_from_package(network, TEST_MODEL, ["kidney", "bone"])
    state = network.state_dict()
    assert inherited["inherited"] == ["bone"] and inherited["new"] == ["kidney"]
    assert inherited["weights_sha256"] == json.loads((TEST_MODEL / "model.json").read_text())["weights_sha256"]
    for key in source:
        if key.startswith("head."):
            continue
        assert torch.equal(state[key], source[key]), key
    for key in ("head.weight", "head.bias"):
        assert torch.equal(state[key][0], source[key][0])  # background
        assert torch.equal(state[key][2], source[key][1])  # bone: package channel 1 -> new channel 2
        assert torch.equal(state[key][1], fresh[key][1])  # kidney: new, as initialised
        assert not torch.equal(state[key][1], source[key][1])


def test_init_from_a_package_with_another_architecture_names_the_first_differing_weight() -> None:
    cfg = TrainConfig(train_data=[], labels=[{"name": "bone"}], architecture_params={"channels": [4, 8]})
    with pytest.raises(SegDeepError, match=r"differs from the one to train at 'encoder\.0\.conv1\.weight'"):
        initialise_from_package(_build(cfg), TEST_MODEL, ["bone"])


def test_auto_precision_on_the_cpu_trains_exactly_like_fp32(bone_data: Path, tmp_path: Path) -> None:
    settings = dict(
        train_data=[str(bone_data)],
        labels=[{"name": "bone"}],
        spacing_ijk_mm=(4.0, 4.0, 4.0),
        architecture_params={"channels": [4, 8]},
        patch_size_kji=(16, 16, 16),
        iterations=3,
        warmup=1,
        threads=1,
    )
    a = train(
        TrainConfig(work_dir=str(tmp_path / "a"), precision="fp32", device="cpu", **settings),
        write_package=False,
        progress_bar=False,
    )
    b = train(
        TrainConfig(work_dir=str(tmp_path / "b"), precision="auto", device="auto", **settings),
        write_package=False,
        progress_bar=False,
    )
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert b["device"] == "cpu" and b["precision"] == "fp32"


def _segdeep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegDeepLogic.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_train_cli_fine_tunes_a_package_and_the_card_records_what_was_inherited(bone_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    run = _segdeep(
        "train", "--train", str(bone_data), "--structures", "bone", "lesion", "-o", str(out), "--work-dir", str(tmp_path / "w"),
        "--init-from", str(TEST_MODEL), "--device", "cpu", "--iterations", "2", "--batch-size", "1", "--lr", "1e-30",
        "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    card = json.loads((out / "model.json").read_text())
    source = json.loads((TEST_MODEL / "model.json").read_text())
    init = card["training"]["init_from"]
    assert init["inherited"] == ["bone"] and init["new"] == ["lesion"] and init["weights_sha256"] == source["weights_sha256"]
    assert card["training"]["device"] == "cpu"
    # the package's grid, intensity and architecture are used; the output width follows the new labels
    for key in ("spacing_ijk_mm", "orientation", "patch_size_kji", "intensity", "architecture"):
        assert card[key] == source[key], key
    assert card["architecture_params"]["channels"] == source["architecture_params"]["channels"]
    assert card["architecture_params"]["out_channels"] == 3
    # learning rate 1e-30 (an update below float32 resolution): the convolutions are still the package's
    tuned, original = load_file(out / "weights.safetensors"), load_file(TEST_MODEL / "weights.safetensors")
    assert torch.equal(tuned["encoder.0.conv1.weight"], original["encoder.0.conv1.weight"])
    assert torch.equal(tuned["head.weight"][1], original["head.weight"][1])


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device 'tpu'"), ("cuda:7", "device 'cuda:7' requested but")],
)
def test_train_cli_refuses_a_device_it_cannot_use_in_one_line(bone_data: Path, tmp_path: Path, device: str, message: str) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    run = _segdeep(
        "train", "--train", str(bone_data), "-o", str(tmp_path / "m"), "--work-dir", str(tmp_path / "w"), "--structures", "bone",
        "--device", device, "--iterations", "1",
    )  # fmt: skip
    assert run.returncode == 1
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "m").exists()


def _guard_data(bone_data: Path, tmp_path: Path) -> Path:
    """A second case set (the 'original validation set'): another crop of the sample CT."""
    import SimpleITK as sitk

    sample = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
    case = tmp_path / "guard" / "pt_9"
    case.mkdir(parents=True)
    for src, dst in (("ct.nii.gz", "ct.nii.gz"), ("mandible.nii.gz", "bone.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(sample / src))[44:84, 30:66, 30:62], str(case / dst))
    return tmp_path / "guard"


def _package_dice(package: Path, data: Path) -> dict:
    """Dice of a saved package's network on ``data`` (model grid), computed apart from training."""
    from SegDeepLogic.training.data import find_cases, load_cases
    from SegDeepLogic.training.train import validate

    names = ["bone", "soft_tissue"]  # the test model's label set; the data contour bone only
    cfg = TrainConfig(train_data=[], labels=[{"name": n} for n in names], **package_settings(package))
    cases = load_cases(find_cases([str(data)], names), names, cfg.spacing_ijk_mm, cfg.orientation)
    network = load_model_package(package).network
    network.eval()
    return validate(network, cases, cfg)


def test_fine_tuning_guard_reports_the_initial_and_the_shipped_models_dice_on_the_original_validation_set(
    bone_data: Path, tmp_path: Path
) -> None:
    guard = _guard_data(bone_data, tmp_path)
    out = tmp_path / "tuned"
    run = _segdeep(
        "train", "--train", str(bone_data), "--structures", "bone", "soft_tissue", "-o", str(out), "--work-dir",
        str(tmp_path / "w"), "--init-from", str(TEST_MODEL), "--guard-validation", str(guard), "--device", "cpu", "--iterations", "3",
        "--batch-size", "1", "--lr", "0.05", "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "forgetting guard: mean Dice" in run.stderr
    printed = json.loads(run.stdout)["forgetting_guard"]
    card = json.loads((out / "model.json").read_text())["training"]["forgetting_guard"]
    history = json.loads((tmp_path / "w" / "history.json").read_text())["forgetting_guard"]
    assert printed == card == history
    assert card["data"] == [str(guard)] and card["cases"] == 1
    before, after = _package_dice(TEST_MODEL, guard), _package_dice(out, guard)
    assert card["before"]["dice"]["bone"] == pytest.approx(before["dice"]["bone"], abs=1e-4)
    assert card["after"]["dice"]["bone"] == pytest.approx(after["dice"]["bone"], abs=1e-4)
    # lr 0.05 for 3 steps moves the weights: the guard measured two different networks
    assert card["before"]["dice"]["bone"] != card["after"]["dice"]["bone"]
    assert card["change"]["bone"] == pytest.approx(card["after"]["dice"]["bone"] - card["before"]["dice"]["bone"], abs=1e-4)


def test_fine_tuning_guards_with_the_validation_data_by_default_and_not_at_all_without_init_from(
    bone_data: Path, tmp_path: Path
) -> None:
    settings = dict(
        train_data=[str(bone_data)],
        validation_data=[str(bone_data)],
        labels=[{"name": "bone"}],
        iterations=1,
        batch_size=1,
        threads=1,
        **package_settings(TEST_MODEL),
    )
    tuned = train(TrainConfig(work_dir=str(tmp_path / "a"), init_from=str(TEST_MODEL), **settings), write_package=False)
    assert tuned["forgetting_guard"]["data"] == [str(bone_data)] and tuned["forgetting_guard"]["before"] is not None
    fresh = train(TrainConfig(work_dir=str(tmp_path / "b"), **settings), write_package=False)
    assert fresh["forgetting_guard"] is None


def test_guard_validation_without_init_from_is_a_usage_error(bone_data: Path, tmp_path: Path) -> None:
    run = _segdeep(
        "train", "--train", str(bone_data), "-o", str(tmp_path / "m"), "--work-dir", str(tmp_path / "w"),
        "--guard-validation", str(bone_data), "--iterations", "1",
    )  # fmt: skip
    assert run.returncode == 2 and "--guard-validation needs --init-from" in run.stderr
    assert not (tmp_path / "w").exists()
