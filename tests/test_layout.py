"""The picture of the house (issue: one renovation): the package's import graph has no cycle,
no module imports from a package ``__init__`` above it, and no file reaches into another
module's private names (``from m import _name`` or ``m._name``)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustreg"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def target(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, str]]:
    """``(imported module, name)`` for every ``from … import name`` of robustreg in ``module``."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and target(module, node).startswith("robustreg"):
            out += [(target(module, node), alias.name) for alias in node.names]
    return out


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for source, name in imports(module):
            graph[module].add(f"{source}.{name}" if f"{source}.{name}" in MODULES else source)
    return graph


def test_the_import_graph_has_no_cycle():
    graph, state, cycles = edges(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node] & MODULES.keys()):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_no_module_imports_from_a_package_above_it():
    upward = [
        (module, dst)
        for module, dsts in edges().items()
        for dst in dsts
        if MODULES.get(dst, Path()).name == "__init__.py" and module.startswith(dst + ".")
    ]
    assert not upward, upward


def test_no_file_reaches_into_another_modules_private_names():
    found = []
    for module in MODULES:
        found += [(module, f"{src}.{name}") for src, name in imports(module)
                  if name.startswith("_") and f"{src}.{name}" not in MODULES]  # fmt: skip
    ours = {
        "robustreg",
        *(p.stem for p in (ROOT / "recipes").glob("*.py")),
        *(p.stem for p in (ROOT / "benchmarks").glob("*.py")),
    }
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "recipes").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        tree = ast.parse(path.read_text())
        imported = set()  # names bound to a module of ours: `import skeleton`, `from robustreg import cli`
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.asname or a.name for a in node.names if a.name.split(".")[0] in ours}
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in ours:
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                    and node.attr.startswith("_") and not node.attr.startswith("__")):  # fmt: skip
                found.append((str(path.relative_to(ROOT)), f"{node.value.id}.{node.attr}"))
    assert not found, found
