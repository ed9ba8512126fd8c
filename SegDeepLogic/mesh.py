"""Closed triangle surfaces from segmentation masks, in physical millimetres: the :class:`Mesh` type.

The pipeline is the one 3D Slicer uses to turn a binary label map into a closed surface
(``vtkBinaryLabelmapToClosedSurfaceConversionRule``), with the same parameters, so a mesh
made here matches Slicer's STL export:

1. crop the mask to its bounding box and pad it with one voxel of background on every side,
   so the surface is closed even where the mask touches the image border;
2. extract the label boundary in **index space** with ``vtkDiscreteFlyingEdges3D`` (vertices
   at the midpoints between inside and outside voxel centres);
3. smooth with ``vtkWindowedSincPolyDataFilter`` (a low-pass filter that does not shrink the
   shape; ``NormalizeCoordinates`` on, 20 iterations, pass band ``10 ** (-4 * smoothing_factor)``
   as Slicer's "smoothing factor"). The filter is a fixed linear combination of neighbouring
   vertices, so smoothing in index space equals smoothing in millimetres;
4. map the vertices to physical LPS (or RAS) mm with the volume's affine, reversing the
   triangle winding when the affine is a reflection (negative determinant) so the normals stay
   outward;
5. optionally decimate in millimetres with a topology-preserving quadric edge collapse
   (:func:`decimate_mesh`). Slicer runs ``vtkDecimatePro`` before smoothing; here the smooth
   surface is decimated, which stays closer to it, and, unlike VTK's decimators on thin bone,
   the result stays watertight and manifold;
6. compute area-weighted outward vertex normals.

Print-readiness checks are in :mod:`SegDeepLogic.mesh_report`, file writers and the
segment export in :mod:`SegDeepLogic.mesh_io`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
from scipy import sparse
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkCommand, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkCommonExecutionModel import vtkPolyDataAlgorithm
from vtkmodules.vtkFiltersCore import (
    vtkTriangleFilter,
    vtkTriangleMeshPointNormals,
    vtkWindowedSincPolyDataFilter,
)
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D

from ._compat import zip_strict
from .errors import CancelledError, MeshError
from .progress import CancelToken, ProgressCallback, report
from .volume import Volume

__all__ = [
    "DEFAULT_SMOOTHING_FACTOR",
    "Mesh",
    "decimate_mesh",
    "mask_to_mesh",
    "mesh_from_vtk",
    "mesh_to_vtk",
    "merge_meshes",
    "smooth_mesh",
    "smoothing_passband",
    "vertex_normals",
]

Space = Literal["LPS", "RAS"]
_FLIP_XY = np.array([-1.0, -1.0, 1.0])
_SCALAR_NAME = re.compile(r"[A-Za-z0-9_]+")  # valid PLY property names

DEFAULT_SMOOTHING_FACTOR = 0.5  # Slicer's default for the closed-surface representation
DEFAULT_SMOOTHING_ITERATIONS = 20  # Slicer's value ("ten or twenty iterations is all that is usually necessary")


def _check_space(space: str) -> Space:
    if space not in ("LPS", "RAS"):
        raise ValueError(f"space must be 'LPS' or 'RAS', got {space!r}")
    return space  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# The value type
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle surface in physical millimetres with its coordinate system.

    Parameters
    ----------
    vertices : (n, 3) array of float
        Vertex positions in mm, in ``space``.
    faces : (m, 3) array of int
        Vertex indices of each triangle, counter-clockwise seen from outside (normals outward).
    space : {"LPS", "RAS"}, optional
        Coordinate system of ``vertices`` (and ``normals``). Default "LPS", as files and ITK.
    normals : (n, 3) array of float, optional
        Unit outward vertex normals.
    scalars : mapping of str to (n,) array, optional
        Named per-vertex values, e.g. ``{"deviation_mm": ...}``. Names are letters, digits and
        underscores (they become PLY property names).

    Examples
    --------
    >>> import numpy as np
    >>> tetra = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    >>> tetra.n_vertices, tetra.n_faces, tetra.space
    (4, 4, 'LPS')
    >>> tetra.to_space("RAS").vertices[1].tolist()
    [-1.0, -0.0, 0.0]
    """

    vertices: np.ndarray
    faces: np.ndarray
    space: Space = "LPS"
    normals: np.ndarray | None = None
    scalars: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        vertices = np.asarray(self.vertices, dtype=np.float64)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise MeshError(f"vertices must have shape (n, 3), got {vertices.shape}")
        if not np.all(np.isfinite(vertices)):
            raise MeshError("vertices must be finite (no NaN or infinity)")
        faces = np.asarray(self.faces)
        if faces.size == 0:
            faces = faces.reshape(0, 3)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise MeshError(f"faces must have shape (m, 3) (triangles), got {faces.shape}")
        if not np.issubdtype(faces.dtype, np.integer):
            raise MeshError(f"faces must hold integer vertex indices, got dtype {faces.dtype}")
        faces = faces.astype(np.int64, copy=False)
        if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise MeshError(f"face indices must be in [0, {len(vertices)}), got [{faces.min()}, {faces.max()}]")
        normals = None
        if self.normals is not None:
            normals = np.asarray(self.normals, dtype=np.float64)
            if normals.shape != vertices.shape:
                raise MeshError(f"normals must have the shape of vertices {vertices.shape}, got {normals.shape}")
        scalars: dict[str, np.ndarray] = {}
        for name, values in dict(self.scalars).items():
            if not isinstance(name, str) or not _SCALAR_NAME.fullmatch(name):
                raise MeshError(f"scalar names must be non-empty ASCII letters, digits and underscores, got {name!r}")
            values = np.asarray(values)
            if values.shape != (len(vertices),):
                raise MeshError(f"scalar {name!r} must have one value per vertex, shape ({len(vertices)},), got {values.shape}")
            scalars[name] = values
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "space", _check_space(self.space))
        object.__setattr__(self, "normals", normals)
        object.__setattr__(self, "scalars", scalars)

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds ``(min, max)`` of the vertices, in mm (``space`` coordinates)."""
        if not len(self.vertices):
            raise MeshError("an empty mesh has no bounds")
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def to_space(self, space: Space) -> Mesh:
        """The same surface in ``space`` ("LPS" or "RAS": x and y negated; the winding is kept)."""
        if _check_space(space) == self.space:
            return self
        normals = None if self.normals is None else self.normals * _FLIP_XY
        return Mesh(self.vertices * _FLIP_XY, self.faces, space, normals, self.scalars)

    def with_scalars(self, **scalars: npt.ArrayLike) -> Mesh:
        """A copy carrying extra (or replaced) named per-vertex scalars."""
        return dataclasses.replace(self, scalars={**self.scalars, **{k: np.asarray(v) for k, v in scalars.items()}})

    def with_normals(self) -> Mesh:
        """A copy with area-weighted outward vertex normals (see :func:`vertex_normals`)."""
        return dataclasses.replace(self, normals=vertex_normals(self.vertices, self.faces))

    def __repr__(self) -> str:
        extra = f", scalars={list(self.scalars)}" if self.scalars else ""
        return f"Mesh({self.n_vertices} vertices, {self.n_faces} triangles, space={self.space!r}{extra})"


def vertex_normals(vertices: npt.ArrayLike, faces: npt.ArrayLike) -> np.ndarray:
    """Unit vertex normals: the area-weighted mean of the incident triangles' normals.

    They point outward when the triangles are counter-clockwise seen from outside.
    Vertices used by no triangle get a zero normal.

    Examples
    --------
    >>> v = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    >>> vertex_normals(v, [[0, 1, 2]]).tolist()
    [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    """
    # component-major (3, n) layout: contiguous rows make the gathers and products faster
    v = np.ascontiguousarray(np.asarray(vertices, dtype=np.float64).T)
    f = np.ascontiguousarray(np.asarray(faces, dtype=np.int64).reshape(-1, 3).T)
    p0, p1, p2 = v[:, f[0]], v[:, f[1]], v[:, f[2]]
    e1, e2 = p1 - p0, p2 - p0
    fn = np.empty_like(e1)  # cross product: its length is twice the area, so the sum is area weighted
    fn[0] = e1[1] * e2[2] - e1[2] * e2[1]
    fn[1] = e1[2] * e2[0] - e1[0] * e2[2]
    fn[2] = e1[0] * e2[1] - e1[1] * e2[0]
    n = np.zeros((3, v.shape[1]))
    for c in range(3):
        for corner in f:  # bincount is much faster than np.add.at
            n[c] += np.bincount(corner, weights=fn[c], minlength=v.shape[1])
    length = np.sqrt(np.einsum("ij,ij->j", n, n))
    np.divide(n, length, out=n, where=length > 0)
    return np.ascontiguousarray(n.T)


# --------------------------------------------------------------------------------------------
# VTK conversion
# --------------------------------------------------------------------------------------------
def mesh_to_vtk(mesh: Mesh) -> vtkPolyData:
    """A ``vtkPolyData`` copy of ``mesh`` (points in mm, triangles, normals and scalars as point data)."""
    polydata = vtkPolyData()
    points = vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(mesh.vertices), deep=True))
    polydata.SetPoints(points)
    cells = vtkCellArray()
    offsets = np.arange(0, 3 * mesh.n_faces + 1, 3, dtype=np.int64)
    cells.SetData(
        numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(mesh.faces.ravel(), dtype=np.int64), deep=True),
    )
    polydata.SetPolys(cells)
    if mesh.normals is not None:
        normals = numpy_support.numpy_to_vtk(np.ascontiguousarray(mesh.normals), deep=True)
        normals.SetName("Normals")
        polydata.GetPointData().SetNormals(normals)
    for name, values in mesh.scalars.items():
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values), deep=True)
        array.SetName(name)
        polydata.GetPointData().AddArray(array)
    return polydata


def _triangles(polydata: vtkPolyData) -> np.ndarray:
    """(m, 3) int64 triangle indices of ``polydata`` (polygons triangulated if needed)."""
    polys = polydata.GetPolys()
    n = polys.GetNumberOfCells()
    if n == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if polys.GetMaxCellSize() != 3 or polys.GetNumberOfConnectivityIds() != 3 * n:
        tri = vtkTriangleFilter()
        tri.SetInputData(polydata)
        tri.PassVertsOff()
        tri.PassLinesOff()
        tri.Update()
        return _triangles(tri.GetOutput())
    return numpy_support.vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64).reshape(-1, 3)  # a copy: VTK may reuse it


def _points(polydata: vtkPolyData) -> np.ndarray:
    if polydata.GetPoints() is None or polydata.GetNumberOfPoints() == 0:
        return np.zeros((0, 3))
    return numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)


def mesh_from_vtk(polydata: vtkPolyData, space: Space = "LPS") -> Mesh:
    """A :class:`Mesh` from the triangles (polygons are triangulated) of a ``vtkPolyData``.

    Point normals become :attr:`Mesh.normals`; other one-component point arrays become scalars.
    The points are taken to be in ``space`` mm.
    """
    pd = polydata.GetPointData()
    normals = pd.GetNormals()
    scalars = {}
    for a in range(pd.GetNumberOfArrays()):
        array = pd.GetArray(a)
        name = array.GetName() if array is not None else None
        if array is None or array is normals or array.GetNumberOfComponents() != 1 or not name:
            continue
        if _SCALAR_NAME.fullmatch(name):
            scalars[name] = numpy_support.vtk_to_numpy(array).copy()
    return Mesh(
        _points(polydata),
        _triangles(polydata),
        space,
        None if normals is None else numpy_support.vtk_to_numpy(normals).astype(np.float64),
        scalars,
    )


def _run(algorithm: vtkPolyDataAlgorithm, cancel: CancelToken | None) -> vtkPolyData:
    """Update a VTK filter; abort it from its progress events when ``cancel`` is set."""
    if cancel is not None:

        def abort(caller: vtkPolyDataAlgorithm, _event: str) -> None:
            if cancel.cancelled:
                caller.SetAbortExecute(1)

        algorithm.AddObserver(vtkCommand.ProgressEvent, abort)
    algorithm.Update()
    if cancel is not None and cancel.cancelled:
        raise CancelledError("operation cancelled by the user")
    return algorithm.GetOutput()


# --------------------------------------------------------------------------------------------
# Smoothing and decimation
# --------------------------------------------------------------------------------------------
def smoothing_passband(smoothing_factor: float) -> float:
    """Windowed-sinc pass band for Slicer's "smoothing factor": ``10 ** (-4 * factor)``.

    0 is almost no smoothing (pass band 1), 0.25 average (0.1), 0.5 Slicer's default (0.01),
    1 very strong (0.0001).

    Examples
    --------
    >>> smoothing_passband(0.5)
    0.01
    """
    factor = float(smoothing_factor)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"smoothing_factor must be in [0, 1], got {smoothing_factor}")
    return 10.0 ** (-4.0 * factor)


def _smoother(polydata: vtkPolyData, smoothing_factor: float, iterations: int) -> vtkWindowedSincPolyDataFilter:
    # Slicer's settings (vtkBinaryLabelmapToClosedSurfaceConversionRule)
    smoother = vtkWindowedSincPolyDataFilter()
    smoother.SetInputData(polydata)
    smoother.SetNumberOfIterations(int(iterations))
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.SetFeatureAngle(120.0)
    smoother.SetPassBand(smoothing_passband(smoothing_factor))
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    return smoother


def smooth_mesh(
    mesh: Mesh,
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    *,
    iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    cancel: CancelToken | None = None,
) -> Mesh:
    """Smooth a surface without shrinking it (windowed-sinc low-pass filter, as Slicer).

    Parameters
    ----------
    mesh : Mesh
        Surface to smooth. The connectivity is kept; only the vertices move.
    smoothing_factor : float, optional
        Slicer's smoothing factor in [0, 1]; the pass band is ``10 ** (-4 * factor)``
        (:func:`smoothing_passband`). 0 returns ``mesh`` unchanged.
    iterations : int, optional
        Number of filter iterations (degree of the polynomial), 20 as Slicer.
    cancel : CancelToken, optional
        Checked while the filter runs.

    Returns
    -------
    Mesh
        The smoothed surface; normals are recomputed if ``mesh`` had them.

    Examples
    --------
    >>> import numpy as np
    >>> from SegDeepLogic import Volume
    >>> cube = Volume(np.pad(np.ones((8, 8, 8), bool), 2), spacing=(1, 1, 1))
    >>> raw = mask_to_mesh(cube, smoothing_factor=0)
    >>> smooth_mesh(raw, 0.5).n_faces == raw.n_faces
    True
    """
    if smoothing_factor == 0 or mesh.n_faces == 0:
        smoothing_passband(smoothing_factor)  # validates
        return mesh
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    out = _run(_smoother(mesh_to_vtk(mesh), smoothing_factor, iterations), cancel)
    smoothed = dataclasses.replace(mesh, vertices=_points(out))
    return smoothed.with_normals() if mesh.normals is not None else smoothed


def decimate_mesh(mesh: Mesh, reduction: float, *, cancel: CancelToken | None = None) -> Mesh:
    """Remove about ``reduction`` of the triangles, keeping the topology and the shape.

    Quadric-error edge collapse (Garland & Heckbert: each collapse moves the merged vertex to
    the point closest, in the least-squares sense, to the planes of its original triangles,
    measured in mm) that never changes the topology: a closed manifold surface stays closed and
    manifold with the same shells and genus, and no triangle folds over. VTK's decimators
    (``vtkQuadricDecimation``, ``vtkDecimatePro``) were not used because on thin CT bone they
    open holes and create non-manifold edges. Fewer triangles than asked may be removed when
    the topology allows no more collapses (tiny shells cannot shrink below a tetrahedron).

    Parameters
    ----------
    mesh : Mesh
        Triangle surface in mm.
    reduction : float
        Target fraction of triangles to remove, in [0, 1): 0.75 keeps a quarter.
    cancel : CancelToken, optional
        Checked between collapse rounds.

    Returns
    -------
    Mesh
        The decimated surface (scalars are dropped; normals are recomputed if ``mesh`` had them).

    Examples
    --------
    >>> import numpy as np
    >>> from SegDeepLogic import Volume
    >>> k, j, i = np.indices((20, 20, 20)) - 9.5
    >>> ball = Volume(i**2 + j**2 + k**2 < 64, spacing=(1, 1, 1))
    >>> mesh = mask_to_mesh(ball)
    >>> small = decimate_mesh(mesh, 0.75)
    >>> round(small.n_faces / mesh.n_faces, 2)
    0.25
    """
    reduction = float(reduction)
    if not 0.0 <= reduction < 1.0:
        raise ValueError(f"reduction must be in [0, 1), got {reduction}")
    if reduction == 0 or mesh.n_faces == 0:
        return mesh
    target = int(round(mesh.n_faces * (1.0 - reduction)))
    vertices, faces = _collapse_edges(mesh.vertices, mesh.faces, target, cancel=cancel)
    normals = vertex_normals(vertices, faces) if mesh.normals is not None else None
    return _mesh_unchecked(vertices, faces, mesh.space, normals)


# Quadric edge collapse ------------------------------------------------------------------------
def _edges(faces: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected edges as (lo, hi) index arrays and the number of faces on each."""
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    key = np.minimum(a, b) * n + np.maximum(a, b)
    key.sort()
    first = np.empty(len(key), bool)
    first[0] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(key)))
    ukey = key[starts]
    return ukey // n, ukey % n, counts


def _vertex_quadrics(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(10, n) sums of the area-weighted plane quadrics around each vertex: the upper triangle
    aa ab ac ad bb bc bd cc cd dd of p p^T for the plane p = (a, b, c, d) of each triangle."""
    vt = np.ascontiguousarray(v.T)
    p0, p1, p2 = vt[:, f[:, 0]], vt[:, f[:, 1]], vt[:, f[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    cr = np.stack([e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]])
    dbl_area = np.sqrt((cr * cr).sum(axis=0))
    nrm = np.divide(cr, dbl_area, out=np.zeros_like(cr), where=dbl_area > 0)
    p = np.concatenate([nrm, -(nrm * p0).sum(axis=0, keepdims=True)])
    w = dbl_area / 2
    q = np.zeros((10, len(v)))
    for c, (i, j) in enumerate(zip_strict(*np.triu_indices(4))):
        fq = p[i] * p[j] * w
        for corner in range(3):
            q[c] += np.bincount(f[:, corner], weights=fq, minlength=len(v))
    return q


def _quadric_cost(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Quadric error (x, 1)^T Q (x, 1) for q (10, k) and x (3, k)."""
    X, Y, Z = x
    return (
        q[0] * X * X
        + q[4] * Y * Y
        + q[7] * Z * Z
        + q[9]
        + 2 * (q[1] * X * Y + q[2] * X * Z + q[5] * Y * Z + q[3] * X + q[6] * Y + q[8] * Z)
    )


def _placement(q: np.ndarray, va: np.ndarray, vb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, k) positions minimising the quadrics q (10, k) of edges (va, vb as (3, k)), and their cost.

    The closed-form minimiser when the 3x3 system is well conditioned and the point stays within an
    edge length of the midpoint; otherwise the best of the two endpoints and the midpoint.
    """
    c00 = q[4] * q[7] - q[5] * q[5]
    c01 = q[2] * q[5] - q[1] * q[7]
    c02 = q[1] * q[5] - q[2] * q[4]
    c11 = q[0] * q[7] - q[2] * q[2]
    c12 = q[1] * q[2] - q[0] * q[5]
    c22 = q[0] * q[4] - q[1] * q[1]
    det = q[0] * c00 + q[1] * c01 + q[2] * c02
    r0, r1, r2 = -q[3], -q[6], -q[8]
    mid = 0.5 * (va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.stack([c00 * r0 + c01 * r1 + c02 * r2, c01 * r0 + c11 * r1 + c12 * r2, c02 * r0 + c12 * r1 + c22 * r2]) / det
        length2 = ((va - vb) ** 2).sum(axis=0)
        off2 = ((x - mid) ** 2).sum(axis=0)
        ok = (np.abs(det) > 1e-10 * (q[0] + q[4] + q[7]) ** 3) & (off2 <= length2)
    cost = q[9] - (r0 * x[0] + r1 * x[1] + r2 * x[2])  # at the minimiser: c + b.x
    bad = np.flatnonzero(~ok)
    if len(bad):
        qb = q[:, bad]
        best_x = mid[:, bad]
        best = _quadric_cost(qb, best_x)
        for alt in (va[:, bad], vb[:, bad]):
            c = _quadric_cost(qb, alt)
            better = c < best
            best_x = np.where(better, alt, best_x)
            best = np.where(better, c, best)
        x[:, bad] = best_x
        cost[bad] = best
    return x, cost


def _collapse_edges(
    vertices: np.ndarray,
    faces: np.ndarray,
    target_faces: int,
    *,
    min_cos: float = 0.2,
    max_passes: int = 4,
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Topology-preserving quadric edge collapse down to about ``target_faces`` triangles.

    Each round collapses a set of independent edges at once (each the cheapest edge within the
    1-rings of its endpoints, so their neighbourhoods are disjoint); an edge collapses only if
    it passes the link condition (its endpoints share exactly the two opposite vertices), every
    vertex keeps three neighbours, and no surrounding triangle turns by more than
    ``arccos(min_cos)``. Vertices on open or non-manifold edges stay put. Stops early when no
    edge may collapse any more.
    """
    vt = np.array(np.asarray(vertices, dtype=np.float64).T)  # (3, n): contiguous coordinate rows
    f = np.array(faces, dtype=np.int64)
    n = vt.shape[1]
    q = _vertex_quadrics(vt.T, f)
    a, b, counts = _edges(f, n)
    locked = np.zeros(n, bool)  # vertices on open or non-manifold edges never move
    locked[a[counts != 2]] = True
    locked[b[counts != 2]] = True
    big = np.iinfo(np.int64).max
    while len(f) > target_faces:
        if cancel is not None:
            cancel.raise_if_cancelled()
        m = len(f)
        a, b, counts = _edges(f, n)
        cand = np.flatnonzero((counts == 2) & ~locked[a] & ~locked[b])
        ca, cb = a[cand], b[cand]
        x, cost = _placement(q[:, ca] + q[:, cb], vt[:, ca], vt[:, cb])
        rank = np.empty(len(cost), np.int64)
        rank[np.argsort(cost)] = np.arange(len(cost))  # unique priorities (ties broken arbitrarily)
        adj = sparse.csr_matrix((np.ones(2 * len(a), np.int8), (np.r_[a, b], np.r_[b, a])), shape=(n, n))
        deg = np.diff(adj.indptr)
        incidence = sparse.csr_matrix(
            (np.tile(np.arange(1, 4, dtype=np.int8), m), (f.ravel(), np.repeat(np.arange(m), 3))), shape=(n, m)
        )  # vertex -> (face, corner + 1)
        alive = np.ones(len(ca), bool)
        blocked = np.zeros(n, bool)
        accepted = []
        needed = -(-(m - target_faces) // 2)  # each collapse removes two triangles
        n_accepted = 0
        for _ in range(max_passes):
            act = alive & ~blocked[ca] & ~blocked[cb]
            if not act.any():
                break
            # an edge is selected when it is the cheapest within the 1-rings of both endpoints:
            # selected edges then touch disjoint neighbourhoods and can collapse together
            m1 = np.full(n, big)
            np.minimum.at(m1, ca[act], rank[act])
            np.minimum.at(m1, cb[act], rank[act])
            m2 = m1.copy()
            np.minimum.at(m2, a, m1[b])
            np.minimum.at(m2, b, m1[a])
            sel = np.flatnonzero(act & (rank == m2[ca]) & (rank == m2[cb]))
            if not len(sel):
                break
            alive[sel] = False
            sa, sb = ca[sel], cb[sel]
            k = len(sel)
            # link condition: a and b share exactly the two vertices opposite the edge
            common = adj[sa].multiply(adj[sb]).tocsr()
            common.eliminate_zeros()
            ncommon = np.diff(common.indptr)
            good = ncommon == 2
            opp = np.zeros((k, 2), np.int64)
            opp[good] = common.indices[np.repeat(good, ncommon)].reshape(-1, 2)
            # every vertex keeps at least three neighbours (no collapse of a tetrahedron)
            good &= (deg[opp[:, 0]] >= 4) & (deg[opp[:, 1]] >= 4) & (deg[sa] + deg[sb] >= 7)
            # no triangle around a or b flips or degenerates when a and b move to x
            around = incidence[np.r_[sa, sb]]
            owner = np.repeat(np.tile(np.arange(k), 2), np.diff(around.indptr))
            tface, tcorner = around.indices, around.data.astype(np.int64) - 1
            order = np.argsort(tface, kind="stable")
            tface, tcorner, owner = tface[order], tcorner[order], owner[order]
            single = np.ones(len(tface), bool)  # the two triangles on the edge itself disappear
            dup = tface[1:] == tface[:-1]
            single[1:] &= ~dup
            single[:-1] &= ~dup
            tface, tcorner, owner = tface[single], tcorner[single], owner[single]
            pts = vt[:, f[tface]]  # (3, t, 3)
            old = np.cross(pts[:, :, 1] - pts[:, :, 0], pts[:, :, 2] - pts[:, :, 0], axis=0)
            pts[:, np.arange(len(tface)), tcorner] = x[:, sel[owner]]
            new = np.cross(pts[:, :, 1] - pts[:, :, 0], pts[:, :, 2] - pts[:, :, 0], axis=0)
            dot = (old * new).sum(axis=0)
            norms = np.sqrt((old * old).sum(axis=0) * (new * new).sum(axis=0))
            good[owner[dot <= min_cos * norms]] = False
            if not good.any():
                continue
            sa, sb = sa[good], sb[good]
            accepted.append((sa, sb, x[:, sel[good]], rank[sel[good]]))
            n_accepted += len(sa)
            ends = np.r_[sa, sb]
            blocked[ends] = True  # later passes stay out of the closed 1-rings of these endpoints
            blocked[adj[ends].indices] = True
            if n_accepted >= needed:
                break
        if not n_accepted:
            break
        sa = np.concatenate([t[0] for t in accepted])
        sb = np.concatenate([t[1] for t in accepted])
        sx = np.concatenate([t[2] for t in accepted], axis=1)
        if len(sa) > needed:  # near the target: only the cheapest collapses
            keep = np.argsort(np.concatenate([t[3] for t in accepted]))[:needed]
            sa, sb, sx = sa[keep], sb[keep], sx[:, keep]
        vt[:, sa] = sx
        q[:, sa] += q[:, sb]
        remap = np.arange(n)
        remap[sb] = sa
        f = remap[f]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    used = np.zeros(n, bool)
    used[f.ravel()] = True
    new_index = np.cumsum(used) - 1
    return vt[:, used].T.copy(), new_index[f]


# --------------------------------------------------------------------------------------------
# Mask -> surface
# --------------------------------------------------------------------------------------------
def _bounding_box(array: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices (k, j, i) of the smallest box holding every non-zero voxel, or None if none."""
    k = np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1))
    if not k.size:
        return None
    sub = array[k[0] : k[-1] + 1]
    j = np.flatnonzero(sub.any(axis=(0, 2)))
    i = np.flatnonzero(sub.any(axis=(0, 1)))
    return slice(k[0], k[-1] + 1), slice(j[0], j[-1] + 1), slice(i[0], i[-1] + 1)


def _index_surface(mask: Volume, cancel: CancelToken | None) -> vtkPolyData:
    """Discrete flying-edges boundary of the non-zero voxels, in (i, j, k) index coordinates."""
    array = mask.array
    box = _bounding_box(array)
    if box is None:
        raise MeshError(
            f"the mask is empty (no voxel set in {mask.shape_ijk} voxels (i, j, k)), so there is no surface to build; "
            "check the threshold or the segment"
        )
    crop = array[box]
    binary = crop.view(np.uint8) if crop.dtype == np.bool_ else (crop != 0).view(np.uint8)
    # one voxel of background on every side closes the surface at the image border
    padded = np.pad(binary, 1)
    image = vtkImageData()
    image.SetDimensions(padded.shape[::-1])
    image.SetOrigin(box[2].start - 1, box[1].start - 1, box[0].start - 1)  # index coordinates of the full grid
    scalars = numpy_support.numpy_to_vtk(padded.ravel(), deep=False)  # zero copy; the VTK array keeps `padded` alive
    image.GetPointData().SetScalars(scalars)
    surface = vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    surface.ComputeGradientsOff()
    surface.ComputeNormalsOff()
    surface.ComputeScalarsOff()
    return _run(surface, cancel)


def _transform(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``ijk @ A.T + t`` without BLAS: an (n, 3) x (3, 3) product is slow through gemm."""
    return np.einsum("ij,kj->ik", ijk, affine[:3, :3]) + affine[:3, 3]


def _physical_normals(index_surface: vtkPolyData, affine: np.ndarray, sign: float) -> np.ndarray:
    """Area-weighted vertex normals in mm from those of the index-space surface.

    Summed cross products transform linearly (``cross(A a, A b) = det(A) A^-T cross(a, b)``) and
    an outward normal stays outward under ``A^-T`` whatever the sign of ``det(A)``, so this is
    :func:`vertex_normals` of the physical mesh, computed by VTK's fast C++ filter.
    """
    normals = vtkTriangleMeshPointNormals()
    normals.SetInputData(index_surface)
    normals.Update()
    n_index = numpy_support.vtk_to_numpy(normals.GetOutput().GetPointData().GetNormals()).astype(np.float64)
    n = np.einsum("ij,kj->ik", n_index, sign * np.linalg.inv(affine[:3, :3]).T)  # same dtypes: mixed is 5x slower
    length = np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]
    np.divide(n, length, out=n, where=length > 0)
    return n


@functools.cache
def _flying_edges_sign() -> float:
    """+1 if vtkDiscreteFlyingEdges3D winds triangles counter-clockwise seen from outside, else -1.

    Measured once on a single voxel (an octahedron) with the VTK in use, so the orientation
    never depends on an assumption about the case table.
    """
    array = np.zeros((3, 3, 3), np.uint8)
    array[1, 1, 1] = 1
    image = vtkImageData()
    image.SetDimensions(3, 3, 3)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True))
    surface = vtkDiscreteFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 1)
    surface.Update()
    v, f = _points(surface.GetOutput()), _triangles(surface.GetOutput())
    return 1.0 if np.einsum("ij,ij->", v[f[:, 0]] - 1, np.cross(v[f[:, 1]] - 1, v[f[:, 2]] - 1)) > 0 else -1.0


def _mesh_unchecked(vertices: np.ndarray, faces: np.ndarray, space: Space, normals: np.ndarray | None = None) -> Mesh:
    """A Mesh from arrays this module built (already valid): skips the validation passes."""
    mesh = object.__new__(Mesh)
    for name, value in (("vertices", vertices), ("faces", faces), ("space", space), ("normals", normals), ("scalars", {})):
        object.__setattr__(mesh, name, value)
    return mesh


@overload
def mask_to_mesh(
    mask: Volume,
    *,
    space: Space = ...,
    smoothing_factor: float = ...,
    decimation: float = ...,
    smoothing_iterations: int = ...,
    compute_normals: bool = ...,
    return_raw: Literal[False] = ...,
    progress: ProgressCallback | None = ...,
    cancel: CancelToken | None = ...,
) -> Mesh: ...


@overload
def mask_to_mesh(
    mask: Volume,
    *,
    space: Space = ...,
    smoothing_factor: float = ...,
    decimation: float = ...,
    smoothing_iterations: int = ...,
    compute_normals: bool = ...,
    return_raw: Literal[True],
    progress: ProgressCallback | None = ...,
    cancel: CancelToken | None = ...,
) -> tuple[Mesh, Mesh]: ...


def mask_to_mesh(
    mask: Volume,
    *,
    space: Space = "LPS",
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    decimation: float = 0.0,
    smoothing_iterations: int = DEFAULT_SMOOTHING_ITERATIONS,
    compute_normals: bool = True,
    return_raw: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Mesh | tuple[Mesh, Mesh]:
    """Closed triangle surface of a mask, in physical millimetres (Slicer's closed-surface pipeline).

    Parameters
    ----------
    mask : Volume
        Boolean or integer mask; every non-zero voxel is inside. Its geometry (spacing, origin,
        direction, including reflections) places the surface in physical space.
    space : {"LPS", "RAS"}, optional
        Coordinate system of the result. "LPS" (default) is what Slicer writes to STL/OBJ files.
    smoothing_factor : float, optional
        Slicer's smoothing factor in [0, 1] (windowed-sinc pass band ``10 ** (-4 * factor)``);
        0 keeps the voxel staircase. Default 0.5, as Slicer.
    decimation : float, optional
        Fraction of triangles to remove after smoothing, in [0, 1). Default 0 (none).
    smoothing_iterations : int, optional
        Windowed-sinc iterations, 20 as Slicer.
    compute_normals : bool, optional
        Attach outward unit vertex normals (default True).
    return_raw : bool, optional
        Also return the unsmoothed, undecimated surface (for the deviation in
        :func:`~SegDeepLogic.mesh_report.mesh_report`).
    progress : callable, optional
        ``progress(fraction, stage)`` between steps.
    cancel : CancelToken, optional
        Checked between and during steps; raises :class:`~SegDeepLogic.errors.CancelledError`.

    Returns
    -------
    Mesh, or (Mesh, Mesh) if ``return_raw``
        Closed surface with outward winding (and normals); with ``return_raw``, also the raw
        surface (label boundary at the midpoints between voxel centres, same ``space``).

    Raises
    ------
    MeshError
        If the mask has no voxel set.

    Examples
    --------
    A 10 mm cube of 1 mm voxels: the raw surface lies half a voxel outside the outer voxel centres.

    >>> import numpy as np
    >>> from SegDeepLogic import Volume
    >>> array = np.zeros((12, 12, 12), bool)
    >>> array[1:11, 1:11, 1:11] = True
    >>> mask = Volume(array, spacing=(1, 1, 1), origin=(100, 0, 0))
    >>> mesh = mask_to_mesh(mask, smoothing_factor=0)
    >>> [b.tolist() for b in mesh.bounds()]
    [[100.5, 0.5, 0.5], [110.5, 10.5, 10.5]]
    >>> [b.tolist() for b in mask_to_mesh(mask, smoothing_factor=0, space="RAS").bounds()]
    [[-110.5, -10.5, 0.5], [-100.5, -0.5, 10.5]]
    """
    space = _check_space(space)
    smoothing_passband(smoothing_factor)  # validate before the work
    if not 0.0 <= float(decimation) < 1.0:
        raise ValueError(f"decimation must be in [0, 1), got {decimation}")
    if not isinstance(mask, Volume):
        raise TypeError(f"mask must be a Volume (array with its geometry), got {type(mask).__name__}")

    report(progress, 0.0, "extracting surface", cancel)
    raw_index = _index_surface(mask, cancel)
    affine = mask.affine(space)
    faces = _triangles(raw_index)  # smoothing moves vertices only: one connectivity for both
    if _flying_edges_sign() * np.linalg.det(affine[:3, :3]) < 0:
        faces = faces[:, [0, 2, 1]]  # inside out in index space, or the affine is a reflection
    smoothed_index = raw_index
    if smoothing_factor > 0:
        report(progress, 0.3, "smoothing", cancel)
        smoothed_index = _run(_smoother(raw_index, smoothing_factor, smoothing_iterations), cancel)
    mesh = _mesh_unchecked(_transform(_points(smoothed_index), affine), faces, space)
    if decimation > 0:
        report(progress, 0.7, "decimating", cancel)
        mesh = decimate_mesh(mesh, decimation, cancel=cancel)
    if compute_normals:
        report(progress, 0.95, "normals", cancel)
        if decimation > 0:
            normals = vertex_normals(mesh.vertices, mesh.faces)
        else:
            normals = _physical_normals(smoothed_index, affine, _flying_edges_sign())
        mesh = _mesh_unchecked(mesh.vertices, mesh.faces, space, normals)
    report(progress, 1.0, "surface done", cancel)
    if return_raw:
        return mesh, _mesh_unchecked(_transform(_points(raw_index), affine), faces, space)
    return mesh


def merge_meshes(meshes: Iterable[Mesh]) -> Mesh:
    """One mesh holding all triangles of ``meshes`` (same space); shared scalars/normals are kept.

    Examples
    --------
    >>> tri = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])
    >>> merged = merge_meshes([tri, tri])
    >>> merged.n_vertices, merged.faces.tolist()
    (6, [[0, 1, 2], [3, 4, 5]])
    """
    meshes = list(meshes)
    if not meshes:
        raise MeshError("no mesh to merge")
    spaces = {m.space for m in meshes}
    if len(spaces) > 1:
        raise MeshError(f"cannot merge meshes in different coordinate systems: {sorted(spaces)}")
    offsets = np.cumsum([0] + [m.n_vertices for m in meshes[:-1]])
    vertices = np.concatenate([m.vertices for m in meshes])
    faces = np.concatenate([m.faces + o for m, o in zip_strict(meshes, offsets)])
    normals = np.concatenate([m.normals for m in meshes]) if all(m.normals is not None for m in meshes) else None
    shared = set.intersection(*(set(m.scalars) for m in meshes))
    scalars = {name: np.concatenate([m.scalars[name] for m in meshes]) for name in meshes[0].scalars if name in shared}
    return Mesh(vertices, faces, meshes[0].space, normals, scalars)
