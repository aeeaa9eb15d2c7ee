"""The package's import graph, read from the source (every import, those inside functions too):
no cycles, and imports point one way: commands and tasks → the science (data, models, pretrain,
prune, distill, law, eval) → runtime. Runtime imports nothing else of capgap; nothing but the
commands imports a command, and nothing imports a task but the tasks and the commands. Inside the
science, data and models never train (no pretrain, prune or distill), and the law and the
benchmarks import no torch training code at all."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "capgap"

# a cycle another change of issue 12 removes; delete the entry when it has landed
KNOWN_CYCLES: list[set[str]] = []  # none left: a new cycle fails the test

RUNTIME = "capgap.runtime"
SCIENCE = ("capgap.data", "capgap.models", "capgap.pretrain", "capgap.prune", "capgap.distill",
           "capgap.law", "capgap.eval")

# what each package may import from capgap besides itself and the runtime
ALLOWED = {
    RUNTIME: (),
    "capgap.data": (),
    "capgap.models": ("capgap.data",),
    "capgap.pretrain": ("capgap.data", "capgap.models"),
    "capgap.prune": ("capgap.data", "capgap.models", "capgap.pretrain"),
    # the law: an assistant chain spaces its teachers at the fitted ratio T*/S
    "capgap.distill": ("capgap.data", "capgap.models", "capgap.pretrain", "capgap.prune", "capgap.law"),
    # the law fits numbers from the store: no torch model code (tests/test_law_cli.py imports the
    # whole package without torch; task=study's Lightning callback that writes a row is in tasks/)
    "capgap.law": (),
    # benchmarks take a model object and return figures: no training, tasks or law code
    "capgap.eval": (),
    "capgap.tasks": SCIENCE,
    "capgap.commands": SCIENCE + ("capgap.tasks",),
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
                # `from capgap.runtime import training` names a module; `from x import f` names x
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
    assert "capgap.runtime.training" in g["capgap.pretrain.teachers"]  # `from capgap.runtime import training`
    assert "capgap.models.micro" in g["capgap.models.zoo"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert [c for c in found if c not in KNOWN_CYCLES] == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def _layer(name: str) -> str | None:
    return next((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), None)


def test_every_module_has_a_layer():
    """Nothing sits at the top of capgap/ but the package itself: each module is placed."""
    assert [n for n in import_graph() if n != "capgap" and _layer(n) is None] == []


def violations(graph) -> list[tuple[str, str]]:
    """(module, import) pairs that point up, or across to a package its layer may not import."""
    bad = []
    for name, deps in graph.items():
        layer = _layer(name)
        if layer is not None:
            allowed = (layer, RUNTIME) + ALLOWED[layer]
            bad += [(name, d) for d in deps if _layer(d) not in allowed]
    return bad


def test_layers_point_down():
    assert violations(import_graph()) == []


def test_the_layer_rule_can_fail():
    """A runtime module importing the science, models importing distillation, and the science
    importing a task are each caught; a task importing the science and runtime is not."""
    assert _layer("capgap.runtime.training") == RUNTIME
    assert "capgap.distill" not in (RUNTIME,) + ALLOWED[RUNTIME]
    assert "capgap.tasks" not in ALLOWED["capgap.distill"]
    assert "capgap.distill" not in ALLOWED["capgap.models"]
    graph = {"capgap.runtime.training": {"capgap.distill.module", "capgap.runtime.errors"},
             "capgap.models.zoo": {"capgap.distill.losses", "capgap.data.bpe"},
             "capgap.prune.student": {"capgap.tasks.distill"},
             "capgap.tasks.study": {"capgap.distill.module", "capgap.runtime.training", "capgap.law.store"}}
    assert sorted(violations(graph)) == [("capgap.models.zoo", "capgap.distill.losses"),
                                         ("capgap.prune.student", "capgap.tasks.distill"),
                                         ("capgap.runtime.training", "capgap.distill.module")]


def test_paths_made_from_file_still_point_where_they_mean():
    """Modules that find the checkout or the package from their own file: a move into a
    subpackage (issue 19) once left soak and ablate looking for capgap/run.py."""
    from capgap.commands import ablate, bench, soak
    from capgap.runtime import confdir, distributed, terminal

    checkout = PKG.parent
    assert soak.ROOT == ablate.ROOT == checkout and (checkout / "run.py").is_file()
    assert Path(bench._root()) == distributed.IMPORT_ROOT == checkout  # where `import capgap` finds PKG
    assert Path(terminal.PACKAGE) == PKG
    assert confdir.conf_dir() == checkout / "conf"
