"""Print-readiness checks of a triangle surface: topology, volume, area and smoothing deviation.

A surface is ready for a 3D printer's slicer when it is **watertight** (every edge shared by
exactly two triangles), **manifold** (no edge shared by more than two triangles, and the
triangles around every vertex form a single fan), consistently oriented with **outward**
normals (positive enclosed volume). :func:`mesh_report` computes these with vectorised numpy
edge counting (no Python loop over triangles), plus the number of shells (connected pieces),
the enclosed volume (divergence theorem) against the voxel volume of the mask, the surface
area, and how far smoothing and decimation moved the surface from the voxel boundary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.sparse import csgraph
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import reference as vtk_reference
from vtkmodules.vtkCommonCore import vtkDoubleArray
from vtkmodules.vtkCommonDataModel import vtkStaticCellLocator
from vtkmodules.vtkFiltersCore import vtkImplicitPolyDataDistance

from .errors import MeshError
from .mesh import Mesh, mesh_to_vtk
from .volume import Volume

__all__ = [
    "MeshReport",
    "MeshTopology",
    "ThinRegion",
    "build_volume_fit",
    "enclosed_volume_mm3",
    "mesh_report",
    "mesh_topology",
    "surface_area_mm2",
    "surface_deviation_mm",
    "thin_regions",
    "wall_thickness_mm",
]

DEFAULT_THIN_THRESHOLD_MM = 0.8  # a common minimum printable wall for FDM and resin printers


@dataclasses.dataclass(frozen=True)
class MeshTopology:
    """Edge and vertex counts that decide whether a surface is closed and manifold."""

    edge_count: int
    boundary_edge_count: int  # edges in one triangle only: holes
    non_manifold_edge_count: int  # edges in three or more triangles
    non_manifold_vertex_count: int  # vertices whose triangles form more than one fan
    misoriented_edge_count: int  # two-triangle edges traversed in the same direction by both
    degenerate_triangle_count: int  # triangles that repeat a vertex index
    unreferenced_vertex_count: int
    shell_count: int  # connected components of the triangles
    euler_characteristic: int  # V - E + F over the referenced vertices (2 per sphere-like shell)

    @property
    def watertight(self) -> bool:
        return self.boundary_edge_count == 0 and self.non_manifold_edge_count == 0 and self.edge_count > 0

    @property
    def edge_manifold(self) -> bool:
        return self.non_manifold_edge_count == 0

    @property
    def vertex_manifold(self) -> bool:
        return self.non_manifold_vertex_count == 0

    @property
    def manifold(self) -> bool:
        return self.edge_manifold and self.vertex_manifold and self.degenerate_triangle_count == 0

    @property
    def consistently_oriented(self) -> bool:
        return self.misoriented_edge_count == 0


def mesh_topology(faces: npt.ArrayLike, n_vertices: int | None = None) -> MeshTopology:
    """Count boundary, non-manifold and misoriented edges, non-manifold vertices and shells.

    Parameters
    ----------
    faces : (m, 3) array of int
        Triangle vertex indices.
    n_vertices : int, optional
        Number of vertices (default ``faces.max() + 1``), for the unreferenced-vertex count.

    Examples
    --------
    A closed tetrahedron, then the same with one triangle removed:

    >>> tetra = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]
    >>> t = mesh_topology(tetra)
    >>> t.watertight, t.manifold, t.consistently_oriented, t.shell_count, t.euler_characteristic
    (True, True, True, 1, 2)
    >>> mesh_topology(tetra[:3]).boundary_edge_count
    3
    """
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    m = len(f)
    n = max(int(f.max()) + 1 if m else 0, int(n_vertices or 0))
    if m == 0:
        return MeshTopology(0, 0, 0, 0, 0, 0, n, 0, 0)

    # half-edge h = 3*face + side goes a -> b; side 0: v0->v1, 1: v1->v2, 2: v2->v0
    a = f.ravel()
    b = f[:, [1, 2, 0]].ravel()
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    key = lo * n + hi
    order = np.argsort(key)
    sorted_key = key[order]
    first = np.empty(len(key), dtype=bool)
    first[0] = True
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=first[1:])
    edge_sorted = np.cumsum(first) - 1
    edge = np.empty_like(edge_sorted)
    edge[order] = edge_sorted  # undirected edge id of every half-edge
    n_edges = int(edge_sorted[-1]) + 1
    per_edge = np.bincount(edge, minlength=n_edges)
    forward = np.bincount(edge, weights=(a < b), minlength=n_edges)  # half-edges running lo -> hi
    degenerate = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])

    # Vertex manifoldness: around each vertex v, link the incident edge ends (v, neighbour)
    # through the triangles' corners at v; a manifold vertex has exactly one such fan.
    edge_lo = np.empty(n_edges, dtype=np.int64)
    edge_lo[edge] = lo
    edge_hi = np.empty(n_edges, dtype=np.int64)
    edge_hi[edge] = hi
    h = np.arange(3 * m).reshape(m, 3)
    prev = h[:, [2, 0, 1]]  # half-edge arriving at the corner's vertex
    corner_vertex = f
    node_out = 2 * edge[h] + (corner_vertex == hi[h])
    node_in = 2 * edge[prev] + (corner_vertex == hi[prev])
    ok = ~np.repeat(degenerate, 3).reshape(m, 3)
    n_nodes = 2 * n_edges
    graph = sparse.coo_matrix(
        (np.ones(int(ok.sum()), dtype=np.int8), (node_out[ok], node_in[ok])), shape=(n_nodes, n_nodes)
    ).tocsr()
    _, fan = csgraph.connected_components(graph, directed=False)
    node_vertex = np.stack([edge_lo, edge_hi], axis=1).ravel()
    node_used = np.zeros(n_nodes, dtype=bool)  # edge ends touched by a non-degenerate corner
    node_used[node_out[ok]] = True
    node_used[node_in[ok]] = True
    fan_vertex = np.full(int(fan.max()) + 1, -1, dtype=np.int64)
    fan_vertex[fan[node_used]] = node_vertex[node_used]
    fans_per_vertex = np.bincount(fan_vertex[fan_vertex >= 0], minlength=n)

    # Shells: connected components of the vertex graph, counted over referenced vertices.
    referenced = np.bincount(f.ravel(), minlength=n) > 0
    vgraph = sparse.coo_matrix((np.ones(n_edges, dtype=np.int8), (edge_lo, edge_hi)), shape=(n, n)).tocsr()
    n_components, _ = csgraph.connected_components(vgraph, directed=False)
    n_referenced = int(referenced.sum())

    two = per_edge == 2
    return MeshTopology(
        edge_count=n_edges,
        boundary_edge_count=int((per_edge == 1).sum()),
        non_manifold_edge_count=int((per_edge > 2).sum()),
        non_manifold_vertex_count=int((fans_per_vertex > 1).sum()),
        misoriented_edge_count=int((forward[two] != 1).sum()),
        degenerate_triangle_count=int(degenerate.sum()),
        unreferenced_vertex_count=n - n_referenced,
        shell_count=int(n_components - (n - n_referenced)),
        euler_characteristic=int(n_referenced - n_edges + m),
    )


def _triangle_corners(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = mesh.vertices - mesh.vertices.mean(axis=0) if mesh.n_vertices else mesh.vertices  # better conditioned
    f = mesh.faces
    return v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]


def enclosed_volume_mm3(mesh: Mesh) -> float:
    """Signed volume enclosed by a closed surface (divergence theorem), in mm³.

    Positive when the triangles wind counter-clockwise seen from outside (outward normals).

    Examples
    --------
    >>> tetra = Mesh([[0, 0, 0], [3, 0, 0], [0, 3, 0], [0, 0, 3]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    >>> enclosed_volume_mm3(tetra)
    4.5
    """
    if mesh.n_faces == 0:
        return 0.0
    a, b, c = _triangle_corners(mesh)
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)


def surface_area_mm2(mesh: Mesh) -> float:
    """Total triangle area in mm².

    Examples
    --------
    >>> surface_area_mm2(Mesh([[0, 0, 0], [2, 0, 0], [0, 2, 0]], [[0, 1, 2]]))
    2.0
    """
    if mesh.n_faces == 0:
        return 0.0
    a, b, c = _triangle_corners(mesh)
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2.0)


def surface_deviation_mm(mesh: Mesh, reference: Mesh) -> np.ndarray:
    """Signed distance (mm) from every vertex of ``mesh`` to the surface ``reference``.

    Positive outside ``reference`` (on the side its normals point to), negative inside. Exact
    point-to-triangle distances (``vtkImplicitPolyDataDistance``).

    Examples
    --------
    >>> ref = Mesh([[0, 0, 0], [10, 0, 0], [0, 10, 0]], [[0, 1, 2]])
    >>> surface_deviation_mm(Mesh([[1, 1, 0.5], [1, 1, -0.25]], np.zeros((0, 3), int)), ref).tolist()
    [0.5, -0.25]
    """
    if mesh.space != reference.space:
        reference = reference.to_space(mesh.space)
    if reference.n_faces == 0:
        raise MeshError("the reference surface has no triangles")
    if mesh.n_vertices == 0:
        return np.zeros(0)
    distance = vtkImplicitPolyDataDistance()
    distance.SetInput(mesh_to_vtk(dataclasses.replace(reference, normals=None, scalars={})))
    out = vtkDoubleArray()
    distance.FunctionValue(numpy_support.numpy_to_vtk(np.ascontiguousarray(mesh.vertices), deep=True), out)
    return numpy_support.vtk_to_numpy(out).copy()


def wall_thickness_mm(mesh: Mesh, *, progress_every: int = 0) -> np.ndarray:
    """Local wall thickness (mm) at every vertex: the distance along the inward normal to the surface.

    From the centre of each triangle a ray is cast along its inward normal; the triangle's
    thickness is the distance to the first triangle it hits (VTK's static cell locator, exact
    ray-triangle tests), and a vertex gets the smallest thickness of its triangles. This is the
    ray method of print-preparation tools (e.g. Meshmixer's thickness analysis); face normals
    keep sharp edges (the caps of cut pieces) from grazing their neighbours. For a hollow sphere
    with wall t it is about t on both surfaces. Vertices whose rays leave without hitting
    anything (open surfaces) get ``inf``.

    Examples
    --------
    A 10 x 10 x 2 mm plate is 2 mm thick at every vertex of its two large faces (200 of 280):

    >>> from SegDeepLogic import Volume
    >>> from SegDeepLogic.mesh import mask_to_mesh
    >>> array = np.zeros((4, 12, 12), bool)
    >>> array[1:3, 1:11, 1:11] = True
    >>> t = wall_thickness_mm(mask_to_mesh(Volume(array, spacing=(1, 1, 1)), smoothing_factor=0))
    >>> round(float(t.min()), 3), int(np.sum(np.abs(t - 2.0) < 1e-6)), len(t)
    (2.0, 200, 280)
    """
    if mesh.n_faces == 0:
        raise MeshError("the mesh has no triangles")
    v, f = mesh.vertices, mesh.faces
    centroids = v[f].mean(axis=1)
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    length_n = np.linalg.norm(normals, axis=1, keepdims=True)
    valid = length_n[:, 0] > 0
    np.divide(normals, length_n, out=normals, where=length_n > 0)
    polydata = mesh_to_vtk(dataclasses.replace(mesh, normals=None, scalars={}))
    locator = vtkStaticCellLocator()
    locator.SetDataSet(polydata)
    locator.BuildLocator()
    lo, hi = mesh.bounds()
    length = float(np.linalg.norm(hi - lo)) * 1.01 + 1.0
    eps = 1e-6 * length
    t = vtk_reference(0.0)
    x = [0.0, 0.0, 0.0]
    pcoords = [0.0, 0.0, 0.0]
    sub_id = vtk_reference(0)
    cell_id = vtk_reference(0)
    per_face = np.full(mesh.n_faces, np.inf)
    starts = (centroids - eps * normals).tolist()
    ends = (centroids - length * normals).tolist()
    for i in np.flatnonzero(valid).tolist():
        if locator.IntersectWithLine(starts[i], ends[i], 1e-9, t, x, pcoords, sub_id, cell_id):
            per_face[i] = t.get() * (length - eps) + eps
    out = np.full(mesh.n_vertices, np.inf)
    for c in range(3):
        np.minimum.at(out, f[:, c], per_face)
    return out


@dataclasses.dataclass(frozen=True)
class ThinRegion:
    """A connected patch of the surface thinner than the threshold.

    ``where_mm`` is the thinnest vertex, ``centroid_mm`` the patch's centre (both in the mesh's
    space, mm); ``area_mm2`` its area (a third of each touching triangle per vertex).
    """

    min_thickness_mm: float
    where_mm: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    area_mm2: float
    vertex_count: int


def thin_regions(mesh: Mesh, thickness_mm: npt.ArrayLike, threshold_mm: float) -> list[ThinRegion]:
    """Connected patches of vertices thinner than ``threshold_mm``, thinnest first.

    Examples
    --------
    >>> from SegDeepLogic import Volume
    >>> from SegDeepLogic.mesh import mask_to_mesh
    >>> array = np.zeros((4, 12, 12), bool)
    >>> array[1:3, 1:11, 1:11] = True
    >>> plate = mask_to_mesh(Volume(array, spacing=(1, 1, 1)), smoothing_factor=0)
    >>> regions = thin_regions(plate, wall_thickness_mm(plate), 2.5)
    >>> len(regions), round(regions[0].min_thickness_mm, 3), regions[0].centroid_mm  # the whole plate
    (1, 2.0, (5.5, 5.5, 1.5))
    """
    thickness = np.asarray(thickness_mm, dtype=np.float64)
    thin = thickness < float(threshold_mm)
    if not thin.any():
        return []
    f = mesh.faces
    n = mesh.n_vertices
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    keep = thin[a] & thin[b]
    graph = sparse.coo_matrix((np.ones(int(keep.sum()), np.int8), (a[keep], b[keep])), shape=(n, n)).tocsr()
    _, labels = csgraph.connected_components(graph, directed=False)
    v = mesh.vertices
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) / 2.0
    vertex_area = np.bincount(f.ravel(), weights=np.repeat(area / 3.0, 3), minlength=n)
    regions = []
    for label in np.unique(labels[thin]):
        idx = np.flatnonzero((labels == label) & thin)
        worst = idx[int(np.argmin(thickness[idx]))]
        regions.append(
            ThinRegion(
                min_thickness_mm=float(thickness[worst]),
                where_mm=tuple(float(c) for c in v[worst]),  # type: ignore[arg-type]
                centroid_mm=tuple(float(c) for c in v[idx].mean(axis=0)),  # type: ignore[arg-type]
                area_mm2=float(vertex_area[idx].sum()),
                vertex_count=len(idx),
            )
        )
    regions.sort(key=lambda r: r.min_thickness_mm)
    return regions


def build_volume_fit(size_mm: npt.ArrayLike, build_volume_mm: npt.ArrayLike) -> dict[str, bool]:
    """Whether a bounding box of ``size_mm`` fits a printer's build volume (x, y, z in mm).

    ``as_oriented``: each size within the build volume's along the same axis; ``any_orientation``:
    some axis-aligned rotation fits (sorted sizes within the sorted build volume).

    Examples
    --------
    >>> build_volume_fit([200, 50, 30], [180, 180, 250])
    {'as_oriented': False, 'any_orientation': True}
    """
    size = np.asarray(size_mm, dtype=np.float64).reshape(3)
    build = np.asarray(build_volume_mm, dtype=np.float64).reshape(3)
    if np.any(build <= 0) or not np.all(np.isfinite(build)):
        raise MeshError(f"the build volume must be three positive sizes in mm, got {build.tolist()}")
    return {
        "as_oriented": bool(np.all(size <= build)),
        "any_orientation": bool(np.all(np.sort(size) <= np.sort(build))),
    }


@dataclasses.dataclass(frozen=True)
class MeshReport:
    """Print-readiness of one surface. :meth:`to_dict` gives a JSON-ready dict (units in the keys).

    ``mask_volume_ml``, ``volume_difference_percent`` and the deviations are None when the mask
    or the unsmoothed surface were not given to :func:`mesh_report`.
    """

    name: str | None
    space: str
    vertex_count: int
    triangle_count: int
    watertight: bool
    edge_manifold: bool
    vertex_manifold: bool
    consistently_oriented: bool
    outward_normals: bool
    shell_count: int
    euler_characteristic: int
    boundary_edge_count: int
    non_manifold_edge_count: int
    non_manifold_vertex_count: int
    degenerate_triangle_count: int
    volume_ml: float
    mask_volume_ml: float | None
    volume_difference_percent: float | None
    surface_area_mm2: float
    bounds_min_mm: tuple[float, float, float]
    bounds_max_mm: tuple[float, float, float]
    deviation_max_mm: float | None
    deviation_mean_mm: float | None
    smoothing_factor: float | None = None
    decimation: float | None = None
    min_wall_thickness_mm: float | None = None  # ray method, see wall_thickness_mm; None when not measured
    thin_threshold_mm: float | None = None
    thin_regions: tuple[ThinRegion, ...] = ()
    thin_area_mm2: float | None = None
    build_volume_mm: tuple[float, float, float] | None = None
    fits_build_volume: bool | None = None  # as oriented (the file's axes)
    fits_build_volume_rotated: bool | None = None  # in some axis-aligned orientation
    segment: str | None = None  # the segment a part (piece, shell) comes from
    hollowing: dict[str, Any] | None = None  # wall asked for and measured, saved volume, drain holes
    cut: dict[str, Any] | None = None  # planes, this piece's sides, kerf

    @property
    def manifold(self) -> bool:
        """Edge- and vertex-manifold, without degenerate triangles."""
        return self.edge_manifold and self.vertex_manifold and self.degenerate_triangle_count == 0

    @property
    def print_ready(self) -> bool:
        """Watertight, manifold, consistently oriented with outward normals."""
        return self.watertight and self.manifold and self.consistently_oriented and self.outward_normals

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["manifold"] = self.manifold
        d["print_ready"] = self.print_ready
        d["bounds_min_mm"] = list(self.bounds_min_mm)
        d["bounds_max_mm"] = list(self.bounds_max_mm)
        d["size_mm"] = [self.bounds_max_mm[a] - self.bounds_min_mm[a] for a in range(3)]
        d["thin_regions"] = [dataclasses.asdict(r) for r in self.thin_regions]
        if self.build_volume_mm is not None:
            d["build_volume_mm"] = list(self.build_volume_mm)
        # the print-preparation facts appear only when they were measured or apply
        if self.thin_threshold_mm is None:
            for key in ("min_wall_thickness_mm", "thin_threshold_mm", "thin_regions", "thin_area_mm2"):
                d.pop(key)
        for key in ("build_volume_mm", "fits_build_volume", "fits_build_volume_rotated", "segment", "hollowing", "cut"):
            if d[key] is None:
                d.pop(key)
        return d


def mesh_report(
    mesh: Mesh,
    *,
    mask: Volume | None = None,
    reference: Mesh | None = None,
    deviation_mm: npt.ArrayLike | None = None,
    name: str | None = None,
    smoothing_factor: float | None = None,
    decimation: float | None = None,
    thickness: bool = False,
    thin_threshold_mm: float | None = None,
    build_volume_mm: npt.ArrayLike | None = None,
) -> MeshReport:
    """Check that a surface is printable and measure it.

    Parameters
    ----------
    mesh : Mesh
        The final surface (mm).
    mask : Volume, optional
        The mask it was built from, for ``mask_volume_ml`` (voxel count x voxel volume) and the
        volume difference.
    reference : Mesh, optional
        The unsmoothed, undecimated surface (``mask_to_mesh(..., return_raw=True)``); the report
        then gives the max and mean distance of ``mesh``'s vertices to it.
    deviation_mm : (n,) array, optional
        Precomputed :func:`surface_deviation_mm` of ``mesh`` (instead of ``reference``).
    name : str, optional
        Segment name recorded in the report.
    smoothing_factor, decimation : float, optional
        Parameters used to build ``mesh``, recorded in the report.
    thickness : bool, optional
        Measure the wall thickness (:func:`wall_thickness_mm`, one ray per vertex): the minimum
        and the thin regions. Implied by ``thin_threshold_mm``.
    thin_threshold_mm : float, optional
        Report the patches thinner than this (e.g. 0.8 mm) with where they are
        (default 0.8 mm when ``thickness`` is True).
    build_volume_mm : (3,) floats, optional
        A printer's build volume (x, y, z mm): the report says whether the part fits.

    Returns
    -------
    MeshReport

    Examples
    --------
    >>> import numpy as np
    >>> from SegDeepLogic import Volume
    >>> from SegDeepLogic.mesh import mask_to_mesh
    >>> array = np.zeros((12, 12, 12), bool)
    >>> array[1:11, 1:11, 1:11] = True
    >>> mask = Volume(array, spacing=(1, 1, 1))
    >>> mesh, raw = mask_to_mesh(mask, return_raw=True)
    >>> r = mesh_report(mesh, mask=mask, reference=raw, name="cube")
    >>> r.watertight, r.manifold, r.shell_count, r.outward_normals, r.mask_volume_ml
    (True, True, 1, True, 1.0)
    >>> round(r.volume_ml, 3), r.surface_area_mm2 < 600, r.deviation_max_mm < 1.0
    (0.98, True, True)
    """
    if mesh.n_faces == 0:
        raise MeshError("the mesh has no triangles")
    topology = mesh_topology(mesh.faces, mesh.n_vertices)
    volume_mm3 = enclosed_volume_mm3(mesh)
    mask_ml = None
    difference = None
    if mask is not None:
        mask_ml = float(np.count_nonzero(mask.array)) * mask.voxel_volume_mm3 / 1000.0
        difference = 100.0 * (volume_mm3 / 1000.0 - mask_ml) / mask_ml if mask_ml > 0 else None
    if deviation_mm is None and reference is not None:
        deviation_mm = surface_deviation_mm(mesh, reference)
    dev_max = dev_mean = None
    if deviation_mm is not None:
        d = np.abs(np.asarray(deviation_mm, dtype=np.float64))
        if d.shape != (mesh.n_vertices,):
            raise MeshError(f"deviation_mm must have one value per vertex ({mesh.n_vertices}), got shape {d.shape}")
        dev_max, dev_mean = float(d.max()), float(d.mean())
    lo, hi = mesh.bounds()
    extra: dict[str, Any] = {}
    if thickness or thin_threshold_mm is not None:
        threshold = DEFAULT_THIN_THRESHOLD_MM if thin_threshold_mm is None else float(thin_threshold_mm)
        if not threshold > 0:
            raise MeshError(f"the thin-wall threshold must be > 0 mm, got {thin_threshold_mm}")
        t = wall_thickness_mm(mesh)
        finite = t[np.isfinite(t)]
        regions = thin_regions(mesh, t, threshold)
        extra.update(
            min_wall_thickness_mm=float(finite.min()) if finite.size else None,
            thin_threshold_mm=threshold,
            thin_regions=tuple(regions),
            thin_area_mm2=float(sum(r.area_mm2 for r in regions)),
        )
    if build_volume_mm is not None:
        fit = build_volume_fit(hi - lo, build_volume_mm)
        extra.update(
            build_volume_mm=tuple(float(x) for x in np.asarray(build_volume_mm, dtype=np.float64).reshape(3)),
            fits_build_volume=fit["as_oriented"],
            fits_build_volume_rotated=fit["any_orientation"],
        )
    return MeshReport(
        name=name,
        space=mesh.space,
        vertex_count=mesh.n_vertices,
        triangle_count=mesh.n_faces,
        watertight=topology.watertight,
        edge_manifold=topology.edge_manifold,
        vertex_manifold=topology.vertex_manifold,
        consistently_oriented=topology.consistently_oriented,
        outward_normals=volume_mm3 > 0,
        shell_count=topology.shell_count,
        euler_characteristic=topology.euler_characteristic,
        boundary_edge_count=topology.boundary_edge_count,
        non_manifold_edge_count=topology.non_manifold_edge_count,
        non_manifold_vertex_count=topology.non_manifold_vertex_count,
        degenerate_triangle_count=topology.degenerate_triangle_count,
        volume_ml=volume_mm3 / 1000.0,
        mask_volume_ml=mask_ml,
        volume_difference_percent=difference,
        surface_area_mm2=surface_area_mm2(mesh),
        bounds_min_mm=tuple(float(x) for x in lo),  # type: ignore[arg-type]
        bounds_max_mm=tuple(float(x) for x in hi),  # type: ignore[arg-type]
        deviation_max_mm=dev_max,
        deviation_mean_mm=dev_mean,
        smoothing_factor=None if smoothing_factor is None else float(smoothing_factor),
        decimation=None if decimation is None else float(decimation),
        **extra,
    )
