"""Mask comparison metrics: analytic truths, MONAI 1.6.1 equality, DeepMind agreement, edge cases."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from SegDeepLogic import read_volume
from SegDeepLogic.errors import CancelledError, GeometryMismatchError, VolumeError
from SegDeepLogic.metrics import (
    DEFINITIONS,
    MaskComparison,
    average_symmetric_surface_distance,
    compare_masks,
    dice,
    disagreement_masks,
    hausdorff_distance,
    jaccard,
    surface_dice,
    surface_voxels,
)
from SegDeepLogic.progress import CancelToken
from SegDeepLogic.volume import Volume

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236"
REL = 1e-6  # MONAI works in float32


# --- helpers ----------------------------------------------------------------------------------
def sphere(shape: tuple[int, ...], spacing: tuple[float, ...], radius_mm: float, centre=None) -> np.ndarray:
    centre = [n // 2 for n in shape] if centre is None else centre
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((x - c) * s) ** 2 for x, c, s in zip(grid, centre, spacing, strict=True)) <= radius_mm**2


def blob(shape: tuple[int, ...], seed: int, fraction: float = 0.5, sigma: float = 2.0) -> np.ndarray:
    """A random smooth mask filling ``fraction`` of the image (several components, touching the border)."""
    smooth = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return smooth > np.quantile(smooth, 1.0 - fraction)


def monai_values(a: np.ndarray, b: np.ndarray, spacing, tolerance_mm: float = 1.0, percentile: float = 95.0) -> dict:
    """The five metrics as a MONAI user computes them (A = y_pred, B = y)."""
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    ya = torch.as_tensor(np.asarray(a, dtype=np.float32))[None, None]
    yb = torch.as_tensor(np.asarray(b, dtype=np.float32))[None, None]
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": metrics.compute_dice(ya, yb, include_background=True).item(),
            "hd_mm": metrics.compute_hausdorff_distance(ya, yb, include_background=True, spacing=sp).item(),
            "hd95_mm": metrics.compute_hausdorff_distance(
                ya, yb, include_background=True, spacing=sp, percentile=percentile
            ).item(),
            "assd_mm": metrics.compute_average_surface_distance(
                ya, yb, include_background=True, symmetric=True, spacing=sp
            ).item(),
            "surface_dice": metrics.compute_surface_dice(ya, yb, [tolerance_mm], include_background=True, spacing=sp).item(),
        }


def assert_matches_monai(result: MaskComparison, expected: dict) -> None:
    # maxima and percentiles are bit-identical; the rest agree to float32 rounding
    assert result.hd_mm == expected["hd_mm"]
    assert result.hd95_mm == expected["hd95_mm"]
    for key in ("dice", "assd_mm", "surface_dice"):
        assert getattr(result, key) == pytest.approx(expected[key], rel=REL, abs=1e-12), key


def brute_force(a: np.ndarray, b: np.ndarray, spacing, tolerance_mm: float, percentile: float) -> dict:
    """The documented definitions, implemented independently (all pairwise distances, float64)."""
    cross = ndimage.generate_binary_structure(a.ndim, 1)
    surf_a = a & ~ndimage.binary_erosion(a, cross, border_value=0)
    surf_b = b & ~ndimage.binary_erosion(b, cross, border_value=0)
    dist = cdist(np.argwhere(surf_a) * spacing, np.argwhere(surf_b) * spacing)
    d_ab, d_ba = dist.min(axis=1), dist.min(axis=0)
    pooled = np.concatenate([d_ab, d_ba])
    return {
        "hd_mm": max(d_ab.max(), d_ba.max()),
        "hd95_mm": max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)),
        "assd_mm": pooled.mean(),
        "surface_dice": np.count_nonzero(pooled <= tolerance_mm) / pooled.size,
        "surface_voxels_a": int(surf_a.sum()),
        "surface_voxels_b": int(surf_b.sum()),
    }


def deepmind(a: np.ndarray, b: np.ndarray, spacing) -> dict:
    sd = pytest.importorskip("surface_distance")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.compute_surface_distances(np.asarray(b, bool), np.asarray(a, bool), list(spacing))  # (gt, pred)


# --- analytic truths ----------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_shifted_by_whole_voxels_has_hd_and_hd95_equal_to_the_shift_and_exact_overlap(axis: int) -> None:
    spacing = (2.5, 0.75, 1.5)  # exactly representable: distances are exact
    lengths, shift = [6, 12, 10], 2
    a = np.zeros((14, 20, 18), bool)
    a[4:10, 3:15, 2:12] = True
    b = np.roll(a, shift, axis=axis)
    r = compare_masks(a, b, spacing_mm=spacing)
    assert r.hd_mm == shift * spacing[axis]
    assert r.hd95_mm == shift * spacing[axis]
    overlap = (lengths[axis] - shift) / lengths[axis]
    assert r.dice == pytest.approx(overlap, rel=1e-15)
    assert r.sensitivity == r.precision == pytest.approx(overlap, rel=1e-15)
    assert r.jaccard == pytest.approx((lengths[axis] - shift) / (lengths[axis] + shift), rel=1e-15)
    box_ml = 6 * 12 * 10 * np.prod(spacing) / 1000
    assert r.volume_a_ml == r.volume_b_ml == pytest.approx(box_ml, rel=1e-15)
    assert r.volume_difference_ml == 0.0
    assert r.only_a_ml == r.only_b_ml == pytest.approx(box_ml * shift / lengths[axis], rel=1e-15)
    assert r.voxels_both == 6 * 12 * 10 * (lengths[axis] - shift) // lengths[axis]


def test_shift_with_inexact_spacing_equals_the_shift_to_float32_precision() -> None:
    spacing = (3.0, 3.90625, 0.9765)
    a = np.zeros((10, 12, 14), bool)
    a[2:7, 3:9, 4:10] = True
    r = compare_masks(a, np.roll(a, 3, axis=2), spacing_mm=spacing)
    assert r.hd_mm == pytest.approx(3 * 0.9765, rel=REL)
    assert r.hd95_mm == pytest.approx(3 * 0.9765, rel=REL)


def test_concentric_spheres_are_the_radius_gap_apart_within_one_voxel_diagonal() -> None:
    spacing = (1.3, 0.8, 1.0)
    diagonal = float(np.linalg.norm(spacing))
    shape, r1, r2 = (24, 36, 30), 6.0, 10.0
    inner, outer = sphere(shape, spacing, r1), sphere(shape, spacing, r2)
    r = compare_masks(inner, outer, spacing_mm=spacing)
    gap = r2 - r1
    for value in (r.hd_mm, r.hd95_mm, r.assd_mm):
        assert abs(value - gap) <= diagonal
    assert r.hd95_mm <= r.hd_mm
    assert r.precision == 1.0  # the inner sphere lies inside the outer one
    assert r.sensitivity == pytest.approx(r.voxels_a / r.voxels_b)
    assert r.dice == pytest.approx(2 * r.voxels_a / (r.voxels_a + r.voxels_b))
    assert r.volume_a_ml == pytest.approx(4 / 3 * math.pi * r1**3 / 1000, rel=0.05)
    assert r.volume_b_ml == pytest.approx(4 / 3 * math.pi * r2**3 / 1000, rel=0.05)
    assert r.volume_difference_ml == pytest.approx(r.volume_a_ml - r.volume_b_ml)
    assert compare_masks(inner, outer, spacing_mm=spacing, tolerance_mm=gap + diagonal).surface_dice == 1.0
    assert compare_masks(inner, outer, spacing_mm=spacing, tolerance_mm=gap - diagonal).surface_dice == 0.0


def test_identical_masks_have_zero_distances_and_perfect_scores() -> None:
    a = blob((12, 13, 14), seed=3)
    r = compare_masks(a, a.copy(), spacing_mm=(2.0, 1.0, 0.5))
    assert (r.dice, r.jaccard, r.sensitivity, r.precision, r.surface_dice) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (r.hd_mm, r.hd95_mm, r.assd_mm) == (0.0, 0.0, 0.0)
    assert r.notes == ()


# --- MONAI 1.6.1 and the documented definitions ---------------------------------------------------
CASES = {
    "spheres": lambda: (sphere((20, 28, 24), (1.3, 0.8, 1.0), 5.0), sphere((20, 28, 24), (1.3, 0.8, 1.0), 8.0, (11, 13, 12))),
    "shifted_boxes": lambda: (np.pad(np.ones((5, 8, 6), bool), 4), np.roll(np.pad(np.ones((5, 8, 6), bool), 4), 2, axis=1)),
    "random_blobs_touching_border": lambda: (blob((14, 15, 16), seed=1), blob((14, 15, 16), seed=1, fraction=0.45)),
    "unrelated_blobs": lambda: (blob((12, 14, 10), seed=4, fraction=0.3), blob((12, 14, 10), seed=5, fraction=0.3)),
    "2d": lambda: (blob((30, 25), seed=2), np.roll(blob((30, 25), seed=2), 1, axis=0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_equal_monai_for_the_same_masks_and_spacing(case: str) -> None:
    a, b = CASES[case]()
    spacing = (1.3, 0.8, 1.0)[: a.ndim]
    r = compare_masks(a, b, spacing_mm=spacing, tolerance_mm=1.5, percentile=95.0)
    assert_matches_monai(r, monai_values(a, b, spacing, tolerance_mm=1.5, percentile=95.0))


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.0])
def test_percentile_hausdorff_equals_monai_for_other_percentiles(percentile: float) -> None:
    a, b = blob((14, 15, 16), seed=6), blob((14, 15, 16), seed=7)
    r = compare_masks(a, b, spacing_mm=(3.0, 0.9, 1.1), percentile=percentile)
    assert r.hd95_mm == monai_values(a, b, (3.0, 0.9, 1.1), percentile=percentile)["hd95_mm"]
    assert r.percentile == percentile


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_equal_a_brute_force_implementation_of_the_definitions(case: str) -> None:
    a, b = CASES[case]()
    spacing = (1.7, 0.6, 1.1)[: a.ndim]
    r = compare_masks(a, b, spacing_mm=spacing, tolerance_mm=1.234, percentile=95.0)
    expected = brute_force(a, b, np.array(spacing), 1.234, 95.0)
    for key in ("hd_mm", "hd95_mm", "assd_mm", "surface_dice"):
        assert getattr(r, key) == pytest.approx(expected[key], rel=REL), key
    assert (r.surface_voxels_a, r.surface_voxels_b) == (expected["surface_voxels_a"], expected["surface_voxels_b"])
    inter = np.count_nonzero(a & b)
    assert r.dice == 2 * inter / (a.sum() + b.sum())
    assert r.jaccard == inter / np.count_nonzero(a | b)


def test_surface_dice_counts_distances_equal_to_the_tolerance_as_within_like_monai() -> None:
    spacing = (0.3, 0.7, 0.1)  # not representable in binary: d <= tolerance is decided in float32
    a = np.zeros((10, 10, 10), bool)
    a[2:7, 3:8, 1:9] = True
    b = np.roll(a, 1, axis=0)
    r = compare_masks(a, b, spacing_mm=spacing, tolerance_mm=0.3)
    assert r.surface_dice == 1.0
    assert_matches_monai(r, monai_values(a, b, spacing, tolerance_mm=0.3))


def test_real_mandible_against_itself_dilated_by_one_voxel_equals_monai() -> None:
    mandible = read_volume(SAMPLE / "mandible.nii.gz")
    dilated = mandible.with_array(ndimage.binary_dilation(mandible.array.astype(bool)).astype(np.uint8))
    r = compare_masks(dilated, mandible, tolerance_mm=2.0)
    assert r.spacing_array_order_mm == mandible.spacing_kji
    assert r.precision < 1.0 and r.sensitivity == 1.0
    assert r.hd_mm == pytest.approx(max(mandible.spacing), rel=REL)  # one voxel along the coarsest axis
    assert_matches_monai(r, monai_values(dilated.array, mandible.array, mandible.spacing_kji, tolerance_mm=2.0))


def test_real_left_parotid_against_mirrored_right_parotid_equals_monai() -> None:
    left = read_volume(SAMPLE / "parotid_left.nii.gz")
    right = read_volume(SAMPLE / "parotid_right.nii.gz")
    mirrored = left.with_array(right.array[:, :, ::-1].copy())  # mirror left-right (the i axis)
    r = compare_masks(left, mirrored, tolerance_mm=3.0)
    assert 0 < r.dice < 1 and math.isfinite(r.hd_mm)
    assert r.volume_a_ml == pytest.approx(left.array.sum() * left.voxel_volume_mm3 / 1000)
    assert_matches_monai(r, monai_values(left.array, mirrored.array, left.spacing_kji, tolerance_mm=3.0))


# --- DeepMind surface_distance (area-weighted surfels) --------------------------------------------
def test_hausdorff_agrees_with_deepmind_within_one_voxel_diagonal_on_spheres() -> None:
    pytest.importorskip("surface_distance")
    import surface_distance as sd

    spacing = (1.3, 0.8, 1.0)
    diagonal = float(np.linalg.norm(spacing))
    inner, outer = sphere((24, 36, 30), spacing, 6.0), sphere((24, 36, 30), spacing, 10.0)
    ours = compare_masks(inner, outer, spacing_mm=spacing)
    dm = deepmind(inner, outer, spacing)
    # Both surfaces lie within half a voxel diagonal of each other, so the Hausdorff distances
    # differ by at most one diagonal; the area-weighted percentile and mean stay as close here.
    assert abs(ours.hd_mm - sd.compute_robust_hausdorff(dm, 100)) <= diagonal
    assert abs(ours.hd95_mm - sd.compute_robust_hausdorff(dm, 95)) <= diagonal
    pooled = (
        np.sum(dm["distances_gt_to_pred"] * dm["surfel_areas_gt"]) + np.sum(dm["distances_pred_to_gt"] * dm["surfel_areas_pred"])
    ) / (dm["surfel_areas_gt"].sum() + dm["surfel_areas_pred"].sum())
    assert abs(ours.assd_mm - pooled) <= diagonal
    gap = 4.0
    for tolerance, expected in [(gap - diagonal - 0.1, 0.0), (gap + diagonal + 0.1, 1.0)]:
        assert compare_masks(inner, outer, spacing_mm=spacing, tolerance_mm=tolerance).surface_dice == expected
        assert sd.compute_surface_dice_at_tolerance(dm, tolerance) == expected


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_shifted_boxes_give_the_same_hausdorff_and_dice_as_deepmind(axis: int) -> None:
    pytest.importorskip("surface_distance")
    import surface_distance as sd

    spacing = (2.5, 0.75, 1.5)
    a = np.zeros((20, 20, 20), bool)
    a[5:11, 4:16, 3:15] = True
    b = np.roll(a, 2, axis=axis)
    ours = compare_masks(a, b, spacing_mm=spacing)
    dm = deepmind(a, b, spacing)
    assert ours.hd_mm == sd.compute_robust_hausdorff(dm, 100) == 2 * spacing[axis]
    assert ours.hd95_mm == sd.compute_robust_hausdorff(dm, 95)
    assert ours.dice == pytest.approx(sd.compute_dice_coefficient(b, a))
    assert abs(ours.assd_mm - np.mean(sd.compute_average_surface_distance(dm))) <= np.linalg.norm(spacing)


# --- empty masks and the image border ------------------------------------------------------------
def test_two_empty_masks_give_perfect_scores_zero_distances_and_a_note() -> None:
    empty = np.zeros((6, 7, 8), bool)
    r = compare_masks(empty, empty)
    assert (r.dice, r.jaccard, r.sensitivity, r.precision, r.surface_dice) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (r.hd_mm, r.hd95_mm, r.assd_mm) == (0.0, 0.0, 0.0)
    assert (r.volume_a_ml, r.volume_b_ml, r.volume_difference_ml) == (0.0, 0.0, 0.0)
    assert len(r.notes) == 1 and "both masks are empty" in r.notes[0]


@pytest.mark.parametrize("empty_side", ["a", "b"])
def test_one_empty_mask_gives_zero_scores_infinite_distances_and_a_note(empty_side: str) -> None:
    full = np.zeros((6, 7, 8), bool)
    full[1:4, 2:5, 3:6] = True
    empty = np.zeros_like(full)
    a, b = (empty, full) if empty_side == "a" else (full, empty)
    r = compare_masks(a, b, spacing_mm=(2.0, 1.0, 1.0))
    assert (r.dice, r.jaccard, r.sensitivity, r.precision, r.surface_dice) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert r.hd_mm == r.hd95_mm == r.assd_mm == math.inf
    assert not any(math.isnan(v) for v in (r.dice, r.sensitivity, r.precision, r.hd_mm, r.assd_mm))
    assert ("A (test)" if empty_side == "a" else "B (reference)") in r.notes[0]
    assert r.volume_difference_ml == pytest.approx((-1 if empty_side == "a" else 1) * 27 * 2.0 / 1000)
    assert r.surface_voxels_a + r.surface_voxels_b == 26
    d = r.to_dict()
    assert d["hd_mm"] is None and d["notes"] == list(r.notes)
    json.dumps(d, allow_nan=False)


def test_masks_touching_the_image_border_count_the_border_as_surface_and_give_finite_values() -> None:
    a = np.ones((6, 7, 8), bool)  # fills the image: its surface is the outermost layer
    assert surface_voxels(a).sum() == a.size - 4 * 5 * 6
    b = a.copy()
    b[:, :, -2:] = False  # touches five of the six image faces
    r = compare_masks(a, b, spacing_mm=(1.0, 1.0, 2.0))
    assert all(math.isfinite(v) for v in (r.hd_mm, r.hd95_mm, r.assd_mm, r.surface_dice))
    assert r.hd_mm == 4.0  # a's face at i = 7 is two 2 mm columns from b's face at i = 5
    assert_matches_monai(r, monai_values(a, b, (1.0, 1.0, 2.0)))


# --- inputs ---------------------------------------------------------------------------------------
def test_integer_masks_use_every_nonzero_label_as_foreground() -> None:
    a = blob((10, 11, 12), seed=8)
    b = blob((10, 11, 12), seed=9)
    as_bool = compare_masks(a, b)
    as_int = compare_masks(a.astype(np.int16) * 7, b.astype(np.uint8))
    assert as_int == as_bool


def test_float_masks_are_refused_with_a_hint_to_threshold() -> None:
    with pytest.raises(VolumeError, match="threshold it first"):
        compare_masks(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool))


def test_masks_of_different_shapes_raise_geometry_mismatch() -> None:
    with pytest.raises(GeometryMismatchError, match=r"differ in shape: \(4, 4, 4\) vs \(4, 4, 5\)"):
        compare_masks(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool))
    with pytest.raises(GeometryMismatchError):
        disagreement_masks(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_volumes_on_different_grids_raise_geometry_mismatch() -> None:
    a = Volume(np.ones((4, 4, 4), np.uint8), spacing=(1.0, 1.0, 1.0))
    b = Volume(np.ones((4, 4, 4), np.uint8), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        compare_masks(a, b)
    c = Volume(np.ones((4, 4, 4), np.uint8), spacing=(1.0, 1.0, 1.0), origin=(5.0, 0.0, 0.0))
    with pytest.raises(GeometryMismatchError, match="origin"):
        disagreement_masks(a, c)


def test_volume_spacing_is_used_and_converted_to_array_order() -> None:
    array = np.zeros((8, 8, 8), np.uint8)
    array[2:5, 2:5, 2:5] = 1
    shifted = np.roll(array, 1, axis=0)  # one slice along k
    vol = Volume(array, spacing=(1.0, 1.0, 3.0))  # (i, j, k): 3 mm slices
    r = compare_masks(vol, vol.with_array(shifted))
    assert r.hd_mm == 3.0
    assert r.spacing_array_order_mm == (3.0, 1.0, 1.0)
    assert r.volume_a_ml == 27 * 3.0 / 1000
    with pytest.raises(ValueError, match="spacing comes from the Volume"):
        compare_masks(vol, shifted, spacing_mm=(3.0, 1.0, 1.0))


def test_array_spacing_is_in_array_axis_order() -> None:
    a = np.zeros((8, 8, 8), bool)
    a[2:5, 2:5, 2:5] = True
    assert compare_masks(a, np.roll(a, 1, axis=0), spacing_mm=(3.0, 1.0, 1.0)).hd_mm == 3.0
    assert compare_masks(a, np.roll(a, 1, axis=2), spacing_mm=(3.0, 1.0, 1.0)).hd_mm == 1.0
    assert compare_masks(a, np.roll(a, 1, axis=2), spacing_mm=0.5).hd_mm == 0.5
    assert compare_masks(a, np.roll(a, 1, axis=2)).hd_mm == 1.0  # default: 1 mm voxels


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, -1.0, 1.0), (1.0, math.nan, 1.0), (0.0,)])
def test_invalid_spacing_is_refused(spacing) -> None:
    with pytest.raises(VolumeError, match="spacing_mm"):
        compare_masks(np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool), spacing_mm=spacing)


@pytest.mark.parametrize(
    "kwargs", [{"tolerance_mm": -1.0}, {"tolerance_mm": math.inf}, {"percentile": 101.0}, {"percentile": -5.0}]
)
def test_invalid_tolerance_or_percentile_is_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        compare_masks(np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool), **kwargs)


def test_masks_must_be_2d_or_3d() -> None:
    with pytest.raises(VolumeError, match="2D or 3D"):
        compare_masks(np.ones(5, bool), np.ones(5, bool))


# --- outputs --------------------------------------------------------------------------------------
def test_disagreement_masks_are_set_differences_returned_on_the_input_grid() -> None:
    a = blob((9, 10, 11), seed=10)
    b = blob((9, 10, 11), seed=11)
    vol_a = Volume(a.astype(np.uint8), spacing=(0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0))
    only_a, only_b = disagreement_masks(vol_a, vol_a.with_array(b))
    assert isinstance(only_a, Volume) and only_a.same_grid(vol_a) and only_b.same_grid(vol_a)
    np.testing.assert_array_equal(only_a.array, a & ~b)
    np.testing.assert_array_equal(only_b.array, b & ~a)
    r = compare_masks(vol_a, vol_a.with_array(b))
    assert r.only_a_ml == pytest.approx(only_a.array.sum() * vol_a.voxel_volume_mm3 / 1000)
    arr_a, arr_b = disagreement_masks(a, b)
    assert isinstance(arr_a, np.ndarray) and arr_a.dtype == bool
    np.testing.assert_array_equal(arr_a | (a & b), a)
    np.testing.assert_array_equal(arr_b, only_b.array)


def test_to_dict_is_json_ready_with_units_in_keys_roles_and_definitions() -> None:
    a = blob((8, 9, 10), seed=12)
    d = compare_masks(a, np.roll(a, 1, axis=1), spacing_mm=(2.0, 1.0, 1.0), tolerance_mm=2.0).to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    for key in ("dice", "jaccard", "sensitivity", "precision", "volume_a_ml", "volume_b_ml", "volume_difference_ml"):
        assert isinstance(d[key], float)
    for key in ("hd_mm", "hd95_mm", "assd_mm", "surface_dice", "tolerance_mm", "only_a_ml", "only_b_ml"):
        assert key in d
    assert d["spacing_array_order_mm"] == [2.0, 1.0, 1.0]
    assert d["definitions"] == DEFINITIONS
    assert "prediction" in d["roles"]["a"] and "reference" in d["roles"]["b"]


def test_single_metric_functions_agree_with_compare_masks() -> None:
    a, b = blob((10, 12, 14), seed=13), blob((10, 12, 14), seed=13, fraction=0.4)
    spacing = (2.0, 0.8, 0.8)
    r = compare_masks(a, b, spacing_mm=spacing, tolerance_mm=1.0, percentile=95.0)
    assert dice(a, b) == r.dice
    assert jaccard(a, b) == r.jaccard
    assert hausdorff_distance(a, b, spacing_mm=spacing) == r.hd_mm
    assert hausdorff_distance(a, b, spacing_mm=spacing, percentile=95.0) == r.hd95_mm
    assert average_symmetric_surface_distance(a, b, spacing_mm=spacing) == r.assd_mm
    assert surface_dice(a, b, tolerance_mm=1.0, spacing_mm=spacing) == r.surface_dice
    empty = np.zeros_like(a)
    assert dice(empty, empty) == jaccard(empty, empty) == 1.0
    assert dice(a, empty) == jaccard(a, empty) == 0.0


def test_surface_voxels_keeps_volume_geometry() -> None:
    vol = Volume(sphere((9, 9, 9), (1, 1, 1), 3.5).astype(np.uint8), spacing=(1.0, 1.0, 1.0), origin=(4.0, 5.0, 6.0))
    surf = surface_voxels(vol)
    assert isinstance(surf, Volume) and surf.same_grid(vol)
    assert surf.array.sum() == compare_masks(vol, vol).surface_voxels_a


def test_progress_reaches_one_and_cancel_stops_the_comparison() -> None:
    a = blob((8, 8, 8), seed=14)
    seen: list[tuple[float, str]] = []
    compare_masks(a, a, progress=lambda f, stage: seen.append((f, stage)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        compare_masks(a, a, cancel=token)
