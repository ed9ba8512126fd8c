"""Masks become closed, outward, correctly placed surfaces in mm; reports and files tell the truth."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from SegDeepLogic import CancelledError, MeshError, Volume, mesh_io, read_volume
from SegDeepLogic.mesh import (
    Mesh,
    decimate_mesh,
    mask_to_mesh,
    merge_meshes,
    mesh_from_vtk,
    mesh_to_vtk,
    smooth_mesh,
    smoothing_passband,
    vertex_normals,
)
from SegDeepLogic.mesh_io import export_segments, read_mesh, safe_filename, write_mesh
from SegDeepLogic.mesh_report import enclosed_volume_mm3, mesh_report, mesh_topology, surface_area_mm2
from SegDeepLogic.progress import CancelToken

SAMPLE_CT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"

SPACING = (0.9, 1.1, 1.6)  # anisotropic (i, j, k) mm
CENTRE_LPS = np.array([-40.0, 25.0, 110.0])
RADIUS = 9.0


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    cz, sz = math.cos(math.radians(z_deg)), math.sin(math.radians(z_deg))
    cx, sx = math.cos(math.radians(x_deg)), math.sin(math.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


def grid_around(centre_lps: np.ndarray, shape_ijk: tuple[int, int, int], direction: np.ndarray, spacing=SPACING) -> Volume:
    """An empty grid whose middle voxel centre sits at ``centre_lps``."""
    middle = (np.array(shape_ijk) - 1) / 2
    origin = centre_lps - direction @ (np.array(spacing) * middle)
    return Volume(np.zeros(shape_ijk[::-1], dtype=bool), spacing, origin, direction)


def ball(grid: Volume, centre_lps: np.ndarray, radius_mm: float) -> Volume:
    """Voxels whose centre lies within ``radius_mm`` of ``centre_lps`` (physical truth)."""
    k, j, i = np.indices(grid.array.shape)
    points = grid.index_to_physical(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    inside = np.linalg.norm(points - centre_lps, axis=1) <= radius_mm
    return grid.with_array(inside.reshape(grid.array.shape))


@pytest.fixture(scope="module")
def rotated_sphere() -> Volume:
    return ball(grid_around(CENTRE_LPS, (26, 22, 16), rotation(30, 20)), CENTRE_LPS, RADIUS)


@pytest.fixture(scope="module")
def sphere_meshes(rotated_sphere: Volume) -> tuple[Mesh, Mesh]:
    return mask_to_mesh(rotated_sphere, return_raw=True)


def tetra() -> Mesh:
    return Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


# --- geometry ------------------------------------------------------------------------------
def test_sphere_mesh_is_watertight_manifold_single_shell_with_outward_normals(
    rotated_sphere: Volume, sphere_meshes: tuple[Mesh, Mesh]
) -> None:
    mesh, raw = sphere_meshes
    r = mesh_report(mesh, mask=rotated_sphere, reference=raw)
    assert r.watertight and r.manifold and r.consistently_oriented and r.outward_normals and r.print_ready
    assert r.shell_count == 1 and r.euler_characteristic == 2
    assert r.space == "LPS" and mesh.space == "LPS"
    # the vertex normals point away from the centre
    radial = (mesh.vertices - CENTRE_LPS) / np.linalg.norm(mesh.vertices - CENTRE_LPS, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", mesh.normals, radial).min() > 0.5
    # the fast normals (VTK in index space, mapped by the inverse transpose) are the mm-space ones
    np.testing.assert_allclose(mesh.normals, vertex_normals(mesh.vertices, mesh.faces), atol=1e-5)
    decimated = mask_to_mesh(rotated_sphere, decimation=0.5)
    np.testing.assert_allclose(decimated.normals, vertex_normals(decimated.vertices, decimated.faces))


def test_smoothing_does_not_shrink_the_sphere(rotated_sphere: Volume, sphere_meshes: tuple[Mesh, Mesh]) -> None:
    truth_ml = 4 / 3 * math.pi * RADIUS**3 / 1000
    mesh, raw = sphere_meshes
    r = mesh_report(mesh, mask=rotated_sphere, reference=raw)
    assert r.volume_ml == pytest.approx(truth_ml, rel=0.03)
    assert r.mask_volume_ml == pytest.approx(truth_ml, rel=0.03)
    assert enclosed_volume_mm3(mesh) == pytest.approx(enclosed_volume_mm3(raw), rel=0.02)
    strong = mask_to_mesh(rotated_sphere, smoothing_factor=1.0)
    assert enclosed_volume_mm3(strong) / 1000 == pytest.approx(truth_ml, rel=0.04)
    # the smoothed surface lies closer to the true sphere than the voxel staircase
    err = np.abs(np.linalg.norm(mesh.vertices - CENTRE_LPS, axis=1) - RADIUS)
    err_raw = np.abs(np.linalg.norm(raw.vertices - CENTRE_LPS, axis=1) - RADIUS)
    assert err.mean() < err_raw.mean() and err.max() < max(SPACING)
    assert 0 < r.deviation_mean_mm <= r.deviation_max_mm < max(SPACING)


def test_sphere_centre_and_extent_match_the_physical_truth_in_lps_and_ras(rotated_sphere: Volume) -> None:
    for space, centre in (("LPS", CENTRE_LPS), ("RAS", CENTRE_LPS * [-1, -1, 1])):
        mesh = mask_to_mesh(rotated_sphere, space=space)
        lo, hi = mesh.bounds()
        np.testing.assert_allclose((lo + hi) / 2, centre, atol=0.3)
        np.testing.assert_allclose(hi - lo, 2 * RADIUS, atol=max(SPACING))
        np.testing.assert_allclose(mesh.vertices.mean(axis=0), centre, atol=0.3)
        assert enclosed_volume_mm3(mesh) > 0


def test_ras_mesh_is_the_lps_mesh_with_x_and_y_negated(rotated_sphere: Volume) -> None:
    lps = mask_to_mesh(rotated_sphere, space="LPS")
    ras = mask_to_mesh(rotated_sphere, space="RAS")
    np.testing.assert_allclose(ras.vertices, lps.vertices * [-1, -1, 1], atol=1e-9)
    np.testing.assert_array_equal(ras.faces, lps.faces)
    np.testing.assert_allclose(lps.to_space("RAS").vertices, ras.vertices, atol=1e-9)


@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_box_faces_lie_half_a_voxel_outside_the_outer_voxel_centres_on_a_rotated_grid(space: str) -> None:
    array = np.zeros((12, 14, 16), bool)
    array[3:9, 2:11, 4:13] = True  # k 3..8, j 2..10, i 4..12
    mask = Volume(array, SPACING, origin=(12.0, -7.0, 30.0), direction=rotation(-25, 40))
    mesh = mask_to_mesh(mask, space=space, smoothing_factor=0)
    ijk = mask.physical_to_index(mesh.vertices, space=space)
    np.testing.assert_allclose(ijk.min(axis=0), [3.5, 1.5, 2.5], atol=1e-5)
    np.testing.assert_allclose(ijk.max(axis=0), [12.5, 10.5, 8.5], atol=1e-5)
    assert enclosed_volume_mm3(mesh) > 0
    assert mesh_report(mesh, mask=mask).volume_ml == pytest.approx(array.sum() * mask.voxel_volume_mm3 / 1000, rel=0.03)


@pytest.mark.parametrize(
    "direction",
    [np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, 1.0, 1.0]), np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]), -rotation(30, 20)],
    ids=["flip-k-like-sample-ct", "flip-i", "swap-ij", "rotation-times-minus-one"],
)
def test_reflected_direction_keeps_normals_outward(direction: np.ndarray) -> None:
    assert np.linalg.det(direction) < 0
    centre = np.array([5.0, -3.0, 20.0])
    mask = ball(grid_around(centre, (24, 20, 16), direction), centre, 8.0)
    for space in ("LPS", "RAS"):
        mesh = mask_to_mesh(mask, space=space)
        assert enclosed_volume_mm3(mesh) > 0
        c = centre * ([-1, -1, 1] if space == "RAS" else 1)
        assert np.einsum("ij,ij->i", mesh.normals, mesh.vertices - c).min() > 0
        np.testing.assert_allclose(mesh.normals, vertex_normals(mesh.vertices, mesh.faces), atol=1e-5)
        np.testing.assert_allclose(mesh.vertices.mean(axis=0), c, atol=0.3)


def test_mask_touching_the_image_border_gives_a_closed_surface() -> None:
    mask = Volume(np.ones((5, 6, 7), dtype=np.uint8), spacing=(2.0, 1.0, 0.5), origin=(10.0, 0.0, 0.0))
    mesh = mask_to_mesh(mask, smoothing_factor=0)
    r = mesh_report(mesh, mask=mask)
    assert r.watertight and r.manifold and r.shell_count == 1 and r.outward_normals
    lo, hi = mesh.bounds()
    np.testing.assert_allclose(lo, [9.0, -0.5, -0.25])
    np.testing.assert_allclose(hi, [23.0, 5.5, 2.25])


def test_nonzero_values_of_an_integer_mask_count_as_inside() -> None:
    array = np.zeros((6, 7, 8), dtype=np.int16)
    array[2:4, 2:5, 2:6] = 7
    array[1, 1, 1] = -3
    as_int = mask_to_mesh(Volume(array, spacing=(1, 2, 3)))
    as_bool = mask_to_mesh(Volume(array != 0, spacing=(1, 2, 3)))
    np.testing.assert_array_equal(as_int.vertices, as_bool.vertices)
    np.testing.assert_array_equal(as_int.faces, as_bool.faces)
    assert mesh_report(as_int).shell_count == 2


def test_empty_mask_raises_a_mesh_error_that_says_so() -> None:
    with pytest.raises(MeshError, match="mask is empty"):
        mask_to_mesh(Volume(np.zeros((4, 4, 4), bool), spacing=(1, 1, 1)))


def test_invalid_parameters_are_rejected_before_any_work(rotated_sphere: Volume) -> None:
    with pytest.raises(ValueError, match="smoothing_factor"):
        mask_to_mesh(rotated_sphere, smoothing_factor=1.5)
    with pytest.raises(ValueError, match="decimation"):
        mask_to_mesh(rotated_sphere, decimation=1.0)
    with pytest.raises(ValueError, match="space"):
        mask_to_mesh(rotated_sphere, space="XYZ")  # type: ignore[arg-type]
    assert smoothing_passband(0) == 1.0 and smoothing_passband(1) == pytest.approx(1e-4)


def test_smoothing_a_mesh_equals_smoothing_inside_mask_to_mesh(rotated_sphere: Volume, sphere_meshes) -> None:
    mesh, raw = sphere_meshes
    np.testing.assert_allclose(smooth_mesh(raw, 0.5).vertices, mesh.vertices, atol=1e-3)


def test_decimation_reduces_the_triangle_count_by_about_the_target_and_stays_watertight(
    rotated_sphere: Volume, sphere_meshes: tuple[Mesh, Mesh]
) -> None:
    full, raw = sphere_meshes
    for target in (0.5, 0.8):
        mesh = mask_to_mesh(rotated_sphere, decimation=target)
        assert mesh.n_faces / full.n_faces == pytest.approx(1 - target, abs=0.03)
        r = mesh_report(mesh, mask=rotated_sphere, reference=raw)
        assert r.watertight and r.manifold and r.outward_normals and r.shell_count == 1
        assert r.volume_ml == pytest.approx(4 / 3 * math.pi * RADIUS**3 / 1000, rel=0.04)
        assert r.deviation_max_mm < max(SPACING)
    assert decimate_mesh(full, 0.0) is full


def test_decimation_keeps_an_open_border_in_place_and_never_collapses_a_tetrahedron(
    sphere_meshes: tuple[Mesh, Mesh],
) -> None:
    mesh = sphere_meshes[0]
    holed = Mesh(mesh.vertices, mesh.faces[5:])
    border_before = mesh_topology(holed.faces).boundary_edge_count
    small = decimate_mesh(holed, 0.5)
    topo = mesh_topology(small.faces, small.n_vertices)
    assert topo.boundary_edge_count == border_before and topo.edge_manifold and topo.vertex_manifold
    assert small.n_faces == pytest.approx(holed.n_faces / 2, rel=0.05)
    assert decimate_mesh(tetra(), 0.5).n_faces == 4


def test_cancel_token_stops_mask_to_mesh(rotated_sphere: Volume) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        mask_to_mesh(rotated_sphere, cancel=token)
    stages: list[tuple[float, str]] = []
    mask_to_mesh(rotated_sphere, decimation=0.5, progress=lambda f, s: stages.append((f, s)))
    fractions = [f for f, _ in stages]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0


# --- topology report ---------------------------------------------------------------------
def test_an_open_mesh_is_reported_not_watertight(sphere_meshes: tuple[Mesh, Mesh]) -> None:
    mesh = sphere_meshes[0]
    holed = Mesh(mesh.vertices, np.delete(mesh.faces, 10, axis=0))
    r = mesh_report(holed)
    assert not r.watertight and not r.print_ready
    assert r.boundary_edge_count == 3 and r.edge_manifold and r.shell_count == 1


def test_two_spheres_give_two_shells() -> None:
    grid = Volume(np.zeros((16, 16, 34), bool), spacing=(1, 1, 1))
    a, b = ball(grid, np.array([8.0, 7.5, 7.5]), 5), ball(grid, np.array([24.0, 7.5, 7.5]), 5)
    mask = grid.with_array(a.array | b.array)
    r = mesh_report(mask_to_mesh(mask), mask=mask)
    assert r.shell_count == 2 and r.watertight and r.manifold and r.euler_characteristic == 4


def test_a_vertex_shared_by_two_closed_shells_is_not_manifold() -> None:
    t = tetra()
    # a second tetrahedron touching the first only at vertex 3 (0, 0, 1)
    v = np.vstack([t.vertices, t.vertices[:3] * -1 + [0, 0, 2]])
    second = np.array([[3, 5, 4], [3, 4, 6], [3, 6, 5], [4, 5, 6]])
    topo = mesh_topology(np.vstack([t.faces, second]), len(v))
    assert topo.edge_manifold and topo.watertight
    assert topo.non_manifold_vertex_count == 1 and not topo.vertex_manifold and not topo.manifold


def test_an_edge_in_three_triangles_is_not_manifold_and_flipped_triangles_are_misoriented() -> None:
    faces = np.vstack([tetra().faces, [[0, 1, 4]]])
    topo = mesh_topology(faces, 5)
    assert topo.non_manifold_edge_count == 1 and not topo.edge_manifold and not topo.watertight
    flipped = tetra().faces.copy()
    flipped[0] = flipped[0, ::-1]
    assert mesh_topology(flipped).misoriented_edge_count == 3
    assert not mesh_report(Mesh(tetra().vertices, flipped)).consistently_oriented


def test_volume_and_area_of_a_unit_cube_are_exact() -> None:
    mask = Volume(np.pad(np.ones((1, 1, 1), bool), 1), spacing=(2.0, 3.0, 4.0))
    mesh = mask_to_mesh(mask, smoothing_factor=0)  # an octahedron: corners cut at the edge midpoints
    assert enclosed_volume_mm3(mesh) == pytest.approx(24.0 / 6)
    assert surface_area_mm2(mesh) > 0
    r = mesh_report(mesh, mask=mask)
    assert r.mask_volume_ml == pytest.approx(0.024) and r.volume_ml == pytest.approx(0.004)
    assert r.volume_difference_percent == pytest.approx(100 * (0.004 - 0.024) / 0.024)
    d = r.to_dict()
    assert d["manifold"] is True and d["surface_area_mm2"] == r.surface_area_mm2 and d["deviation_max_mm"] is None


# --- files --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".stl", ".obj", ".ply"])
@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_round_trip_preserves_vertex_positions_in_mm_and_the_space(
    tmp_path: Path, sphere_meshes: tuple[Mesh, Mesh], suffix: str, space: str
) -> None:
    mesh = sphere_meshes[0].to_space(space)
    back = read_mesh(write_mesh(mesh, tmp_path / f"sphere{suffix}"))
    assert back.space == space and back.n_faces == mesh.n_faces
    np.testing.assert_allclose(back.vertices[back.faces], mesh.vertices[mesh.faces], atol=1e-4)
    assert mesh_report(back).watertight  # STL corners merge back into shared vertices
    assert enclosed_volume_mm3(back) == pytest.approx(enclosed_volume_mm3(mesh), rel=1e-5)
    if suffix != ".stl":
        np.testing.assert_allclose(back.normals, mesh.normals, atol=1e-5)
    other = read_mesh(tmp_path / f"sphere{suffix}", space="LPS" if space == "RAS" else "RAS")
    np.testing.assert_allclose(other.vertices, back.vertices * [-1, -1, 1])


def test_stl_header_records_the_space_as_slicer_does(tmp_path: Path) -> None:
    path = write_mesh(tetra(), tmp_path / "t.stl")
    header = path.read_bytes()[:80]
    assert header.startswith(b"SPACE=LPS") and not header.startswith(b"solid")


def test_ply_carries_the_deviation_scalar(tmp_path: Path, sphere_meshes: tuple[Mesh, Mesh]) -> None:
    mesh, raw = sphere_meshes
    from SegDeepLogic.mesh_report import surface_deviation_mm

    deviation = surface_deviation_mm(mesh, raw)
    path = write_mesh(mesh.with_scalars(deviation_mm=deviation), tmp_path / "sphere.ply")
    assert b"property float deviation_mm" in path.read_bytes()[:1000]
    back = read_mesh(path)
    np.testing.assert_allclose(back.scalars["deviation_mm"], deviation, atol=1e-6)


def test_ascii_ply_and_polygon_obj_are_read(tmp_path: Path) -> None:
    (tmp_path / "q.ply").write_text(
        "ply\nformat ascii 1.0\ncomment SPACE=RAS\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
        "property float quality\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 1\n1 0 0 2\n1 1 0 3\n0 1 0 4\n4 0 1 2 3\n"
    )
    q = read_mesh(tmp_path / "q.ply")
    assert q.space == "RAS" and q.faces.tolist() == [[0, 1, 2], [0, 2, 3]] and q.scalars["quality"].tolist() == [1, 2, 3, 4]
    (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\n")
    assert read_mesh(tmp_path / "q.obj").faces.tolist() == [[0, 1, 2], [0, 2, 3]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Bone", "Bone"),
        ("Left/Right\\femur", "Left_Right_femur"),
        ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"),
        ("  .hidden. ", "hidden"),
        ("", "segment"),
        ("...", "segment"),
        ("NUL", "NUL_"),
        ("com1.stl", "com1.stl_"),
        ("Mandíbula ósea", "Mandíbula ósea"),
        ("下顎骨", "下顎骨"),
        ("tab\there\nnewline", "tab_here_newline"),
    ],
)
def test_safe_filename_removes_separators_and_reserved_characters(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


def test_safe_filename_caps_the_utf8_length_without_splitting_characters() -> None:
    name = safe_filename("é" * 300, max_bytes=101)
    assert name == "é" * 50 and len(name.encode("utf-8")) <= 101


def test_an_existing_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "t.stl"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_mesh(tetra(), path)
    assert path.read_bytes() == b"precious"
    write_mesh(tetra(), path, overwrite=True)
    assert read_mesh(path).n_faces == 4


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def broken(mesh: Mesh, path: Path) -> None:
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(mesh_io, "_write_stl", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mesh(tetra(), tmp_path / "t.stl")
    assert os.listdir(tmp_path) == []


def test_unsupported_suffix_and_empty_mesh_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match=r"\.vtk"):
        write_mesh(tetra(), tmp_path / "t.vtk")
    with pytest.raises(MeshError, match="no triangles"):
        write_mesh(Mesh(np.zeros((0, 3)), np.zeros((0, 3), int)), tmp_path / "t.stl")
    assert os.listdir(tmp_path) == []


# --- export --------------------------------------------------------------------------------
def two_label_volume() -> Volume:
    labels = np.zeros((18, 20, 30), np.uint8)
    labels[4:14, 4:16, 3:12] = 1
    labels[4:14, 4:16, 16:27] = 3
    return Volume(labels, spacing=(1.0, 0.8, 1.5), origin=(5.0, 6.0, 7.0), direction=np.diag([1.0, 1.0, -1.0]))


def test_export_writes_one_watertight_file_per_segment_with_safe_unique_names(tmp_path: Path) -> None:
    labels = two_label_volume()
    results = export_segments(labels, tmp_path, names=["Left/femur", "left_femur"])
    assert [p.name for p, _ in results] == ["Left_femur.stl", "left_femur_2.stl"]
    for (path, r), value in zip(results, (1, 3), strict=True):
        mask = labels.array == value
        assert r.print_ready and r.shell_count == 1 and r.deviation_max_mm is not None
        assert r.mask_volume_ml == pytest.approx(mask.sum() * labels.voxel_volume_mm3 / 1000)
        assert r.volume_ml == pytest.approx(r.mask_volume_ml, rel=0.06)
        back = read_mesh(path)
        assert back.n_faces == r.triangle_count and mesh_report(back).watertight
    assert sorted(os.listdir(tmp_path)) == ["Left_femur.stl", "left_femur_2.stl"]


def test_export_merged_ply_holds_every_segment_with_label_and_deviation(tmp_path: Path) -> None:
    results = export_segments(two_label_volume(), tmp_path, names={1: "A", 3: "B"}, format="ply", merge=True, space="RAS")
    assert len({p for p, _ in results}) == 1 and [r.name for _, r in results] == ["A", "B"]
    back = read_mesh(results[0][0])
    assert back.space == "RAS" and set(np.unique(back.scalars["label"]).tolist()) == {1, 3}
    assert "deviation_mm" in back.scalars
    assert back.n_faces == sum(r.triangle_count for _, r in results)
    assert mesh_report(back).shell_count == 2


def test_export_accepts_a_dict_of_masks_and_a_segmentation(tmp_path: Path) -> None:
    from SegDeepLogic.segmentation_io import Segmentation, SegmentInfo

    labels = two_label_volume()
    masks = {"Bone": labels.with_array(labels.array == 1)}
    assert [p.name for p, _ in export_segments(masks, tmp_path / "a", format="obj")] == ["Bone.obj"]
    seg = Segmentation(labels, [SegmentInfo("Femur", 1), SegmentInfo("Tibia", 3), SegmentInfo("Empty", 5)])
    with pytest.warns(UserWarning, match="'Empty' is empty"):
        results = export_segments(seg, tmp_path / "b")
    assert [p.name for p, _ in results] == ["Femur.stl", "Tibia.stl"]


def test_export_refuses_to_overwrite_before_doing_any_work(tmp_path: Path) -> None:
    (tmp_path / "Segment_3.stl").write_bytes(b"keep")
    calls: list[str] = []
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_segments(two_label_volume(), tmp_path, progress=lambda f, s: calls.append(s))
    assert calls == [] and sorted(os.listdir(tmp_path)) == ["Segment_3.stl"]
    export_segments(two_label_volume(), tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["Segment_1.stl", "Segment_3.stl"]


def test_cancelling_an_export_writes_nothing(tmp_path: Path) -> None:
    token = CancelToken()
    seen: list[float] = []

    def progress(fraction: float, stage: str) -> None:
        seen.append(fraction)
        if "Segment_3" in stage:  # cancel while working on the second segment
            token.cancel()

    with pytest.raises(CancelledError):
        export_segments(two_label_volume(), tmp_path, progress=progress, cancel=token)
    assert os.listdir(tmp_path) == [] and seen == sorted(seen)


def test_export_of_only_empty_segments_raises(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="no segment"):
        export_segments(Volume(np.zeros((4, 4, 4), np.uint8), spacing=(1, 1, 1)), tmp_path)


def test_vtk_conversion_round_trip_keeps_geometry_normals_and_scalars(sphere_meshes: tuple[Mesh, Mesh]) -> None:
    mesh = sphere_meshes[0].with_scalars(deviation_mm=np.linspace(0, 1, sphere_meshes[0].n_vertices))
    back = mesh_from_vtk(mesh_to_vtk(mesh), space="LPS")
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.normals, mesh.normals)
    np.testing.assert_array_equal(back.scalars["deviation_mm"], mesh.scalars["deviation_mm"])


def test_merge_meshes_keeps_the_space_and_refuses_mixed_spaces() -> None:
    assert merge_meshes([tetra(), tetra()]).n_faces == 8
    with pytest.raises(MeshError, match="different coordinate systems"):
        merge_meshes([tetra(), tetra().to_space("RAS")])


# --- real CT ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_bone() -> Volume:
    """The largest connected piece of the sample CT at >= 226 HU (Slicer's bone threshold)."""
    ct = read_volume(SAMPLE_CT)
    assert ct.shape_ijk == (128, 128, 128) and np.linalg.det(ct.direction) < 0
    labels, _ = ndi.label(ct.array >= 226)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ct.with_array(labels == largest)


def test_decimating_thin_ct_bone_keeps_it_watertight_with_the_same_topology(ct_bone: Volume) -> None:
    mesh = mask_to_mesh(ct_bone)
    before = mesh_topology(mesh.faces, mesh.n_vertices)
    small = decimate_mesh(mesh, 0.75)
    after = mesh_topology(small.faces, small.n_vertices)
    assert small.n_faces == pytest.approx(mesh.n_faces / 4, rel=0.05)
    assert after.watertight and after.manifold and after.consistently_oriented
    assert (after.shell_count, after.euler_characteristic) == (before.shell_count, before.euler_characteristic)
    assert enclosed_volume_mm3(small) == pytest.approx(enclosed_volume_mm3(mesh), rel=0.03)


def test_sample_ct_bone_mesh_is_watertight_and_matches_the_mask_bounds(tmp_path: Path, ct_bone: Volume) -> None:
    bone = ct_bone
    [(path, r)] = export_segments({"Bone (HU ≥ 226)": bone}, tmp_path)
    assert path.name == "Bone (HU ≥ 226).stl"
    assert r.watertight and r.manifold and r.outward_normals and r.shell_count >= 1
    # thin bone at 3.9 x 3.9 x 3 mm loses some volume to the cut voxel corners and to smoothing
    assert r.volume_ml == pytest.approx(r.mask_volume_ml, rel=0.15)
    back = read_mesh(path)
    assert back.space == "LPS" and mesh_report(back).watertight
    # physical box of the mask's voxels (centres +- half a voxel), in LPS mm
    k, j, i = np.nonzero(bone.array)
    lo_ijk = np.array([i.min(), j.min(), k.min()]) - 0.5
    hi_ijk = np.array([i.max(), j.max(), k.max()]) + 0.5
    corners = bone.index_to_physical(
        [[a, b, c] for a in (lo_ijk[0], hi_ijk[0]) for b in (lo_ijk[1], hi_ijk[1]) for c in (lo_ijk[2], hi_ijk[2])]
    )
    voxel = np.abs(bone.direction) @ np.array(bone.spacing)
    lo, hi = back.bounds()
    np.testing.assert_array_less(np.abs(lo - corners.min(axis=0)), voxel)
    np.testing.assert_array_less(np.abs(hi - corners.max(axis=0)), voxel)
