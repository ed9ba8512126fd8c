"""Hounsfield thresholding selects exactly the intended voxels; clean-up works in physical units."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from SegDeepLogic import CancelledError, Volume, read_volume
from SegDeepLogic.progress import CancelToken
from SegDeepLogic.threshold import (
    AUTO_METHODS,
    PRESETS,
    ThresholdError,
    ThresholdPreset,
    auto_threshold_hu,
    fill_enclosed_holes,
    keep_largest_component,
    remove_small_islands,
    threshold_hu,
    threshold_segment,
)

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236"

AIR, SOFT, BONE = -1000, 40, 1000
SPACING = (0.8, 0.6, 1.5)  # anisotropic (i, j, k) mm: voxel volume 0.72 mm³
VOXEL_MM3 = 0.8 * 0.6 * 1.5


def sphere_mask(shape_kji: tuple[int, int, int], centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``centre_mm`` (i, j, k physical mm)."""
    k, j, i = np.indices(shape_kji)
    d2 = (i * SPACING[0] - centre_mm[0]) ** 2 + (j * SPACING[1] - centre_mm[1]) ** 2 + (k * SPACING[2] - centre_mm[2]) ** 2
    return d2 <= radius_mm**2


@pytest.fixture
def phantom() -> tuple[Volume, np.ndarray]:
    """Air around a soft-tissue block holding a 1000 HU bone sphere (radius 8 mm)."""
    shape = (24, 50, 40)  # k, j, i
    array = np.full(shape, AIR, dtype=np.int16)
    array[2:22, 4:46, 4:36] = SOFT
    sphere = sphere_mask(shape, np.array([16.0, 15.0, 18.0]), 8.0)
    array[sphere] = BONE
    return Volume(array, SPACING, origin=(-5.0, 12.0, 30.0)), sphere


# --- presets and the plain threshold ----------------------------------------------------------
def test_presets_have_the_published_ranges_and_are_read_only() -> None:
    assert (PRESETS["bone"].lower_hu, PRESETS["bone"].upper_hu) == (226.0, 3071.0)
    assert (PRESETS["compact_bone_adult"].lower_hu, PRESETS["compact_bone_adult"].upper_hu) == (662.0, 1988.0)
    assert (PRESETS["teeth_enamel_adult"].lower_hu, PRESETS["teeth_enamel_adult"].upper_hu) == (1553.0, 2850.0)
    for name, preset in PRESETS.items():
        assert preset.name == name and preset.description and "InVesalius" in preset.source
    with pytest.raises(TypeError):
        PRESETS["bone"] = ThresholdPreset("bone", 0, 1, "", "")  # type: ignore[index]


def test_bone_preset_selects_exactly_the_sphere(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, sphere = phantom
    result = threshold_segment(ct, preset="bone")
    assert result.mask.array.dtype == bool
    np.testing.assert_array_equal(result.mask.array, sphere)
    assert result.mask.same_grid(ct)
    assert (result.lower_hu, result.upper_hu) == (226.0, 3071.0)
    assert result.volume_mm3 == pytest.approx(sphere.sum() * VOXEL_MM3)
    # the sphere's voxel volume approximates 4/3 pi r^3
    assert result.volume_mm3 == pytest.approx(4 / 3 * math.pi * 8.0**3, rel=0.05)


def test_bounds_are_inclusive_and_integer_rounding_matches_float_comparison() -> None:
    ct = np.arange(-1100, 3200, dtype=np.int16).reshape(43, 10, 10)
    for lo, hi in [(226, 3071), (225.5, 3071.5), (-1024.0, 0.0), (-40000.0, 40000.0), (0.1, 0.9), (3100.2, 9e9)]:
        expected = (ct.astype(np.float64) >= lo) & (ct.astype(np.float64) <= hi)
        np.testing.assert_array_equal(threshold_hu(ct, lo, hi), expected)
    np.testing.assert_array_equal(threshold_hu(ct, None, 0), ct <= 0)
    np.testing.assert_array_equal(threshold_hu(ct, 0, None), ct >= 0)
    assert threshold_hu(ct, None, None).all()


def test_float_ct_bounds_are_exact_even_when_not_representable_in_float32() -> None:
    values = np.array([np.float32(226.0), np.nextafter(np.float32(226.1), np.float32(0)), np.float32(226.1)], np.float32)
    ct = np.tile(values, (2, 2, 1))
    expected = ct.astype(np.float64) >= 226.1
    np.testing.assert_array_equal(threshold_hu(ct, 226.1, None), expected)
    np.testing.assert_array_equal(threshold_hu(ct, None, 226.1), ct.astype(np.float64) <= 226.1)


def test_threshold_keeps_the_input_type_and_geometry(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, sphere = phantom
    as_volume = threshold_hu(ct, 226, 3071)
    assert isinstance(as_volume, Volume) and as_volume.same_grid(ct)
    as_array = threshold_hu(ct.array, 226, 3071)
    assert isinstance(as_array, np.ndarray)
    np.testing.assert_array_equal(as_array, sphere)


def test_non_contiguous_input_gives_the_same_mask(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, _ = phantom
    view = ct.array[::2, :, ::3]
    np.testing.assert_array_equal(threshold_hu(view, 226, 3071), (view >= 226) & (view <= 3071))


# --- clean-up in physical units -----------------------------------------------------------------
@pytest.mark.parametrize("connectivity", [6, 26])
def test_island_is_removed_below_and_kept_at_or_above_its_volume_in_mm3(
    phantom: tuple[Volume, np.ndarray], connectivity: int
) -> None:
    ct, sphere = phantom
    array = ct.array.copy()
    array[4:6, 40:43, 30:34] = BONE  # 2 x 3 x 4 = 24 voxels = 17.28 mm³ (not 24 mm³)
    ct = ct.with_array(array)
    island_mm3 = 24 * VOXEL_MM3
    kept = threshold_segment(ct, preset="bone", min_island_mm3=island_mm3 * 0.99, connectivity=connectivity)
    assert kept.mask.array.sum() == sphere.sum() + 24
    at = threshold_segment(ct, preset="bone", min_island_mm3=island_mm3, connectivity=connectivity)
    assert at.mask.array.sum() == sphere.sum() + 24
    removed = threshold_segment(ct, preset="bone", min_island_mm3=island_mm3 * 1.01, connectivity=connectivity)
    np.testing.assert_array_equal(removed.mask.array, sphere)
    # 20 mm³ exceeds the island's 17.28 mm³ although it is fewer than its 24 voxels
    np.testing.assert_array_equal(threshold_segment(ct, preset="bone", min_island_mm3=20.0).mask.array, sphere)


def test_remove_small_islands_on_arrays_needs_the_voxel_volume() -> None:
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = True
    mask[3:5, 3:5, 3:5] = True  # 8 voxels
    assert remove_small_islands(mask, 4.0, voxel_volume_mm3=1.0).sum() == 8
    assert remove_small_islands(mask, 4.0, voxel_volume_mm3=0.25).sum() == 0  # 8 voxels = 2 mm³
    with pytest.raises(ThresholdError, match="voxel_volume_mm3 is required"):
        remove_small_islands(mask, 4.0)
    vol = Volume(mask, (1.0, 1.0, 2.0))
    with pytest.raises(ThresholdError, match="contradicts"):
        remove_small_islands(vol, 4.0, voxel_volume_mm3=1.0)
    assert remove_small_islands(vol, 10.0).array.sum() == 8  # 8 voxels x 2 mm³ = 16 mm³


def test_keep_largest_keeps_only_the_biggest_piece(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, sphere = phantom
    array = ct.array.copy()
    array[4:8, 40:44, 28:34] = BONE  # a 96-voxel bone fragment apart from the sphere
    result = threshold_segment(ct.with_array(array), preset="bone", keep_largest=True)
    np.testing.assert_array_equal(result.mask.array, sphere)


def test_keep_largest_with_a_larger_minimum_island_volume_leaves_nothing(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, sphere = phantom
    sphere_mm3 = sphere.sum() * VOXEL_MM3
    kept = threshold_segment(ct, preset="bone", keep_largest=True, min_island_mm3=sphere_mm3)
    np.testing.assert_array_equal(kept.mask.array, sphere)
    gone = threshold_segment(ct, preset="bone", keep_largest=True, min_island_mm3=sphere_mm3 * 1.01)
    assert not gone.mask.array.any()


def test_corner_touching_cubes_are_one_component_in_26_and_two_in_6_connectivity() -> None:
    mask = np.zeros((6, 6, 6), bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[2:5, 2:5, 2:5] = True  # 27 voxels, touching the first only at a corner
    assert keep_largest_component(mask).sum() == 35
    assert keep_largest_component(mask, connectivity=6).sum() == 27
    assert remove_small_islands(mask, 10, voxel_volume_mm3=1.0, connectivity=6).sum() == 27
    assert remove_small_islands(mask, 10, voxel_volume_mm3=1.0).sum() == 35


def test_hollow_shell_is_filled(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, _ = phantom
    array = ct.array.copy()
    outer = sphere_mask(array.shape, np.array([16.0, 15.0, 18.0]), 8.0)
    inner = sphere_mask(array.shape, np.array([16.0, 15.0, 18.0]), 5.0)
    array[inner] = SOFT  # marrow-like cavity inside a cortical shell
    ct = ct.with_array(array)
    assert threshold_segment(ct, preset="bone").mask.array.sum() == (outer & ~inner).sum()
    filled = threshold_segment(ct, preset="bone", fill_holes=True)
    np.testing.assert_array_equal(filled.mask.array, outer)


def test_cavity_open_to_the_border_is_not_filled() -> None:
    mask = np.zeros((9, 9, 9), bool)
    mask[2:7, 2:7, 2:7] = True
    mask[3:6, 3:6, 3:6] = False
    mask[4, 4, 6:] = False  # a channel from the cavity through the wall ...
    mask[4, 4, 7:] = False  # ... to the volume border
    opened = mask.copy()
    np.testing.assert_array_equal(fill_enclosed_holes(opened), opened)
    closed = mask.copy()
    closed[4, 4, 6] = True
    assert fill_enclosed_holes(closed).sum() == closed.sum() + 27


def test_cavity_behind_a_diagonal_gap_is_a_hole_only_for_26_connected_objects() -> None:
    mask = np.zeros((9, 9, 9), bool)
    mask[2:7, 2:7, 2:7] = True
    mask[3:6, 3:6, 3:6] = False  # 27-voxel cavity
    # remove one voxel on an edge of the shell: it touches the outside by faces but the cavity
    # corner (5, 5, 5) only along an edge, so the cavity is closed for 6-connected background only
    mask[6, 6, 5] = False
    # 26-connected object => 6-connected background: the gap is closed, the cavity is a hole
    assert fill_enclosed_holes(mask).sum() > mask.sum()
    # 6-connected object => 26-connected background leaks through the diagonal: nothing filled
    np.testing.assert_array_equal(fill_enclosed_holes(mask, connectivity=6), mask)


def test_empty_masks_pass_through_clean_up() -> None:
    empty = np.zeros((4, 4, 4), bool)
    assert not keep_largest_component(empty).any()
    assert not fill_enclosed_holes(empty).any()
    assert not remove_small_islands(empty, 5.0, voxel_volume_mm3=1.0).any()


# --- automatic thresholds ----------------------------------------------------------------------
@pytest.fixture
def noisy_phantom(phantom: tuple[Volume, np.ndarray]) -> Volume:
    ct, _ = phantom
    rng = np.random.default_rng(1)
    noisy = ct.array + rng.normal(0, 30, ct.array.shape)
    noisy[:, :, :2] = -3024  # padding outside the scan circle
    return ct.with_array(np.round(noisy).astype(np.int16))


@pytest.mark.parametrize("method", sorted(AUTO_METHODS))
def test_automatic_threshold_separates_soft_tissue_from_bone(noisy_phantom: Volume, method: str) -> None:
    value = auto_threshold_hu(noisy_phantom, method)
    assert SOFT < value < BONE, value
    if method in ("otsu", "isodata", "li"):  # the mean-based methods land well inside the gap
        assert SOFT + 100 < value < BONE - 100, value
    result = threshold_segment(noisy_phantom, method=method)
    assert result.lower_hu == pytest.approx(value)
    assert result.upper_hu == math.inf and result.parameters["upper_hu"] is None
    assert result.parameters["method"] == method


def test_otsu_over_the_whole_volume_separates_air_not_bone(noisy_phantom: Volume) -> None:
    assert auto_threshold_hu(noisy_phantom, "otsu", region="volume") < SOFT
    assert SOFT < auto_threshold_hu(noisy_phantom, "otsu", region="body") < BONE


def test_automatic_lower_bound_with_explicit_upper_bound(noisy_phantom: Volume) -> None:
    result = threshold_segment(noisy_phantom, method="otsu", upper_hu=1500)
    assert result.upper_hu == 1500.0 and SOFT < result.lower_hu < BONE
    assert not (noisy_phantom.array[result.mask.array] > 1500).any()


def test_automatic_threshold_of_constant_region_is_an_error() -> None:
    with pytest.raises(ThresholdError, match="all .* voxels"):
        auto_threshold_hu(np.full((3, 3, 3), 100, np.int16))
    with pytest.raises(ThresholdError, match="no voxels"):
        auto_threshold_hu(np.full((3, 3, 3), -1000, np.int16))


# --- arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no HU range"),
        ({"lower_hu": 500, "upper_hu": 200}, "greater than upper_hu"),
        ({"preset": "cartilage"}, "unknown threshold preset 'cartilage'; choose one of bone"),
        ({"method": "kmeans"}, "unknown automatic threshold method 'kmeans'"),
        ({"preset": "bone", "lower_hu": 300}, "not both"),
        ({"preset": "bone", "method": "otsu"}, "not both"),
        ({"method": "otsu", "lower_hu": 300}, "computes lower_hu"),
        ({"lower_hu": float("nan")}, "lower_hu must be finite"),
        ({"upper_hu": float("inf")}, "upper_hu must be finite"),
        ({"lower_hu": "200"}, "lower_hu must be a number"),
        ({"preset": "bone", "min_island_mm3": -1.0}, "min_island_mm3 must be >= 0"),
        ({"preset": "bone", "min_island_mm3": float("nan")}, "min_island_mm3 must be finite"),
        ({"preset": "bone", "connectivity": 8}, "connectivity must be 6, 18 or 26"),
        ({"preset": "bone", "keep_largest": "yes"}, "keep_largest must be True or False"),
        ({"method": "otsu", "auto_region": "lungs"}, "auto_region must be"),
    ],
)
def test_invalid_or_contradictory_arguments_are_refused(phantom: tuple[Volume, np.ndarray], kwargs: dict, message: str) -> None:
    ct, _ = phantom
    with pytest.raises(ThresholdError, match=message):
        threshold_segment(ct, **kwargs)


def test_ct_must_be_a_numeric_volume(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, _ = phantom
    with pytest.raises(ThresholdError, match="must be a Volume"):
        threshold_segment(ct.array, preset="bone")  # type: ignore[arg-type]
    with pytest.raises(ThresholdError, match="real numbers"):
        threshold_segment(ct.with_array(ct.array > 0), preset="bone")


def test_threshold_error_is_a_segdeep_value_error() -> None:
    from SegDeepLogic import SegDeepError

    assert issubclass(ThresholdError, SegDeepError) and issubclass(ThresholdError, ValueError)


def test_parameters_record_everything_as_json(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, _ = phantom
    result = threshold_segment(ct, preset="bone", keep_largest=True, min_island_mm3=5, fill_holes=True)
    params = json.loads(json.dumps(result.parameters))
    assert params == {
        "algorithm": "hounsfield_threshold",
        "preset": "bone",
        "method": None,
        "auto_region": None,
        "lower_hu": 226.0,
        "upper_hu": 3071.0,
        "keep_largest": True,
        "min_island_mm3": 5.0,
        "fill_holes": True,
        "connectivity": 26,
    }


def test_explicit_bounds_and_one_sided_ranges(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, sphere = phantom
    np.testing.assert_array_equal(threshold_segment(ct, lower_hu=500).mask.array, sphere)
    upper_only = threshold_segment(ct, upper_hu=-500)
    np.testing.assert_array_equal(upper_only.mask.array, ct.array == AIR)
    assert upper_only.lower_hu == -math.inf and upper_only.parameters["lower_hu"] is None


def test_progress_is_reported_in_order_and_cancel_stops_the_work(phantom: tuple[Volume, np.ndarray]) -> None:
    ct, _ = phantom
    calls: list[tuple[float, str]] = []
    threshold_segment(
        ct, preset="bone", min_island_mm3=1, keep_largest=True, fill_holes=True, progress=lambda f, s: calls.append((f, s))
    )
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(calls) >= 4
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        threshold_segment(ct, preset="bone", cancel=token)

    def cancel_at_fill(fraction: float, stage: str) -> None:
        if "holes" in stage:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        threshold_segment(ct, preset="bone", fill_holes=True, progress=cancel_at_fill)


# --- real CT ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_ct() -> Volume:
    return read_volume(SAMPLE / "ct.nii.gz")


@pytest.fixture(scope="module")
def mandible() -> np.ndarray:
    return read_volume(SAMPLE / "mandible.nii.gz").array.astype(bool)


def test_real_ct_bone_volume_is_plausible(sample_ct: Volume) -> None:
    bone = threshold_segment(sample_ct, preset="bone")
    # head and neck with the shoulders (skull, cervical spine, clavicles, scapulae, humeral heads);
    # 4 x 4 x 3 mm voxels add partial volume
    assert 600e3 < bone.volume_mm3 < 2000e3, bone.volume_mm3 / 1e3
    compact = threshold_segment(sample_ct, preset="compact_bone_adult").mask.array
    enamel = threshold_segment(sample_ct, preset="teeth_enamel_adult").mask.array
    assert not (compact & ~bone.mask.array).any() and not (enamel & ~bone.mask.array).any()
    assert enamel.sum() < compact.sum() < bone.mask.array.sum()


def test_real_ct_mandible_contour_lies_inside_the_bone_mask(sample_ct: Volume, mandible: np.ndarray) -> None:
    bone = threshold_segment(sample_ct, preset="bone", keep_largest=True).mask.array
    assert (bone & mandible).sum() / mandible.sum() > 0.8  # measured 0.86 (contours include the lining)
    neighbourhood = ndi.binary_dilation(mandible, structure=np.ones((3, 3, 3)), iterations=2)
    local_bone = bone & neighbourhood
    dice = 2 * (local_bone & mandible).sum() / (local_bone.sum() + mandible.sum())
    assert dice > 0.7, dice  # measured 0.82: near the mandible, bone threshold ~ mandible contour


def test_real_ct_otsu_lands_between_soft_tissue_and_bone(sample_ct: Volume) -> None:
    otsu = auto_threshold_hu(sample_ct, "otsu")
    assert 200 < otsu < 700, otsu  # 509 HU on this CT
    assert auto_threshold_hu(sample_ct, "otsu", region="volume") < -200  # the air / padding split
    bone = threshold_segment(sample_ct, method="otsu")
    assert bone.mask.array.sum() < threshold_segment(sample_ct, preset="bone").mask.array.sum()


def test_real_ct_clean_up_removes_fragments_and_keeps_the_skull(sample_ct: Volume) -> None:
    raw = threshold_segment(sample_ct, preset="bone").mask.array
    cleaned = threshold_segment(sample_ct, preset="bone", min_island_mm3=1000.0, fill_holes=True).mask.array
    _, n_raw = ndi.label(raw, structure=np.ones((3, 3, 3)))
    _, n_clean = ndi.label(cleaned, structure=np.ones((3, 3, 3)))
    assert n_clean < n_raw
    assert cleaned.sum() >= 0.95 * raw.sum()  # fragments are few voxels; holes add
