"""Sliding-window inference: window placement, Gaussian blending and agreement with MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SegDeepLogic.errors import CancelledError
from SegDeepLogic.inferers import gaussian_importance_map, sliding_window_inference, window_slices
from SegDeepLogic.networks import build_network
from SegDeepLogic.progress import CancelToken

monai_inferers = pytest.importorskip("monai.inferers")
monai_data_utils = pytest.importorskip("monai.data.utils")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny networks: one thread avoids OpenMP synchronisation costs on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("unet3d", {"in_channels": 1, "out_channels": 3, "channels": [4, 8]}).eval()


@pytest.mark.parametrize("patch", [(16, 16, 16), (7, 12, 9)])
def test_gaussian_importance_map_equals_monai(patch: tuple[int, int, int]) -> None:
    ours = gaussian_importance_map(patch, 0.125)
    theirs = monai_data_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("image", "patch", "overlap"),
    [
        ((40, 36, 28), (16, 16, 16), 0.5),
        ((33, 16, 50), (16, 16, 16), 0.25),
        ((20, 20, 20), (8, 12, 20), 0.6),
        ((9, 9, 9), (9, 9, 9), 0.5),
    ],
)
def test_window_slices_are_the_same_windows_as_monai(image, patch, overlap) -> None:
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(image, patch, 3, (overlap,) * 3)
    theirs = monai_data_utils.dense_patch_slices(image, patch, interval)
    ours = window_slices(image, patch, overlap)
    assert sorted(ours, key=str) == sorted(theirs, key=str)
    covered = np.zeros(image, bool)
    for s in ours:
        covered[s] = True
    assert covered.all()


@pytest.mark.parametrize(
    ("shape", "overlap", "batch_size"),
    [((1, 1, 40, 36, 28), 0.5, 1), ((1, 1, 40, 36, 28), 0.25, 3), ((2, 1, 24, 20, 18), 0.5, 2), ((1, 1, 12, 30, 10), 0.5, 2)],
)
def test_logits_agree_with_monai_sliding_window_inference(tiny_unet, shape, overlap, batch_size) -> None:
    torch.manual_seed(1)
    x = torch.randn(shape)
    patch = (16, 16, 16)  # the last case is smaller than the patch along two axes: padded, then cropped
    with torch.no_grad():
        expected = monai_inferers.sliding_window_inference(
            x, patch, batch_size, tiny_unet, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )
    ours = sliding_window_inference(x, tiny_unet, patch, overlap=overlap, batch_size=batch_size)
    assert ours.shape == expected.shape == (shape[0], 3, *shape[2:])
    assert float((ours - expected).abs().max()) < 1e-4


def test_blending_a_constant_prediction_gives_that_constant_everywhere() -> None:
    x = torch.zeros(1, 1, 23, 17, 31)
    out = sliding_window_inference(x, lambda w: torch.full((w.shape[0], 2, *w.shape[2:]), 0.25), (8, 8, 8), overlap=0.5)
    torch.testing.assert_close(out, torch.full((1, 2, 23, 17, 31), 0.25))


def test_identity_predictor_reproduces_the_image_whatever_the_batch_and_overlap() -> None:
    x = torch.rand(1, 2, 19, 21, 13)
    for batch_size, overlap in [(1, 0.0), (4, 0.5), (64, 0.75)]:
        out = sliding_window_inference(x, lambda w: w, (8, 10, 6), overlap=overlap, batch_size=batch_size)
        torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)


def test_cancel_token_set_after_two_batches_stops_with_cancelled_error() -> None:
    token = CancelToken()
    calls = []

    def predictor(w: torch.Tensor) -> torch.Tensor:
        calls.append(w.shape[0])
        if len(calls) == 2:
            token.cancel()
        return w

    with pytest.raises(CancelledError):
        sliding_window_inference(torch.zeros(1, 1, 32, 32, 32), predictor, (8, 8, 8), overlap=0.5, cancel=token)
    assert len(calls) == 2  # checked between windows: no window ran after the cancel


def test_progress_goes_from_zero_to_one_in_order() -> None:
    seen: list[tuple[float, str]] = []
    sliding_window_inference(
        torch.zeros(1, 1, 16, 16, 24), lambda w: w, (8, 8, 8), batch_size=3, progress=lambda f, s: seen.append((f, s))
    )
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert {s for _, s in seen} == {"network"}


def test_predictor_returning_the_wrong_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected"):
        sliding_window_inference(torch.zeros(1, 1, 16, 16, 16), lambda w: w[:, :, ::2], (8, 8, 8))


def test_constant_mode_weights_all_windows_equally() -> None:
    x = torch.arange(16.0).reshape(1, 1, 16, 1, 1).expand(1, 1, 16, 4, 4).contiguous()
    # Predictor adds the window's own mean: uniform blending averages it over the covering windows.
    out = sliding_window_inference(
        x, lambda w: w - w + w.mean(dim=(2, 3, 4), keepdim=True), (8, 4, 4), overlap=0.5, mode="constant"
    )
    assert float(out[0, 0, 0, 0, 0]) == pytest.approx(3.5)  # only the first window covers slice 0
    assert float(out[0, 0, 5, 0, 0]) == pytest.approx((3.5 + 7.5) / 2)  # windows 0..7 and 4..11
