"""Static check that Python files run on Python 3.9 (3D Slicer 5.8), beyond what ``vermin`` sees.

``vermin --target=3.9-`` finds library features (``zip(strict=)``, ``dataclass(kw_only=)``,
``datetime.UTC``, ...). It does not see a ``X | Y`` union evaluated at run time (a module-level
type alias, ``isinstance(x, int | float)``), which parses on 3.9 and fails when executed. This
module finds those, and every construct the project rules out for Slicer's Python:

* ``X | Y`` of types outside annotations, and annotations with ``X | Y`` in a file without
  ``from __future__ import annotations``;
* ``match`` statements, parenthesised context managers;
* ``dataclass(kw_only=...)``/``dataclass(slots=...)``/``field(kw_only=...)``, ``zip(strict=...)``,
  ``datetime.UTC``.

Usage: ``python py39_check.py FILE_OR_FOLDER ...`` prints one line per problem (exit 1 if any).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

BUILTIN_TYPES = {"int", "float", "str", "bool", "bytes", "complex", "list", "dict", "tuple", "set", "frozenset", "type", "object"}
NUMPY_TYPES = {"ndarray", "integer", "floating", "number", "generic", "bool_", "signedinteger", "unsignedinteger", "dtype"}
TYPING_MODULES = {"typing", "collections", "abc", "npt", "os", "pathlib"}


def _type_like(node: ast.AST) -> bool:
    """Whether an operand of ``|`` is (almost certainly) a type, not a value."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        name = node.id
        return name in BUILTIN_TYPES or (name[:1].isupper() and any(c.islower() for c in name))
    if isinstance(node, ast.Attribute):
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("np", "numpy"):
            return node.attr in NUMPY_TYPES
        if isinstance(base, (ast.Name, ast.Attribute)):
            last = base.id if isinstance(base, ast.Name) else base.attr
            return last in TYPING_MODULES
        return False
    if isinstance(node, ast.Subscript):
        return _type_like(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _type_like(node.left) or _type_like(node.right)
    return False


def _annotation_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    yield arg.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _parenthesised_items(node: ast.With | ast.AsyncWith, lines: list[str]) -> bool:
    """``with (a as x, b as y):``: a parenthesis after ``with`` that closes right before the colon."""
    header = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1])[node.col_offset :]
    rest = header.split(None, 1)[-1] if not header.startswith("async") else header.split(None, 2)[-1]
    if not rest.startswith("("):
        return False
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            after = rest[i + 1 :].lstrip()
            inside = rest[1:i]
            return after.startswith(":") and (len(node.items) > 1 or " as " in inside)
    return False


def problems(source: str, filename: str = "<source>") -> list[str]:
    """Every construct of ``source`` that would fail (or is ruled out) on Python 3.9, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    annotations = list(_annotation_nodes(tree))
    inside = {id(sub) for ann in annotations for sub in ast.walk(ann)}
    future = any(
        isinstance(node, ast.ImportFrom) and node.module == "__future__" and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )
    for ann in annotations:
        if not future and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)):
            found.append((ann.lineno, "'X | Y' annotation without 'from __future__ import annotations'"))
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in inside:
            if _type_like(node.left) or _type_like(node.right):
                found.append((node.lineno, f"'X | Y' type union evaluated at run time: {ast.unparse(node)}"))
                inside.update(id(sub) for sub in ast.walk(node))
        elif type(node).__name__ == "Match":
            found.append((node.lineno, "match statement (Python 3.10)"))
        elif isinstance(node, (ast.With, ast.AsyncWith)) and _parenthesised_items(node, lines):
            found.append((node.lineno, "parenthesised context managers (Python 3.10)"))
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            keywords = {k.arg for k in node.keywords}
            if name == "zip" and "strict" in keywords:
                found.append((node.lineno, "zip(strict=...) (Python 3.10)"))
            if name in ("dataclass", "field") and keywords & {"kw_only", "slots"}:
                found.append((node.lineno, f"{name}({'/'.join(sorted(keywords & {'kw_only', 'slots'}))}=...) (Python 3.10)"))
        elif isinstance(node, ast.Attribute) and node.attr == "UTC":
            found.append((node.lineno, "datetime.UTC (Python 3.11): use datetime.timezone.utc"))
        elif isinstance(node, ast.ImportFrom) and node.module == "datetime" and any(a.name == "UTC" for a in node.names):
            found.append((node.lineno, "datetime.UTC (Python 3.11): use datetime.timezone.utc"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def python_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts) if path.is_dir() else [path])
    return files


def main(argv: list[str]) -> int:
    report = [p for f in python_files(argv) for p in problems(f.read_text(encoding="utf-8"), str(f))]
    print("\n".join(report))
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
