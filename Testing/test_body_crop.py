"""The network runs only on a box around the body (``restrict_to_body``, on by default)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from test_segment import ThresholdNet, package, rotation

from SegDeepLogic import Volume, read_volume
from SegDeepLogic.body import BODY_MARGIN_MM, find_body_crop
from SegDeepLogic.cli import main
from SegDeepLogic.inferers import window_slices
from SegDeepLogic.io import to_sitk
from SegDeepLogic.segment import load_model, segment_volume

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = ROOT / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The box
# --------------------------------------------------------------------------------------------
def test_box_surrounds_the_largest_piece_with_the_margin_and_ignores_a_separate_couch() -> None:
    a = np.full((60, 50, 70), -1000.0, np.float32)
    a[20:30, 10:25, 30:50] = 40.0  # body
    a[20:30, 45:47, 5:65] = 200.0  # couch: separate, smaller
    crop = find_body_crop(a, (2.0, 1.0, 1.0), (4, 4, 4), margin_mm=4.0)
    assert crop.box == (slice(18, 32), slice(6, 29), slice(26, 54))
    assert crop.fraction == pytest.approx(14 * 23 * 28 / a.size)
    record = crop.as_dict()
    assert record["box_kji"] == [[18, 32], [6, 29], [26, 54]] and record["threshold_hu"] == -500.0
    assert record["margin_mm"] == 4.0 and record["grid_kji"] == [60, 50, 70]


def test_slices_where_only_a_separate_bone_column_shows_stay_in_the_box_along_the_axial_axis() -> None:
    a = np.full((80, 50, 50), -1000.0, np.float32)
    a[10:40, 15:35, 15:35] = 40.0  # the neck
    a[41:70, 30:34, 24:28] = 700.0  # further down only the spine shows (16 voxels a slice), not connected
    plain = find_body_crop(a, (1.0, 1.0, 1.0), (4, 4, 4), margin_mm=2.0)
    along = find_body_crop(a, (1.0, 1.0, 1.0), (4, 4, 4), margin_mm=2.0, axial_axis=0)
    assert plain.box[0] == slice(8, 42) and along.box[0] == slice(8, 72)
    assert plain.box[1:] == along.box[1:] == (slice(13, 37), slice(13, 37))


def test_box_is_grown_to_one_window_and_clipped_at_the_grid_edge() -> None:
    a = np.full((40, 40, 40), -1000.0, np.float32)
    a[0:3, 18:21, 37:40] = 40.0  # a small body touching three faces of the grid
    crop = find_body_crop(a, (1.0, 1.0, 1.0), (16, 16, 16), margin_mm=1.0)
    assert crop.box == (slice(0, 16), slice(11, 27), slice(24, 40))
    assert all(s.stop - s.start == 16 for s in crop.box)


@pytest.mark.parametrize(
    ("fill", "why"),
    [(-1000.0, "no voxel above -500 HU"), (40.0, "the body's box is the whole grid")],
    ids=["all-air", "body-fills-the-grid"],
)
def test_no_body_or_a_body_filling_the_grid_runs_on_the_whole_grid(fill: float, why: str) -> None:
    a = np.full((30, 30, 30), fill, np.float32)
    crop = find_body_crop(a, (1.0, 1.0, 1.0), (16, 16, 16))
    assert crop.box is None and why in crop.reason
    assert crop.crop(a) is a and crop.fraction == 1.0
    maps = torch.rand(3, 30, 30, 30)
    assert crop.paste(maps) is maps


def test_a_grid_smaller_than_the_window_is_the_whole_grid() -> None:
    a = np.full((10, 12, 40), -1000.0, np.float32)
    a[4:6, 5:7, 2:5] = 40.0
    crop = find_body_crop(a, (1.0, 1.0, 1.0), (16, 16, 16), margin_mm=0.0)
    assert crop.box == (slice(0, 10), slice(0, 12), slice(0, 16))


def test_pasted_maps_are_certain_background_outside_the_box() -> None:
    a = np.full((20, 20, 20), -1000.0, np.float32)
    a[2:6, 2:6, 2:6] = 40.0
    crop = find_body_crop(a, (1.0, 1.0, 1.0), (8, 8, 8), margin_mm=1.0)
    inner = torch.rand(4, *crop.crop(a).shape)
    full = crop.paste(inner)
    assert full.shape == (4, 20, 20, 20)
    assert torch.equal(full[(slice(None), *crop.box)], inner)
    outside = torch.ones(20, 20, 20, dtype=torch.bool)
    outside[crop.box] = False
    assert torch.all(full[0][outside] == 1) and torch.all(full[1:][:, outside] == 0)


# --------------------------------------------------------------------------------------------
# In the pipeline: a body in a corner of a large air volume
# --------------------------------------------------------------------------------------------
def corner_phantom(direction: np.ndarray | None = None) -> Volume:
    """96³ mm of air (1 mm voxels) with a 24 mm soft-tissue cube in one corner holding a 7 mm bone sphere."""
    hu = np.full((96, 96, 96), -1000, np.int16)
    hu[:24, 72:, :24] = 40
    k, j, i = np.indices(hu.shape)
    hu[(k - 11.3) ** 2 + (j - 83.6) ** 2 + (i - 12.2) ** 2 <= 7.0**2] = 1000
    return Volume(hu, (1.0, 1.0, 1.0), (10.0, -20.0, 30.0), np.eye(3) if direction is None else np.asarray(direction, float))


@pytest.fixture(scope="module")
def corner_runs():
    ct = corner_phantom()
    runs = {}
    for restrict in (True, False):
        net = ThresholdNet(slope=4.0)
        result = segment_volume(ct, package(net), restrict_to_body=restrict, batch_size=1, uncertainty=True)
        runs[restrict] = (net, result)
    return ct, runs


def test_windows_outside_the_body_box_are_never_run(corner_runs) -> None:
    _ct, runs = corner_runs
    (net_on, on), (net_off, _off) = runs[True], runs[False]
    grid = tuple(on.parameters["model_grid"]["size_ijk"][::-1])  # 48³ model voxels of 2 mm
    box = on.parameters["restrict_to_body"]["box_kji"]
    # The cube is 12 model voxels, grown by the margin (5 voxels) on its open side: 17 long. The model
    # grid is LPI (k runs inferior), so the CT's first slices are the model's last.
    assert box == [[31, 48], [31, 48], [0, 17]]
    assert sum(net_off.calls) == len(window_slices(grid, (16, 16, 16), 0.5)) == 125
    assert sum(net_on.calls) == len(window_slices([b - a for a, b in box], (16, 16, 16), 0.5)) == 8


def test_restricted_result_equals_the_whole_grid_result_inside_the_body_box(corner_runs) -> None:
    ct, runs = corner_runs
    on, off = runs[True][1], runs[False][1]
    # This network sees one voxel at a time, so only the window placement could differ: labels are identical.
    np.testing.assert_array_equal(on.labels.array, off.labels.array)
    bone = np.argwhere(on.labels.array == 1)
    assert len(bone) * ct.voxel_volume_mm3 > 0.8 * 4 / 3 * math.pi * 7.0**3  # the sphere, at the 2 mm model grid's blur
    assert np.linalg.norm(bone - [11.3, 83.6, 12.2], axis=1).max() < 7.0 + 4.0
    # The uncertainty agrees inside the body's box (CT voxels within it) and is 0 well outside it.
    body_mm = 24 + int(BODY_MARGIN_MM)  # the box: the cube and the margin on its open side
    inside = np.zeros(ct.array.shape, bool)
    inside[: body_mm - 4, 96 - body_mm + 4 :, : body_mm - 4] = True
    np.testing.assert_allclose(on.uncertainty.array[inside], off.uncertainty.array[inside], atol=1e-5)
    far = np.ones(ct.array.shape, bool)
    far[: body_mm + 4, 96 - body_mm - 4 :, : body_mm + 4] = False
    assert np.all(on.uncertainty.array[far] == 0) and off.uncertainty.array[far].max() > 0


def test_the_option_and_its_box_are_recorded_in_the_result(corner_runs) -> None:
    _ct, runs = corner_runs
    on, off = runs[True][1], runs[False][1]
    record = on.parameters["restrict_to_body"]
    assert record["threshold_hu"] == -500.0 and record["margin_mm"] == BODY_MARGIN_MM
    assert record["fraction_of_grid"] == pytest.approx(17**3 / 48**3, abs=1e-4)
    assert off.parameters["restrict_to_body"] is False
    assert json.loads(json.dumps(on.summary()))["parameters"]["restrict_to_body"]["box_kji"] == record["box_kji"]


def test_an_all_air_ct_runs_the_whole_grid_and_says_why() -> None:
    ct = Volume(np.full((40, 40, 40), -1000, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    net = ThresholdNet()
    result = segment_volume(ct, package(net), batch_size=1, uncertainty=False)
    assert result.parameters["restrict_to_body"]["box_kji"] is None
    assert "no voxel above" in result.parameters["restrict_to_body"]["note"]
    assert sum(net.calls) == 8 and not result.labels.array.any()


def test_on_an_oblique_grid_the_restricted_labels_equal_the_whole_grid_labels() -> None:
    ct = corner_phantom(rotation([1, 2, 3], 0.4))
    on_net, off_net = ThresholdNet(), ThresholdNet()
    on = segment_volume(ct, package(on_net), batch_size=1, uncertainty=False)
    off = segment_volume(ct, package(off_net), batch_size=1, uncertainty=False, restrict_to_body=False)
    assert on.parameters["restrict_to_body"]["box_kji"] is not None
    assert sum(on_net.calls) < sum(off_net.calls)
    np.testing.assert_array_equal(on.labels.array, off.labels.array)
    assert (on.labels.array == 1).sum() > 1000


# --------------------------------------------------------------------------------------------
# A trained network on the sample CT; the CLI switch
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")
def test_trained_model_on_the_sample_ct_gives_the_same_structures_with_fewer_windows() -> None:
    ct = read_volume(SAMPLE_CT)
    model = load_model(TEST_MODEL)
    calls: list[int] = []
    hook = model.network.register_forward_hook(lambda _m, x, _y: calls.append(int(x[0].shape[0])))
    try:
        on = segment_volume(ct, model, uncertainty=False)
        n_on = sum(calls)
        calls.clear()
        off = segment_volume(ct, model, uncertainty=False, restrict_to_body=False)
        n_off = sum(calls)
    finally:
        hook.remove()
    assert 0 < n_on < n_off
    # Inside the patient (the largest piece above -500 HU) the structures agree; outside it the
    # whole-grid run also labels part of the couch "bone", which the restricted run leaves out.
    pieces, _ = ndimage.label(ct.array > -500)
    body = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    for s in on.segments:
        a, b = (on.labels.array == s.value) & body, (off.labels.array == s.value) & body
        assert b.sum() > 1000
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95, s.name


@pytest.mark.skipif(not (TEST_MODEL / "model.json").is_file(), reason="test model package not built")
def test_cli_no_body_crop_switches_it_off_and_the_summary_says_so(tmp_path: Path) -> None:
    ct = corner_phantom()
    ct = Volume(ct.array, (2.0, 2.0, 2.0), ct.origin, ct.direction)  # 192 mm: 48 voxels of the test model's 4 mm
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(to_sitk(ct), str(ct_path))
    records = {}
    for flag in ([], ["--no-body-crop"]):
        out = tmp_path / f"out{len(flag)}"
        args = ["segment", str(ct_path), "-o", str(out / "seg.nii.gz"), "--model", str(TEST_MODEL)]
        assert main([*args, "--json", str(out / "s.json"), "--no-progress", "--allow-mismatch", *flag]) == 0
        records[bool(flag)] = json.loads((out / "s.json").read_text())["parameters"]["restrict_to_body"]
    assert records[True] is False
    assert records[False]["box_kji"] is not None and records[False]["fraction_of_grid"] < 0.5


@pytest.mark.parametrize("direction", [np.eye(3), rotation([0, 0, 1], np.pi / 2) @ np.diag([1, -1, 1])], ids=["lps", "permuted"])
def test_resampling_back_only_the_ct_region_that_reads_the_box_gives_the_same_maps(direction) -> None:
    from SegDeepLogic.body import region_on_ct
    from SegDeepLogic.segment import Grid, _to_input_grid, axis_maps, model_grid

    ct = Volume(np.zeros((50, 45, 40), np.int16), (1.1, 0.9, 1.3), (5.0, -7.0, 2.0), direction)
    grid = model_grid(ct, "LPI", (2.0, 2.0, 2.0))
    crop = find_body_crop(np.zeros(grid.shape_kji), (2.0, 2.0, 2.0), (8, 8, 8))  # the whole grid: no box
    assert crop.box is None
    box = (slice(3, 14), slice(5, 19), slice(2, 12))
    rng = np.random.default_rng(0)
    inner = torch.from_numpy(rng.dirichlet(np.ones(3), size=[s.stop - s.start for s in box]).astype(np.float32))
    maps = dataclasses_replace_box(crop, box).paste(inner.permute(3, 0, 1, 2).contiguous())
    channels = [*maps, torch.from_numpy(rng.random(grid.shape_kji, np.float32)) * (maps[0] < 1)]  # an extra map, 0 outside
    region = region_on_ct(box, axis_maps(grid, Grid.of(ct)), ct.array.shape, grid.shape_kji)
    assert region is not None and np.prod([r.stop - r.start for r in region]) < 0.5 * ct.array.size
    lut = np.array([0, 1, 2], np.uint8)
    kwargs = {"n_classes": 3, "lut": lut, "thresholds": None, "want_probabilities": True, "report_fraction": lambda f: None}
    whole = _to_input_grid(channels, grid, ct, **kwargs)
    part = _to_input_grid(channels, grid, ct, box=box, **kwargs)
    np.testing.assert_array_equal(part[0], whole[0])
    np.testing.assert_allclose(part[1][0], whole[1][0], atol=1e-6)
    np.testing.assert_array_equal(part[2], whole[2])
    outside = np.ones(ct.array.shape, bool)
    outside[region] = False
    assert not part[0][outside].any() and not whole[1][0][outside].any() and part[0].any()


def dataclasses_replace_box(crop, box):
    import dataclasses

    return dataclasses.replace(crop, box=box)


def test_check_outside_body_script_finds_no_reference_voxel_outside_the_sample_box(tmp_path: Path) -> None:
    """``scripts/check_outside_body.py`` (the evidence in docs/speed_accuracy) runs on the current engine."""
    import os
    import subprocess
    import sys

    out = tmp_path / "outside.json"
    cmd = [sys.executable, "scripts/check_outside_body.py", str(SAMPLE_CT), str(SAMPLE_CT.parent), "--json", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    (row,) = json.loads(out.read_text())
    assert row["box_kji"] is not None and 0 < row["fraction_of_grid"] < 1
    assert row["outside_voxels"] == {}
