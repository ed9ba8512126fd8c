"""Print preparation for surgical planning: 3MF, hollowing, cutting planes, mesh check and repair.

Checked against independent programs: PrusaSlicer (headless ``--info`` and ``--export-gcode``)
reads the 3MF files, trimesh reads the objects and names back, the colours are read from the
3MF XML itself; hollowing against the analytic volume of a spherical shell; cuts against box
volumes and the real mandible of the sample CT.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from SegDeepLogic import Volume
from SegDeepLogic.cli import main
from SegDeepLogic.errors import MeshError
from SegDeepLogic.hollow import hollow_mask
from SegDeepLogic.io import read_volume
from SegDeepLogic.mesh import Mesh, mask_to_mesh, merge_meshes
from SegDeepLogic.mesh_3mf import PrintPart, read_3mf, write_3mf
from SegDeepLogic.mesh_check import check_mesh, repair_mesh
from SegDeepLogic.mesh_cut import CutPlane, box_mesh, cut_mesh
from SegDeepLogic.mesh_io import export_segments, write_mesh
from SegDeepLogic.mesh_report import build_volume_fit, enclosed_volume_mm3, mesh_report, mesh_topology
from SegDeepLogic.print_prep import PrintOptions, prepare_segment, split_shells
from SegDeepLogic.segmentation_io import SegmentInfo, write_seg_nrrd

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "Resources" / "SampleData" / "openkbp_pt_236"
MANDIBLE_PLANES = [CutPlane((220.0, 150.0, -160.0), (1.0, 0.0, 0.0)), CutPlane((275.0, 150.0, -160.0), (1.0, 0.0, 0.0))]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _prusa() -> str:
    exe = shutil.which("prusa-slicer")
    if exe is None:
        if os.environ.get("CI") == "true" or os.environ.get("SEGDEEP_REQUIRE_PRUSASLICER"):
            pytest.fail("PrusaSlicer is required in CI but not found; apt-get install prusa-slicer")
        pytest.skip("PrusaSlicer not installed (apt-get install prusa-slicer)")
    return exe


def _prusa_info(path: Path) -> list[dict[str, float]]:
    out = subprocess.run([_prusa(), "--info", str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    objects: list[dict[str, float]] = []
    for line in out.stdout.splitlines():
        m = re.match(r"^(size_[xyz]|min_[xyz]|max_[xyz]|volume|number_of_facets)\s*=\s*([-0-9.e+]+)", line.strip())
        if m:
            if m.group(1) == "size_x":
                objects.append({})
            objects[-1][m.group(1)] = float(m.group(2))
        elif line.strip() == "manifold = yes" and objects:
            objects[-1]["manifold"] = 1.0
    return objects


def _is_watertight_manifold(mesh: Mesh) -> bool:
    t = mesh_topology(mesh.faces, mesh.n_vertices)
    return t.watertight and t.manifold and t.consistently_oriented and enclosed_volume_mm3(mesh) > 0


def _ball(radius_mm: float, h: float) -> Volume:
    n = int(2 * radius_mm / h) + 8
    c = (n - 1) / 2
    zz, yy, xx = np.mgrid[:n, :n, :n]
    return Volume(
        ((xx - c) ** 2 + (yy - c) ** 2 + (zz - c) ** 2) * h * h < radius_mm**2, spacing=(h, h, h), origin=(-40.0, 10.0, -300.0)
    )


@pytest.fixture(scope="module")
def two_segment_seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-segment Slicer segmentation (box and ball, different colours), 1 mm voxels, off-origin."""
    labels = np.zeros((30, 40, 50), np.uint8)  # k, j, i
    labels[5:25, 5:30, 5:25] = 1
    zz, yy, xx = np.mgrid[:30, :40, :50]
    labels[(xx - 38) ** 2 + (yy - 20) ** 2 + (zz - 15) ** 2 < 64] = 2
    path = tmp_path_factory.mktemp("seg") / "plan.seg.nrrd"
    write_seg_nrrd(
        Volume(labels, spacing=(1.0, 1.0, 1.0), origin=(-120.0, 35.0, -400.0)),
        [SegmentInfo("bone block", 1, (0.9, 0.8, 0.5)), SegmentInfo("tumour", 2, (0.8, 0.1, 0.1))],
        path,
    )
    return path


# --------------------------------------------------------------------------------------------
# 3MF
# --------------------------------------------------------------------------------------------
def test_3mf_export_has_one_named_coloured_object_per_segment_that_prusaslicer_reads_in_mm(
    two_segment_seg: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "export",
                str(two_segment_seg),
                "-o",
                str(out),
                "--format",
                "3mf",
                "--no-progress",
                "--report",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    path = out / "plan.3mf"
    assert sorted(p.name for p in out.iterdir()) == ["plan.3mf"]
    report = json.loads((tmp_path / "r.json").read_text())
    model = read_3mf(path)
    assert [p.name for p in model.parts] == ["bone block", "tumour"]
    assert model.unit == "millimeter" and model.space == "LPS"
    assert model.metadata["CoordinateSystem"] == "LPS" and "LPS millimetres" in model.metadata["Description"]
    # colours, read from the XML itself (trimesh does not read 3MF colours)
    with zipfile.ZipFile(path) as z:
        root = etree.fromstring(z.read("3D/3dmodel.model"))
    ns = {"c": "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"}
    assert root.get("unit") == "millimeter"
    bases = {b.get("name"): b.get("displaycolor") for b in root.iterfind(".//c:basematerials/c:base", ns)}
    assert bases == {"bone block": "#E6CC80FF", "tumour": "#CC1A1AFF"}
    objects = root.findall(".//c:object", ns)
    assert [o.get("name") for o in objects] == ["bone block", "tumour"]
    # trimesh (an independent reader) finds the same objects with the same geometry
    import trimesh

    scene = trimesh.load(str(path))
    assert sorted(scene.geometry) == ["bone block", "tumour"]
    assert scene.metadata.get("units") == "millimeter"
    assert len(report) == len(model.parts) == 2
    for part, row in zip(model.parts, report):  # noqa: B905 (lengths asserted above)
        geom = scene.geometry[part.name]
        assert geom.is_watertight
        np.testing.assert_allclose(geom.bounds, [row["bounds_min_mm"], row["bounds_max_mm"]], atol=1e-4)
    # PrusaSlicer sees every object, in mm, with the mesh's bounding box, manifold, and slices the plate
    info = _prusa_info(path)
    assert len(info) == 2
    for obj, row in zip(info, report):  # noqa: B905 (lengths asserted above)
        np.testing.assert_allclose([obj["size_x"], obj["size_y"], obj["size_z"]], row["size_mm"], atol=2e-3)
        np.testing.assert_allclose([obj["min_x"], obj["min_y"], obj["min_z"]], row["bounds_min_mm"], atol=2e-3)
        assert obj["number_of_facets"] == row["triangle_count"] and obj.get("manifold") == 1.0
        assert obj["volume"] == pytest.approx(row["volume_ml"] * 1000, rel=1e-4)
    gcode = tmp_path / "plate.gcode"
    run = subprocess.run(
        [_prusa(), "--export-gcode", str(path), "--output", str(gcode)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert gcode.stat().st_size > 10_000 and "G1 " in gcode.read_text(errors="replace")


def test_3mf_in_ras_says_so_and_negates_x_and_y(two_segment_seg: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "export",
                str(two_segment_seg),
                "-o",
                str(tmp_path / "lps"),
                "--format",
                "3mf",
                "--no-progress",
                "--report",
                str(tmp_path / "a.json"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                str(two_segment_seg),
                "-o",
                str(tmp_path / "ras"),
                "--format",
                "3mf",
                "--space",
                "RAS",
                "--no-progress",
                "--report",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    lps, ras = read_3mf(tmp_path / "lps" / "plan.3mf"), read_3mf(tmp_path / "ras" / "plan.3mf")
    assert ras.space == "RAS" and ras.metadata["CoordinateSystem"] == "RAS"
    np.testing.assert_allclose(ras.parts[0].mesh.vertices, lps.parts[0].mesh.vertices * [-1, -1, 1], atol=1e-4)


def test_3mf_per_shell_gives_one_object_per_connected_piece(tmp_path: Path) -> None:
    mask = np.zeros((20, 20, 40), bool)
    mask[5:15, 5:15, 3:12] = True
    mask[5:15, 5:15, 20:35] = True
    results = export_segments(
        {"two blocks": Volume(mask, spacing=(1, 1, 1))}, tmp_path, format="3mf", print_options=PrintOptions(per_shell=True)
    )
    model = read_3mf(tmp_path / "segmentation.3mf")
    assert [p.name for p in model.parts] == ["two blocks_shell1", "two blocks_shell2"]
    assert all(r.shell_count == 1 and r.watertight for _, r in results)
    assert results[0][1].volume_ml > results[1][1].volume_ml


def test_3mf_write_and_read_leave_the_process_locale_alone(tmp_path: Path) -> None:
    import locale

    before = locale.setlocale(locale.LC_ALL)
    read_3mf(write_3mf([PrintPart("a", box_mesh((0, 0, 0), (1, 1, 1)))], tmp_path / "a.3mf"))
    assert locale.setlocale(locale.LC_ALL) == before  # lib3mf switches to "C"; Python would then read text as ASCII


def test_3mf_refuses_to_overwrite_and_writes_nothing_partial(tmp_path: Path) -> None:
    tetra = box_mesh((0, 0, 0), (1, 1, 1))
    path = write_3mf([PrintPart("a", tetra)], tmp_path / "a.3mf")
    with pytest.raises(FileExistsError):
        write_3mf([PrintPart("b", tetra)], path)
    assert read_3mf(path).parts[0].name == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.3mf"]


# --------------------------------------------------------------------------------------------
# Hollowing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("radius, wall", [(10.0, 2.0), (12.0, 3.0)])
def test_hollow_sphere_has_the_analytic_shell_volume_and_the_measured_wall(radius: float, wall: float) -> None:
    h = 0.5
    part = prepare_segment("ball", _ball(radius, h), PrintOptions(wall_mm=wall, voxel_mm=h))[0]
    truth_mm3 = 4.0 / 3.0 * np.pi * (radius**3 - (radius - wall) ** 3)
    assert part.report.volume_ml * 1000 == pytest.approx(truth_mm3, rel=0.02)
    hollowing = part.report.hollowing
    assert abs(hollowing["measured_wall_min_mm"] - wall) <= h / 2
    assert hollowing["measured_wall_mean_mm"] == pytest.approx(wall, abs=0.05)
    solid_truth = 4.0 / 3.0 * np.pi * radius**3
    assert hollowing["saved_volume_ml"] * 1000 == pytest.approx(solid_truth - truth_mm3, rel=0.03)
    assert _is_watertight_manifold(part.mesh) and part.report.shell_count == 2  # outside and the cavity


def test_hollow_with_a_drain_hole_opens_the_cavity_at_its_lowest_point() -> None:
    part = prepare_segment(
        "ball", _ball(10.0, 0.5), PrintOptions(wall_mm=2.0, voxel_mm=0.5, drain_holes=1, drain_diameter_mm=3.0)
    )[0]
    assert _is_watertight_manifold(part.mesh)
    assert part.report.shell_count == 1  # the hole joins the cavity to the outside
    (hole,) = part.report.hollowing["drain_holes"]
    assert hole["direction"] == [0.0, 0.0, -1.0]  # inferior (LPS z down)
    centre_z = -300.0 + (int(20 / 0.5) + 7) / 2 * 0.5
    assert hole["cavity_point_mm"][2] == pytest.approx(centre_z - 8.0, abs=0.6)  # bottom of the 8 mm cavity
    assert abs(part.report.hollowing["measured_wall_min_mm"] - 2.0) <= 0.25


def test_hollow_real_ct_mandible_is_watertight_with_the_wall_asked_for() -> None:
    label = read_volume(SAMPLE / "mandible.nii.gz")
    part = prepare_segment("mandible", label.with_array(label.array > 0), PrintOptions(wall_mm=2.5, voxel_mm=1.0))[0]
    r = part.report
    assert r.watertight and r.manifold and r.outward_normals
    assert abs(r.hollowing["measured_wall_min_mm"] - 2.5) <= 0.5 + 1e-9  # within half a voxel
    assert 0.2 < r.hollowing["saved_percent"] / 100 < 0.6


def test_wall_thicker_than_the_part_is_refused_and_nothing_is_written(two_segment_seg: Path, tmp_path: Path, capsys) -> None:
    code = main(["export", str(two_segment_seg), "-o", str(tmp_path / "o"), "--format", "3mf", "--hollow", "30", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a wall of 30 mm leaves no cavity" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    with pytest.raises(MeshError, match="leaves no cavity"):
        hollow_mask(_ball(5.0, 0.5), 6.0)


# --------------------------------------------------------------------------------------------
# Cutting planes
# --------------------------------------------------------------------------------------------
def test_cube_cut_by_a_plane_gives_two_watertight_boxes_with_the_right_volumes() -> None:
    cube = box_mesh((-10.0, 20.0, 0.0), (10.0, 40.0, 20.0))
    pieces = cut_mesh(cube, [CutPlane((-4.0, 0.0, 0.0), (2.0, 0.0, 0.0))], name="cube")
    assert [p.name for p in pieces] == ["cube_cut1-left", "cube_cut1-right"]  # LPS: +x is the patient's left
    assert [round(p.volume_mm3, 6) for p in pieces] == [14 * 400.0, 6 * 400.0]
    for p in pieces:
        assert _is_watertight_manifold(p.mesh)
        assert enclosed_volume_mm3(p.mesh) == pytest.approx(p.volume_mm3, rel=1e-9)
    # a kerf of 2 mm removes a 2 mm slab; a RAS plane is converted
    kerf = cut_mesh(cube, [CutPlane((4.0, 0.0, 0.0), (-1.0, 0.0, 0.0), space="RAS")], kerf_mm=2.0, name="cube")
    assert [p.name for p in kerf] == ["cube_cut1-left", "cube_cut1-right"]
    assert [round(p.volume_mm3, 6) for p in kerf] == [13 * 400.0, 5 * 400.0]


def test_real_mandible_cut_by_two_planes_gives_three_watertight_pieces_summing_to_the_whole() -> None:
    label = read_volume(SAMPLE / "mandible.nii.gz")
    mesh = mask_to_mesh(label.with_array(label.array > 0))
    pieces = cut_mesh(mesh, MANDIBLE_PLANES, name="mandible")
    assert [p.name for p in pieces] == [
        "mandible_cut1-left_cut2-left",
        "mandible_cut1-left_cut2-right",
        "mandible_cut1-right_cut2-right",
    ]
    for p in pieces:
        assert _is_watertight_manifold(p.mesh)
    total = sum(enclosed_volume_mm3(p.mesh) for p in pieces)
    assert total == pytest.approx(enclosed_volume_mm3(mesh), rel=0.01)


def test_a_plane_missing_the_mesh_is_refused_with_one_message_and_nothing_written(
    two_segment_seg: Path, tmp_path: Path, capsys
) -> None:
    code = main(["export", str(two_segment_seg), "-o", str(tmp_path / "o"), "--cut", "0,0,0:0,0,1", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not cut bone block" in err[0] and "- side" in err[0]
    assert not (tmp_path / "o").exists()
    with pytest.raises(MeshError, match="point and a normal"):
        CutPlane.parse("1,2,3")
    with pytest.raises(MeshError, match="zero vector"):
        CutPlane((0, 0, 0), (0, 0, 0))


def test_cli_cut_names_pieces_by_side_and_checks_build_volume(two_segment_seg: Path, tmp_path: Path) -> None:
    args = [
        "export",
        str(two_segment_seg),
        "-o",
        str(tmp_path / "o"),
        "--cut=-110,50,-390:1,0,0",
        "--prep-segments",
        "bone block",
    ]
    args += ["--build-volume", "30", "30", "15", "--report", str(tmp_path / "r.json"), "--no-progress"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in rows] == ["bone block_cut1-left", "bone block_cut1-right", "tumour"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "bone block_cut1-left.stl",
        "bone block_cut1-right.stl",
        "tumour.stl",
    ]
    # pieces about 14.5 and 4.5 x 25 x 20 mm (z 20 > 15: they fit only on their side); the 16 mm ball never
    assert [r["fits_build_volume"] for r in rows] == [False, False, False]
    assert [r["fits_build_volume_rotated"] for r in rows] == [True, True, False]
    assert rows[0]["size_mm"][0] == pytest.approx(14.5, abs=0.3) and rows[0]["cut"]["sides"][0]["direction"] == "left"


# --------------------------------------------------------------------------------------------
# Wall thickness, thin regions, build volume
# --------------------------------------------------------------------------------------------
def test_thin_regions_are_found_where_the_part_is_thin() -> None:
    # a 20 x 20 x 10 mm block with a 0.5 mm fin attached on its +x side
    block = box_mesh((0.0, 0.0, 0.0), (20.0, 20.0, 10.0))
    fin = box_mesh((19.0, 5.0, 2.0), (30.0, 15.0, 2.5))
    import manifold3d

    from SegDeepLogic.mesh_cut import manifold_to_mesh, mesh_to_manifold

    part = manifold_to_mesh(mesh_to_manifold(block) + mesh_to_manifold(fin), "LPS")
    part = Mesh(*_refined(part), "LPS")
    r = mesh_report(part, thin_threshold_mm=0.8, build_volume_mm=(250, 210, 220))
    assert r.min_wall_thickness_mm == pytest.approx(0.5, abs=1e-6)
    assert len(r.thin_regions) >= 1
    where = np.array([reg.where_mm for reg in r.thin_regions])
    assert np.all(where[:, 0] > 19.0 - 1e-6) and np.all(np.abs(where[:, 2] - 2.25) <= 0.25 + 1e-6)  # on the fin
    assert r.fits_build_volume is True
    assert build_volume_fit([300, 10, 10], [250, 210, 320]) == {"as_oriented": False, "any_orientation": True}
    del manifold3d


def _refined(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Split every triangle into four (so the fin's faces have interior sample points)."""
    import manifold3d

    from SegDeepLogic.mesh_cut import mesh_to_manifold

    out = mesh_to_manifold(mesh).refine(4).to_mesh64()
    del manifold3d
    return np.asarray(out.vert_properties)[:, :3], np.asarray(out.tri_verts, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Check and repair
# --------------------------------------------------------------------------------------------
def _ball_mesh() -> Mesh:
    zz, yy, xx = np.mgrid[:30, :30, :30]
    return mask_to_mesh(Volume((xx - 14.5) ** 2 + (yy - 14.5) ** 2 + (zz - 14.5) ** 2 < 100, spacing=(1, 1, 1)))


def test_repair_reports_exactly_what_was_broken_and_fixes_it(tmp_path: Path, capsys) -> None:
    ball = _ball_mesh()
    f = ball.faces.copy()
    f[[10, 500, 900]] = f[[10, 500, 900]][:, [0, 2, 1]]  # 3 flipped triangles, far apart
    f = np.delete(f, [2000, 3000], axis=0)  # 2 holes of 3 edges each
    shared = [int(x) for x in f[50:53, 0]]  # three vertices: each gets a copy used by one of its triangles
    v = np.vstack([ball.vertices, ball.vertices[shared]])
    for k, vertex in enumerate(shared):
        row = int(np.flatnonzero((f == vertex).any(axis=1))[0])
        f[row][f[row] == vertex] = ball.n_vertices + k
    broken = Mesh(v, f)
    before = check_mesh(broken)
    assert before["duplicate_vertex_count"] == 3
    assert before["hole_count"] == 2 + 3  # each unmerged copy also opens a seam, closed by the merge
    assert before["misoriented_edge_count"] == 9  # three edges around each flipped triangle
    assert not before["print_ready"]
    path = write_mesh(broken, tmp_path / "broken.ply")
    assert main(["mesh-check", str(path), "--repair", "--report", str(tmp_path / "r.json")]) == 0
    row = json.loads((tmp_path / "r.json").read_text())
    assert row["repair"][0] == "merged 3 duplicate vertex(es)"
    assert any(c.startswith("filled 2 hole(s) (3, 3 edges) with 6 triangle(s)") for c in row["repair"])
    assert "reversed 3 triangle(s) to make the winding consistent and outward" in row["repair"]
    fixed = check_mesh(read_3mf_or_mesh(tmp_path / "broken.repaired.ply"))
    assert fixed["print_ready"] and fixed["watertight"] and fixed["self_intersecting_pairs"] == 0
    assert "repaired:" in capsys.readouterr().err


def read_3mf_or_mesh(path: Path) -> Mesh:
    from SegDeepLogic.mesh_io import read_mesh

    return read_mesh(path)


def test_unsafe_repairs_are_refused_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    box = box_mesh((0, 0, 0), (10, 10, 10))
    # non-manifold: a third triangle on an edge
    nm = Mesh(np.vstack([box.vertices, [[5.0, 5.0, 30.0]]]), np.vstack([box.faces, [[box.faces[0][0], box.faces[0][1], 8]]]))
    with pytest.raises(
        MeshError, match=r"cannot repair safely: 1 edge\(s\) are shared by three or more triangles \(non-manifold\)"
    ):
        repair_mesh(nm)
    # self-intersection: two overlapping boxes in one mesh
    crossing = merge_meshes([box, box_mesh((5, 3, 2), (15, 13, 12))])
    assert check_mesh(crossing)["self_intersecting_pairs"] > 0
    path = write_mesh(crossing, tmp_path / "crossing.stl")
    assert main(["mesh-check", str(path), "--repair", "--report", str(tmp_path / "r.json")]) == 1
    assert "self-intersection" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crossing.stl"]
    # a large hole: refuse
    ball = _ball_mesh()
    top = ball.vertices[ball.faces].mean(axis=1)[:, 2] > 20.0
    with pytest.raises(MeshError, match="exceed the 32-edge limit"):
        repair_mesh(Mesh(ball.vertices, ball.faces[~top]))


def test_mesh_check_of_a_non_mesh_file_gives_one_clear_message(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "notes.stl"
    bad.write_text("this is not a mesh")
    assert main(["mesh-check", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segdeep mesh-check: error: notes.stl is neither a binary nor an ASCII STL file"]
    zipped = tmp_path / "fake.3mf"
    zipped.write_bytes(b"PK not really")
    assert main(["mesh-check", str(zipped)]) == 1
    assert "not a readable 3MF file" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("1 2 3")
    assert main(["mesh-check", str(tmp_path / "x.txt")]) == 1
    assert "unsupported mesh file type '.txt'" in capsys.readouterr().err


def test_mesh_check_reads_every_3mf_object_and_guesses_units(tmp_path: Path) -> None:
    metres = Mesh(box_mesh((0, 0, 0), (0.08, 0.05, 0.03)).vertices, box_mesh((0, 0, 0), (1, 1, 1)).faces)
    write_3mf([PrintPart("in metres", metres), PrintPart("in mm", box_mesh((0, 0, 0), (80, 50, 30)))], tmp_path / "m.3mf")
    assert main(["mesh-check", str(tmp_path / "m.3mf"), "--report", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in rows] == ["in metres", "in mm"]
    assert rows[0]["units_guess"].startswith("m?") and rows[1]["units_guess"].startswith("mm")
    assert all(r["declared_units"] == "millimeter" and r["print_ready"] for r in rows)


def test_split_shells_keeps_a_cavity_with_its_shell() -> None:
    hollow = prepare_segment("ball", _ball(8.0, 0.5), PrintOptions(wall_mm=2.0, voxel_mm=0.5))[0].mesh
    other = box_mesh((0, 30, -280), (5, 35, -275))
    shells = split_shells(merge_meshes([hollow.with_normals(), other.with_normals()]))
    assert len(shells) == 2
    assert mesh_topology(shells[0].faces).shell_count == 2  # outer surface + cavity, one object


# --------------------------------------------------------------------------------------------
# The README's surgical-planning example
# --------------------------------------------------------------------------------------------
def test_readme_surgical_planning_example_runs_and_prusaslicer_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("### Surgical planning") :]
    code = re.findall(r"```python\n(.*?)```", block, re.S)[0]
    monkeypatch.chdir(ROOT)
    code = code.replace('"planning"', repr(os.fspath(tmp_path / "planning")))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    path = tmp_path / "planning" / "mandible_plan.3mf"
    model = read_3mf(path)
    names = [p.name for p in model.parts]
    assert names == [
        "mandible_cut1-left_cut2-left",
        "mandible_cut1-left_cut2-right",
        "mandible_cut1-right_cut2-right",
        "parotid_left",
    ]
    assert {p.color for p in model.parts} == {(0.949, 0.8392, 0.5686), (0.302, 0.5490, 0.949)}
    reports = [r for _, r in namespace["parts"]]
    assert all(r.watertight and r.manifold for r in reports)
    assert all(abs(r.hollowing["measured_wall_min_mm"] - 2.5) <= 0.5 for r in reports[:3])
    info = _prusa_info(path)
    assert len(info) == 4
    for obj, r in zip(info, reports):  # noqa: B905 (lengths asserted above)
        np.testing.assert_allclose(
            [obj["size_x"], obj["size_y"], obj["size_z"]], np.subtract(r.bounds_max_mm, r.bounds_min_mm), atol=2e-3
        )


def test_report_export_in_3mf_is_one_file_with_a_coloured_object_per_structure(tmp_path: Path) -> None:
    from SegDeepLogic.report import build_report, write_report
    from SegDeepLogic.segmentation_io import Segmentation

    zz, yy, xx = np.mgrid[:40, :40, :40]
    ct = Volume(
        np.where((xx - 20) ** 2 + (yy - 20) ** 2 + (zz - 20) ** 2 < 150, 700.0, 0.0).astype(np.float32), spacing=(1, 1, 1)
    )
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[(xx - 20) ** 2 + (yy - 20) ** 2 + (zz - 20) ** 2 < 150] = 1
    labels[5:12, 5:12, 5:15] = 2
    seg = Segmentation(ct.with_array(labels), [SegmentInfo("bone", 1, (0.9, 0.8, 0.5)), SegmentInfo("nerve", 2, (1.0, 0.9, 0.0))])
    facts = build_report(ct, segmentation=seg, export_dir=tmp_path / "meshes", export_format="3mf", threshold="bone")
    write_report(facts, tmp_path / "case.html")
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == ["structures.3mf"]
    model = read_3mf(tmp_path / "meshes" / "structures.3mf")
    assert [(p.name, p.color) for p in model.parts] == [("bone", (0.902, 0.8, 0.502)), ("nerve", (1.0, 0.902, 0.0))]
    rows = {s["name"]: s["mesh"] for s in facts.data["structures"]}
    for part in model.parts:
        lo, hi = part.mesh.bounds()
        np.testing.assert_allclose(lo, rows[part.name]["bounds_min_mm"], atol=1e-4)


def test_cli_hollow_with_a_drain_hole_towards_a_given_point(two_segment_seg: Path, tmp_path: Path) -> None:
    # the block spans LPS x -115.5..-95.5, y 39.5..64.5, z -395.5..-375.5; drill towards a point below its centre
    args = ["export", str(two_segment_seg), "-o", str(tmp_path / "o"), "--format", "3mf", "--prep-segments", "bone block"]
    args += ["--hollow", "2", "--voxel", "0.5", "--drain-at=-105.5,52,-410", "--drain-diameter", "4", "--thin", "0.8"]
    assert main([*args, "--report", str(tmp_path / "r.json"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    block, tumour = rows
    assert block["watertight"] and block["manifold"] and block["shell_count"] == 1 and block["print_ready"]
    (hole,) = block["hollowing"]["drain_holes"]
    assert hole["diameter_mm"] == 4.0 and hole["direction"][2] < -0.99
    assert abs(block["hollowing"]["measured_wall_min_mm"] - 2.0) <= 0.25
    assert block["hollowing"]["saved_percent"] > 40 and tumour.get("hollowing") is None
    assert block["min_wall_thickness_mm"] >= 1.5 and block["thin_regions"] == []  # nothing under 0.8 mm
    assert main(["export", str(two_segment_seg), "-o", str(tmp_path / "x"), "--drain-holes", "1", "--no-progress"]) == 1


def test_mesh_check_repairs_a_3mf_keeping_names_and_colours(tmp_path: Path) -> None:
    box = box_mesh((0, 0, 0), (10, 10, 10))
    flipped = Mesh(box.vertices, np.r_[box.faces[:2, [0, 2, 1]], box.faces[2:]])
    write_3mf(
        [PrintPart("flipped", flipped, (0.0, 0.5, 1.0)), PrintPart("fine", box_mesh((20, 0, 0), (25, 5, 5)), (1.0, 0.0, 0.0))],
        tmp_path / "m.3mf",
    )
    assert main(["mesh-check", str(tmp_path / "m.3mf"), "--repair", "--report", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["repair"] == ["reversed 2 triangle(s) to make the winding consistent and outward"]
    assert rows[1]["repair"] == ["nothing to repair"]
    repaired = read_3mf(tmp_path / "m.repaired.3mf")
    assert [(p.name, p.color) for p in repaired.parts] == [("flipped", (0.0, 0.502, 1.0)), ("fine", (1.0, 0.0, 0.0))]
    assert all(check_mesh(p.mesh)["print_ready"] for p in repaired.parts)
