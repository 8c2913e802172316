"""The house's architecture, checked from the import graph (every `import` in core/ and tui/, at module
level or inside a function): no circle, no import that runs back up a layer, one door for the front ends.

The layers, from the bottom (a module may import its own layer and the layers below it):

    0 foundation   core.errors, core.progress, core.locations, core.arguments, core.processes
    1 data         core.data: formats, workspace, marks, export, planted behaviours, safe text
    2 model        core.model: catalogue, store, LM, SAE, chat template, SAE training, embedder
    3 index        core.index: pairs through the model and the SAE into a workspace (one machine or Ray)
    4 analysis     core.analysis: shifts, concepts, clusters, hypotheses, calibration, names, evidence
    5 train        core.train: DPO, SFT, interventions, TRL adapter, rollouts
    6 checks       core.checks: goblin test, goblin loop, validation, plots
    7 session      core.session, core.jobs, core.views, core.report: the one API both front ends call
    8 front ends   core.cli (typer) and tui (Textual): they import the session layer and the
                   foundation only, plus core.data.textsafe (every printer escapes dataset text)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FOUNDATION = {"core", "core.errors", "core.progress", "core.locations", "core.arguments", "core.processes"}
LAYERS = {"data": 1, "model": 2, "index": 3, "analysis": 4, "train": 5, "checks": 6}
SESSION = {"core.session", "core.jobs", "core.views", "core.report"}
FRONT_MAY_IMPORT = FOUNDATION | SESSION | {"core.data.textsafe"}


def rank(module: str) -> int:
    if module in FOUNDATION:
        return 0
    if module in SESSION:
        return 7
    parts = module.split(".")
    if parts[0] == "tui" or parts[:2] == ["core", "cli"]:
        return 8
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS[parts[1]]
    raise AssertionError(f"{module} is in no layer: add it to a layer folder or to tests/unit/test_layers.py")


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.glob("core/**/*.py")) + sorted(ROOT.glob("tui/**/*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a name imported from a package resolves to the
    submodule when there is one)."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for m, path in mods.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                names = [base] if node.module else []
                names += [f"{base}.{a.name}" for a in node.names]
            for n in names:
                if n.split(".")[0] in ("core", "tui"):
                    r = resolve(n)
                    if r and r != m and not (m.startswith(r + ".") and r.count(".") < m.count(".")
                                             and mods[r].name == "__init__.py" and r != "core"):
                        edges.add(r)
        graph[m] = edges
    return graph


@pytest.fixture(scope="module")
def graph():
    return imports(modules())


def test_every_module_is_in_a_layer(graph):
    for m in graph:
        rank(m)
    assert len([m for m in graph if m.startswith("core.")]) > 40


def test_no_import_runs_up_a_layer(graph):
    up = [f"{m} ({rank(m)}) imports {t} ({rank(t)})"
          for m, ts in graph.items() for t in ts if rank(t) > rank(m)]
    assert not up, "imports up a layer:\n" + "\n".join(sorted(up))


def test_front_ends_come_through_one_door(graph):
    wrong = [f"{m} imports {t}" for m, ts in graph.items() if rank(m) == 8
             for t in ts if rank(t) < 8 and t not in FRONT_MAY_IMPORT]
    assert not wrong, "front ends reach below the session layer:\n" + "\n".join(sorted(wrong))


def test_no_circle(graph):
    """Tarjan's strongly connected components: a component of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_every_layer_says_what_it_is():
    for layer in LAYERS:
        init = ROOT / "core" / layer / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, f"{init} has no docstring saying what the layer is"


def test_the_check_catches_what_it_forbids():
    """The checker itself on a constructed graph: an upward import and a circle are found."""
    assert rank("core.model.lm") < rank("core.train.rollout")
    g = {"core.model.lm": {"core.train.rollout"}, "core.train.rollout": {"core.model.lm"}}
    assert [m for m, ts in g.items() for t in ts if rank(t) > rank(m)] == ["core.model.lm"]
