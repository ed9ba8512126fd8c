"""Model packages: cards are validated key by key, weights load without running code, are
verified against the card's hash and architecture, and packages are written atomically."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from SegDeepLogic import SegDeepError
from SegDeepLogic.errors import ModelPackageError
from SegDeepLogic.model_card import CARD_FILE, ModelCard, file_sha256, load_model_card
from SegDeepLogic.model_package import ModelPackage, load_model_package, save_model_package
from SegDeepLogic.networks import UNet3D
from SegDeepLogic.resources import MODELS_ENV, bundled_model_dir, list_bundled_models

REPO = Path(__file__).resolve().parents[1]
TEST_MODEL = REPO / "Testing" / "Data" / "test_model"
SAMPLE_CT = REPO / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"

PARAMS = {"in_channels": 1, "out_channels": 3, "channels": [2, 4], "norm": "instance"}
CARD_KEYS = [
    "format_version",
    "name",
    "version",
    "description",
    "architecture",
    "architecture_params",
    "in_channels",
    "labels",
    "spacing_ijk_mm",
    "orientation",
    "intensity",
    "patch_size_kji",
    "training",
    "validation_metrics",
    "license",
    "weights_file",
    "weights_sha256",
    "limitations",
    "reference_statistics",
    "extra",
]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def card_dict(**changes) -> dict:
    data = {
        "format_version": 1,
        "name": "tiny",
        "version": "0.1",
        "description": "a tiny network for tests",
        "architecture": "unet3d",
        "architecture_params": dict(PARAMS),
        "in_channels": 1,
        "labels": [
            {"name": "bone", "value": 1, "color": [0.95, 0.84, 0.57], "terminology": "SCT^272673000^Bone"},
            {"name": "soft_tissue", "value": 2, "color": [0.7, 0.5, 0.4]},
        ],
        "spacing_ijk_mm": [2.0, 2.0, 3.0],
        "orientation": "LPS",
        "intensity": {"clip_hu": [-1000, 1500], "subtract": 250.0, "divide": 1250.0},
        "patch_size_kji": [8, 8, 8],
        "training": {"data": "random", "citation": "", "split": "none", "settings": {}, "code_version": "test"},
        "validation_metrics": {},
        "license": "CC0-1.0",
        "weights_file": "weights.safetensors",
        "weights_sha256": "",
    }
    data.update(changes)
    return data


def make_network(seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(**PARAMS).eval()


@pytest.fixture
def network() -> UNet3D:
    return make_network()


@pytest.fixture
def card() -> ModelCard:
    return ModelCard.from_dict(card_dict())


@pytest.fixture
def package_dir(tmp_path, network, card) -> Path:
    return save_model_package(network, card, tmp_path / "tiny")


def outputs(net: torch.nn.Module) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 1, 8, 8, 8)).astype(np.float32))
    with torch.no_grad():
        return net(x)


def edit_card(folder: Path, **changes) -> None:
    data = json.loads((folder / CARD_FILE).read_text())
    data.update(changes)
    (folder / CARD_FILE).write_text(json.dumps(data))


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary entries a save may have left next to its destination."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- round trip -------------------------------------------------------------------------------
def test_save_then_load_gives_a_network_with_identical_outputs(package_dir, network, card):
    package = load_model_package(package_dir)
    assert isinstance(package, ModelPackage)
    assert torch.equal(outputs(package.network), outputs(network))
    assert package.path == package_dir
    assert package.card == ModelCard.from_dict({**card.to_dict(), "weights_sha256": package.weights_sha256})


def test_loaded_network_is_ready_for_inference_in_eval_mode_float32_on_cpu(package_dir):
    network = load_model_package(package_dir).network
    assert not network.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in network.parameters())


def test_saved_card_records_the_sha256_of_the_weights_file(package_dir):
    saved = json.loads((package_dir / CARD_FILE).read_text())
    assert saved["weights_file"] == "weights.safetensors"
    assert saved["weights_sha256"] == file_sha256(package_dir / "weights.safetensors")
    assert load_model_package(package_dir).weights_sha256 == saved["weights_sha256"]


def test_saved_package_gets_the_usual_file_permissions_not_owner_only(package_dir, tmp_path):
    probe = tmp_path / "probe"
    probe.touch()
    expected = probe.stat().st_mode & 0o777
    assert {p.stat().st_mode & 0o777 for p in package_dir.iterdir()} == {expected}


def test_half_precision_network_is_saved_as_float32(tmp_path, card):
    package = load_model_package(save_model_package(make_network().half(), card, tmp_path / "half"))
    assert all(p.dtype == torch.float32 for p in package.network.parameters())


def test_load_accepts_the_path_of_model_json(package_dir):
    assert load_model_package(package_dir / CARD_FILE).path == package_dir


def test_load_model_card_reads_the_card_without_needing_the_weights(package_dir):
    (package_dir / "weights.safetensors").unlink()
    assert load_model_card(package_dir).label_names == ["bone", "soft_tissue"]


def test_package_helpers_expose_labels_and_geometry(package_dir):
    package = load_model_package(package_dir)
    assert package.label_names == ["bone", "soft_tissue"]
    assert package.label_values == [1, 2]
    assert package.label_colors == [(0.95, 0.84, 0.57), (0.7, 0.5, 0.4)]
    assert package.num_classes == 3
    assert package.channel_values == [0, 1, 2]
    assert package.spacing_ijk_mm == (2.0, 2.0, 3.0)
    assert package.patch_size_kji == (8, 8, 8)
    assert package.orientation == "LPS"
    assert package.labels[1]["terminology"] is None
    assert "tiny" in repr(package) and "Conv3d" not in repr(package)


# --- the card ---------------------------------------------------------------------------------
def test_card_json_keys_are_the_field_names_and_survive_a_round_trip(card):
    data = card.to_dict()
    assert list(data) == CARD_KEYS
    assert ModelCard.from_dict(json.loads(json.dumps(data))) == card
    assert "terminology" not in data["labels"][1]  # absent stays absent


def test_optional_card_keys_default_to_empty():
    data = card_dict()
    card = ModelCard.from_dict(data)
    assert (card.limitations, card.extra) == ("", {})


def test_card_normalises_values_to_plain_python_types():
    card = ModelCard.from_dict(card_dict(orientation="lpi", spacing_ijk_mm=[1, 1, 2], weights_sha256="AB" * 32))
    assert card.orientation == "LPI"
    assert card.spacing_ijk_mm == (1.0, 1.0, 2.0)
    assert card.patch_size_kji == (8, 8, 8)
    assert card.weights_sha256 == "ab" * 32


def test_output_channels_follow_the_label_list_and_values_need_not_be_contiguous():
    labels = [{"name": "mandible", "value": 5, "color": [1, 0, 0]}, {"name": "larynx", "value": 2, "color": [0, 1, 0]}]
    card = ModelCard.from_dict(card_dict(labels=labels))
    assert card.num_classes == 3
    assert card.channel_values == [0, 5, 2]


def test_normalize_intensity_clips_then_shifts_and_scales_numpy_and_torch_alike(card):
    hu = np.array([-3000, -1000, 250, 1500, 4000], dtype=np.int16)
    expected = [-1.0, -1.0, 0.0, 1.0, 1.0]
    assert card.normalize_intensity(hu).tolist() == expected
    result = card.normalize_intensity(torch.from_numpy(hu))
    assert result.dtype == torch.float32 and result.tolist() == expected


def _label(n, **changes):
    labels = card_dict()["labels"]
    labels[n] = {**labels[n], **changes}
    return labels


CARD_ERRORS = [
    ({"name": None}, "'name' must be a string, got null"),
    ({"name": "  "}, "'name' must not be empty"),
    ({"version": 1}, "'version' must be a string"),
    ({"format_version": 2}, r"'format_version' is 2; this SegDeep reads format 1 \(the package needs a newer SegDeep\)"),
    ({"format_version": "1"}, "'format_version' must be an integer"),
    ({"in_channels": 3}, "'in_channels' must be 1"),
    ({"labels": []}, "'labels' must be a non-empty list"),
    ({"labels": _label(0, value=0)}, r"'labels\[0\].value' must be >= 1 \(0 is the background"),
    ({"labels": _label(1, value=1)}, r"'labels\[1\].value' 1 is already used by labels\[0\]"),
    ({"labels": _label(1, name="bone")}, r"'labels\[1\].name' 'bone' is already used by labels\[0\]"),
    ({"labels": _label(0, value=1.5)}, r"'labels\[0\].value' must be an integer"),
    ({"labels": _label(0, color=[1.2, 0, 0])}, r"'labels\[0\].color' must be 3 numbers \(r, g, b\) between 0 and 1"),
    ({"labels": _label(0, color=[255, 128, 0])}, r"'labels\[0\].color' must be 3 numbers \(r, g, b\) between 0 and 1"),
    ({"labels": _label(0, color=[1, 0])}, r"'labels\[0\].color' must be a list of 3 numbers"),
    ({"labels": _label(0, colour=[1, 0, 0])}, r"'labels\[0\]' has unknown key\(s\) \['colour'\]"),
    ({"labels": _label(0, terminology=5)}, r"'labels\[0\].terminology' must be a string"),
    ({"labels": [{"name": "bone", "value": 1}]}, r"'labels\[0\]' is missing color"),
    ({"spacing_ijk_mm": [1, 0, 1]}, "'spacing_ijk_mm' must be positive in every axis"),
    ({"spacing_ijk_mm": [1, -2, 1]}, "'spacing_ijk_mm' must be positive in every axis"),
    ({"spacing_ijk_mm": [1, 1]}, "'spacing_ijk_mm' must be a list of 3 numbers"),
    ({"spacing_ijk_mm": [1, True, 1]}, r"'spacing_ijk_mm\[1\]' must be a finite number"),
    ({"orientation": "LLS"}, "'orientation' must be a 3-letter axis code"),
    ({"orientation": "XYZ"}, "'orientation' must be a 3-letter axis code"),
    ({"intensity": {"clip_hu": [500, -500], "subtract": 0, "divide": 1}}, "'intensity.clip_hu' must be \\[lower, upper\\]"),
    ({"intensity": {"clip_hu": [-500, 500], "subtract": 0, "divide": 0}}, "'intensity.divide' must be positive"),
    ({"intensity": {"clip_hu": [-500, 500], "divide": 1}}, r"'intensity' must have exactly the keys .*missing \['subtract'\]"),
    ({"intensity": {"clip_hu": [-500, 500], "subtract": "x", "divide": 1}}, "'intensity.subtract' must be a finite number"),
    ({"patch_size_kji": [8, 8, 7]}, r"'patch_size_kji' \[8, 8, 7\] is not divisible by \[2, 2, 2\]"),
    ({"patch_size_kji": [8, 8, 8.0]}, "'patch_size_kji' must be 3 positive integers"),
    ({"patch_size_kji": [8, 8]}, "'patch_size_kji' must be 3 positive integers"),
    ({"architecture": "vnet"}, "'architecture' is 'vnet', an unknown architecture; known architectures: unet3d"),
    ({"architecture_params": {**PARAMS, "channels": "many"}}, "'architecture_params' is invalid: .*channels must be"),
    ({"architecture_params": {**PARAMS, "out_channels": 2}}, r"out_channels=2 but the 2 label\(s\) need 3 output channels"),
    ({"architecture_params": {**PARAMS, "in_channels": 2}}, "in_channels=2 differs from in_channels=1"),
    ({"architecture_params": [1, 2]}, "'architecture_params' must be a JSON object"),
    ({"training": "lots of data"}, "'training' must be a JSON object"),
    ({"validation_metrics": None}, "'validation_metrics' must be a JSON object"),
    ({"license": ""}, "'license' must not be empty"),
    ({"weights_file": "../weights.safetensors"}, "'weights_file' must be a plain file name"),
    ({"weights_file": "sub/weights.safetensors"}, "'weights_file' must be a plain file name"),
    ({"weights_file": "weights.bin"}, "'weights_file' must end with one of .safetensors, .pt, .pth"),
    ({"weights_sha256": "abc"}, "'weights_sha256' must be 64 hexadecimal digits"),
    ({"extra": []}, "'extra' must be a JSON object"),
]


@pytest.mark.parametrize(
    ("changes", "message"), CARD_ERRORS, ids=[f"{n}-{next(iter(c))}" for n, (c, _) in enumerate(CARD_ERRORS)]
)
def test_invalid_card_values_are_rejected_naming_the_key(changes, message):
    with pytest.raises(ModelPackageError, match=message):
        ModelCard.from_dict(card_dict(**changes))


def test_missing_card_keys_are_all_named():
    data = card_dict()
    del data["license"], data["patch_size_kji"]
    with pytest.raises(ModelPackageError, match=r"missing key\(s\) 'patch_size_kji', 'license'"):
        ModelCard.from_dict(data)


def test_unknown_card_keys_are_rejected_pointing_to_extra():
    with pytest.raises(ModelPackageError, match=r"unknown key\(s\) \['spacing'\]; put additional information under 'extra'"):
        ModelCard.from_dict(card_dict(spacing=[1, 1, 1]))


def test_a_card_that_is_not_an_object_is_rejected():
    with pytest.raises(ModelPackageError, match="must be a JSON object, got a list"):
        ModelCard.from_dict([1, 2])


def test_constructing_a_card_directly_validates_it_too():
    with pytest.raises(ModelPackageError, match="'orientation'"):
        ModelCard(**{**card_dict(), "orientation": "up"})


def test_card_errors_are_segdeep_errors_the_cli_reports_cleanly():
    assert issubclass(ModelPackageError, SegDeepError)


# --- loading errors ---------------------------------------------------------------------------
def test_missing_package_folder_is_reported(tmp_path):
    with pytest.raises(ModelPackageError, match="model package not found"):
        load_model_package(tmp_path / "nowhere")


def test_folder_without_card_is_reported(tmp_path):
    with pytest.raises(ModelPackageError, match=r"no model.json in .*a model package is a folder holding model.json"):
        load_model_package(tmp_path)


def test_invalid_json_is_reported_with_line_and_column(package_dir):
    (package_dir / CARD_FILE).write_text('{\n  "name": "tiny",\n  oops\n}')
    with pytest.raises(ModelPackageError, match=r"model.json: invalid JSON at line 3, column 3"):
        load_model_package(package_dir)


def test_card_errors_name_the_card_file(package_dir):
    edit_card(package_dir, spacing_ijk_mm=[1, 1, 0])
    with pytest.raises(ModelPackageError, match=rf"{package_dir / CARD_FILE}: 'spacing_ijk_mm' must be positive"):
        load_model_package(package_dir)


def test_missing_weights_file_is_reported(package_dir):
    (package_dir / "weights.safetensors").rename(package_dir / "other.safetensors")
    with pytest.raises(
        ModelPackageError, match=r"weights file 'weights.safetensors' .* is missing; the folder has \['model.json', 'other"
    ):
        load_model_package(package_dir)


def test_sha256_mismatch_names_expected_and_actual_hashes(package_dir):
    expected = json.loads((package_dir / CARD_FILE).read_text())["weights_sha256"]
    save_file(make_network(seed=1).state_dict(), str(package_dir / "weights.safetensors"))
    actual = file_sha256(package_dir / "weights.safetensors")
    with pytest.raises(ModelPackageError, match=f"SHA-256 mismatch .*expects {expected}, the file has {actual}"):
        load_model_package(package_dir)
    # Explicitly unverified loading takes the new weights.
    package = load_model_package(package_dir, verify_hash=False)
    assert torch.equal(outputs(package.network), outputs(make_network(seed=1)))


def test_card_without_a_hash_loads_only_unverified(package_dir, network):
    edit_card(package_dir, weights_sha256="")
    with pytest.raises(ModelPackageError, match="the card has no weights_sha256"):
        load_model_package(package_dir)
    assert torch.equal(outputs(load_model_package(package_dir, verify_hash=False).network), outputs(network))


def test_unknown_architecture_in_a_package_lists_the_known_ones(package_dir):
    edit_card(package_dir, architecture="segresnet")
    with pytest.raises(ModelPackageError, match="unknown architecture; known architectures: unet3d"):
        load_model_package(package_dir)


def test_weights_with_other_shapes_than_the_card_are_listed(package_dir):
    edit_card(package_dir, architecture_params={**PARAMS, "channels": [2, 6]})
    with pytest.raises(
        ModelPackageError, match=r"do not match architecture 'unet3d'.*with another shape \(file vs card\): encoder"
    ):
        load_model_package(package_dir, verify_hash=False)


def test_weights_for_a_shallower_network_report_missing_keys(package_dir):
    edit_card(package_dir, architecture_params={**PARAMS, "channels": [2, 4, 8]})
    with pytest.raises(ModelPackageError, match=r"\d+ missing: encoder.2.conv1.weight"):
        load_model_package(package_dir, verify_hash=False)


def test_weights_with_extra_tensors_report_unexpected_keys(package_dir, network):
    state = {**network.state_dict(), "aux_head.weight": torch.zeros(3)}
    save_file(state, str(package_dir / "weights.safetensors"))
    with pytest.raises(ModelPackageError, match=r"1 unexpected: aux_head.weight"):
        load_model_package(package_dir, verify_hash=False)


def test_weights_with_nan_values_are_rejected(package_dir, network):
    state = {k: v.clone() for k, v in network.state_dict().items()}
    state["head.weight"][0] = float("nan")
    save_file(state, str(package_dir / "weights.safetensors"))
    with pytest.raises(ModelPackageError, match="NaN or infinite values in head.weight"):
        load_model_package(package_dir, verify_hash=False)


def test_corrupt_safetensors_file_is_reported(package_dir):
    (package_dir / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelPackageError, match="cannot read the weights .* as safetensors"):
        load_model_package(package_dir, verify_hash=False)


# --- PyTorch state dicts and pickles ------------------------------------------------------------
def _use_pt_weights(folder: Path, payload, name: str = "weights.pt", *, raw_pickle: bool = False) -> None:
    (folder / "weights.safetensors").unlink()
    path = folder / name
    if raw_pickle:
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    edit_card(folder, weights_file=name, weights_sha256=file_sha256(path))


@pytest.mark.parametrize("wrap", [False, True], ids=["state-dict", "checkpoint-with-state_dict"])
def test_pytorch_state_dict_files_load_with_identical_outputs(package_dir, network, wrap):
    state = network.state_dict()
    _use_pt_weights(package_dir, {"state_dict": state, "epoch": 3} if wrap else state, "weights.pth")
    assert torch.equal(outputs(load_model_package(package_dir).network), outputs(network))


class _RunsCode:
    """Unpickling this calls os.system: exactly what a malicious checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("raw_pickle", [False, True], ids=["torch.save-archive", "raw-pickle"])
def test_pickled_code_is_refused_and_never_executed(package_dir, network, tmp_path, raw_pickle):
    marker = tmp_path / "code-was-executed"
    payload = {**network.state_dict(), "payload": _RunsCode(f"touch {shlex.quote(str(marker))}")}
    _use_pt_weights(package_dir, payload, raw_pickle=raw_pickle)

    with pytest.raises(ModelPackageError, match=r"refused to load the weights .*would have to run code") as error:
        load_model_package(package_dir)
    assert "weights_only" not in str(error.value)  # no advice to switch the protection off
    assert not marker.exists()

    # The payload is real: an unprotected unpickler runs it.
    if raw_pickle:
        pickle.loads((package_dir / "weights.pt").read_bytes())
        assert marker.exists()


def test_a_pickle_that_is_not_a_state_dict_is_rejected(package_dir):
    _use_pt_weights(package_dir, [torch.zeros(2)])
    with pytest.raises(ModelPackageError, match="not a state dict"):
        load_model_package(package_dir)


# --- zip archives -----------------------------------------------------------------------------
def test_zip_archive_loads_with_identical_outputs(tmp_path, network, card):
    archive = save_model_package(network, card, tmp_path / "tiny", archive=True)
    assert archive == tmp_path / "tiny.zip" and archive.is_file()
    package = load_model_package(archive)
    assert package.path == archive
    assert torch.equal(outputs(package.network), outputs(network))
    assert load_model_card(archive).name == "tiny"


def test_zip_of_a_package_folder_loads(package_dir, network, tmp_path):
    archive = tmp_path / "zipped-folder.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in package_dir.iterdir():
            zf.write(f, f"tiny/{f.name}")
    assert torch.equal(outputs(load_model_package(archive).network), outputs(network))


def _zip_with(path: Path, package_dir: Path, extra: zipfile.ZipInfo | str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in package_dir.iterdir():
            zf.write(f, f.name)
        zf.writestr(extra, "pwned")
    return path


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16) | 0
    return info


@pytest.mark.parametrize(
    "entry",
    ["../escaped.txt", "sub/../../escaped.txt", "/tmp/escaped.txt", "C:/escaped.txt", "sub\\..\\escaped.txt", _symlink_entry()],
    ids=["dotdot", "nested-dotdot", "absolute", "drive-letter", "backslashes", "symlink"],
)
def test_zip_entries_that_could_escape_are_rejected(package_dir, tmp_path, entry):
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip_with(work / "evil.zip", package_dir, entry)
    with pytest.raises(ModelPackageError, match="unsafe entry .* in the model archive"):
        load_model_package(archive)
    assert not (tmp_path / "escaped.txt").exists() and not (work / "escaped.txt").exists()


def test_zip_without_a_card_or_with_two_is_rejected(package_dir, tmp_path):
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no card")
    with pytest.raises(ModelPackageError, match="exactly one model.json .* found none"):
        load_model_package(empty)
    two = _zip_with(tmp_path / "two.zip", package_dir, "other/model.json")
    with pytest.raises(ModelPackageError, match="exactly one model.json"):
        load_model_package(two)


def test_a_file_named_zip_that_is_not_an_archive_is_reported(tmp_path):
    fake = tmp_path / "model.zip"
    fake.write_text("hello")
    with pytest.raises(ModelPackageError, match="cannot open model archive"):
        load_model_package(fake)


def test_a_file_that_is_neither_folder_nor_zip_is_reported(tmp_path):
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"")
    with pytest.raises(ModelPackageError, match="is not a model package"):
        load_model_package(other)


# --- atomic saving ----------------------------------------------------------------------------
def test_save_refuses_to_overwrite_an_existing_package(package_dir, card):
    before = (package_dir / CARD_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_model_package(make_network(seed=5), card, package_dir)
    assert (package_dir / CARD_FILE).read_bytes() == before
    assert leftovers(package_dir.parent) == []


def test_save_with_overwrite_replaces_the_package_and_cleans_up(package_dir, card):
    new = make_network(seed=5)
    assert save_model_package(new, card, package_dir, overwrite=True) == package_dir
    assert torch.equal(outputs(load_model_package(package_dir).network), outputs(new))
    assert leftovers(package_dir.parent) == []


def test_overwrite_never_replaces_a_folder_that_is_not_a_package(tmp_path, network, card):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    with pytest.raises(ModelPackageError, match="refusing to replace .* not a model package folder"):
        save_model_package(network, card, folder, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "precious"


def test_a_failed_save_leaves_no_partial_package(tmp_path, network, card, monkeypatch):
    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_model_package(network, card, tmp_path / "tiny")
    with pytest.raises(OSError, match="No space left"):
        save_model_package(network, card, tmp_path / "tiny", archive=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_previous_package(package_dir, network, card, monkeypatch):
    before = {p.name: p.read_bytes() for p in package_dir.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError):
        save_model_package(make_network(seed=5), card, package_dir, overwrite=True)
    assert {p.name: p.read_bytes() for p in package_dir.iterdir()} == before
    assert leftovers(package_dir.parent) == []


def test_saving_weights_that_do_not_fit_the_card_writes_nothing(tmp_path, card):
    other = UNet3D(1, 3, channels=(2, 4, 8))
    with pytest.raises(ModelPackageError, match="do not match architecture"):
        save_model_package(other, card, tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


# --- bundled models and the shipped test model ------------------------------------------------
def test_bundled_model_dir_is_resources_models_of_the_repository(monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert bundled_model_dir() == REPO / "Resources" / "Models"


def test_models_dir_environment_variable_points_the_lookup_elsewhere(tmp_path, monkeypatch, package_dir, network, card):
    models = tmp_path / "Models"
    models.mkdir()
    package_dir.rename(models / "b_folder")
    save_model_package(network, card, models / "a_archive", archive=True)
    (models / "notes").mkdir()
    monkeypatch.setenv(MODELS_ENV, str(models))
    assert bundled_model_dir() == models
    assert list_bundled_models() == [models / "a_archive.zip", models / "b_folder"]
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "missing"))  # a wrong setting is not replaced by the bundled models
    assert bundled_model_dir() == tmp_path / "missing" and list_bundled_models() == []


def test_shipped_test_model_is_a_small_documented_test_package():
    card = load_model_card(TEST_MODEL)
    assert card.label_names == ["bone", "soft_tissue"]
    assert card.spacing_ijk_mm == (4.0, 4.0, 4.0) and card.patch_size_kji == (32, 32, 32)
    assert card.intensity["clip_hu"] == [-1024.0, 2000.0]
    assert "TEST MODEL" in card.description and "make_test_model.py" in card.training["command"]
    assert sum(p.stat().st_size for p in TEST_MODEL.iterdir()) < 500_000


def test_shipped_test_model_segments_the_sample_ct_plausibly():
    from SegDeepLogic import read_volume
    from SegDeepLogic.resample import resample_to_spacing

    package = load_model_package(TEST_MODEL)
    ct = resample_to_spacing(read_volume(SAMPLE_CT), package.spacing_ijk_mm, default_value=-1024)  # already LPI
    assert package.orientation == "LPI"
    hu = ct.array[32:64, 40:72, 44:76]  # a 32^3 block of the head: bone, soft tissue and air
    with torch.no_grad():
        logits = package.network(package.normalize_intensity(torch.from_numpy(hu))[None, None])[0]
    labels = np.asarray(package.channel_values)[logits.argmax(0).numpy()]
    for value, reference in ((1, hu >= 300), (2, (hu >= -200) & (hu < 300))):
        predicted = labels == value
        dice = 2 * (predicted & reference).sum() / (predicted.sum() + reference.sum())
        assert dice > 0.6, (value, dice)
