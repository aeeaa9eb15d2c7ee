"""The package's import graph, read from the source (every import, those inside functions too):
no cycles, and the layers point down: data and models never import training, distillation,
pruning or tasks; the law code never imports torch training code."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "capgap"

# a cycle another change of issue 12 removes; delete the entry when it has landed
KNOWN_CYCLES: list[set[str]] = []  # none left: a new cycle fails the test

# what each lower layer may import from capgap (besides itself)
ALLOWED = {
    # capgap.distributed: which rank builds a cache entry (rank 0 first, the others then read it)
    "capgap.data": ("capgap.errors", "capgap.atomic", "capgap.cache", "capgap.terminal", "capgap.distributed"),
    "capgap.models": ("capgap.errors", "capgap.atomic", "capgap.cache", "capgap.terminal", "capgap.data",
                      "capgap.distributed"),
    "capgap.law": ("capgap.errors", "capgap.atomic", "capgap.cache", "capgap.confdir"),
    # benchmarks take a model object and return figures: no training, tasks or law code
    "capgap.eval": ("capgap.errors", "capgap.terminal"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from capgap import training` names a module; `from x import f` names x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                while t not in files and "." in t:
                    t = t.rpartition(".")[0]
                if t in files and t != name and t != "capgap":
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_real_imports():
    g = import_graph()
    assert "capgap.distill.module" in g["capgap.distill.config"]
    assert "capgap.training" in g["capgap.pretraining"]  # `from capgap import training`
    assert "capgap.models.micro" in g["capgap.models.zoo"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert [c for c in found if c not in KNOWN_CYCLES] == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_layers_point_down():
    bad = []
    for name, deps in import_graph().items():
        for layer, allowed in ALLOWED.items():
            if name == layer or name.startswith(layer + "."):
                bad += [(name, d) for d in deps
                        if not (d == layer or d.startswith(layer + ".") or d.startswith(allowed))]
    assert bad == []
