"""Mesh files (binary STL, OBJ, binary PLY) and the segment-to-printable-mesh export.

Every file records its coordinate system as Slicer does (``SPACE=LPS`` or ``SPACE=RAS`` in
the STL header, an OBJ comment, a PLY comment) so Slicer loads it in the right place; units are
millimetres. Files are written atomically (a reader never sees a partial file under the final
name) and existing files are kept unless ``overwrite=True``.

:func:`export_segments` turns a label map, a :class:`~SegDeepLogic.segmentation_io.Segmentation`
or a dict of masks into one file per segment (or one merged file) and returns the
print-readiness report of every segment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TextIO, Union

import numpy as np

from ._compat import zip_strict
from .atomic import atomic_outputs, atomic_path
from .errors import MeshError
from .mesh import DEFAULT_SMOOTHING_FACTOR, Mesh, Space, _check_space, _points, _triangles, mask_to_mesh, merge_meshes
from .mesh_3mf import PrintPart, read_3mf, write_3mf
from .mesh_report import MeshReport, mesh_report, surface_deviation_mm
from .print_prep import PrintOptions, prepare_segment
from .progress import CancelToken, ProgressCallback, report
from .segmentation_io import Segmentation
from .volume import Volume

__all__ = [
    "MESH_FORMATS",
    "PrintMesh",
    "build_print_mesh",
    "build_print_meshes",
    "export_segments",
    "read_mesh",
    "safe_filename",
    "write_mesh",
]

MESH_FORMATS = ("stl", "obj", "ply", "3mf")
MeshFormat = Literal["stl", "obj", "ply", "3mf"]
SegmentsLike = Union[Volume, Mapping[str, Volume], Segmentation]

_SPACE_RE = re.compile(rb"SPACE=(LPS|RAS)")
_STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])  # 50 bytes


def _format_of(path: Path) -> MeshFormat:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise MeshError(f"unsupported mesh file type {path.suffix!r} for {path.name}; use .stl, .obj, .ply or .3mf")
    return fmt  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Safe file names
# --------------------------------------------------------------------------------------------
_RESERVED_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_filename(name: str, *, default: str = "segment", max_bytes: int = 120) -> str:
    """A file name (without suffix) made from a segment name, valid on Windows, macOS and Linux.

    Unicode is kept (NFC-normalised); path separators, characters reserved on Windows and
    control characters become ``_``; leading/trailing dots and spaces are stripped; Windows
    device names (``CON``, ``COM1``, ...) get a trailing ``_``; the UTF-8 length is capped at
    ``max_bytes`` without splitting a character; an empty result becomes ``default``.

    Examples
    --------
    >>> safe_filename("Left/Right: femur?")
    'Left_Right_ femur_'
    >>> safe_filename("../../etc/passwd")
    '_.._etc_passwd'
    >>> safe_filename("Mandíbula ")
    'Mandíbula'
    >>> safe_filename(" .. "), safe_filename("con")
    ('segment', 'con_')
    """
    text = unicodedata.normalize("NFC", str(name))
    text = _RESERVED_CHARS.sub("_", text).strip(" .")
    encoded = text.encode("utf-8")[:max_bytes]
    text = encoded.decode("utf-8", errors="ignore").strip(" .")
    if not text:
        text = default
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text += "_"
    return text


def _unique_names(names: Sequence[str]) -> list[str]:
    """Make file names unique, ignoring case (Windows and macOS file systems are case-insensitive)."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 2
        while candidate.casefold() in seen:
            candidate, n = f"{name}_{n}", n + 1
        seen.add(candidate.casefold())
        out.append(candidate)
    return out


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
def _facet_normals(mesh: Mesh) -> np.ndarray:
    v, f = mesh.vertices, mesh.faces
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    np.divide(n, length, out=n, where=length > 0)
    return n


def _write_stl(mesh: Mesh, path: Path) -> None:
    header = f"SPACE={mesh.space} SegDeep mesh, units mm".encode("ascii").ljust(80, b" ")  # never starts with "solid"
    records = np.zeros(mesh.n_faces, dtype=_STL_RECORD)
    records["normal"] = _facet_normals(mesh)
    records["vertices"] = mesh.vertices[mesh.faces]
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.uint32(mesh.n_faces).tobytes())
        records.tofile(f)


def _write_rows(f: TextIO, fmt: str, rows: np.ndarray, chunk: int = 100_000) -> None:
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        f.write((fmt * len(part)) % tuple(part.ravel().tolist()))


def _write_obj(mesh: Mesh, path: Path) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(f"# SegDeep mesh, units mm\n# SPACE={mesh.space}\n")
        f.write(f"# {mesh.n_vertices} vertices, {mesh.n_faces} triangles\n")
        _write_rows(f, "v %.6f %.6f %.6f\n", mesh.vertices)
        faces = mesh.faces + 1  # OBJ indices start at 1
        if mesh.normals is not None:
            _write_rows(f, "vn %.6f %.6f %.6f\n", mesh.normals)
            _write_rows(f, "f %d//%d %d//%d %d//%d\n", np.repeat(faces, 2, axis=1))
        else:
            _write_rows(f, "f %d %d %d\n", faces)


_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def _write_ply(mesh: Mesh, path: Path, scalars: Sequence[str] | None) -> None:
    names = list(mesh.scalars) if scalars is None else list(scalars)
    missing = [n for n in names if n not in mesh.scalars]
    if missing:
        raise MeshError(f"the mesh has no scalar {missing[0]!r}; it has {list(mesh.scalars) or 'none'}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    kinds = {n: ("<i4", "int") if np.issubdtype(mesh.scalars[n].dtype, np.integer) else ("<f4", "float") for n in names}
    fields += [(n, kinds[n][0]) for n in names]
    vertices = np.empty(mesh.n_vertices, dtype=fields)
    for axis, c in enumerate("xyz"):
        vertices[c] = mesh.vertices[:, axis]
        if mesh.normals is not None:
            vertices["n" + c] = mesh.normals[:, axis]
    for n in names:
        vertices[n] = mesh.scalars[n]
    faces = np.empty(mesh.n_faces, dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    faces["count"] = 3
    faces["indices"] = mesh.faces
    header = ["ply", "format binary_little_endian 1.0", f"comment SPACE={mesh.space}", "comment SegDeep mesh, units mm"]
    header.append(f"element vertex {mesh.n_vertices}")
    header += ["property float x", "property float y", "property float z"]
    if mesh.normals is not None:
        header += ["property float nx", "property float ny", "property float nz"]
    header += [f"property {kinds[n][1]} {n}" for n in names]
    header += [f"element face {mesh.n_faces}", "property list uchar int vertex_indices", "end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        vertices.tofile(f)
        faces.tofile(f)


def write_mesh(mesh: Mesh, path: str | os.PathLike, *, overwrite: bool = False, scalars: Sequence[str] | None = None) -> Path:
    """Write a mesh to binary STL, OBJ or binary PLY (chosen by the suffix), atomically.

    Coordinates are written in ``mesh.space`` (mm); the file records it (``SPACE=LPS``) as
    Slicer does. Convert first with :meth:`Mesh.to_space` for the other system.

    Parameters
    ----------
    mesh : Mesh
        Surface to write.
    path : path-like
        ``.stl`` (binary, float32, facet normals), ``.obj`` (text, with vertex normals if the
        mesh has them) or ``.ply`` (binary little endian, float32 coordinates, normals and
        per-vertex scalars such as ``deviation_mm``).
    overwrite : bool, optional
        Replace an existing file. Default False: raise ``FileExistsError``.
    scalars : sequence of str, optional
        PLY only: scalars to write (default all of ``mesh.scalars``).

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tetra = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    >>> path = write_mesh(tetra, pathlib.Path(tempfile.mkdtemp()) / "tetra.stl")
    >>> path.stat().st_size  # 80-byte header + count + 50 bytes per triangle
    284
    >>> write_mesh(tetra, path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileExistsError: refusing to overwrite existing file: ...tetra.stl
    """
    path = Path(path)
    fmt = _format_of(path)
    if mesh.n_faces == 0:
        raise MeshError(f"cannot write {path.name}: the mesh has no triangles")
    with atomic_path(path, overwrite=overwrite) as tmp:
        _write_file(mesh, tmp, fmt, scalars)
    return path


def _write_file(mesh: Mesh, path: Path, fmt: MeshFormat, scalars: Sequence[str] | None = None) -> None:
    if fmt == "3mf":
        write_3mf([PrintPart(path.name.split(".")[0] or "mesh", mesh)], path, overwrite=True)
    elif fmt == "stl":
        _write_stl(mesh, path)
    elif fmt == "obj":
        _write_obj(mesh, path)
    else:
        _write_ply(mesh, path, scalars)


# --------------------------------------------------------------------------------------------
# Readers (for round trips and checks; VTK for ASCII STL)
# --------------------------------------------------------------------------------------------
def _merge_corners(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared vertices from per-triangle corner coordinates (exact float matches)."""
    xyz = np.ascontiguousarray(corners.reshape(-1, 3).astype(np.float32) + np.float32(0.0))  # -0.0 -> 0.0
    keys = xyz.view(np.dtype((np.void, 12))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return xyz[first].astype(np.float64), inverse.reshape(-1, 3).astype(np.int64)


def _read_stl(path: Path) -> tuple[np.ndarray, np.ndarray, bytes]:
    data = path.read_bytes()
    if len(data) >= 84:
        count = int(np.frombuffer(data, "<u4", 1, 80)[0])
        if len(data) == 84 + 50 * count:
            records = np.frombuffer(data, _STL_RECORD, count, 84)
            vertices, faces = _merge_corners(records["vertices"])
            return vertices, faces, data[:80]
    if not data.lstrip().startswith(b"solid"):
        raise MeshError(f"{path.name} is neither a binary nor an ASCII STL file")
    from vtkmodules.vtkIOGeometry import vtkSTLReader

    reader = vtkSTLReader()
    reader.SetFileName(str(path))
    reader.MergingOn()
    reader.Update()
    out = reader.GetOutput()
    return _points(out), _triangles(out), data.split(b"\n", 1)[0]


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bytes]:
    vertices, normals, faces, header = [], [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            tag = parts[0]
            if tag == "v":
                vertices.append(parts[1:4])
            elif tag == "vn":
                normals.append(parts[1:4])
            elif tag == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                idx = [i - 1 if i > 0 else len(vertices) + i for i in idx]  # 1-based; negative = relative
                faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))  # fan
            elif tag.startswith("#"):
                header.append(line)
    v = np.array(vertices, dtype=np.float64).reshape(-1, 3)
    n = np.array(normals, dtype=np.float64).reshape(-1, 3) if len(normals) == len(vertices) and normals else None
    return v, np.array(faces, dtype=np.int64).reshape(-1, 3), n, "".join(header).encode("utf-8", "replace")


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, np.ndarray], bytes]:
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise MeshError(f"{path.name} is not a PLY file")
        header_lines = []
        while True:
            line = f.readline()
            if not line:
                raise MeshError(f"{path.name}: PLY header has no end_header")
            line = line.strip()
            if line == b"end_header":
                break
            header_lines.append(line.decode("ascii", "replace"))
        body = f.read()
    fmt = "ascii"
    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in header_lines:
        parts = line.split()
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            elements[-1][2].append(tuple(parts[1:]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise MeshError(f"{path.name}: unsupported PLY format {fmt!r}")
    order = "<" if fmt != "binary_big_endian" else ">"

    def scalar_dtype(t: str) -> str:
        if t not in _PLY_TYPES:
            raise MeshError(f"{path.name}: unsupported PLY property type {t!r}")
        return order + _PLY_TYPES[t]

    tokens = body.split() if fmt == "ascii" else None
    offset = 0
    columns: dict[str, np.ndarray] = {}
    faces = np.zeros((0, 3), dtype=np.int64)
    for name, count, props in elements:
        is_list = [p[0] == "list" for p in props]
        if not any(is_list):
            if tokens is not None:
                table = np.array(tokens[offset : offset + count * len(props)], dtype=np.float64).reshape(count, len(props))
                offset += count * len(props)
                data = {p[-1]: table[:, c] for c, p in enumerate(props)}
            else:
                dtype = np.dtype([(p[-1], scalar_dtype(p[0])) for p in props])
                records = np.frombuffer(body, dtype, count, offset)
                offset += count * dtype.itemsize
                data = {p[-1]: records[p[-1]] for p in props}
            if name == "vertex":
                columns = data
            continue
        if name != "face" or len(props) != 1:
            raise MeshError(f"{path.name}: unsupported PLY element {name!r} with list properties")
        _, count_type, index_type, _ = props[0]
        if tokens is not None:
            rows, pos = [], offset
            for _ in range(count):
                k = int(tokens[pos])
                rows.append(tokens[pos + 1 : pos + 1 + k])
                pos += 1 + k
            offset = pos
            polygons = [[int(t) for t in r] for r in rows]
        else:
            dtype = np.dtype([("count", scalar_dtype(count_type)), ("indices", scalar_dtype(index_type), (3,))])
            records = np.frombuffer(body, dtype, count, offset)
            if count and np.any(records["count"] != 3):
                raise MeshError(f"{path.name}: only triangle faces are supported in binary PLY files")
            offset += count * dtype.itemsize
            polygons = None
            faces = records["indices"].astype(np.int64)
        if polygons is not None:
            faces = np.array([[p[0], p[k], p[k + 1]] for p in polygons for k in range(1, len(p) - 1)], dtype=np.int64)
            faces = faces.reshape(-1, 3)
    if not {"x", "y", "z"} <= set(columns):
        raise MeshError(f"{path.name}: PLY vertices have no x, y, z")
    vertices = np.stack([columns["x"], columns["y"], columns["z"]], axis=1).astype(np.float64)
    normals = None
    if {"nx", "ny", "nz"} <= set(columns):
        normals = np.stack([columns["nx"], columns["ny"], columns["nz"]], axis=1).astype(np.float64)
    scalars = {k: np.array(v) for k, v in columns.items() if k not in {"x", "y", "z", "nx", "ny", "nz"}}
    return vertices, faces, normals, scalars, "\n".join(header_lines).encode("ascii", "replace")


def read_mesh(path: str | os.PathLike, *, space: Space | None = None) -> Mesh:
    """Read an STL (binary or ASCII), OBJ or PLY (binary or ASCII) triangle mesh.

    Parameters
    ----------
    path : path-like
        Mesh file; the format is chosen by the suffix.
    space : {"LPS", "RAS"}, optional
        Coordinate system to return. The file's own system is read from its ``SPACE=`` tag
        (LPS when absent, as Slicer assumes) and converted to ``space`` if they differ.

    Returns
    -------
    Mesh
        Vertices in mm. STL corners are merged into shared vertices (exact matches).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tetra = Mesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    >>> back = read_mesh(write_mesh(tetra, pathlib.Path(tempfile.mkdtemp()) / "tetra.ply"))
    >>> back.n_vertices, back.n_faces, back.space
    (4, 4, 'LPS')
    """
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    fmt = _format_of(path)
    normals = None
    scalars: dict[str, np.ndarray] = {}
    if fmt == "3mf":
        model = read_3mf(path)
        if not model.parts:
            raise MeshError(f"{path.name} holds no mesh object")
        merged = merge_meshes([p.mesh for p in model.parts]) if len(model.parts) > 1 else model.parts[0].mesh
        merged = Mesh(merged.vertices * model.mm_per_unit, merged.faces, merged.space)
        return merged if space is None else merged.to_space(_check_space(space))
    if fmt == "stl":
        vertices, faces, header = _read_stl(path)
    elif fmt == "obj":
        vertices, faces, normals, header = _read_obj(path)
    else:
        vertices, faces, normals, scalars, header = _read_ply(path)
    match = _SPACE_RE.search(header)
    file_space: Space = match.group(1).decode() if match else "LPS"  # type: ignore[assignment]
    mesh = Mesh(vertices, faces, file_space, normals, scalars)
    return mesh if space is None else mesh.to_space(_check_space(space))


# --------------------------------------------------------------------------------------------
# Segment export
# --------------------------------------------------------------------------------------------


def _present_labels(array: np.ndarray) -> list[int]:
    """Sorted non-zero values of an integer label map (chunked bincount: no full-size int64 copy)."""
    if array.size == 0:
        return []
    lo, hi = int(array.min()), int(array.max())
    if lo < 0:
        raise MeshError(f"a label map must not hold negative values, got minimum {lo}")
    if hi > 65535:
        return [int(v) for v in np.unique(array) if v != 0]
    counts = np.zeros(hi + 1, dtype=np.int64)
    flat = array.reshape(array.shape[0], -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    for start in range(0, flat.shape[0], step):
        counts += np.bincount(flat[start : start + step].ravel(), minlength=hi + 1)
    return [int(v) for v in np.flatnonzero(counts) if v != 0]


def _segment_masks(segments: SegmentsLike, names: Mapping[int, str] | Sequence[str] | None) -> list[tuple[str, int, Volume]]:
    """``(name, label value, mask)`` for every segment to export."""
    if isinstance(segments, Segmentation):
        if names is not None:
            raise ValueError("names cannot be given with a Segmentation: its segments carry their names")
        lm = segments.labelmap
        return [(s.name, s.value, lm.with_array(lm.array == s.value)) for s in segments.segments]
    if isinstance(segments, Mapping):
        if names is not None:
            raise ValueError("names cannot be given with a dict of masks: its keys are the names")
        out = []
        for i, (name, mask) in enumerate(segments.items(), start=1):
            if not isinstance(mask, Volume):
                raise TypeError(f"mask of segment {name!r} must be a Volume, got {type(mask).__name__}")
            out.append((str(name), i, mask))
        return out
    if not isinstance(segments, Volume):
        raise TypeError(
            f"segments must be a label Volume, a dict of mask Volumes or a Segmentation, got {type(segments).__name__}"
        )
    array = segments.array
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    elif not np.issubdtype(array.dtype, np.integer):
        raise MeshError(f"a label map must hold integers or booleans, got dtype {array.dtype}")
    if isinstance(names, Mapping):
        label_names = {int(v): str(n) for v, n in names.items()}
    else:
        label_names = {v: f"Segment_{v}" for v in _present_labels(array)}
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            if len(names) != len(label_names):
                raise ValueError(f"{len(names)} names given for {len(label_names)} labels {sorted(label_names)}")
            label_names = dict(zip_strict(sorted(label_names), names))
    return [(name, value, segments.with_array(array == value)) for value, name in sorted(label_names.items())]


@dataclasses.dataclass(frozen=True)
class PrintMesh:
    """One printable part: its closed surface and its print-readiness report (nothing written yet).

    Attributes
    ----------
    name : str
        The part's name (the segment's, or a cut piece's / shell's).
    segment : str
        The segment it was made from.
    label_value : int
        The segment's label value (0 when not from a label map).
    mesh : Mesh
        The surface, in mm in the requested space, with the ``deviation_mm`` vertex scalar when measured.
    report : MeshReport
        Watertightness, volume, shells, deviation from the voxel surface, ...
    """

    name: str
    segment: str
    label_value: int
    mesh: Mesh
    report: MeshReport


def build_print_mesh(
    mask: Volume,
    name: str,
    *,
    label_value: int = 0,
    space: Space = "LPS",
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    decimation: float = 0.0,
    measure_deviation: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PrintMesh:
    """The printable surface of one mask and its print report: the one place both are made.

    :func:`export_segments` (``segdeep export``, the Slicer module) and the report
    (:func:`SegDeepLogic.report.build_report`) build every plain (not hollowed or cut) part with
    this; writing the files is separate (:func:`export_segments`, :func:`write_mesh`).

    Parameters
    ----------
    mask : Volume
        The segment (non-zero = inside).
    name : str
        Its name (in the report).
    label_value : int
        Its label value, recorded with the part.
    space, smoothing_factor, decimation
        As :func:`~SegDeepLogic.mesh.mask_to_mesh`.
    measure_deviation : bool
        Measure how far smoothing and decimation moved the surface (the ``deviation_mm`` scalar
        and the report's deviation statistics).
    progress, cancel : optional
        ``progress(fraction, stage)`` and a cancel token.

    Examples
    --------
    >>> from SegDeepLogic import Volume
    >>> m = np.zeros((12, 12, 12), bool); m[3:9, 3:9, 3:9] = True
    >>> part = build_print_mesh(Volume(m, (1.0, 1.0, 1.0)), "cube")
    >>> part.report.watertight, part.report.shell_count, "deviation_mm" in part.mesh.scalars
    (True, 1, True)
    """
    mesh, raw = mask_to_mesh(
        mask,
        space=space,
        smoothing_factor=smoothing_factor,
        decimation=decimation,
        return_raw=True,
        progress=None if progress is None else (lambda f, s: progress(0.8 * f, s)),
        cancel=cancel,
    )
    report(progress, 0.8, "checking", cancel)
    deviation = surface_deviation_mm(mesh, raw) if measure_deviation else None
    if deviation is not None:
        mesh = mesh.with_scalars(deviation_mm=deviation.astype(np.float32))
    result = mesh_report(
        mesh, mask=mask, deviation_mm=deviation, name=name, smoothing_factor=smoothing_factor, decimation=decimation
    )
    return PrintMesh(name, name, int(label_value), mesh, result)


def build_print_meshes(
    items: Sequence[tuple[str, int, Volume]],
    *,
    print_options: PrintOptions | Mapping[str, PrintOptions] | None = None,
    space: Space = "LPS",
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    decimation: float = 0.0,
    measure_deviation: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[PrintMesh]:
    """:func:`build_print_mesh` for every ``(name, label value, mask)``, with the print preparation
    (hollowing, cuts, shells: :func:`~SegDeepLogic.print_prep.prepare_segment`) where
    ``print_options`` asks for it; empty masks are skipped with a warning. Nothing is written."""
    per_segment = print_options if isinstance(print_options, Mapping) else None
    default_options = PrintOptions() if per_segment is not None else (print_options or PrintOptions())
    built: list[PrintMesh] = []
    n = len(items)
    for index, (name, value, mask) in enumerate(items):
        base, share = index / max(n, 1), 1.0 / max(n, 1)
        report(progress, base, f"segment {name!r}", cancel)
        if not np.any(mask.array):
            warnings.warn(f"segment {name!r} is empty; no mesh written for it", stacklevel=3)
            continue

        def step(fraction: float, stage: str, base: float = base, share: float = share, name: str = name) -> None:
            report(progress, base + share * fraction, f"{name}: {stage}", cancel)

        options = per_segment.get(name, default_options) if per_segment is not None else default_options
        if options.active:
            for part in prepare_segment(
                name,
                mask,
                options,
                space=space,
                smoothing_factor=smoothing_factor,
                decimation=decimation,
                measure_deviation=measure_deviation,
                progress=step,
                cancel=cancel,
            ):
                built.append(PrintMesh(part.name, name, value, part.mesh, part.report))
            continue
        built.append(
            build_print_mesh(
                mask,
                name,
                label_value=value,
                space=space,
                smoothing_factor=smoothing_factor,
                decimation=decimation,
                measure_deviation=measure_deviation,
                progress=step,
                cancel=cancel,
            )
        )
    return built


def export_segments(
    segments: SegmentsLike,
    folder: str | os.PathLike,
    *,
    names: Mapping[int, str] | Sequence[str] | None = None,
    format: MeshFormat = "stl",
    merge: bool = False,
    merged_name: str = "segmentation",
    space: Space = "LPS",
    smoothing_factor: float = DEFAULT_SMOOTHING_FACTOR,
    decimation: float = 0.0,
    measure_deviation: bool = True,
    overwrite: bool = False,
    colors: Mapping[str, Sequence[float]] | None = None,
    print_options: PrintOptions | Mapping[str, PrintOptions] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[tuple[Path, MeshReport]]:
    """Write a printable closed surface for every segment and report its print-readiness.

    All meshes are built first and then written together: if anything fails or is
    cancelled, no file appears (files are written atomically).

    Parameters
    ----------
    segments : Volume, dict of str to Volume, or Segmentation
        A label map (each non-zero value is a segment; a boolean mask is one segment), masks
        by name, or a :class:`~SegDeepLogic.segmentation_io.Segmentation`.
    folder : path-like
        Output folder (created if missing).
    names : mapping of label value to name, or sequence of names, optional
        Label map only: segment names (a sequence follows the ascending label values present;
        a mapping also selects the labels to export). Default ``Segment_<value>``.
    format : {"stl", "obj", "ply", "3mf"}, optional
        File format. PLY files carry the per-vertex ``deviation_mm`` scalar (signed distance to
        the unsmoothed voxel surface) and, when merged, ``label``. ``3mf`` writes one file
        (``merged_name.3mf``) with one named, coloured object per part (segment, piece or
        shell), in mm, its coordinate system in the metadata (:mod:`SegDeepLogic.mesh_3mf`).
    merge : bool, optional
        One file holding every segment (named ``merged_name``) instead of one per segment.
    merged_name : str, optional
        File name (before sanitising) of the merged file.
    space : {"LPS", "RAS"}, optional
        Coordinate system of the files; LPS (default) is what Slicer writes.
    smoothing_factor : float, optional
        Slicer's smoothing factor in [0, 1] (default 0.5).
    decimation : float, optional
        Fraction of triangles to remove, in [0, 1) (default 0).
    measure_deviation : bool, optional
        Measure how far smoothing and decimation moved the surface (default True; it costs a
        distance query per vertex).
    overwrite : bool, optional
        Replace existing files. Default False: ``FileExistsError`` before any work.
    colors : mapping of segment name to (r, g, b) in [0, 1], optional
        Segment colours for 3MF objects (a Segmentation brings its own).
    print_options : PrintOptions, or mapping of segment name to PrintOptions, optional
        Hollowing, cutting planes, one object per shell, wall-thickness and build-volume checks
        (:mod:`SegDeepLogic.print_prep`), for every segment or per segment (segments missing
        from the mapping are exported plainly). Cut pieces and shells become parts of their own
        (one file each, or one object each in a 3MF file).
    progress : callable, optional
        ``progress(fraction, stage)``.
    cancel : CancelToken, optional
        Checked between segments and steps; raises :class:`~SegDeepLogic.errors.CancelledError`.

    Returns
    -------
    list of (Path, MeshReport)
        One entry per exported part (a segment, or its pieces/shells), in segment order (with
        ``merge`` or 3MF, every entry has the one file's path). Empty segments are skipped with
        a warning.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from SegDeepLogic import Volume
    >>> labels = np.zeros((20, 20, 30), np.uint8)
    >>> labels[4:16, 4:16, 3:12] = 1
    >>> labels[4:16, 4:16, 16:27] = 2
    >>> results = export_segments(Volume(labels, spacing=(1, 1, 2)), tempfile.mkdtemp(), names={1: "Left/femur", 2: "Tibia"})
    >>> [(p.name, r.watertight, r.shell_count) for p, r in results]
    [('Left_femur.stl', True, 1), ('Tibia.stl', True, 1)]
    """
    space = _check_space(space)
    if format not in MESH_FORMATS:
        raise MeshError(f"format must be one of {MESH_FORMATS}, got {format!r}")
    per_segment = print_options if isinstance(print_options, Mapping) else None
    default_options = PrintOptions() if per_segment is not None else (print_options or PrintOptions())
    folder = Path(folder)
    items = _segment_masks(segments, names)
    if not items:
        raise MeshError("there is no segment to export")
    segment_colors: dict[str, tuple[float, float, float]] = {}
    if isinstance(segments, Segmentation):
        segment_colors = {s.name: tuple(s.color) for s in segments.segments if s.color is not None}  # type: ignore[misc]
    for key, color in (colors or {}).items():
        segment_colors[str(key)] = tuple(float(c) for c in color)[:3]  # type: ignore[assignment]
    single = merge or format == "3mf"
    single_target = folder / f"{safe_filename(merged_name, default='segmentation')}.{format}"
    if not overwrite:
        splits = any(o.planes or o.per_shell for o in [default_options, *(per_segment or {}).values()])
        predictable = [single_target] if single else ([] if splits else None)
        if predictable is None:
            predictable = [folder / f"{n}.{format}" for n in _unique_names([safe_filename(name) for name, _, _ in items])]
        for target in predictable:
            if target.exists():
                raise FileExistsError(f"refusing to overwrite existing file: {target} (pass overwrite=True)")

    built = build_print_meshes(
        items,
        print_options=print_options,
        space=space,
        smoothing_factor=smoothing_factor,
        decimation=decimation,
        measure_deviation=measure_deviation,
        progress=lambda f, stage: report(progress, 0.9 * f, stage, cancel),
        cancel=cancel,
    )
    if not built:
        raise MeshError("every segment is empty; there is no surface to export")

    if single:
        targets = [single_target] * len(built)
    else:
        targets = [folder / f"{n}.{format}" for n in _unique_names([safe_filename(b.name) for b in built])]
    if not overwrite:
        for target in dict.fromkeys(targets):
            if target.exists():
                raise FileExistsError(f"refusing to overwrite existing file: {target} (pass overwrite=True)")
    report(progress, 0.9, "writing", cancel)
    with atomic_outputs(), contextlib.ExitStack() as stack:  # every file is put in place only if all were written
        if format == "3mf":
            parts = [
                PrintPart(
                    b.name,
                    b.mesh,
                    segment_colors.get(b.segment),
                    {"segment": b.segment, "label_value": str(b.label_value), "coordinate_system": space, "units": "mm"},
                )
                for b in built
            ]
            tmp = stack.enter_context(atomic_path(single_target, overwrite=overwrite))
            write_3mf(parts, tmp, title=merged_name, overwrite=True)
        elif merge:
            merged = merge_meshes(
                [b.mesh.with_scalars(label=np.full(b.mesh.n_vertices, b.label_value, dtype=np.int32)) for b in built]
            )
            _write_file(merged, stack.enter_context(atomic_path(single_target, overwrite=overwrite)), format)
        else:
            for k, target in enumerate(targets):
                _write_file(built[k].mesh, stack.enter_context(atomic_path(target, overwrite=overwrite)), format)
    report(progress, 1.0, "done", cancel)
    return [(targets[k], built[k].report) for k in range(len(built))]
