"""The package's layers only point down: no cycle between packages, no import up the order, function-local imports
counted.

Every module of `astroreason/` is parsed with `ast`; every `import` and `from ... import` in it (at module level or
inside a function, relative or absolute) that names one of the package's own modules is an edge. Each module belongs
to a unit (its top-level package or module: `astroreason.tokens.cache` -> `tokens`), and each unit to a layer:

    errors
    io, dotted, arguments, stats                 plain helpers; the bootstrap and the paired comparison
    data                                         sources, splits, the manifest
    prompts, rewards                             templates and the answer format; GRPO rewards
    tokens                                       codecs, renderings, the token cache
    models                                       loading, tiny builders, checkpoint hashes
    integrity, provenance                        guards: prompt lint, ceiling gate, results ledger, alarms, fingerprints
    arms                                         how a galaxy reaches the model (image, tokens), built once per split;
                                                 each arm's settings, model checks and zoom tool
    zoom                                         the episode around an arm's zoom tool: its TRL environment, chat
                                                 templates, tool-turn lint and trajectories
    budget                                       prices, the spend ledger, caps
    defaults, optim, pretrain, callbacks,        tiny defaults, learning rates per part, vision pretraining, the
    options                                      trainer's callbacks (chosen in one place), options shared by commands
    training, evaluation                         the trainers; backends, the harness, reports
    audit                                        probes and controls that re-ask and retrain a run's model
    sweeps
    demo
    cli, model_commands, tokens_commands,        the command line
    every `*.commands`

A sub-command's module (`astroreason/<package>/commands.py`) is the command line's, not its package's: it only
parses and calls the library, and only `cli` imports it. `tokens_commands` sits at the top beside `cli` because
`tokens cost` compares the arms for a model's family: it needs `models`, which sits above `tokens`.
A unit may import only its own modules and units of lower layers (two units of one layer never import each other).
The integrity guards sit low because the arms, training and evaluation use them (the prompt lint, the results
ledger, the training alarms); the audit, which scores a run through an evaluation backend and reruns its recipe
through the training builders, sits above both. `astroreason.evaluation.budget` is the `budget` unit wherever it
lives (`astroreason/budget/` or the old path), and `astroreason.models` is the `models` unit as a module or a package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "astroreason"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("astroreason", "errors"),  # `astroreason` is the package's own __init__ (its version)
    ("io", "dotted", "arguments", "stats"),
    ("data",),
    ("prompts", "rewards"),
    ("tokens",),
    ("models",),
    ("integrity", "provenance"),
    ("arms",),
    ("zoom",),
    ("budget",),
    ("defaults", "optim", "pretrain", "callbacks", "options"),
    ("training", "evaluation"),
    ("audit",),
    ("sweeps",),
    ("demo",),
    ("cli", "model_commands", "tokens_commands"),
)
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """The unit of a dotted module name: its top-level package or module under `astroreason`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "astroreason"
    if parts[-1] == "commands":  # a sub-command's front end beside its package
        return "cli"
    if parts[1:3] == ["evaluation", "budget"]:  # the budget before it is its own package
        return "budget"
    return parts[1]


def package_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module under `root` (a package directory)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imports(root: Path) -> list[tuple[str, str, str]]:
    """Every (importer, imported, 'file:line') between the modules under `root`, function-local imports included."""
    modules = package_modules(root)
    top = root.name
    edges = []
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import name`: the submodule `pkg.name` when there is one, else `pkg` itself
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                while target not in modules and "." in target:  # `import pkg.mod.attr` -> the module pkg.mod
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    edges.append((name, target, f"{path.relative_to(root.parent)}:{node.lineno}"))
    return edges


def unit_edges(edges) -> dict[tuple[str, str], str]:
    """(importer unit, imported unit) -> one place that makes the edge, for edges between different units."""
    out: dict[tuple[str, str], str] = {}
    for a, b, where in edges:
        ua, ub = unit_of(a), unit_of(b)
        if ua != ub:
            out.setdefault((ua, ub), where)
    return out


def find_cycle(graph: dict[tuple[str, str], str]) -> list[str] | None:
    """One cycle of units in the graph (as [u0, u1, ..., u0]), or None."""
    successors: dict[str, list[str]] = {}
    for a, b in graph:
        successors.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(successors.get(node, [])):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(successors):
        if node not in state and (found := visit(node)):
            return found
    return None


def upward(graph: dict[tuple[str, str], str]) -> list[str]:
    """Each edge that does not point strictly down the layer order, as a line naming where it is made."""
    return [
        f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]}) at {where}"
        for (a, b), where in sorted(graph.items())
        if LAYER[b] >= LAYER[a]
    ]


@pytest.fixture(scope="module")
def graph():
    return unit_edges(imports(PACKAGE))


def test_no_cycle_between_modules_either():
    """Inside a package too, no two modules import each other, even inside a function (a package's `__init__`
    gathering its own submodules aside): a load-time cycle only works while the import stays in a function."""
    graph: dict[tuple[str, str], str] = {}
    for a, b, where in imports(PACKAGE):
        if not b.startswith(a + "."):
            graph.setdefault((a, b), where)
    cycle = find_cycle(graph)
    assert cycle is None, "module cycle: " + " -> ".join(
        f"{m} ({graph.get((m, n), '')})" for m, n in zip(cycle, cycle[1:])
    )


def test_the_scan_sees_function_local_and_relative_imports():
    edges = {(a, b) for a, b, _ in imports(PACKAGE)}
    # `training.builders` imports `..models` (relative, two dots); `arms.base` imports `..integrity.lint` at the top.
    assert ("astroreason.training.builders", "astroreason.models") in edges
    assert ("astroreason.arms.base", "astroreason.integrity.lint") in edges
    assert ("astroreason.arms", "astroreason.arms.base") in edges


def test_the_checks_catch_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "astroreason"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "mod.py").write_text("def f():\n    from ..high import g\n    return g\n")
    (pkg / "high.py").write_text("from .low.mod import f\nimport astroreason.low.mod\n")
    graph = unit_edges(imports(pkg))
    assert set(graph) == {("low", "high"), ("high", "low")}
    assert graph[("low", "high")] == "astroreason/low/mod.py:2"
    assert find_cycle(graph) in (["high", "low", "high"], ["low", "high", "low"])
    assert find_cycle({("high", "low"): "x"}) is None


def test_every_unit_has_a_layer(graph):
    units = {unit_of(m) for m in package_modules(PACKAGE)}
    assert not units - set(LAYER), f"units without a layer (add them to LAYERS): {sorted(units - set(LAYER))}"


def test_no_cycle_between_packages(graph):
    cycle = find_cycle(graph)
    assert cycle is None, (
        "import cycle between packages: "
        + " -> ".join(cycle)
        + " ("
        + "; ".join(f"{a} -> {b} at {graph[(a, b)]}" for a, b in zip(cycle, cycle[1:]))
        + ")"
    )


def test_imports_only_point_down(graph):
    problems = upward(graph)
    assert not problems, "imports that point up (or across) the layer order:\n" + "\n".join(problems)


def test_tokens_do_not_import_the_model_layer(graph):
    assert ("tokens", "models") not in graph, (
        f"astroreason.tokens imports astroreason.models at {graph.get(('tokens', 'models'))}"
    )
