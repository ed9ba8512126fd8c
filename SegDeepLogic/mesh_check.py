"""Check and safely repair a mesh file from elsewhere (STL, OBJ, PLY, 3MF): ``segdeep mesh-check``.

:func:`check_mesh` gives the print-readiness facts of a surface: watertight, manifold,
consistently oriented with outward normals, shells, self-intersections, enclosed volume, and a
guess of the units from its size. :func:`repair_mesh` fixes only what can be fixed without
guessing the shape, and says exactly what it changed:

* merge duplicate vertices (exact matches: STL stores every corner separately);
* remove degenerate triangles (a repeated vertex) and duplicated triangles;
* make the winding consistent within each shell and outward (a cavity shell inward);
* fill small holes (boundary loops of at most ``max_hole_edges`` edges) with a fan of triangles
  around the loop's centre.

It refuses (:class:`~SegDeepLogic.errors.MeshError`, nothing written) when a repair would have to
invent or discard shape: non-manifold edges (three or more triangles on an edge), holes larger
than the limit, a non-orientable shell, or self-intersections.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from .errors import MeshError
from .mesh import Mesh, vertex_normals
from .mesh_report import enclosed_volume_mm3, mesh_topology, surface_area_mm2
from .print_prep import winding_number

__all__ = ["DEFAULT_MAX_HOLE_EDGES", "check_mesh", "guess_units", "repair_mesh", "self_intersections"]

DEFAULT_MAX_HOLE_EDGES = 32


def guess_units(size: np.ndarray) -> str:
    """A guess of the file's units from the largest bounding-box side (files rarely say).

    Examples
    --------
    >>> guess_units(np.array([80.0, 60, 40])), guess_units(np.array([0.08, 0.06, 0.04]))
    ('mm (a part 80 units across is plausible in millimetres)', 'm? (0.08 units across: metres, a 80 mm part)')
    """
    largest = float(np.max(size))
    if largest < 1.0:
        return f"m? ({largest:.3g} units across: metres, a {largest * 1000:.3g} mm part)"
    if largest < 10.0:
        return f"cm or inches? ({largest:.3g} units across: tiny in mm; {largest * 10:.3g} mm in cm, {largest * 25.4:.3g} mm in inches)"
    if largest <= 2000.0:
        return f"mm (a part {largest:.3g} units across is plausible in millimetres)"
    return f"µm? ({largest:.3g} units across: larger than any printer in mm)"


def self_intersections(mesh: Mesh, *, limit: int = 100_000) -> int:
    """Number of triangle pairs that cross each other (pairs sharing a vertex are not tested).

    Every edge of one triangle is tested against the other triangle (exact segment-triangle
    test) for the pairs whose bounding spheres overlap.

    Examples
    --------
    >>> from SegDeepLogic.mesh import merge_meshes
    >>> from SegDeepLogic.mesh_cut import box_mesh
    >>> self_intersections(box_mesh((0, 0, 0), (2, 2, 2)))
    0
    >>> self_intersections(merge_meshes([box_mesh((0, 0, 0), (2, 2, 2)), box_mesh((1, 0.3, 0.7), (3, 2.4, 2.9))])) > 0
    True
    """
    v, f = mesh.vertices, mesh.faces
    if len(f) < 2:
        return 0
    tri = v[f]
    centre = tri.mean(axis=1)
    radius = np.linalg.norm(tri - centre[:, None], axis=2).max(axis=1)
    tree = cKDTree(centre)
    pairs = tree.query_pairs(2.0 * float(radius.max()) + 1e-9, output_type="ndarray")
    if not len(pairs):
        return 0
    i, j = pairs[:, 0], pairs[:, 1]
    close = np.linalg.norm(centre[i] - centre[j], axis=1) <= radius[i] + radius[j]
    shared = (f[i][:, :, None] == f[j][:, None, :]).any(axis=(1, 2))
    i, j = i[close & ~shared], j[close & ~shared]
    hit = np.zeros(len(i), bool)
    for a, b in ((i, j), (j, i)):
        for e in range(3):
            p0 = tri[a, e]
            p1 = tri[a, (e + 1) % 3]
            hit |= _segment_hits_triangle(p0, p1, tri[b])
    return int(min(hit.sum(), limit))


def _segment_hits_triangle(p0: np.ndarray, p1: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Möller-Trumbore for segments p0->p1 against triangles (vectorised, strict interior)."""
    d = p1 - p0
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    h = np.cross(d, e2)
    a = np.einsum("ij,ij->i", e1, h)
    ok = np.abs(a) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, a, 1.0), 0.0)
    s = p0 - tri[:, 0]
    u = inv * np.einsum("ij,ij->i", s, h)
    q = np.cross(s, e1)
    w = inv * np.einsum("ij,ij->i", d, q)
    t = inv * np.einsum("ij,ij->i", e2, q)
    eps = 1e-9
    return ok & (u > eps) & (w > eps) & (u + w < 1 - eps) & (t > eps) & (t < 1 - eps)


def check_mesh(mesh: Mesh, *, name: str | None = None, intersections: bool = True) -> dict[str, Any]:
    """Print-readiness facts of any triangle surface, as a JSON-ready dict (units in the keys).

    Examples
    --------
    >>> from SegDeepLogic.mesh_cut import box_mesh
    >>> r = check_mesh(box_mesh((0, 0, 0), (10, 20, 30)))
    >>> r["watertight"], r["manifold"], r["outward_normals"], r["shell_count"], r["volume_mm3"], r["self_intersecting_pairs"]
    (True, True, True, 1, 6000.0, 0)
    """
    if mesh.n_faces == 0:
        raise MeshError("the mesh has no triangles")
    topo = mesh_topology(mesh.faces, mesh.n_vertices)
    volume = enclosed_volume_mm3(mesh)
    lo, hi = mesh.bounds()
    key = np.ascontiguousarray(mesh.vertices).view(np.dtype((np.void, 24))).ravel()
    duplicates = mesh.n_vertices - len(np.unique(key))
    faces_sorted = np.sort(mesh.faces, axis=1)
    duplicate_faces = len(faces_sorted) - len(np.unique(faces_sorted, axis=0))
    report = {
        "name": name,
        "vertex_count": mesh.n_vertices,
        "triangle_count": mesh.n_faces,
        "watertight": topo.watertight,
        "manifold": topo.manifold,
        "edge_manifold": topo.edge_manifold,
        "vertex_manifold": topo.vertex_manifold,
        "consistently_oriented": topo.consistently_oriented,
        "outward_normals": volume > 0,
        "shell_count": topo.shell_count,
        "boundary_edge_count": topo.boundary_edge_count,
        "hole_count": len(_boundary_loops(mesh.faces)) if topo.boundary_edge_count else 0,
        "non_manifold_edge_count": topo.non_manifold_edge_count,
        "non_manifold_vertex_count": topo.non_manifold_vertex_count,
        "misoriented_edge_count": topo.misoriented_edge_count,
        "degenerate_triangle_count": topo.degenerate_triangle_count,
        "duplicate_vertex_count": int(duplicates),
        "duplicate_triangle_count": int(duplicate_faces),
        "self_intersecting_pairs": self_intersections(mesh) if intersections else None,
        "volume_mm3": volume,
        "surface_area_mm2": surface_area_mm2(mesh),
        "bounds_min": lo.tolist(),
        "bounds_max": hi.tolist(),
        "size": (hi - lo).tolist(),
        "units_guess": guess_units(hi - lo),
    }
    report["print_ready"] = bool(
        topo.watertight
        and topo.manifold
        and topo.consistently_oriented
        and volume > 0
        and not report["self_intersecting_pairs"]
        and duplicates == 0
    )
    return report


def _edge_faces(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edge id of every half-edge, the number of triangles per edge, and (lo, hi) per edge."""
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    unique, edge = np.unique(pairs, axis=0, return_inverse=True)
    return edge.ravel(), np.bincount(edge.ravel()), unique


def _boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Vertex loops of the boundary (edges in one triangle), following the triangles' direction."""
    edge, count, _ = _edge_faces(faces)
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    border = count[edge] == 1
    nxt: dict[int, list[int]] = {}
    starts, ends = b[border].tolist(), a[border].tolist()  # the hole runs opposite to its triangles
    for k in range(len(starts)):
        nxt.setdefault(starts[k], []).append(ends[k])
    loops, seen = [], set()
    for start in list(nxt):
        if start in seen:
            continue
        loop, cur = [], start
        while cur not in seen:
            seen.add(cur)
            loop.append(cur)
            targets = nxt.get(cur, [])
            if not targets:
                break
            cur = targets[0]
        loops.append(loop)
    return loops


def _orient(faces: np.ndarray) -> tuple[np.ndarray, int]:
    """Flip triangles so that each shell's neighbours traverse shared edges in opposite directions."""
    edge, count, _ = _edge_faces(faces)
    m = len(faces)
    face_of = np.repeat(np.arange(m), 3)
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    forward = a < b
    by_edge: dict[int, list[int]] = {}
    for h in np.flatnonzero(count[edge] == 2).tolist():
        by_edge.setdefault(int(edge[h]), []).append(h)
    neighbours: list[list[tuple[int, bool]]] = [[] for _ in range(m)]
    for h1, h2 in by_edge.values():
        same = bool(forward[h1] == forward[h2])  # same direction: one of the two must flip
        f1, f2 = int(face_of[h1]), int(face_of[h2])
        neighbours[f1].append((f2, same))
        neighbours[f2].append((f1, same))
    flip = np.full(m, -1, dtype=np.int8)
    for seed in range(m):
        if flip[seed] >= 0:
            continue
        flip[seed] = 0
        queue = deque([seed])
        while queue:
            cur = queue.popleft()
            for other, same in neighbours[cur]:
                want = flip[cur] ^ int(same)
                if flip[other] < 0:
                    flip[other] = want
                    queue.append(other)
                elif flip[other] != want:
                    raise MeshError("cannot repair safely: a shell is not orientable (a Möbius-like surface)")
    out = faces.copy()
    out[flip == 1] = out[flip == 1][:, [0, 2, 1]]
    return out, int((flip == 1).sum())


def repair_mesh(mesh: Mesh, *, max_hole_edges: int = DEFAULT_MAX_HOLE_EDGES) -> tuple[Mesh, list[str]]:
    """Repair what is safe to repair and say what changed; refuse the rest.

    Parameters
    ----------
    mesh : Mesh
        Any triangle surface.
    max_hole_edges : int, optional
        Largest hole (edges around it) that is filled (default 32).

    Returns
    -------
    (Mesh, list of str)
        The repaired surface and one sentence per change (empty if nothing was changed).

    Raises
    ------
    MeshError
        If the surface needs an unsafe repair (non-manifold edges, large holes, self-intersections,
        a non-orientable shell); nothing is changed.

    Examples
    --------
    >>> from SegDeepLogic.mesh_cut import box_mesh
    >>> box = box_mesh((0, 0, 0), (1, 1, 1))
    >>> broken = Mesh(box.vertices, np.r_[box.faces[:1, [0, 2, 1]], box.faces[1:]])
    >>> fixed, changes = repair_mesh(broken)
    >>> changes
    ['reversed 1 triangle(s) to make the winding consistent and outward']
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    changes: list[str] = []
    # 1. duplicate vertices (exact)
    key = np.ascontiguousarray(v).view(np.dtype((np.void, 24))).ravel()
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(first) < len(v):
        changes.append(f"merged {len(v) - len(first)} duplicate vertex(es)")
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        v = v[first[order]]
        f = rank[inverse.ravel()][f]
    # 2. degenerate and duplicate triangles
    degenerate = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])
    if degenerate.any():
        changes.append(f"removed {int(degenerate.sum())} degenerate triangle(s) (a repeated vertex)")
        f = f[~degenerate]
    _, keep = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    if len(keep) < len(f):
        changes.append(f"removed {len(f) - len(keep)} duplicated triangle(s)")
        f = f[np.sort(keep)]
    if not len(f):
        raise MeshError("cannot repair: no triangle is left")
    # 3. refuse what is not safe
    topo = mesh_topology(f, len(v))
    if topo.non_manifold_edge_count:
        raise MeshError(
            f"cannot repair safely: {topo.non_manifold_edge_count} edge(s) are shared by three or more triangles "
            "(non-manifold); which triangles belong together is ambiguous"
        )
    # 4. small holes
    if topo.boundary_edge_count:
        loops = _boundary_loops(f)
        big = [len(loop) for loop in loops if len(loop) > max_hole_edges or len(loop) < 3]
        if big:
            raise MeshError(
                f"cannot repair safely: {len(big)} hole(s) with {', '.join(map(str, sorted(big)))} edges exceed the "
                f"{max_hole_edges}-edge limit for filling; filling them would invent shape"
            )
        new_faces = []
        for loop in loops:
            centre = len(v)
            v = np.vstack([v, v[loop].mean(axis=0)])
            new_faces.extend([loop[k], loop[(k + 1) % len(loop)], centre] for k in range(len(loop)))
        f = np.vstack([f, np.array(new_faces, dtype=np.int64)])
        changes.append(
            f"filled {len(loops)} hole(s) ({', '.join(str(len(x)) for x in loops)} edges) with {len(new_faces)} triangle(s)"
        )
    # 5. winding: consistent per shell, then outward (cavities inward)
    before = f.copy()
    n_before_fill = len(f) - (len(new_faces) if topo.boundary_edge_count else 0)
    if mesh_topology(f, len(v)).misoriented_edge_count:
        f, _ = _orient(f)
    labels = _shell_labels(f, len(v))
    outward_flips = 0

    shells = np.unique(labels)
    for s in shells:
        sel = labels == s
        shell = Mesh(v, f[sel])
        volume = enclosed_volume_mm3(shell)
        others = f[~sel]
        inside = 0.0
        if len(others):
            probe = v[f[sel][0]].mean(axis=0)
            inside = float(winding_number(Mesh(v, others), probe[None])[0]) if len(shells) > 1 else 0.0
        nested = round(abs(inside)) % 2 == 1  # a cavity inside another shell points inward
        if (volume < 0) != nested:
            f[sel] = f[sel][:, [0, 2, 1]]
            outward_flips += int(sel.sum())
    del outward_flips
    total = int((f[:n_before_fill] != before[:n_before_fill]).any(axis=1).sum())
    if total:
        changes.append(f"reversed {total} triangle(s) to make the winding consistent and outward")
    candidate = Mesh(v, f)
    crossings = self_intersections(candidate)
    if crossings:
        raise MeshError(
            f"cannot repair safely: {crossings} pair(s) of triangles cross each other (self-intersection); "
            "resolving them needs a remeshing that changes the shape"
        )
    return Mesh(v, f, mesh.space, vertex_normals(v, f)), changes


def _shell_labels(faces: np.ndarray, n: int) -> np.ndarray:
    graph = sparse.coo_matrix(
        (np.ones(2 * len(faces), np.int8), (np.r_[faces[:, 0], faces[:, 1]], np.r_[faces[:, 1], faces[:, 2]])), shape=(n, n)
    )
    _, label = csgraph.connected_components(graph, directed=False)
    return label[faces[:, 0]]
