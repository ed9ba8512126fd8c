"""Training pipeline: partial-label loss, laterality-safe mirroring, resume, a tiny run on the sample."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from SegDeepLogic.errors import CancelledError
from SegDeepLogic.progress import CancelToken
from SegDeepLogic.training.augment import (
    augment_intensity,
    class_locations,
    extract_patch,
    flip_left_right,
    lateral_pairs,
    sample_center,
)
from SegDeepLogic.training.data import PreparedCase, find_cases, load_cases
from SegDeepLogic.training.losses import marginal_cross_entropy, marginal_dice_ce_loss, marginal_dice_loss
from SegDeepLogic.training.train import TrainConfig, make_batch, train

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236"
STRUCTURES = ["mandible", "brainstem", "spinal_cord", "parotid_left", "parotid_right", "esophagus", "larynx"]


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """A data folder with the sample case and a partial-label copy (no oesophagus, larynx, mandible)."""
    root = tmp_path / "data"
    shutil.copytree(SAMPLE, root / "pt_236")
    shutil.copytree(SAMPLE, root / "pt_999")
    for name in ("esophagus", "larynx", "mandible"):
        (root / "pt_999" / f"{name}.nii.gz").unlink()
    return root


def _tiny_config(data: Path, work: Path, **kw) -> TrainConfig:
    settings = dict(
        train_data=[str(data)],
        work_dir=str(work),
        output=str(work / "model"),
        spacing_ijk_mm=(7.8, 7.8, 5.0),
        architecture_params={"channels": [4, 8]},
        patch_size_kji=(16, 16, 16),
        batch_size=2,
        iterations=6,
        checkpoint_every=3,
        log_every=2,
        threads=1,
        warmup=2,
    )
    settings.update(kw)
    return TrainConfig(**settings)


# --- data ------------------------------------------------------------------------------------
def test_missing_structure_file_means_unknown_not_background(sample_dir: Path) -> None:
    cases = find_cases(sample_dir, STRUCTURES)
    prepared = load_cases(cases, STRUCTURES, (7.8, 7.8, 5.0), "LPI")
    full, partial = prepared
    assert full.available.all()
    assert partial.available.tolist() == [True, False, True, True, True, True, False, False]
    # the missing structures are 0 in the label map, but flagged unknown rather than background
    assert not np.isin(partial.labels, [1, 6, 7]).any()


def test_case_list_csv_reads_the_same_cases(sample_dir: Path, tmp_path: Path) -> None:
    rows = ["case,ct,mandible,parotid_left", "a,data/pt_236/ct.nii.gz,data/pt_236/mandible.nii.gz,", ""]
    (tmp_path / "list.csv").write_text("\n".join(rows))
    (case,) = find_cases(tmp_path / "list.csv", ["mandible", "parotid_left"])
    assert case.case_id == "a" and set(case.masks) == {"mandible"}


# --- loss ------------------------------------------------------------------------------------
def _logits_predicting(label: np.ndarray, n_classes: int, strength: float = 8.0) -> torch.Tensor:
    onehot = np.eye(n_classes, dtype=np.float32)[label]  # (..., C)
    return torch.from_numpy(np.moveaxis(onehot, -1, 0)[None] * strength)


def test_predicting_an_unlabelled_structure_is_not_penalised_but_a_labelled_one_is() -> None:
    target = np.zeros((4, 4, 4), np.int64)
    target[:2] = 1  # class 1 contoured in the top half
    prediction = target.copy()
    prediction[2:, :2] = 2  # the network also "sees" class 2 where the label map says 0
    logits = _logits_predicting(prediction, 3)
    correct = _logits_predicting(target, 3)
    y = torch.from_numpy(target)[None]
    unknown = torch.tensor([[True, True, False]])  # class 2 not contoured in this case
    known = torch.tensor([[True, True, True]])  # class 2 contoured (and absent) in this case
    assert float(marginal_dice_ce_loss(logits, y, unknown)) == pytest.approx(
        float(marginal_dice_ce_loss(correct, y, unknown)), abs=1e-3
    )
    assert float(marginal_cross_entropy(logits, y, known)) > float(marginal_cross_entropy(correct, y, known)) + 1.0
    assert float(marginal_dice_ce_loss(logits, y, known)) > float(marginal_dice_ce_loss(correct, y, known)) + 1.0


def test_missing_labelled_structure_is_penalised_when_contoured() -> None:
    target = np.zeros((4, 4, 4), np.int64)
    target[:2] = 1
    background_everywhere = _logits_predicting(np.zeros_like(target), 2)
    y = torch.from_numpy(target)[None]
    assert float(marginal_dice_loss(background_everywhere, y, torch.tensor([[True, True]]))) > 0.99
    assert float(marginal_dice_ce_loss(background_everywhere, y, torch.tensor([[True, True]]))) > 4.0


def test_loss_gradient_is_zero_for_unknown_class_logits_where_labels_are_zero() -> None:
    logits = torch.zeros(1, 3, 2, 2, 2, requires_grad=True)
    y = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    marginal_cross_entropy(logits, y, torch.tensor([[True, True, False]])).backward()
    # merged background+unknown: pushing class 2 up or down costs the same as moving background
    assert torch.allclose(logits.grad[:, 0], logits.grad[:, 2])


# --- augmentation ---------------------------------------------------------------------------
def test_left_right_flip_swaps_parotid_labels_and_their_availability() -> None:
    structures = ["mandible", "parotid_left", "parotid_right"]
    pairs = lateral_pairs(structures)
    assert pairs == [(2, 3)]
    labels = np.zeros((2, 3, 6), np.uint8)
    labels[:, :, 4:] = 2  # left parotid at high i (LPI: i runs towards the patient's left)
    labels[:, :, :2] = 3
    labels[0, 0, 3] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    available = np.array([True, True, True, False])
    img, lab, av = flip_left_right(image, labels, available, pairs, axis=2)
    assert np.array_equal(img, image[:, :, ::-1])
    assert (lab[:, :, 4:] == 2).all() and (lab[:, :, :2] == 3).all()  # still left at high i
    assert lab[0, 0, 2] == 1  # non-lateral labels only move
    assert av.tolist() == [True, True, False, True]


def test_training_batches_never_mirror_without_swapping() -> None:
    structures = ["mandible", "parotid_left", "parotid_right"]
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[4:12, 4:12, 10:14] = 2  # left at high i
    labels[4:12, 4:12, 2:6] = 3
    image = np.where(labels > 0, 40, -1000).astype(np.int16)
    # parotid_right flagged "not contoured" so that a flip shows in the swapped availability
    case = PreparedCase("synthetic", image, labels, np.array([True, True, True, False]))
    labels_cfg = [{"name": s, "color": [1, 0, 0]} for s in structures]
    cfg = TrainConfig(train_data=[], labels=labels_cfg, patch_size_kji=(16, 16, 16), batch_size=8, p_flip=0.5, p_spatial=0.0)
    rng = np.random.default_rng(0)
    loc = [[np.zeros((0, 3), np.int32)] * 4]
    flipped_seen = False
    for _ in range(4):
        _, y, avail = make_batch([case], loc, cfg, rng)
        for b in range(y.shape[0]):
            left_i = np.nonzero(y[b].numpy() == 2)[2]
            right_i = np.nonzero(y[b].numpy() == 3)[2]
            if left_i.size and right_i.size:
                assert left_i.min() > right_i.max()  # left always at higher i, flipped or not
            flipped_seen |= bool(avail[b, 2] != case.available[2])
    assert flipped_seen  # flips did happen (with the availability swapped too)


def test_rotated_patch_keeps_labels_nearest_and_image_in_range() -> None:
    image = np.full((20, 20, 20), -1000, np.int16)
    labels = np.zeros((20, 20, 20), np.uint8)
    image[5:15, 5:15, 5:15] = 500
    labels[5:15, 5:15, 5:15] = 3
    rot = np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])
    img, lab = extract_patch(image, labels, np.array([10.0, 10, 10]), (8, 8, 8), (1.0, 1.0, 1.0), rot)
    assert set(np.unique(lab)) <= {0, 3} and lab[4, 4, 4] == 3
    assert img.min() >= -1024 and img.max() <= 500


# --- training loop ---------------------------------------------------------------------------
def test_resumed_training_continues_exactly_like_an_uninterrupted_run(sample_dir: Path, tmp_path: Path) -> None:
    straight = train(_tiny_config(sample_dir, tmp_path / "a"), write_package=False, progress_bar=False)

    token = CancelToken()

    def stop_after_3(step: int, loss: float) -> None:
        if step == 3:
            token.cancel()

    cfg_b = _tiny_config(sample_dir, tmp_path / "b")
    with pytest.raises(CancelledError):
        train(cfg_b, write_package=False, progress_bar=False, cancel=token, on_step=stop_after_3)
    resumed = train(cfg_b, resume=True, write_package=False, progress_bar=False)

    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["network"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["network"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_at_step_then_resume_replays_an_uninterrupted_run(sample_dir: Path, tmp_path: Path) -> None:
    straight = train(_tiny_config(sample_dir, tmp_path / "a"), write_package=False, progress_bar=False)
    cfg = _tiny_config(sample_dir, tmp_path / "b")
    first = train(dataclasses.replace(cfg, stop_at_step=2), write_package=False, progress_bar=False)
    assert first["steps"] == 2 and first["stopped_early"]
    resumed = train(cfg, resume=True, write_package=False, progress_bar=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]


def test_tiny_training_run_on_the_sample_lowers_the_loss_and_writes_a_package(sample_dir: Path, tmp_path: Path) -> None:
    from SegDeepLogic.model_package import load_model_package

    cfg = _tiny_config(
        sample_dir,
        tmp_path / "run",
        iterations=40,
        learning_rate=1e-2,
        patch_size_kji=(16, 24, 24),
        validation_data=[str(sample_dir)],
        val_every=40,
        val_cases=1,
        checkpoint_every=40,
    )
    summary = train(cfg, progress_bar=False)
    losses = [h["loss"] for h in summary["history"]]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    package = load_model_package(summary["package"])
    assert [label["name"] for label in package.card.labels] == STRUCTURES
    assert package.card.training["split"]["train"] == ["pt_236", "pt_999"]
    assert package.card.training["selected_step"] == 40
    reference = package.card.reference_statistics["training"]  # for the out-of-distribution check
    assert reference["n_cases"] == 2 and reference["volumes_ml"][STRUCTURES[0]]["n"] >= 1
    assert "mean_dice" in summary["validation"][-1]
    assert (tmp_path / "run" / "train.log").read_text().count("step 40") >= 1


def test_weighted_marginal_cross_entropy_equals_torch_weighted_cross_entropy_when_all_is_contoured() -> None:
    from SegDeepLogic.training.losses import marginal_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, 5, generator=gen)
    target = torch.randint(0, 4, (2, 3, 5, 5), generator=gen)
    weight = torch.tensor([1.0, 2.0, 0.5, 6.0])
    ours = marginal_cross_entropy(logits, target, torch.ones(2, 4, dtype=torch.bool), weight)
    assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits, target, weight=weight), atol=1e-6)


def test_median_frequency_weights_lift_rare_structures_only() -> None:
    from SegDeepLogic.training.losses import median_frequency_weights

    # background, three common structures and one seen six times less often
    weights = median_frequency_weights([1e6, 4000, 4000, 4000, 650])
    assert weights[:4] == [1.0, 1.0, 1.0, 1.0]
    assert weights[4] == pytest.approx(4000 / 650)  # the median count over its own
    assert median_frequency_weights([1e6, 4000, 1], max_weight=10.0)[2] == 10.0


def test_foreground_oversampling_centres_patches_on_available_structures_only() -> None:
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:8, 5:8, 5:8] = 1  # 27 of 64000 voxels: uniform sampling would almost never hit it
    labels[30:33, 30:33, 30:33] = 2
    rng = np.random.default_rng(0)
    locations = class_locations(labels, 3, rng)
    only_first = np.array([False, True, False])  # structure 2 not contoured in this case: unknown
    centres = [sample_center(labels.shape, locations, only_first, rng, foreground_fraction=0.5) for _ in range(400)]
    hits = [labels[tuple(np.round(c).astype(int))] for c in centres]
    assert 0.4 < np.mean([h == 1 for h in hits]) < 0.6  # the foreground half, all on structure 1
    assert not any(h == 2 for h in hits)
    uniform = [sample_center(labels.shape, locations, only_first, rng, foreground_fraction=0.0) for _ in range(200)]
    assert np.mean([labels[tuple(np.round(c).astype(int))] == 1 for c in uniform]) < 0.05


def test_intensity_augmentation_scales_blurs_and_adds_noise_within_bounds() -> None:
    x = np.zeros((16, 16, 16), np.float32)
    x[8:, :, :] = 1.0  # a sharp edge
    rng = np.random.default_rng(1)
    scaled = augment_intensity(x, rng, p_scale=1.0, p_noise=0.0, p_blur=0.0)
    gain = scaled[15, 0, 0] - scaled[0, 0, 0]
    assert 0.9 <= gain <= 1.1 and abs(scaled[0, 0, 0]) <= 0.1 and len(np.unique(scaled)) == 2
    blurred = augment_intensity(x, rng, p_scale=0.0, p_noise=0.0, p_blur=1.0)
    assert 0.0 < blurred[7, 8, 8] < blurred[8, 8, 8] < 1.0  # the edge is softened (lower resolution)
    assert blurred.mean() == pytest.approx(x.mean(), abs=1e-4)
    noisy = augment_intensity(x, rng, p_scale=0.0, p_noise=1.0, p_blur=0.0)
    assert noisy.dtype == np.float32 and 0.0 <= (noisy - x).std() <= 0.1
    same = augment_intensity(x, rng, p_scale=0.0, p_noise=0.0, p_blur=0.0)
    assert np.array_equal(same, x)
