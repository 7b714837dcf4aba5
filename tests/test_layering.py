"""The layering of DESIGN.md, read from the source: imports point down, the layers above the engine touch no
tensor, and no module imports another that imports it back when the package loads."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gptoss"

# Higher imports lower, never the reverse; one rank may import its own rank only where listed in SIBLINGS.
RANK = {
    "__main__": 10,
    "cli": 9,
    "server": 8,
    "eval": 7,
    "finetune": 7,
    "bench": 7,
    "guard": 6,
    "conversation": 5,
    "tools": 4,
    "harmony": 3,
    "engine": 3,
    "model": 2,
    "kernels": 2,
    "hf_tokenizer": 1.5,
    "tokenizer": 1,
    "errors": 0,
    "storage": 0,
    "__init__": 0,
}
SIBLINGS = {frozenset({"model", "kernels"})}  # each fast path beside the reference it must match
NO_TENSORS = ("harmony", "server", "conversation", "tools", "eval")
ARRAY_LIBRARIES = ("torch", "triton", "numpy")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts).removesuffix(".__init__")] = path
    return out


def _imports(path: Path, top_level: bool) -> set[str]:
    """Modules ``path`` imports (with ``from m import n`` also as ``m.n``, which may be a module); imports
    under ``if TYPE_CHECKING:`` and, with ``top_level``, inside functions are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level else [n for n in ast.walk(tree)]
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in nodes:
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_rank():
    packages = {_package(m) for m in _modules()}
    assert packages <= set(RANK), f"give these a rank in RANK: {sorted(packages - set(RANK))}"


def test_imports_point_down():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        here = _package(module)
        for target in _imports(path, top_level=False):
            if target not in modules:
                continue
            there = _package(target)
            if there == here or frozenset({here, there}) in SIBLINGS:
                continue
            if RANK[there] >= RANK[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "a layer imports one at or above it:\n" + "\n".join(sorted(set(wrong)))


def test_the_layers_above_the_engine_touch_no_tensor():
    wrong = [
        f"{module} imports {target}"
        for module, path in _modules().items()
        if _package(module) in NO_TENSORS
        for target in _imports(path, top_level=False)
        if target.split(".")[0] in ARRAY_LIBRARIES
    ]
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_import_cycle_when_modules_load():
    modules = _modules()

    def ancestors(m: str) -> set[str]:
        parts = m.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    graph = {
        m: {t for t in _imports(p, top_level=True) if t in modules and t != m and t not in ancestors(m)}
        for m, p in modules.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The reader of imports sees function-level and ``from`` imports and skips TYPE_CHECKING ones."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nimport torch\nif TYPE_CHECKING:\n    import gptoss.cli\n"
        "def f():\n    from gptoss.server import app\n"
    )
    assert {"torch", "gptoss.server", "gptoss.server.app"} <= _imports(src, top_level=False)
    assert "gptoss.cli" not in _imports(src, top_level=False)
    assert "gptoss.server" not in _imports(src, top_level=True)
