"""Cutting closed surfaces by planes (osteotomy planning): capped, watertight pieces named by side.

A plane is a point and a normal in LPS or RAS millimetres (:class:`CutPlane`). :func:`cut_mesh`
splits a closed, manifold surface by one or more planes with **manifold3d** (exact, robust mesh
booleans): every piece is closed by a flat cap in the plane, so it is watertight and manifold by
construction, and without a kerf the pieces' volumes add up to the whole. An optional kerf (saw
gap) in mm removes a slab of that thickness centred on each plane.

Pieces are named by side: each plane's positive side (the way its normal points) is called after
the anatomical direction nearest the normal (LPS: +x left, +y posterior, +z superior; RAS: +x
right, +y anterior, +z superior), the negative side after the opposite one, e.g.
``mandible_cut1-left_cut2-right``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .errors import MeshError
from .mesh import Mesh, Space, _check_space, vertex_normals

__all__ = ["box_mesh", "CutPiece", "CutPlane", "cut_mesh", "mesh_to_manifold", "manifold_to_mesh", "side_word"]

_WORDS = {
    "LPS": (("left", "right"), ("posterior", "anterior"), ("superior", "inferior")),
    "RAS": (("right", "left"), ("anterior", "posterior"), ("superior", "inferior")),
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PLANE_RE = re.compile(
    rf"^\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[:/;]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*$"
)


def side_word(direction: npt.ArrayLike, space: Space = "LPS") -> str:
    """The anatomical direction nearest a vector in ``space``.

    Examples
    --------
    >>> side_word([1, 0.2, 0]), side_word([1, 0, 0], "RAS"), side_word([0, 0, -2])
    ('left', 'right', 'inferior')
    """
    d = np.asarray(direction, dtype=np.float64)
    axis = int(np.argmax(np.abs(d)))
    return _WORDS[_check_space(space)][axis][0 if d[axis] > 0 else 1]


@dataclasses.dataclass(frozen=True)
class CutPlane:
    """A cutting plane: a point on it and its normal, in ``space`` millimetres.

    Parameters
    ----------
    point : (3,) floats
        A point of the plane (mm).
    normal : (3,) floats
        Its normal (any non-zero length); the normal's side is the plane's "+" side.
    space : {"LPS", "RAS"}, optional
        Coordinate system of ``point`` and ``normal`` (default LPS).
    name : str, optional
        Used in piece names (default ``cut1``, ``cut2``, ... by position).

    Examples
    --------
    >>> CutPlane.parse("10,0,-5:1,0,0", space="RAS").to_space("LPS")
    CutPlane(point=(-10.0, -0.0, -5.0), normal=(-1.0, -0.0, 0.0), space='LPS', name=None)
    """

    point: tuple[float, float, float]
    normal: tuple[float, float, float]
    space: Space = "LPS"
    name: str | None = None

    def __post_init__(self) -> None:
        point = np.asarray(self.point, dtype=np.float64).reshape(-1)
        normal = np.asarray(self.normal, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or normal.shape != (3,):
            raise MeshError(f"a cutting plane needs a 3D point and a 3D normal, got {self.point!r} and {self.normal!r}")
        if not (np.all(np.isfinite(point)) and np.all(np.isfinite(normal))):
            raise MeshError("a cutting plane's point and normal must be finite numbers")
        length = float(np.linalg.norm(normal))
        if length < 1e-12:
            raise MeshError("a cutting plane's normal must not be the zero vector")
        object.__setattr__(self, "point", tuple(float(x) for x in point))
        object.__setattr__(self, "normal", tuple(float(x) for x in normal / length))
        object.__setattr__(self, "space", _check_space(self.space))

    @classmethod
    def parse(cls, text: str, *, space: Space = "LPS", name: str | None = None) -> CutPlane:
        """A plane from ``"px,py,pz:nx,ny,nz"`` (mm), as the command line takes it."""
        match = _PLANE_RE.match(str(text))
        if not match:
            raise MeshError(f"a cutting plane is 'px,py,pz:nx,ny,nz' (a point and a normal in {space} mm), got {text!r}")
        values = [float(g) for g in match.groups()]
        return cls(tuple(values[:3]), tuple(values[3:]), space, name)  # type: ignore[arg-type]

    def to_space(self, space: Space) -> CutPlane:
        """The same plane in ``space`` (x and y negated between LPS and RAS)."""
        if _check_space(space) == self.space:
            return self
        flip = np.array([-1.0, -1.0, 1.0])
        return CutPlane(tuple(np.asarray(self.point) * flip), tuple(np.asarray(self.normal) * flip), space, self.name)  # type: ignore[arg-type]

    def signed_distance(self, points: npt.ArrayLike) -> np.ndarray:
        """Signed distance (mm) of points (in this plane's space) to the plane, positive on the normal's side."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.point)) @ np.asarray(self.normal)

    def to_dict(self) -> dict:
        return {"name": self.name, "point_mm": list(self.point), "normal": list(self.normal), "space": self.space}


@dataclasses.dataclass(frozen=True)
class CutPiece:
    """One piece of a cut: its surface and on which side of each plane it lies."""

    name: str
    mesh: Mesh
    sides: tuple[tuple[str, str, str], ...]  # (plane name, "+" or "-", anatomical word) per plane
    volume_mm3: float


def mesh_to_manifold(mesh: Mesh):
    """A ``manifold3d.Manifold`` of a closed, manifold surface (raises :class:`MeshError` otherwise)."""
    import manifold3d

    vertices = np.array(mesh.vertices, dtype=np.float64, order="C")  # a writable copy: nanobind refuses read-only arrays
    if hasattr(manifold3d, "Mesh64"):  # double precision (manifold3d >= 3.1)
        faces = np.array(mesh.faces, dtype=np.uint64, order="C")
        solid = manifold3d.Manifold(manifold3d.Mesh64(vert_properties=vertices, tri_verts=faces))
    else:  # pragma: no cover - older manifold3d
        faces = np.array(mesh.faces, dtype=np.uint32, order="C")
        solid = manifold3d.Manifold(manifold3d.Mesh(vert_properties=vertices.astype(np.float32), tri_verts=faces))
    status = solid.status()
    if status != manifold3d.Error.NoError or solid.is_empty():
        raise MeshError(
            f"the surface is not a closed, manifold solid (manifold3d: {str(status).split('.')[-1]}); "
            "run 'segdeep mesh-check --repair' on it first"
        )
    return solid


def manifold_to_mesh(solid, space: Space) -> Mesh:
    """A :class:`Mesh` (with outward normals) from a ``manifold3d.Manifold``."""
    out = solid.to_mesh64() if hasattr(solid, "to_mesh64") else solid.to_mesh()
    vertices = np.asarray(out.vert_properties, dtype=np.float64)[:, :3]
    faces = np.asarray(out.tri_verts, dtype=np.int64)
    return Mesh(vertices, faces, space, vertex_normals(vertices, faces))


def box_mesh(lo: npt.ArrayLike, hi: npt.ArrayLike, space: Space = "LPS") -> Mesh:
    """An axis-aligned box from ``lo`` to ``hi`` (mm): 8 vertices, 12 outward triangles.

    Examples
    --------
    >>> box_mesh((0, 0, 0), (1, 2, 3)).n_faces
    12
    """
    import manifold3d

    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if np.any(hi <= lo):
        raise MeshError(f"a box needs hi > lo on every axis, got {lo.tolist()} and {hi.tolist()}")
    return manifold_to_mesh(manifold3d.Manifold.cube(tuple(hi - lo)).translate(tuple(lo)), space)


def cut_mesh(mesh: Mesh, planes: Sequence[CutPlane], *, kerf_mm: float = 0.0, name: str = "part") -> list[CutPiece]:
    """Cut a closed surface by planes into capped, watertight pieces named by side.

    Parameters
    ----------
    mesh : Mesh
        A closed, manifold surface (mm).
    planes : sequence of CutPlane
        Planes in LPS or RAS (converted to ``mesh.space``). Each must cross the surface.
    kerf_mm : float, optional
        Width of the saw gap removed around each plane (default 0: the pieces touch and their
        volumes add up to the whole).
    name : str, optional
        Base of the piece names.

    Returns
    -------
    list of CutPiece
        Every non-empty region between the planes (a piece may hold several shells if the
        region is disconnected), in a stable order.

    Raises
    ------
    MeshError
        If a plane misses the surface, the kerf is negative or removes a whole piece, or the
        surface is not a closed manifold.

    Examples
    --------
    >>> cube = box_mesh((0, 0, 0), (10, 10, 10))
    >>> pieces = cut_mesh(cube, [CutPlane((3, 0, 0), (1, 0, 0))], name="cube")
    >>> [(p.name, round(p.volume_mm3, 6)) for p in pieces]
    [('cube_cut1-left', 700.0), ('cube_cut1-right', 300.0)]
    """
    if not planes:
        raise MeshError("give at least one cutting plane")
    kerf = float(kerf_mm)
    if not np.isfinite(kerf) or kerf < 0:
        raise MeshError(f"the kerf must be a width >= 0 mm, got {kerf_mm}")
    planes = [p.to_space(mesh.space) for p in planes]
    named = [dataclasses.replace(p, name=p.name or f"cut{i + 1}") for i, p in enumerate(planes)]
    for i, plane in enumerate(named):
        d = plane.signed_distance(mesh.vertices)
        if d.min() >= 0 or d.max() <= 0:
            where = "+" if d.min() >= 0 else "-"
            raise MeshError(
                f"plane {plane.name} (point {_fmt(planes[i].point)} mm, normal {_fmt(planes[i].normal)}, {mesh.space}) "
                f"does not cut {name}: the whole surface is on its {where} side "
                f"({abs(d).min():.1f} to {abs(d).max():.1f} mm from it)"
            )
    solid = mesh_to_manifold(mesh)
    pieces: list[tuple[object, tuple[tuple[str, str, str], ...]]] = [(solid, ())]
    for plane in named:
        n = np.asarray(plane.normal)
        offset = float(n @ np.asarray(plane.point))
        plus, minus = side_word(n, mesh.space), side_word(-n, mesh.space)
        next_pieces = []
        for piece, sides in pieces:
            if kerf > 0:
                pos = piece.trim_by_plane(tuple(n), offset + kerf / 2)
                neg = piece.trim_by_plane(tuple(-n), -(offset - kerf / 2))
            else:
                pos, neg = piece.split_by_plane(tuple(n), offset)
            for part, sign, word in ((pos, "+", plus), (neg, "-", minus)):
                if not part.is_empty() and part.volume() > 0:
                    next_pieces.append((part, (*sides, (plane.name, sign, word))))
        pieces = next_pieces  # type: ignore[assignment]
    if len(pieces) < 2:
        raise MeshError(f"the kerf of {kerf:g} mm removes everything on one side of a plane: nothing would be left to print")
    out = []
    for part, sides in pieces:
        label = "_".join(f"{plane}-{word}" for plane, _, word in sides)
        out.append(CutPiece(f"{name}_{label}", manifold_to_mesh(part, mesh.space), sides, float(part.volume())))
    return out


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
