"""The U-Net segmentation pipeline: geometry, fallbacks, cancellation, uncertainty, refinement, CLI."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegDeepLogic import Volume, read_volume
from SegDeepLogic.cli import main
from SegDeepLogic.devices import DeviceError, InferenceOutOfMemoryError
from SegDeepLogic.errors import CancelledError
from SegDeepLogic.grid import model_grid, orientation_code, reorient_volume
from SegDeepLogic.io import from_sitk, to_sitk
from SegDeepLogic.model_package import ModelCard
from SegDeepLogic.progress import CancelToken
from SegDeepLogic.refine import RefineOptions, refine_mask
from SegDeepLogic.resample import resample_to_grid
from SegDeepLogic.segment import ModelNotFoundError, segment_file, segment_volume
from SegDeepLogic.segmentation_io import read_seg_nrrd

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
needs_test_model = pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# A stand-in model: a 1x1x1 convolution that turns HU into bone / soft-tissue logits, so the
# expected labels are known exactly at every position (no learned anatomy, no border effects).
# --------------------------------------------------------------------------------------------
class ThresholdNet(torch.nn.Module):
    """Logits: background 0, bone ``slope * (x - t)``; input normalised as HU / 1000."""

    def __init__(self, bone_hu: float = 226.0, slope: float = 40.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 0] = slope
            self.conv.bias[1] = -slope * bone_hu / 1000.0
            self.conv.bias[2] = -5.0  # soft tissue: never chosen
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.conv(x)


def package(network: torch.nn.Module, *, spacing=(2.0, 2.0, 2.0), orientation="LPI", patch=(16, 16, 16)):
    card = ModelCard(
        name="threshold stand-in",
        version="0",
        architecture="unet3d",  # the card's architecture; the stand-in network is what runs
        architecture_params={},
        labels=[
            {"name": "bone", "value": 1, "color": [0.9, 0.8, 0.6]},
            {"name": "soft_tissue", "value": 7, "color": [0.7, 0.4, 0.4], "terminology": "SCT^87784001^Soft tissue"},
        ],
        spacing_ijk_mm=list(spacing),
        orientation=orientation,
        intensity={"clip_hu": [-1024, 3071], "subtract": 0.0, "divide": 1000.0},
        patch_size_kji=list(patch),
        license="CC0-1.0",
    )
    return types.SimpleNamespace(card=card, network=network)


def rotation(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


CENTRE = np.array([12.0, -30.0, 105.0])  # LPS mm
RADIUS = 10.0


def sphere_ct(shape_kji, spacing, direction, *, centre=CENTRE, radius=RADIUS, extra_blob=None) -> Volume:
    """A 1000 HU sphere in air on the given grid, centred in the volume near ``centre``."""
    spacing = np.asarray(spacing, float)
    direction = np.asarray(direction, float)
    n_ijk = np.array(shape_kji[::-1])
    origin = centre - direction @ (spacing * (n_ijk - 1) / 2) + direction @ [0.3, -0.2, 0.4]  # off-centre a little
    geometry = Volume(np.zeros(shape_kji, np.int16), spacing, origin, direction)
    k, j, i = np.indices(shape_kji)
    pts = geometry.index_to_physical(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)).reshape(*shape_kji, 3)
    hu = np.where(np.linalg.norm(pts - centre, axis=-1) <= radius, 1000, -1000).astype(np.int16)
    if extra_blob is not None:
        hu[np.linalg.norm(pts - extra_blob[0], axis=-1) <= extra_blob[1]] = 1000
    return geometry.with_array(hu)


def centroid_lps(labels: Volume, value: int = 1) -> np.ndarray:
    kji = np.argwhere(labels.array == value).mean(axis=0)
    return labels.index_to_physical(kji[::-1])


# --------------------------------------------------------------------------------------------
# Orientation helpers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", ["LPS", "RAS", "LPI", "SAL", "IRP", "PIR"])
def test_reorient_volume_equals_simpleitk_dicomorient(code: str) -> None:
    rng = np.random.default_rng(0)
    vol = Volume(
        rng.integers(0, 100, (5, 6, 7)).astype(np.int16),
        (0.7, 1.1, 2.5),
        (3, -4, 5),
        rotation([1, 2, 3], 0.3) @ np.diag([1, -1, 1]),
    )
    expected = from_sitk(sitk.DICOMOrient(to_sitk(vol), code))
    ours = reorient_volume(vol, code)
    assert ours.same_grid(expected, atol_mm=1e-9)
    np.testing.assert_array_equal(ours.array, expected.array)
    assert (
        orientation_code(ours.direction)
        == code
        == sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ours.direction.ravel())
    )


def test_model_grid_covers_the_ct_extent_and_shares_its_centre() -> None:
    ct = Volume(np.zeros((30, 50, 40)), (0.8, 1.0, 2.5), (10, 20, 30), np.diag([1.0, 1.0, -1.0]))
    grid = model_grid(ct, "LPS", (2.0, 2.0, 2.0))
    assert grid.size_ijk == (16, 25, 38)
    assert grid.direction.tolist() == np.eye(3).tolist()
    centre_ct = ct.index_to_physical((np.array(ct.shape_ijk) - 1) / 2)
    np.testing.assert_allclose(grid.index_to_physical((np.array(grid.size_ijk) - 1) / 2), centre_ct, atol=1e-9)


@pytest.mark.parametrize("code", ["LPI", "SAL"])
def test_separable_resampling_equals_itk_linear_interpolation_both_ways(code: str) -> None:
    from SegDeepLogic.grid import Grid, axis_maps
    from SegDeepLogic.model_input import resample_to_model_grid
    from SegDeepLogic.segment import _BackResampler, _resample

    rng = np.random.default_rng(3)
    ct = Volume(rng.normal(0, 100, (13, 17, 19)).astype(np.float32), (0.9, 1.3, 2.1), (5, -7, 11), rotation([3, 1, 2], 0.4))
    grid = model_grid(ct, code, (2.3, 1.7, 3.1))
    forward = resample_to_model_grid(ct, grid, chunk=5)
    expected = sitk.GetArrayFromImage(_resample(to_sitk(ct), grid, extrapolate=True))
    np.testing.assert_allclose(forward, expected, atol=1e-3)

    maps = rng.random((3, *grid.shape_kji)).astype(np.float32)
    image = sitk.GetImageFromArray(np.moveaxis(maps, 0, -1).copy(), isVector=True)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction.ravel().tolist())
    slab = Grid((19, 17, 6), ct.spacing, tuple(ct.index_to_physical([0, 0, 4])), ct.direction)
    expected = sitk.GetArrayFromImage(_resample(image, slab, extrapolate=True, pixel_type=sitk.sitkVectorFloat32))
    ours = _BackResampler(torch.from_numpy(maps), grid, ct, axis_maps(grid, Grid.of(ct)))(4, 10).numpy()
    # Compare where ITK interpolates (within half a voxel of the model grid); beyond, ITK's
    # extrapolation takes the nearest voxel while ours continues the edge linearly.
    k, j, i = np.indices((6, 17, 19))
    points = ct.index_to_physical(np.stack([i.ravel(), j.ravel(), k.ravel() + 4], axis=1))
    ijk = (points - grid.origin) @ grid.direction / grid.spacing
    inside = np.all((ijk >= -0.5) & (ijk <= np.array(grid.size_ijk) - 0.5), axis=1).reshape(6, 17, 19)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[:, inside], np.moveaxis(expected, -1, 0)[:, inside], atol=1e-5)


@pytest.mark.parametrize("thresholds", [None, np.array([0.3, 0.6, 0.5, 0.2, 0.9], np.float32)])
def test_skipping_channels_that_cannot_win_gives_the_same_labels(thresholds) -> None:
    from SegDeepLogic.segment import _to_input_grid

    rng = np.random.default_rng(5)
    ct = Volume(np.zeros((40, 30, 36), np.int16), (1.0, 1.2, 1.5), (0, 0, 0), np.diag([1.0, 1.0, -1.0]))
    grid = model_grid(ct, "LPI", (3.0, 3.5, 4.0))
    # Six classes, each confined to a blob (as organs are), on a background that dominates elsewhere.
    logits = torch.from_numpy(rng.normal(0, 1, (6, *grid.shape_kji)).astype(np.float32))
    logits[0] += 3.0
    for c in range(1, 6):
        k, j, i = (rng.integers(0, n) for n in grid.shape_kji)
        logits[c, max(0, k - 2) : k + 2, max(0, j - 2) : j + 2, max(0, i - 2) : i + 2] += 6.0
    probs = torch.softmax(logits, dim=0)
    channels = [*probs, torch.rand(grid.shape_kji)]
    lut = np.array([0, 3, 1, 9, 4, 2], np.uint8)
    common = dict(n_classes=6, lut=lut, thresholds=thresholds, report_fraction=lambda f: None, slab_bytes=30 * 36 * 7 * 4 * 3)
    pruned, extras_pruned, _ = _to_input_grid(channels, grid, ct, want_probabilities=False, **common)
    full, extras_full, probabilities = _to_input_grid(channels, grid, ct, want_probabilities=True, **common)
    np.testing.assert_array_equal(pruned, full)
    np.testing.assert_array_equal(extras_pruned[0], extras_full[0])
    assert len(np.unique(pruned)) >= 3 and probabilities.shape == (5, 40, 30, 36)


# --------------------------------------------------------------------------------------------
# Geometry of the output
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_result():
    ct = sphere_ct((30, 32, 32), (1.0, 1.0, 1.0), np.eye(3))
    return ct, segment_volume(ct, package(ThresholdNet()), uncertainty=False)


@pytest.mark.parametrize(
    ("direction", "spacing"),
    [
        (rotation([1, 2, 3], 0.5) @ np.diag([1, -1, 1]), (0.9, 1.3, 2.1)),  # oblique, a reflection, anisotropic
        (np.array([[0.0, 0, 1], [-1, 0, 0], [0, 1, 0]]), (1.5, 0.8, 1.2)),  # axes permuted (ASL, say a sagittal scan)
    ],
    ids=["oblique", "permuted"],
)
def test_bone_sphere_is_labelled_at_its_lps_position_on_the_exact_input_grid(plain_result, direction, spacing) -> None:
    ct = sphere_ct((24, 22, 34), spacing, direction)
    result = segment_volume(ct, package(ThresholdNet()), uncertainty=False)
    labels = result.labels
    # Exactly the input grid: size, spacing, origin and direction, bit for bit.
    assert labels.array.shape == ct.array.shape
    assert labels.spacing == ct.spacing and labels.origin == ct.origin
    np.testing.assert_array_equal(labels.direction, ct.direction)
    assert labels.array.dtype == np.uint8
    # The sphere is where it physically is ...
    np.testing.assert_allclose(centroid_lps(labels), CENTRE, atol=0.6)
    volume = (labels.array == 1).sum() * labels.voxel_volume_mm3
    assert volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.12)
    # ... and agrees with the same phantom segmented on a plain 1 mm LPS grid.
    plain_ct, plain = plain_result
    np.testing.assert_allclose(centroid_lps(plain.labels), centroid_lps(labels), atol=0.6)
    on_this_grid = resample_to_grid(plain.labels, labels, interpolation="nearest").array
    inside = np.linalg.norm(
        labels.index_to_physical(np.argwhere(np.ones(ct.array.shape))[:, ::-1]).reshape(*ct.array.shape, 3) - CENTRE, axis=-1
    )
    away_from_surface = np.abs(inside - RADIUS) > 2.0
    np.testing.assert_array_equal(on_this_grid[away_from_surface], labels.array[away_from_surface])


def test_general_itk_resampling_fallback_gives_the_same_sphere(plain_result, monkeypatch: pytest.MonkeyPatch) -> None:
    from SegDeepLogic import segment

    ct, fast = plain_result
    monkeypatch.setattr(segment, "axis_maps", lambda *a, **k: None)  # as for non-parallel grids
    slow = segment_volume(ct, package(ThresholdNet()), uncertainty=True)
    assert slow.labels.same_grid(ct)
    a, b = fast.labels.array == 1, slow.labels.array == 1
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.98
    assert 0 <= slow.uncertainty.array.min() and slow.uncertainty.array.max() <= 1


def test_result_reports_device_precision_timings_and_parameters(plain_result) -> None:
    _ct, result = plain_result
    assert result.device == "cpu" and result.precision == "fp32" and result.fallbacks == []
    assert {"reorient", "resample", "normalise", "network", "resample-back", "postprocess", "refine"} <= set(result.timings_s)
    assert result.parameters["model_orientation"] == "LPI" and result.parameters["overlap"] == 0.5
    assert [(s.name, s.value) for s in result.segments] == [("bone", 1), ("soft_tissue", 7)]
    summary = json.loads(json.dumps(result.summary()))
    assert summary["segments"][0]["volume_mm3"] > 0 and summary["geometry"]["size_ijk"] == [32, 32, 30]


# --------------------------------------------------------------------------------------------
# Decisions, probabilities, clean-up
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soft_net() -> ThresholdNet:
    return ThresholdNet(slope=4.0)  # soft probabilities: a wide uncertain band around the surface


def test_probabilities_are_interpolated_and_thresholds_keep_only_confident_voxels(soft_net) -> None:
    ct = sphere_ct((20, 24, 24), (1.2, 1.2, 1.5), np.eye(3))
    argmax = segment_volume(ct, package(soft_net), return_probabilities=True, uncertainty=False)
    p_bone = argmax.probabilities["bone"].array
    assert argmax.probabilities["bone"].same_grid(ct)
    assert ((p_bone > 10) & (p_bone < 245)).any()  # smooth probabilities, not resampled labels
    assert np.all(p_bone[argmax.labels.array == 1] >= 127)
    strict = segment_volume(ct, package(soft_net), thresholds={"bone": 0.95}, uncertainty=False, return_probabilities=True)
    bone = strict.labels.array == 1
    assert 0 < bone.sum() < (argmax.labels.array == 1).sum()
    assert np.all(strict.probabilities["bone"].array[bone] >= np.floor(0.95 * 255))
    assert strict.parameters["decision"] == {"bone": 0.95, "soft_tissue": 0.5}


def test_keep_largest_and_min_island_remove_a_separate_small_bone_blob() -> None:
    blob = (CENTRE + [0, 0, 16.0], 3.0)  # 113 mm³, 3 mm from the sphere's surface
    ct = sphere_ct((46, 26, 26), (1.0, 1.0, 1.0), np.eye(3), extra_blob=blob)
    net = ThresholdNet()
    raw = segment_volume(ct, package(net), uncertainty=False)
    near_blob = (
        np.linalg.norm(ct.index_to_physical(np.argwhere(raw.labels.array == 1)[:, ::-1]) - blob[0], axis=1) <= blob[1] + 1.0
    )
    assert near_blob.any()
    for kwargs in ({"keep_largest": True}, {"min_island_mm3": {"bone": 500.0}}):
        cleaned = segment_volume(ct, package(net), uncertainty=False, **kwargs).labels
        points = ct.index_to_physical(np.argwhere(cleaned.array == 1)[:, ::-1])
        assert np.all(np.linalg.norm(points - blob[0], axis=1) > blob[1] + 1.0)
        assert (cleaned.array == 1).sum() == (raw.labels.array == 1).sum() - near_blob.sum()


def test_the_cards_own_island_clean_up_is_applied_unless_switched_off() -> None:
    blob = (CENTRE + [0, 0, 16.0], 3.0)  # 113 mm³, 3 mm from the sphere's surface
    ct = sphere_ct((46, 26, 26), (1.0, 1.0, 1.0), np.eye(3), extra_blob=blob)
    net = ThresholdNet()
    model = package(net)
    model.card = dataclasses.replace(model.card, extra={"postprocessing": {"min_island_mm3": {"bone": 500.0}}})
    raw = segment_volume(ct, package(net), uncertainty=False).labels.array
    by_card = segment_volume(ct, model, uncertainty=False)
    by_caller = segment_volume(ct, package(net), uncertainty=False, min_island_mm3={"bone": 500.0}).labels.array
    assert np.array_equal(by_card.labels.array, by_caller) and not np.array_equal(raw, by_caller)
    assert by_card.parameters["min_island_mm3"]["bone"] == 500.0
    assert by_card.parameters["model_postprocessing"] == {"min_island_mm3": {"bone": 500.0}}
    off = segment_volume(ct, model, uncertainty=False, model_postprocessing=False)
    assert np.array_equal(off.labels.array, raw) and off.parameters["model_postprocessing"] is False


# --------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------
def test_uncertainty_map_is_on_the_input_grid_in_0_1_and_summarised_per_structure() -> None:
    ct = sphere_ct((24, 30, 30), (1.2, 1.2, 1.5), rotation([0, 0, 1], 0.3))
    result = segment_volume(
        ct, package(ThresholdNet(slope=10.0)), tta=True, tta_flips=[(), (2,), (4,)], uncertainty_threshold=0.1
    )
    u = result.uncertainty
    assert u.same_grid(ct) and u.array.dtype == np.float32
    assert 0.0 <= u.array.min() and u.array.max() <= 1.0 and u.array.max() > 0.2
    assert result.tta_variance is not None and result.tta_variance.same_grid(ct) and result.tta_variance.array.min() >= 0
    bone, soft = result.uncertainty_summary
    assert bone["name"] == "bone" and bone["volume_mm3"] > 0
    assert bone["mean_entropy_boundary"] > bone["mean_entropy_inside"]  # unsure at the surface, sure inside
    assert 0 <= bone["uncertain_fraction"] <= 1 and "mean_tta_variance_inside" in bone
    np.testing.assert_allclose(bone["uncertain_centroid_lps"], CENTRE, atol=2.0)  # the shell surrounds the centre
    assert soft["volume_mm3"] == 0 and soft["mean_entropy_inside"] is None


# --------------------------------------------------------------------------------------------
# Out of memory, cancellation, errors
# --------------------------------------------------------------------------------------------
class OomForBatches(torch.nn.Module):
    """Raises a CUDA out-of-memory error for any batch of more than ``limit`` windows."""

    def __init__(self, inner: torch.nn.Module, limit: int = 1, message: str = "CUDA out of memory. Tried to allocate 8.00 GiB"):
        super().__init__()
        self.inner, self.limit, self.message = inner, limit, message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise RuntimeError(self.message)
        return self.inner(x)


def test_oom_with_batches_retries_with_one_window_and_reports_the_fallback() -> None:
    ct = sphere_ct((40, 40, 40), (1.0, 1.0, 1.0), np.eye(3))  # 20³ voxels of 2 mm: 8 windows of 16³
    expected = segment_volume(ct, package(ThresholdNet()), batch_size=1, uncertainty=False)
    result = segment_volume(ct, package(OomForBatches(ThresholdNet())), batch_size=4, uncertainty=False)
    assert result.fallbacks == [
        "out of memory on cpu with 4 windows per batch: retrying with 2",
        "out of memory on cpu with 2 windows per batch: retrying with 1",
    ]
    assert result.parameters["batch_size"] == 1 and result.parameters["requested_batch_size"] == 4
    np.testing.assert_array_equal(result.labels.array, expected.labels.array)


def test_oom_even_with_one_window_on_the_cpu_is_a_clear_error() -> None:
    ct = sphere_ct((20, 24, 24), (1.2, 1.2, 1.5), np.eye(3))
    with pytest.raises(InferenceOutOfMemoryError, match="out of memory during inference.*retrying with 1"):
        segment_volume(ct, package(OomForBatches(ThresholdNet(), limit=0)), batch_size=2)


def test_cancel_after_two_network_calls_raises_and_writes_nothing(tmp_path: Path) -> None:
    ct = sphere_ct((40, 40, 40), (1.0, 1.0, 1.0), np.eye(3))  # 8 windows
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(to_sitk(ct), str(ct_path))
    token = CancelToken()

    class CancelAfterTwo(ThresholdNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if len(self.calls) == 1:
                token.cancel()
            return super().forward(x)

    net = CancelAfterTwo()
    out = tmp_path / "out"
    with pytest.raises(CancelledError):
        segment_file(ct_path, out / "seg.seg.nrrd", package(net), uncertainty_path=out / "u.nii.gz", batch_size=1, cancel=token)
    assert len(net.calls) == 2
    assert not out.exists() or list(out.iterdir()) == []


def test_unavailable_explicit_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ct = sphere_ct((20, 20, 20), (1.0, 1.0, 1.0), np.eye(3))
    with pytest.raises(DeviceError, match="CUDA is not available"):
        segment_volume(ct, package(ThresholdNet()), device="cuda")


def test_missing_model_names_the_model_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from SegDeepLogic.resources import MODELS_ENV

    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "no-models"))
    ct = sphere_ct((20, 20, 20), (1.0, 1.0, 1.0), np.eye(3))
    with pytest.raises(ModelNotFoundError, match="--model"):
        segment_volume(ct)


# --------------------------------------------------------------------------------------------
# Refinement
# --------------------------------------------------------------------------------------------
def test_refining_a_blocky_mask_around_a_bone_sphere_gives_exactly_the_sphere() -> None:
    spacing = (0.7, 0.7, 1.0)
    ct = sphere_ct((40, 52, 52), spacing, np.eye(3), radius=12.0)
    sphere = ct.array >= 226
    coarse = resample_to_grid(
        ct.with_array(sphere.astype(np.uint8)),
        Volume(np.zeros((12, 10, 10)), (4.0, 4.0, 4.0), ct.origin),
        interpolation="nearest",
    )
    blocky = resample_to_grid(coarse, ct, interpolation="nearest").array.astype(bool)
    assert not np.array_equal(blocky, sphere)
    refined = refine_mask(ct, ct.with_array(blocky), RefineOptions(grow_mm=4.0))
    assert refined.same_grid(ct)
    np.testing.assert_array_equal(refined.array, sphere)


def test_refinement_never_takes_voxels_outside_allowed_and_keeps_the_largest_piece() -> None:
    ct = sphere_ct((30, 30, 30), (1.0, 1.0, 1.0), np.eye(3), extra_blob=(CENTRE + [0, 0, 12.5], 2.0))
    mask = ct.array >= 226
    allowed = np.ones(mask.shape, bool)
    allowed[:, :, :10] = False
    refined = refine_mask(ct, ct.with_array(mask), allowed=allowed, grow_mm=2.0).array
    assert not refined[:, :, :10].any()
    assert refined.sum() < mask.sum()
    from scipy import ndimage

    assert ndimage.label(refined, np.ones((3, 3, 3)))[1] == 1


def test_refine_in_the_pipeline_takes_the_boundary_from_the_ct() -> None:
    ct = sphere_ct((34, 40, 40), (0.8, 0.8, 1.0), np.eye(3))
    coarse_model = package(ThresholdNet(slope=2.0), spacing=(4.0, 4.0, 4.0))
    plain = segment_volume(ct, coarse_model, uncertainty=False)
    refined = segment_volume(ct, coarse_model, refine=True, uncertainty=False)
    sphere = ct.array >= 226
    assert not np.array_equal(plain.labels.array == 1, sphere)  # the 4 mm network mask is blocky
    np.testing.assert_array_equal(refined.labels.array == 1, sphere)
    assert refined.parameters["refine"]["labels"] == ["bone"] and refined.parameters["refine"]["lower_hu"] == 226.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_refining_a_coarse_mandible_on_the_sample_ct_stays_on_bone_and_near_the_mandible() -> None:
    ct = read_volume(SAMPLE / "ct.nii.gz")
    truth = read_volume(SAMPLE / "mandible.nii.gz").array > 0
    # The "network": the mandible seen on an 8 mm grid and brought back (blocky, as from a coarse model).
    coarse_grid = Volume(np.zeros((48, 64, 64)), (8.0, 8.0, 8.0), ct.origin, ct.direction)
    coarse = resample_to_grid(ct.with_array(truth.astype(np.float32)), coarse_grid, interpolation="linear")
    network = resample_to_grid(coarse, ct, interpolation="linear").array >= 0.5
    refined = refine_mask(ct, ct.with_array(network), grow_mm=4.0).array
    before, after = dice(network, truth), dice(refined, truth)
    print(f"mandible Dice vs reference: blocky 8 mm mask {before:.3f} -> refined {after:.3f}")
    assert refined.sum() > 0.5 * truth.sum()
    assert np.all(ct.array[refined & ~network] >= 226)  # what it adds is bone
    assert after > 0.6


# --------------------------------------------------------------------------------------------
# The real test model and the CLI
# --------------------------------------------------------------------------------------------
@needs_test_model
def test_cli_segments_the_sample_ct_into_a_slicer_seg_nrrd(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ct.seg.nrrd"
    summary_path = tmp_path / "summary.json"
    unc_path = tmp_path / "uncertainty.nii.gz"
    code = main(
        [
            "segment",
            str(SAMPLE / "ct.nii.gz"),
            "-o",
            str(out),
            "--model",
            str(TEST_MODEL),
            "--overlap",
            "0.25",
            "--json",
            str(summary_path),
            "--uncertainty",
            str(unc_path),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    ct = read_volume(SAMPLE / "ct.nii.gz")
    seg = read_seg_nrrd(out)
    assert seg.names == ("bone", "soft_tissue")
    assert seg.labelmap.same_grid(ct)
    bone = seg.labelmap.array == 1
    assert dice(bone, ct.array >= 300) > 0.4  # the test model imitates a 300 HU threshold
    assert read_volume(unc_path).same_grid(ct)
    summary = json.loads(summary_path.read_text())
    assert summary["device"] == "cpu" and summary["fallbacks"] == []
    assert [s["name"] for s in summary["uncertainty"]] == ["bone", "soft_tissue"]
    assert summary["timings_s"]["network"] > 0 and summary["timings_s"]["write"] > 0


@needs_test_model
def test_cli_writes_a_nifti_label_map_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ct = read_volume(SAMPLE / "ct.nii.gz")
    crop = Volume(ct.array[40:90, 30:100, 20:100], ct.spacing, ct.index_to_physical([20, 30, 40]), ct.direction)
    ct_path = tmp_path / "crop.nrrd"
    sitk.WriteImage(to_sitk(crop), str(ct_path))
    out = tmp_path / "labels.nii.gz"
    args = ["segment", str(ct_path), "-o", str(out), "--model", str(TEST_MODEL), "--no-progress", "--refine", "--keep-largest"]
    assert main(args) == 0
    labels = read_volume(out)
    assert labels.same_grid(crop) and set(np.unique(labels.array)) <= {0, 1, 2}
    assert (tmp_path / "labels.labels.json").exists() and (tmp_path / "labels.labels.csv").exists()
    before = out.read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_cli_without_a_model_says_to_pass_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from SegDeepLogic.resources import MODELS_ENV

    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "no-models"))
    assert main(["segment", str(SAMPLE / "ct.nii.gz"), "-o", str(tmp_path / "x.seg.nrrd"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "--model" in err and "no model package is bundled" in err
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_mirroring_tta_swaps_left_and_right_labels_back() -> None:
    import torch

    from SegDeepLogic.segment import ALL_FLIPS, _Predictor, lateral_swap

    class SideByPosition(torch.nn.Module):
        """Like a real network: a structure on the high-W (patient left, LPI) side is 'left' (channel 1)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            half = x.shape[-1] // 2
            on_high_w = bool(x[..., half:].sum() > x[..., :half].sum())
            marker = (x[:, 0] > 0.5).float()
            out = torch.zeros(x.shape[0], 3, *x.shape[2:])
            out[:, 0] = 10 * (1 - marker)
            out[:, 1 if on_high_w else 2] = 10 * marker
            return out

    x = torch.zeros(1, 1, 4, 4, 8)
    x[..., 6] = 1.0  # marker on the high-W side
    names = ["parotid_left", "parotid_right"]
    plain = _Predictor(SideByPosition(), torch.device("cpu"), torch.float32, [()])(x)
    swapped = _Predictor(SideByPosition(), torch.device("cpu"), torch.float32, ALL_FLIPS, lateral_swap("LPI", names))(x)
    unswapped = _Predictor(SideByPosition(), torch.device("cpu"), torch.float32, ALL_FLIPS, None)(x)
    torch.testing.assert_close(swapped[:, :3], plain, atol=1e-5, rtol=0)
    assert not torch.allclose(unswapped[:, :3], plain, atol=1e-2)
