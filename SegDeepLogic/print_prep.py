"""Print preparation of one segment: mesh, hollow, cut, split into shells, check.

:func:`prepare_segment` is the pipeline behind ``segdeep export`` (and the report's and the
Slicer module's export) when hollowing, cutting planes, per-shell objects or the extended
print checks are asked for:

1. the mask becomes a closed surface (:func:`~SegDeepLogic.mesh.mask_to_mesh`); with a wall
   thickness it is first hollowed on a fine voxel grid (:func:`~SegDeepLogic.hollow.hollow_mask`),
   so the hollow part is watertight and manifold by construction, and the saved volume and the
   *measured* wall thickness are reported;
2. optional decimation;
3. optional cutting planes (:func:`~SegDeepLogic.mesh_cut.cut_mesh`): capped, watertight pieces;
4. optionally one part per connected shell (:func:`split_shells`; a cavity stays with the shell
   that holds it);
5. the print-readiness report of every part, with wall thickness, thin regions and the build
   volume when asked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import csgraph

from .errors import MeshError
from .hollow import HollowResult, hollow_mask
from .mesh import DEFAULT_SMOOTHING_FACTOR, Mesh, Space, decimate_mesh, mask_to_mesh, vertex_normals
from .mesh_cut import CutPlane, cut_mesh
from .mesh_report import MeshReport, enclosed_volume_mm3, mesh_report, surface_deviation_mm
from .progress import CancelToken, ProgressCallback, report
from .volume import Volume

__all__ = ["PreparedPart", "PrintOptions", "prepare_segment", "split_shells", "winding_number"]


@dataclasses.dataclass(frozen=True)
class PrintOptions:
    """What to do to a segment before printing (all off by default).

    Parameters
    ----------
    wall_mm : float, optional
        Hollow with this wall thickness (mm).
    voxel_mm : float, optional
        Voxel size of the hollowing grid (default: a quarter of the wall, at most the CT spacing).
    drain_holes : int
        Drain holes at the cavity's lowest points (inferior by default).
    drain_diameter_mm : float
        Drain hole diameter (mm).
    drain_points : sequence of (3,) LPS mm points
        Drill the drain holes here instead.
    planes : sequence of CutPlane
        Cutting planes (LPS or RAS mm).
    kerf_mm : float
        Saw gap removed around each plane (mm).
    per_shell : bool
        One part per connected shell (a cavity stays with its shell).
    thin_threshold_mm : float, optional
        Measure wall thickness and report regions thinner than this (mm, e.g. 0.8).
    build_volume_mm : (3,) floats, optional
        The printer's build volume (x, y, z mm) to check the bounding box against.
    """

    wall_mm: float | None = None
    voxel_mm: float | None = None
    drain_holes: int = 0
    drain_diameter_mm: float = 3.0
    drain_points: tuple[tuple[float, float, float], ...] = ()
    planes: tuple[CutPlane, ...] = ()
    kerf_mm: float = 0.0
    per_shell: bool = False
    thin_threshold_mm: float | None = None
    build_volume_mm: tuple[float, float, float] | None = None

    @property
    def active(self) -> bool:
        """True when anything beyond the plain export is asked for."""
        return bool(
            self.wall_mm is not None
            or self.planes
            or self.per_shell
            or self.thin_threshold_mm is not None
            or self.build_volume_mm is not None
        )


@dataclasses.dataclass(frozen=True)
class PreparedPart:
    """One printable object: name, surface, report, and the segment it came from."""

    name: str
    segment: str
    mesh: Mesh
    report: MeshReport


def winding_number(mesh: Mesh, points: npt.ArrayLike) -> np.ndarray:
    """Generalised winding number of closed ``mesh`` around each point (1 inside, 0 outside).

    The sum of the solid angles of the triangles seen from the point (Van Oosterom & Strackee),
    divided by 4π: robust to small gaps, exact for closed surfaces.

    Examples
    --------
    >>> from SegDeepLogic.mesh_cut import box_mesh
    >>> winding_number(box_mesh((0, 0, 0), (1, 1, 1)), [[0.5, 0.5, 0.5], [2, 0, 0]]).round(6).tolist()
    [1.0, 0.0]
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tri = mesh.vertices[mesh.faces]  # (m, 3, 3)
    out = np.zeros(len(p))
    for start in range(0, len(p), 64):
        q = p[start : start + 64]
        a = tri[None, :, 0, :] - q[:, None, :]
        b = tri[None, :, 1, :] - q[:, None, :]
        c = tri[None, :, 2, :] - q[:, None, :]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("ijk,ijk->ij", a, np.cross(b, c))
        div = (
            la * lb * lc
            + np.einsum("ijk,ijk->ij", a, b) * lc
            + np.einsum("ijk,ijk->ij", a, c) * lb
            + np.einsum("ijk,ijk->ij", b, c) * la
        )
        out[start : start + 64] = 2.0 * np.arctan2(det, div).sum(axis=1) / (4.0 * np.pi)
    return out


def _face_components(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    f = faces
    graph = sparse.coo_matrix(
        (np.ones(2 * len(f), np.int8), (np.r_[f[:, 0], f[:, 1]], np.r_[f[:, 1], f[:, 2]])), shape=(n_vertices, n_vertices)
    )
    _, vertex_label = csgraph.connected_components(graph, directed=False)
    return vertex_label[f[:, 0]]


def _submesh(mesh: Mesh, face_mask: np.ndarray) -> Mesh:
    faces = mesh.faces[face_mask]
    used = np.unique(faces)
    remap = np.full(mesh.n_vertices, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    vertices = mesh.vertices[used]
    new_faces = remap[faces]
    return Mesh(vertices, new_faces, mesh.space, vertex_normals(vertices, new_faces))


def split_shells(mesh: Mesh) -> list[Mesh]:
    """One closed surface per solid piece: each outer shell with the cavities inside it.

    Shells are the connected components of the triangles. An inward-facing shell (negative
    enclosed volume: the wall of a cavity) goes with the outward shell that contains it, so a
    hollowed part stays one object. Largest first.

    Examples
    --------
    >>> from SegDeepLogic.mesh import merge_meshes
    >>> from SegDeepLogic.mesh_cut import box_mesh
    >>> two = merge_meshes([box_mesh((0, 0, 0), (1, 1, 1)), box_mesh((5, 0, 0), (7, 1, 1))])
    >>> [round(float(np.ptp(m.vertices[:, 0])), 3) for m in split_shells(two)]
    [2.0, 1.0]
    """
    labels = _face_components(mesh.faces, mesh.n_vertices)
    ids = np.unique(labels)
    if len(ids) == 1:
        return [mesh]
    shells = [_submesh(mesh, labels == i) for i in ids]
    volumes = [enclosed_volume_mm3(s) for s in shells]
    outer = [i for i, v in enumerate(volumes) if v > 0]
    groups: dict[int, list[int]] = {i: [i] for i in outer}
    for i, v in enumerate(volumes):
        if v > 0:
            continue
        probe = shells[i].vertices[:1]
        holders = [o for o in outer if winding_number(shells[o], probe)[0] > 0.5]
        if holders:  # the smallest shell holding it
            groups[min(holders, key=lambda o: volumes[o])].append(i)
        else:
            groups[i] = [i]
    meshes = []
    for members in groups.values():
        mask = np.isin(labels, [ids[m] for m in members])
        meshes.append(_submesh(mesh, mask))
    meshes.sort(key=lambda m: -abs(enclosed_volume_mm3(m)))
    return meshes


def _cavity_vertices(raw: Mesh, result: HollowResult) -> np.ndarray:
    """Which vertices of the unsmoothed wall surface face the cavity (the voxel across is a cavity voxel).

    Flying-edges vertices sit half-way between a wall voxel and a non-wall voxel along one axis;
    the non-wall one says whether the vertex is on the cavity's side or the outside.
    """
    ijk = result.wall.physical_to_index(raw.vertices, raw.space)
    lo = np.floor(ijk + 1e-6).astype(np.int64)
    hi = np.ceil(ijk - 1e-6).astype(np.int64)
    shape = np.array(result.wall.shape_ijk)
    lo = np.clip(lo, 0, shape - 1)
    hi = np.clip(hi, 0, shape - 1)
    wall = result.wall.array
    cavity = result.cavity.array
    a = (lo[:, 2], lo[:, 1], lo[:, 0])
    b = (hi[:, 2], hi[:, 1], hi[:, 0])
    inner = (~wall[a] & cavity[a]) | (~wall[b] & cavity[b])
    lps = raw.to_space("LPS").vertices
    for hole in result.drain_holes:  # the rim of a drain hole is not wall: leave it out
        p = lps - np.asarray(hole.cavity_point_mm)
        d = np.asarray(hole.direction)
        t = p @ d
        radial = np.sqrt(np.maximum(np.einsum("ij,ij->i", p, p) - t * t, 0.0))
        inner &= ~((t > -hole.diameter_mm) & (radial < hole.diameter_mm / 2 + 2 * result.voxel_mm))
    return inner


def prepare_segment(
    name: str,
    mask: Volume,
    options: PrintOptions,
    *,
    space: Space = "LPS",
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    decimation: float = 0.0,
    measure_deviation: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[PreparedPart]:
    """Build the printable part(s) of one segment: mesh, hollow, cut, split, check.

    Parameters
    ----------
    name : str
        Segment name (parts are named after it).
    mask : Volume
        The segment's mask.
    options : PrintOptions
        Hollowing, cutting planes, per-shell split and extra checks.
    space : {"LPS", "RAS"}
        Coordinates of the meshes (planes and drain points are converted).
    smoothing_factor, decimation : float
        As :func:`~SegDeepLogic.mesh.mask_to_mesh`.
    measure_deviation : bool
        Measure how far smoothing/decimation moved the surface (uncut parts only).
    progress, cancel : optional
        Progress callback and cancel token.

    Returns
    -------
    list of PreparedPart
        Every part with its print-readiness report. Hollowed parts carry ``report.hollowing``
        (wall asked for and measured, voxel size, solid, hollow and saved volume, drain holes);
        cut pieces carry ``report.cut`` (planes, sides, kerf).

    Raises
    ------
    MeshError
        Empty mask, a wall that leaves no cavity, a plane that misses the part, ...
    """
    report(progress, 0.0, "surface", cancel)
    hollowing: dict[str, Any] | None = None
    if options.wall_mm is not None:
        points = [np.asarray(p, dtype=np.float64) for p in options.drain_points]
        if space == "RAS":  # drain points are given in the export's space
            points = [p * np.array([-1.0, -1.0, 1.0]) for p in points]
        result = hollow_mask(
            mask,
            options.wall_mm,
            voxel_mm=options.voxel_mm,
            drain_holes=options.drain_holes,
            drain_diameter_mm=options.drain_diameter_mm,
            drain_points=points or None,
            smoothing_factor=smoothing_factor,
            progress=lambda f, s: report(progress, 0.3 * f, s, cancel),
            cancel=cancel,
        )
        mesh, raw = mask_to_mesh(result.wall, space=space, smoothing_factor=smoothing_factor, return_raw=True, cancel=cancel)
        solid = result.solid_surface.to_space(space)
        report(progress, 0.5, "measuring the wall", cancel)
        inner = np.flatnonzero(_cavity_vertices(raw, result))
        no_faces = np.zeros((0, 3), np.int64)
        wall_measured = np.abs(surface_deviation_mm(Mesh(mesh.vertices[inner], no_faces, space), solid))
        # smoothing may pull the cavity's surface towards the outside by a fraction of a voxel where
        # the cavity is small; there the voxel surface (at least wall - voxel/2 deep) is kept
        thin = inner[wall_measured < result.wall_mm - 0.5 * result.voxel_mm]
        if len(thin):
            vertices = mesh.vertices.copy()
            vertices[thin] = raw.vertices[thin]
            mesh = Mesh(vertices, mesh.faces, space, vertex_normals(vertices, mesh.faces))
            wall_measured = np.abs(surface_deviation_mm(Mesh(mesh.vertices[inner], no_faces, space), solid))
        solid_ml = enclosed_volume_mm3(solid) / 1000.0
        hollow_ml = enclosed_volume_mm3(mesh) / 1000.0
        hollowing = {
            "wall_mm": result.wall_mm,
            "voxel_mm": result.voxel_mm,
            "measured_wall_min_mm": float(wall_measured.min()) if wall_measured.size else None,
            "measured_wall_mean_mm": float(wall_measured.mean()) if wall_measured.size else None,
            "measured_wall_note": "distance from every vertex of the cavity's surface (away from drain holes) to the outer surface",
            "unsmoothed_cavity_vertices": len(thin),
            "solid_volume_ml": solid_ml,
            "hollow_volume_ml": hollow_ml,
            "saved_volume_ml": solid_ml - hollow_ml,
            "saved_percent": 100.0 * (solid_ml - hollow_ml) / solid_ml if solid_ml > 0 else None,
            "drain_holes": [h.to_dict() for h in result.drain_holes],
        }
        mask_for_report: Volume | None = result.wall
    else:
        mesh, raw = mask_to_mesh(mask, space=space, smoothing_factor=smoothing_factor, return_raw=True, cancel=cancel)
        mask_for_report = mask
    if decimation > 0:
        report(progress, 0.55, "decimating", cancel)
        mesh = decimate_mesh(mesh, decimation, cancel=cancel)
        mesh = mesh.with_normals()
    report(progress, 0.6, "cutting", cancel)
    parts: list[tuple[str, Mesh, dict[str, Any] | None]] = []
    if options.planes:
        for piece in cut_mesh(mesh, options.planes, kerf_mm=options.kerf_mm, name=name):
            cut = {
                "planes": [p.to_space(space).to_dict() for p in options.planes],
                "sides": [{"plane": p, "side": s, "direction": w} for p, s, w in piece.sides],
                "kerf_mm": float(options.kerf_mm),
            }
            parts.append((piece.name, piece.mesh, cut))
    else:
        parts.append((name, mesh, None))
    if options.per_shell:
        split = []
        for part_name, part_mesh, cut in parts:
            shells = split_shells(part_mesh)
            if len(shells) == 1:
                split.append((part_name, part_mesh, cut))
            else:
                split.extend((f"{part_name}_shell{k + 1}", s, cut) for k, s in enumerate(shells))
        parts = split
    out = []
    whole = len(parts) == 1 and not options.planes
    for k, (part_name, part_mesh, cut) in enumerate(parts):
        report(progress, 0.65 + 0.35 * k / len(parts), f"checking {part_name}", cancel)
        deviation = None
        if whole and measure_deviation:
            deviation = surface_deviation_mm(part_mesh, raw)
            part_mesh = part_mesh.with_scalars(deviation_mm=deviation.astype(np.float32))
        r = mesh_report(
            part_mesh,
            mask=mask_for_report if whole else None,
            deviation_mm=deviation,
            name=part_name,
            smoothing_factor=smoothing_factor,
            decimation=decimation,
            thickness=options.thin_threshold_mm is not None,
            thin_threshold_mm=options.thin_threshold_mm,
            build_volume_mm=options.build_volume_mm,
        )
        r = dataclasses.replace(r, segment=name, hollowing=hollowing, cut=cut)
        out.append(PreparedPart(part_name, name, part_mesh, r))
    report(progress, 1.0, "prepared", cancel)
    return out


def parse_points(values: Sequence[str] | None) -> tuple[tuple[float, float, float], ...]:
    """Points ``"x,y,z"`` (mm) from the command line."""
    points = []
    for text in values or ():
        try:
            xyz = tuple(float(v) for v in str(text).split(","))
        except ValueError:
            xyz = ()
        if len(xyz) != 3:
            raise MeshError(f"a point is 'x,y,z' in mm, got {text!r}")
        points.append(xyz)
    return tuple(points)  # type: ignore[return-value]
