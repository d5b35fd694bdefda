"""strop's imports point one way: a module imports only from its own layer or the layers
below, and no group of modules imports itself in a circle. Read from the source (ast), so an
import hidden inside a function counts like one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src"

# Lowest first. A module belongs to the first entry that is its name or a package above it.
LAYERS: list[tuple[str, ...]] = [
    ("strop", "strop.errors", "strop.files", "strop.quiet", "strop.sandbox", "strop.progress"),
    ("strop.config",),  # strict loaders; pydantic and yaml only
    ("strop.tiny", "strop.hub", "strop.gguf_import"),  # model names -> local dirs
    ("strop.models",),  # load, transforms (methods), log-probs, attention, decode steps
    ("strop.data",),  # readers, rendering, masks, packing, prepare
    # sampling, continuous batching, generation, reward models
    ("strop.rollout", "strop.engine", "strop.infer", "strop.reward"),
    ("strop.eval",),
    # the loop and objectives; merging (searches with eval); export (GGUF, reuses merge I/O)
    ("strop.train", "strop.merge", "strop.export"),
    ("strop.commands",),  # one function per verb
    ("strop.cli",),  # the console script
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "strop").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            # the package's own __init__ (__version__) is a layer of its own, not a prefix
            inside = module == name or (name != "strop" and module.startswith(name + "."))
            if inside and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _imports(modules: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """{module: {(imported strop module, line)}}, resolving relative imports and names that
    are submodules (``from strop.train import loop``)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[tuple[str, int]]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            for name in names:
                target = resolve(name) if name.startswith("strop") else None
                if target and target != module:
                    found.add((target, node.lineno))
        graph[module] = found
    return graph


def test_every_import_points_down_or_sideways():
    modules = _modules()
    upward = [
        f"{modules[m].relative_to(SRC)}:{line}: {m} (layer {_layer(m)}) imports {t} "
        f"(layer {_layer(t)})"
        for m, targets in _imports(modules).items()
        for t, line in sorted(targets)
        if _layer(t) > _layer(m) and not modules[m].name == "__init__.py" == modules[t].name
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {m: {t for t, _ in ts} for m, ts in _imports(_modules()).items()}
    # A package's __init__ re-exporting its submodules is not a cycle with them.
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_console_script_imports_nothing_heavy():
    """`strop --help` stays instant: the verbs import their modules when they run."""
    import subprocess
    import sys

    code = (
        "import sys, strop.cli; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
