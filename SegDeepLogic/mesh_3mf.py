"""3MF files: several coloured, named objects in millimetres in one file (lib3mf).

3MF (3D Manufacturing Format, 3MF Consortium) is the format modern printers and slicer programs
read: a zip package holding an XML model with a unit, any number of objects and colours. A
SegDeep 3MF holds one mesh object per part (a segment, a connected shell or a cut piece), named
after it, coloured with the segment's colour (a ``basematerials`` entry, sRGB ``displaycolor``),
with the unit **millimetre** and the coordinate system stated in the model metadata
(``segdeep:CoordinateSystem`` = ``LPS`` or ``RAS``, and a plain-language ``Description``).
Vertices keep their patient coordinates, so parts printed from one file fit together as in the
CT; a slicer program moves the whole plate onto its bed.

The file is written by **lib3mf**, the 3MF Consortium's reference implementation (it validates
the model and writes the core and materials extensions); see the README for the comparison with
trimesh's writer. Writes are atomic and refuse to overwrite unless asked.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import locale
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import MeshError, WriteError
from .mesh import Mesh, Space, _check_space

__all__ = ["SEGDEEP_3MF_NAMESPACE", "Model3MF", "PrintPart", "read_3mf", "write_3mf"]

SEGDEEP_3MF_NAMESPACE = "http://schemas.segdeep.org/3mf/2026"  # namespace of SegDeep's own metadata entries
_UNIT_MM = {
    "micron": 0.001,
    "millimeter": 1.0,
    "centimeter": 10.0,
    "inch": 25.4,
    "foot": 304.8,
    "meter": 1000.0,
}


@dataclasses.dataclass(frozen=True)
class PrintPart:
    """One object of a print file: a named, coloured closed surface.

    Parameters
    ----------
    name : str
        Object name (the segment's name, or ``"mandible (piece 1: cut1 left)"``).
    mesh : Mesh
        The surface in mm.
    color : (r, g, b) floats in [0, 1], optional
        Display colour (the segment's colour).
    metadata : mapping of str to str, optional
        Extra per-object facts written as SegDeep object metadata (segment, piece, wall thickness, ...).
    """

    name: str
    mesh: Mesh
    color: tuple[float, float, float] | None = None
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Model3MF:
    """What :func:`read_3mf` found: the parts (build items, transforms applied), the unit and metadata."""

    parts: list[PrintPart]
    unit: str
    space: Space | None  # the SegDeep coordinate-system entry, None for files from elsewhere
    metadata: dict[str, str]

    @property
    def mm_per_unit(self) -> float:
        return _UNIT_MM[self.unit]


def _lib3mf():
    try:
        import lib3mf
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MeshError("3MF files need the 'lib3mf' package (pip install lib3mf)") from exc
    return lib3mf, lib3mf.get_wrapper()


@contextlib.contextmanager
def _kept_locale() -> Iterator[None]:
    """Restore the process locale after lib3mf: its reader and writer switch it to "C" for good,
    which would make Python (and Slicer) fall back to ASCII for text files."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _set_geometry(lib3mf, obj, vertices: np.ndarray, faces: np.ndarray) -> None:
    """``MeshObject.SetGeometry`` from numpy buffers (the binding's own list conversion is slow)."""
    v = np.ascontiguousarray(vertices, dtype=np.float32)
    f = np.ascontiguousarray(faces, dtype=np.uint32)
    vbuf = (lib3mf.Position * len(v)).from_buffer(v)
    fbuf = (lib3mf.Triangle * len(f)).from_buffer(f)
    wrapper = obj._wrapper
    wrapper.checkError(
        obj, wrapper.lib.lib3mf_meshobject_setgeometry(obj._handle, ctypes.c_uint64(len(v)), vbuf, ctypes.c_uint64(len(f)), fbuf)
    )


def _get_geometry(lib3mf, obj) -> tuple[np.ndarray, np.ndarray]:
    wrapper = obj._wrapper
    nv, nf = obj.GetVertexCount(), obj.GetTriangleCount()
    v = np.zeros((nv, 3), np.float32)
    f = np.zeros((nf, 3), np.uint32)
    needed = ctypes.c_uint64(0)
    if nv:
        wrapper.checkError(
            obj,
            wrapper.lib.lib3mf_meshobject_getvertices(
                obj._handle, ctypes.c_uint64(nv), needed, (lib3mf.Position * nv).from_buffer(v)
            ),
        )
    if nf:
        wrapper.checkError(
            obj,
            wrapper.lib.lib3mf_meshobject_gettriangleindices(
                obj._handle, ctypes.c_uint64(nf), needed, (lib3mf.Triangle * nf).from_buffer(f)
            ),
        )
    return v.astype(np.float64), f.astype(np.int64)


def write_3mf(
    parts: Sequence[PrintPart],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write parts as one 3MF file: one mesh object per part, in millimetres, named and coloured.

    Parameters
    ----------
    parts : sequence of PrintPart
        The objects, all in the same coordinate system (``mesh.space``).
    path : path-like
        The ``.3mf`` file.
    title : str, optional
        The model's ``Title`` metadata.
    metadata : mapping of str to str, optional
        Extra model-level SegDeep metadata (e.g. the source segmentation, the options used).
    overwrite : bool, optional
        Replace an existing file (default False: ``FileExistsError``).

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile, pathlib
    >>> tetra = Mesh([[0, 0, 0], [9, 0, 0], [0, 9, 0], [0, 0, 9]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    >>> path = write_3mf([PrintPart("tetra", tetra, (1.0, 0.0, 0.0))], pathlib.Path(tempfile.mkdtemp()) / "t.3mf")
    >>> model = read_3mf(path)
    >>> [(p.name, p.mesh.n_faces, p.color) for p in model.parts], model.unit, model.space
    ([('tetra', 4, (1.0, 0.0, 0.0))], 'millimeter', 'LPS')
    """
    path = Path(path)
    if path.suffix.lower() != ".3mf":
        raise MeshError(f"a 3MF file name must end in .3mf, got {path.name}")
    parts = list(parts)
    if not parts:
        raise MeshError("there is no part to write to the 3MF file")
    spaces = {p.mesh.space for p in parts}
    if len(spaces) != 1:
        raise MeshError(f"every part of a 3MF file must be in one coordinate system, got {sorted(spaces)}")
    space = spaces.pop()
    for p in parts:
        if p.mesh.n_faces == 0:
            raise MeshError(f"cannot write {path.name}: part {p.name!r} has no triangles")
    lib3mf, wrapper = _lib3mf()
    model = wrapper.CreateModel()
    model.SetUnit(lib3mf.ModelUnit.MilliMeter)
    meta = model.GetMetaDataGroup()
    string = "xs:string"
    meta.AddMetaData("", "Title", title or parts[0].name, string, False)
    meta.AddMetaData("", "Application", "SegDeep", string, False)
    axes = (
        "x to the patient's left, y posterior, z superior"
        if space == "LPS"
        else "x to the patient's right, y anterior, z superior"
    )
    meta.AddMetaData(
        "", "Description", f"SegDeep print model; coordinates in {space} millimetres ({axes}), as in the CT", string, False
    )
    meta.AddMetaData(SEGDEEP_3MF_NAMESPACE, "CoordinateSystem", space, string, True)
    meta.AddMetaData(SEGDEEP_3MF_NAMESPACE, "Units", "millimetre", string, True)
    for key, value in (metadata or {}).items():
        meta.AddMetaData(SEGDEEP_3MF_NAMESPACE, str(key), str(value), string, False)
    materials = model.AddBaseMaterialGroup()
    for part in parts:
        obj = model.AddMeshObject()
        obj.SetName(part.name)
        _set_geometry(lib3mf, obj, part.mesh.vertices, part.mesh.faces)
        if part.color is not None:
            r, g, b = (float(np.clip(c, 0.0, 1.0)) for c in part.color)
            material = materials.AddMaterial(part.name, wrapper.FloatRGBAToColor(r, g, b, 1.0))
            obj.SetObjectLevelProperty(materials.GetResourceID(), material)
        if part.metadata:
            object_meta = obj.GetMetaDataGroup()
            for key, value in part.metadata.items():
                object_meta.AddMetaData(SEGDEEP_3MF_NAMESPACE, str(key), str(value), string, False)
        model.AddBuildItem(obj, wrapper.GetIdentityTransform())
    if materials.GetCount() == 0:
        model.RemoveResource(materials)
    with atomic_path(path, overwrite=overwrite, verify=_verify_3mf) as tmp, _kept_locale():
        _write_package(lib3mf, model.QueryWriter("3mf"), tmp)
    return path


def _write_package(lib3mf: object, writer: object, path: Path) -> None:
    """Write the 3MF package through Python's file object (lib3mf's own file writer aborts the whole
    process when the disk is full or a file size limit is reached); raise the first ``OSError``."""
    failures: list[OSError] = []
    with open(path, "wb") as f:

        def write(data: int, size: int, _user: object) -> None:
            if not failures:
                try:
                    f.write(ctypes.string_at(data, size))
                except OSError as exc:
                    failures.append(exc)

        def seek(position: int, _user: object) -> None:
            if not failures:
                try:
                    f.seek(position)
                except OSError as exc:
                    failures.append(exc)

        write_cb, seek_cb = lib3mf.WriteCallback(write), lib3mf.SeekCallback(seek)  # type: ignore[attr-defined]
        writer.WriteToCallback(write_cb, seek_cb, 0)  # type: ignore[attr-defined]
        if failures:
            raise failures[0]
        f.flush()
        os.fsync(f.fileno())


def _verify_3mf(path: Path) -> None:
    """Check a just-written 3MF package (a zip) member by member against its CRC (a short write fails here)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise WriteError(f"the 3MF file just written is corrupt: {exc}") from None
    if bad is not None:
        raise WriteError(f"the 3MF file just written is corrupt: {bad} fails its CRC")
    if not any(n.lower().endswith(".model") for n in names):
        raise WriteError("the 3MF file just written holds no 3D model part")


def read_3mf(path: str | os.PathLike) -> Model3MF:
    """Read every build item of a 3MF file as a part (its transform applied), with names and colours.

    Parameters
    ----------
    path : path-like
        A ``.3mf`` file.

    Returns
    -------
    Model3MF
        Vertices in the file's unit (``model.unit``; SegDeep files are in millimetres) and, for
        SegDeep files, the coordinate system they state.

    Raises
    ------
    MeshError
        If the file is missing or not a readable 3MF package.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    lib3mf, wrapper = _lib3mf()
    model = wrapper.CreateModel()
    try:
        with _kept_locale():
            model.QueryReader("3mf").ReadFromFile(str(path))
    except lib3mf.ELib3MFException as exc:
        raise MeshError(f"{path.name} is not a readable 3MF file: {exc}") from None
    unit = {
        lib3mf.ModelUnit.MicroMeter: "micron",
        lib3mf.ModelUnit.MilliMeter: "millimeter",
        lib3mf.ModelUnit.CentiMeter: "centimeter",
        lib3mf.ModelUnit.Inch: "inch",
        lib3mf.ModelUnit.Foot: "foot",
        lib3mf.ModelUnit.Meter: "meter",
    }[model.GetUnit()]
    metadata: dict[str, str] = {}
    group = model.GetMetaDataGroup()
    for i in range(group.GetMetaDataCount()):
        entry = group.GetMetaData(i)
        metadata[entry.GetName()] = entry.GetValue()
    space_value = metadata.get("CoordinateSystem")
    space = _check_space(space_value) if space_value in ("LPS", "RAS") else None
    parts: list[PrintPart] = []
    items = model.GetBuildItems()
    while items.MoveNext():
        item = items.GetCurrent()
        resource = item.GetObjectResource()
        if not resource.IsMeshObject():
            continue  # components objects: not written by SegDeep; their meshes are listed as their own items
        obj = model.GetMeshObjectByID(resource.GetResourceID())
        vertices, faces = _get_geometry(lib3mf, obj)
        if item.HasObjectTransform():
            m = np.array([list(row) for row in item.GetObjectTransform().Fields], dtype=np.float64)  # 4 rows x 3 columns
            vertices = vertices @ m[:3] + m[3]
        color = None
        resource_id, property_id, has_property = obj.GetObjectLevelProperty()
        if has_property and model.GetPropertyTypeByID(resource_id) == lib3mf.PropertyType.BaseMaterial:
            c = model.GetBaseMaterialGroupByID(resource_id).GetDisplayColor(property_id)
            color = (round(c.Red / 255.0, 4), round(c.Green / 255.0, 4), round(c.Blue / 255.0, 4))
        object_meta = {}
        omg = obj.GetMetaDataGroup()
        for i in range(omg.GetMetaDataCount()):
            entry = omg.GetMetaData(i)
            object_meta[entry.GetName()] = entry.GetValue()
        try:
            mesh = Mesh(vertices, faces, space or "LPS")
        except MeshError as exc:
            raise MeshError(f"{path.name}: object {obj.GetName()!r}: {exc}") from None
        parts.append(PrintPart(obj.GetName() or f"object {resource.GetResourceID()}", mesh, color, object_meta))
    return Model3MF(parts, unit, space, metadata)
