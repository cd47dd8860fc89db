"""The package's layers run one way: symbols → model / data → training → commands → cli, with io at the ground.

Every import is read from the source (module level and inside functions), so a late import cannot hide a
dependency that runs back up the layers, and the module graph has no circle.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "salmonn_symbols"

# room -> rooms it may import (besides itself)
ALLOWED = {
    "io": set(),
    "schemas": set(),
    "assets": set(),
    "symbols": {"io", "schemas", "assets"},
    "model": {"symbols", "io", "assets"},
    "data": {"symbols", "io"},
    "training": {"model", "data", "symbols", "io"},
    "experiments": {"symbols", "io"},
    "commands": {"training", "model", "data", "symbols", "io", "experiments"},
    "cli": {"commands", "symbols", "io", "__init__"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the package's modules that ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("salmonn_symbols")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("salmonn_symbols"):
                mod = node.module
            else:
                continue
            out.add(mod)
            out |= {
                f"{mod}.{a.name}" for a in node.names if (PKG.parent / f"{mod}.{a.name}".replace(".", "/")).exists()
            }
            out |= {
                f"{mod}.{a.name}"
                for a in node.names
                if (PKG.parent / (f"{mod}.{a.name}".replace(".", "/") + ".py")).exists()
            }
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_no_import_runs_back_up_the_layers():
    bad = []
    for mod, deps in _graph().items():
        room = _room(mod)
        for dep in deps:
            other = _room(dep)
            if other != room and other not in ALLOWED.get(room, set()):
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_the_module_graph_has_no_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            raise AssertionError("import circle: " + " -> ".join(circle))


def test_the_package_has_no_oversized_file():
    sizes = {str(p.relative_to(PKG)): len(p.read_text("utf-8").splitlines()) for p in PKG.rglob("*.py")}
    assert max(sizes.values()) <= 500, {k: v for k, v in sizes.items() if v > 500}
    assert sizes["training/module.py"] <= 350
