"""The engine's module boundaries: a torch-free core and no import cycles.

The torch-free core (geometry, model card, presets, verdict texts, I/O, threshold, metrics,
meshes, report, resource lookup) must import without PyTorch, so the report, the Slicer panel
and tools can use it; checked in a fresh interpreter, where nothing was imported before. The
SegDeepLogic modules must not import each other in a cycle (static graph of module-level
imports, ``if TYPE_CHECKING:`` blocks left out since they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "SegDeepLogic"

TORCH_FREE = (
    "SegDeepLogic.architectures",
    "SegDeepLogic.grid",
    "SegDeepLogic.model_card",
    "SegDeepLogic.presets",
    "SegDeepLogic.verdicts",
    "SegDeepLogic.resources",
    "SegDeepLogic.plausibility",
    "SegDeepLogic.io",
    "SegDeepLogic.segmentation_io",
    "SegDeepLogic.threshold",
    "SegDeepLogic.metrics",
    "SegDeepLogic.mesh",
    "SegDeepLogic.mesh_io",
    "SegDeepLogic.report",
    "SegDeepLogic.evaluate",
    "SegDeepLogic.training.data",
    "SegDeepLogic.cli",
)


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_torch_free_core_imports_without_loading_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torch' not in sys.modules, name + ' imported torch'\n"
        "print('ok')\n"
    )
    run = _fresh_python(code)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_torch_free_card_reads_the_bundled_card_and_the_test_card_without_torch() -> None:
    code = (
        "import sys\n"
        "from SegDeepLogic.model_card import load_model_card\n"
        "from SegDeepLogic.resources import list_bundled_models\n"
        "cards = [load_model_card(p) for p in [*list_bundled_models(), 'Testing/Data/test_model']]\n"
        "assert 'torch' not in sys.modules\n"
        "print(' '.join(str(c.size_divisor) for c in cards))\n"
    )
    run = _fresh_python(code)
    assert run.returncode == 0, run.stderr
    assert "(" in run.stdout  # one size divisor per card, computed without building a network


def test_the_check_itself_sees_torch_when_a_torch_module_is_imported() -> None:
    run = _fresh_python("import sys, SegDeepLogic.segment; print('torch' in sys.modules)")
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """SegDeepLogic modules imported when ``name`` is imported (module level, TYPE_CHECKING blocks excluded)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    found = {m for m in found if m in modules and m != name}
    # Importing a submodule imports its parent packages first (except the packages ``name`` itself
    # belongs to: those are already being imported, as Python does for a package's own submodules).
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    for m in list(found):
        parts = m.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) not in own)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _top_level_imports(path, name, modules) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def test_import_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_engine_modules_import_each_other_without_cycles() -> None:
    graph = import_graph()
    assert "SegDeepLogic.segment" in graph and "SegDeepLogic.grid" in graph["SegDeepLogic.segment"]
    assert find_cycles(graph) == []


def test_model_package_and_networks_do_not_import_each_other() -> None:
    graph = import_graph()
    assert "SegDeepLogic.model_package" not in graph["SegDeepLogic.networks"]
    assert not any("model_package" in line for line in (PACKAGE / "networks" / "__init__.py").read_text().splitlines())


def test_card_architecture_names_are_the_network_registry() -> None:
    pytest.importorskip("torch")
    from SegDeepLogic.architectures import ARCHITECTURE_NAMES, network_size_divisor
    from SegDeepLogic.networks import ARCHITECTURES, build_network

    assert sorted(ARCHITECTURES) == list(ARCHITECTURE_NAMES)
    for params in ({"channels": [4, 8, 16]}, {"channels": 4, "depth": 3, "strides": [[1, 2, 2], 2]}):
        network = build_network("unet3d", {"in_channels": 1, "out_channels": 2, **params})
        assert network_size_divisor("unet3d", params) == network.size_divisor
