"""The house stays easy to change: etrm's imports, read from the source (lazy imports inside
functions included), point down the layers below and never form a circle.

A module may import from its own layer and the layers before it, never from one after it.
A new module must be put in a layer here (the test names it), which is where the README's
"Layout" section takes its order from."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "etrm"

# Bottom first. An entry names a module or a package (the package and all its modules).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        (
            "etrm",
            "etrm.moved",
            "etrm.errors",
            "etrm.bundled",
            "etrm.bfloat16",
            "etrm.layers",
            "etrm.config",  # the readers; etrm.config.training sits with the trainer
            "etrm.optim",
            "etrm.metrics_log",
            "etrm.synthetic",
            "etrm.parity",
            "etrm.experiment1",  # the package itself: a docstring only
            "etrm.experiment1.distributed",
            "etrm.experiment1.wandb_log",
        ),
    ),
    ("models", ("etrm.models",)),
    ("checkpoints", ("etrm.checkpoints",)),
    ("data", ("etrm.data",)),
    ("evaluation", ("etrm.evaluation",)),
    ("training", ("etrm.ema", "etrm.diagnostics", "etrm.inference", "etrm.config.training", "etrm.training")),
    ("interface", ("etrm.encoder_output", "etrm.interface", "etrm.model_code")),
    # Experiment 1's one loop, below the checks: the suite's run and the command's are the same
    ("run", ("etrm.experiment1.settings", "etrm.experiment1.state", "etrm.experiment1.model", "etrm.experiment1.loop")),
    ("checks", ("etrm.checks",)),
    # pass@K with a test-time context search: the evaluator over the checks' search
    ("search-evaluation", ("etrm.evaluation_search",)),
    ("testing", ("etrm.testing",)),
    # the H7 measurement after a run reports through the verdict table
    ("after-run", ("etrm.experiment1.h7_followup",)),
    ("suite", ("etrm.suite",)),
    (
        "commands",
        (
            "etrm.report",
            "etrm.evaluate_command",
            "etrm.bench",
            "etrm.investigate",
            "etrm.compare",
            "etrm.compare_report",
            "etrm.experiment1.command",
            "etrm.cli",
            "etrm.__main__",
        ),
    ),
]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same top-level package it imports. `from pkg import name`
    counts as an import of `pkg.name` when that is a module, else of `pkg`."""
    top = root.name
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                names = {f"{base}.{alias.name}" for alias in node.names}
                imported |= {name for name in names if name in paths} or {base}
        graph[module] = {name for name in imported if name == top or name.startswith(top + ".")} - {module}
    return graph


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]]) -> int | None:
    """Index of the layer whose most specific entry names `module` (or a package above it)."""
    best, best_length = None, -1
    for index, (_, entries) in enumerate(layers):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best_length:
                best, best_length = index, len(entry)
    return best


def upward_imports(graph: dict[str, set[str]], layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    problems = []
    for module, imported in sorted(graph.items()):
        own = layer_of(module, layers)
        for name in sorted(imported):
            theirs = layer_of(name, layers)
            if own is not None and theirs is not None and theirs > own:
                problems.append(f"{module} ({layers[own][0]}) imports {name} ({layers[theirs][0]}), a layer above it")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def etrm_graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_every_module_has_a_layer(etrm_graph):
    unplaced = sorted(m for m in etrm_graph if layer_of(m, LAYERS) is None)
    assert not unplaced, f"put these modules in a layer of LAYERS in {__file__}: {unplaced}"


def test_no_module_imports_from_a_layer_above_it(etrm_graph):
    problems = upward_imports(etrm_graph, LAYERS)
    assert not problems, "\n".join(problems)


def test_no_import_circle(etrm_graph):
    found = circles(etrm_graph)
    assert not found, "import circles: " + "; ".join(" <-> ".join(group) for group in found)


def test_error_modules_import_nothing_from_etrm(etrm_graph):
    """An error module sits at the bottom of its package: anything may raise its errors."""
    errors = {m: sorted(imported) for m, imported in etrm_graph.items() if m.rpartition(".")[2] == "errors"}
    assert {"etrm.errors", "etrm.checkpoints.errors"} <= set(errors)
    assert not any(errors.values()), errors


def test_the_checks_catch_an_upward_import_a_circle_and_a_lazy_import(tmp_path):
    """Negative control: a package with each fault, lazy (inside a function) and relative
    imports included, is reported."""
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from pkg.low.a import A\n")
    (pkg / "low" / "a.py").write_text("from .b import B\nA = 1\n")
    (pkg / "low" / "b.py").write_text("def f():\n    from pkg.low import a\nB = 2\n")
    (pkg / "high.py").write_text("import pkg.low.a\n")
    (pkg / "low" / "c.py").write_text("def g():\n    import pkg.high\n")
    graph = import_graph(pkg)
    assert graph["pkg.low.a"] == {"pkg.low.b"} and graph["pkg.low.b"] == {"pkg.low.a"}
    assert circles(graph) == [["pkg.low.a", "pkg.low.b"]]
    layers = [("low", ("pkg", "pkg.low")), ("high", ("pkg.high",))]
    assert upward_imports(graph, layers) == ["pkg.low.c (low) imports pkg.high (high), a layer above it"]
    assert not circles({"x": {"y"}, "y": set()}) and not upward_imports({"pkg.high": {"pkg.low.a"}}, layers)
