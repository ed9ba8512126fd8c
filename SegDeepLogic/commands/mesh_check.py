"""``segdeep mesh-check``: print-readiness of any STL/OBJ/PLY/3MF file, and safe repair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MeshError
from ..mesh_check import DEFAULT_MAX_HOLE_EDGES, check_mesh, repair_mesh
from ._common import input_files, number_in, validate_outputs, write_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mesh-check",
        help="check a mesh file from anywhere (STL/OBJ/PLY/3MF) for printing, and repair it where that is safe",
        description="Report whether each mesh (each object of a 3MF file) is watertight, manifold, consistently "
        "oriented with outward normals, how many shells it has, whether triangles cross each other, its volume and "
        "a guess of its units. With --repair, merge duplicate vertices, drop degenerate/duplicated triangles, fix "
        "the winding and fill small holes, saying what changed; unsafe repairs (non-manifold edges, large holes, "
        "self-intersections) are refused and nothing is written.",
    )
    p.add_argument("mesh", help="mesh file (.stl, .obj, .ply, .3mf)")
    p.add_argument("--repair", action="store_true", help="write a repaired copy (see -o)")
    p.add_argument("-o", "--output", help="repaired file (default: <name>.repaired.<ext> next to the input)")
    p.add_argument(
        "--max-hole-edges",
        type=number_in(0, integer=True),
        default=DEFAULT_MAX_HOLE_EDGES,
        help=f"largest hole (edges around it) that --repair fills (default {DEFAULT_MAX_HOLE_EDGES})",
    )
    p.add_argument("--no-intersections", action="store_true", help="skip the self-intersection test (large meshes)")
    p.add_argument("--report", default="-", help="report file (.json); '-' prints JSON to stdout")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (the repaired file, --report)")
    p.set_defaults(run=run)


def _load(path: Path) -> tuple[list[tuple[str, object, tuple | None]], str | None]:
    """(name, Mesh, colour) per object, and the declared unit if the file states one."""
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    if path.suffix.lower() == ".3mf":
        from ..mesh_3mf import read_3mf

        model = read_3mf(path)
        if not model.parts:
            raise MeshError(f"{path.name} holds no mesh object")
        return [(p.name, p.mesh, p.color) for p in model.parts], model.unit
    from ..mesh_io import read_mesh

    try:
        mesh = read_mesh(path)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        if isinstance(exc, MeshError):
            raise
        raise MeshError(f"{path.name} is not a readable {path.suffix.lstrip('.').upper()} mesh: {exc}") from None
    if mesh.n_faces == 0:
        raise MeshError(f"{path.name} holds no triangles: it is not a mesh file")
    return [(path.stem, mesh, None)], None


def _repaired_path(args: argparse.Namespace, path: Path) -> Path:
    return Path(args.output) if args.output else path.with_name(f"{path.stem}.repaired{path.suffix.lower()}")


def run(args: argparse.Namespace) -> int:
    path = Path(args.mesh)
    if args.output and not args.repair:
        raise MeshError("-o names the repaired file: pass --repair to write one")
    target = _repaired_path(args, path) if args.repair else None
    if target is not None and target.suffix.lower() not in (".stl", ".obj", ".ply", ".3mf"):
        raise MeshError(f"-o {target.name}: the repaired file must be .stl, .obj, .ply or .3mf")
    validate_outputs(  # before any work: exists, the input, a folder, a special file
        {"-o": target, "--report": args.report}, inputs=input_files(mesh=path), overwrite=args.overwrite
    )
    objects, unit = _load(path)
    rows = []
    for name, mesh, _ in objects:
        row = check_mesh(mesh, name=name, intersections=not args.no_intersections)  # type: ignore[arg-type]
        row["file"] = str(path)
        row["declared_units"] = unit
        rows.append(row)
    repaired = []
    if args.repair:
        for (name, mesh, color), row in zip(objects, rows):  # noqa: B905 (Python 3.9: no strict=)
            try:
                fixed, changes = repair_mesh(mesh, max_hole_edges=args.max_hole_edges)  # type: ignore[arg-type]
            except MeshError as exc:
                raise MeshError(f"{name}: {exc}; nothing was written") from None
            row["repair"] = changes or ["nothing to repair"]
            row["after_repair"] = check_mesh(fixed, name=name, intersections=False)
            repaired.append((name, fixed, color))
        if target.suffix.lower() == ".3mf":
            from ..mesh_3mf import PrintPart, write_3mf

            write_3mf([PrintPart(n, m, c) for n, m, c in repaired], target, overwrite=args.overwrite)
        else:
            from ..mesh import merge_meshes
            from ..mesh_io import write_mesh

            meshes = [m for _, m, _ in repaired]
            write_mesh(meshes[0] if len(meshes) == 1 else merge_meshes(meshes), target, overwrite=args.overwrite)
        for row in rows:
            row["repaired_file"] = str(target)
    write_table(rows, args.report, "json", overwrite=args.overwrite)
    for row in rows:
        state = "print-ready" if row["print_ready"] else "NOT print-ready"
        problems = [
            f"{row[k]} {label}"
            for k, label in (
                ("hole_count", "hole(s)"),
                ("non_manifold_edge_count", "non-manifold edge(s)"),
                ("misoriented_edge_count", "misoriented edge(s)"),
                ("duplicate_vertex_count", "duplicate vertex(es)"),
                ("degenerate_triangle_count", "degenerate triangle(s)"),
                ("self_intersecting_pairs", "crossing triangle pair(s)"),
            )
            if row.get(k)
        ]
        if not row["outward_normals"]:
            problems.append("normals point inward")
        print(
            f"{row['name']}: {row['triangle_count']} triangles, {row['shell_count']} shell(s), "
            f"{row['volume_mm3'] / 1000:.2f} mL if in mm, units: {row['declared_units'] or row['units_guess']}; {state}"
            + (f" ({', '.join(problems)})" if problems else ""),
            file=sys.stderr,
        )
        for change in row.get("repair", []):
            print(f"  repaired: {change}", file=sys.stderr)
    return 0
