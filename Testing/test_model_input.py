"""Prepare-for-model: training and inference put a CT on the same grid and normalise it alike.

The bundled model was used at inference with :func:`SegDeepLogic.grid.model_grid` (centred on the
CT) and the card's intensity normalisation; :mod:`SegDeepLogic.model_input` is now the one
definition, and training data preparation (:func:`SegDeepLogic.training.data.prepare_case`) uses it
too. These tests compare what each side actually produces on the real sample CT.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from SegDeepLogic.grid import model_grid
from SegDeepLogic.io import read_volume
from SegDeepLogic.model_card import load_model_card
from SegDeepLogic.model_input import AIR_HU, IntensityNormalization, antialias_sigma_mm, prepare_ct, resample_to_model_grid
from SegDeepLogic.plausibility import image_features
from SegDeepLogic.resample import resample_to_spacing
from SegDeepLogic.training.data import CaseFiles, _body_box, prepare_case
from SegDeepLogic.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
pytestmark = pytest.mark.skipif(not (SAMPLE / "ct.nii.gz").is_file(), reason="no sample CT")


def test_inference_feeds_the_network_the_ct_that_prepare_ct_gives() -> None:
    torch = pytest.importorskip("torch")
    from SegDeepLogic.segment import _axial_axis, segment_volume

    torch.manual_seed(0)
    ct = read_volume(SAMPLE / "ct.nii.gz")
    card = load_model_card(TEST_MODEL)
    result = segment_volume(ct, str(TEST_MODEL), device="cpu")
    grid, hu = prepare_ct(ct, card.orientation, card.spacing_ijk_mm)
    ours = image_features(hu, grid.spacing[::-1], axial_axis=_axial_axis(card.orientation))
    assert ours is not None and result.plausibility["features"] == pytest.approx(ours, rel=1e-6)


def test_training_cases_are_the_inference_input_cropped_to_the_body() -> None:
    ct = read_volume(SAMPLE / "ct.nii.gz")
    spacing, orientation = (3.906, 3.906, 2.5), "LPI"  # the bundled model's grid
    case = CaseFiles("pt_236", SAMPLE / "ct.nii.gz", {"mandible": SAMPLE / "mandible.nii.gz"})
    prepared = prepare_case(case, ["mandible"], spacing, orientation)

    grid, hu = prepare_ct(ct, orientation, spacing)
    full = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    box = _body_box(full, -500.0, [math.ceil(20.0 / s) for s in spacing[::-1]])
    np.testing.assert_array_equal(prepared.image, full[box])

    mandible = read_volume(SAMPLE / "mandible.nii.gz")
    expected = resample_to_model_grid(mandible.with_array((mandible.array > 0).astype(np.float32)), grid)[box] >= 0.5
    np.testing.assert_array_equal(prepared.labels == 1, expected)
    ml = prepared.labels.astype(bool).sum() * np.prod(spacing) / 1000
    assert ml == pytest.approx((mandible.array > 0).sum() * mandible.voxel_volume_mm3 / 1000, rel=0.1)


def test_the_model_grid_is_centred_on_the_ct_unlike_the_old_training_grid() -> None:
    ct = read_volume(SAMPLE / "ct.nii.gz")
    grid = model_grid(ct, "LPI", (3.906, 3.906, 2.5))
    centre = ct.index_to_physical((np.array(ct.shape_ijk) - 1) / 2)
    np.testing.assert_allclose(grid.index_to_physical((np.array(grid.size_ijk) - 1) / 2), centre, atol=1e-6)
    old = resample_to_spacing(ct, (3.906, 3.906, 2.5))  # what training used before: anchored at the first voxel
    old_centre = old.index_to_physical((np.array(old.shape_ijk) - 1) / 2)
    assert np.abs(old_centre - centre).max() > 0.01


def test_antialias_sigma_is_half_the_spacing_increase_per_ct_axis() -> None:
    ct = Volume(np.zeros((30, 100, 100), np.int16), (0.5, 1.0, 3.0), (0.0, 0.0, 0.0), np.diag([1.0, 1.0, -1.0]))
    assert antialias_sigma_mm(ct, model_grid(ct, "LPS", (2.0, 2.0, 2.5))) == [0.75, 0.5, 0.0]
    assert antialias_sigma_mm(ct, model_grid(ct, "LPS", (2.0, 2.0, 2.5)), antialias=False) == [0.0, 0.0, 0.0]
    assert antialias_sigma_mm(ct, model_grid(ct, "LPS", (0.6, 1.0, 3.0))) == [0.0, 0.0, 0.0]  # too small to matter
    sal = model_grid(ct, "SAL", (2.0, 4.0, 2.0))  # permuted axes: sigma stays per CT axis
    assert antialias_sigma_mm(ct, sal) == [0.75, 1.5, 0.0]


def test_card_training_and_inference_normalise_alike() -> None:
    from SegDeepLogic.training.train import TrainConfig, _normalise, _normalization, package_settings

    card = load_model_card(TEST_MODEL)
    settings = package_settings(TEST_MODEL)
    cfg = dataclasses.replace(TrainConfig(train_data=[]), **{k: settings[k] for k in ("clip_hu", "subtract", "divide")})
    hu = np.random.default_rng(0).uniform(-3000, 4000, 1000).astype(np.float32)
    inference = IntensityNormalization.from_card(card)
    np.testing.assert_array_equal(card.normalize_intensity(hu), inference.apply(hu))
    np.testing.assert_array_equal(_normalise(hu, cfg), inference.apply(hu))
    lo, hi = card.intensity["clip_hu"]
    np.testing.assert_allclose(
        inference.apply(hu), (np.clip(hu, lo, hi) - card.intensity["subtract"]) / card.intensity["divide"], rtol=1e-6
    )
    assert (
        _normalization(cfg).fill_value
        == inference.fill_value
        == (max(AIR_HU, lo) - card.intensity["subtract"]) / card.intensity["divide"]
    )


def test_invalid_normalisation_is_a_clear_error() -> None:
    from SegDeepLogic.errors import SegDeepError

    with pytest.raises(SegDeepError, match="divide not 0"):
        IntensityNormalization(-1000.0, 2000.0, 0.0, 0.0)
    with pytest.raises(SegDeepError, match="increasing"):
        IntensityNormalization(100.0, -100.0)
