"""The shape of the code: no import circles, arrows one way (spaces <- trainables <- search), the
layers inside ``search/`` in one order, and no module importing another module's private names.
Imports anywhere in a file count (inside functions and under ``TYPE_CHECKING`` too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spaces", "trainables", "search", "mlflow_server")
# What each package may import of the others (DESIGN.md: search uses spaces and trainables;
# trainables uses spaces for the spec type; spaces uses neither; mlflow_server stands alone).
ALLOWED = {"spaces": {"spaces"}, "trainables": {"spaces", "trainables"},
           "search": {"spaces", "trainables", "search", "mlflow_server"}, "mlflow_server": {"mlflow_server", "spaces"}}


# search/'s sub-packages, lowest first (DESIGN.md, "The layers of search/"): a module may import
# its own layer and the ones below it, never one above.
SEARCH_LAYERS = ("settings", "runtime", "tracking", "proposals", "workflows", "reporting", "plan", "cli")


def module_imports(root: Path, packages=PACKAGES) -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name or "")} among the modules under ``root``'s packages."""
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[tuple[str, str]]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [(resolve(a.name), "") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(parts + ([base] if base else []))
                found = []
                for a in node.names:
                    module = resolve(f"{base}.{a.name}")
                    found.append((module, "" if module == f"{base}.{a.name}" else a.name))
            else:
                continue
            # Importing a.b.c runs the package a.b's __init__ first: an edge to it too.
            parents = {(".".join(m.split(".")[:i]), "") for m, _ in found if m for i in range(1, m.count(".") + 1)}
            graph[name] |= {(m, n) for m, n in {*found, *parents}
                            if m and m in modules and m != name and not name.startswith(m + ".")}
    return graph


def import_circles(graph: dict[str, set[tuple[str, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges = {m: sorted({t for t, _ in targets}) for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return circles


def test_there_is_no_import_circle_among_the_product_modules():
    assert import_circles(module_imports(ROOT)) == []


def test_arrows_point_one_way_between_the_packages():
    wrong = sorted(f"{m} imports {t}" for m, targets in module_imports(ROOT).items() for t, _ in targets
                   if t.split(".")[0] not in ALLOWED[m.split(".")[0]])
    assert wrong == []


def arrows_up(graph: dict[str, set[tuple[str, str]]], package: str = "search",
              layers: tuple[str, ...] = SEARCH_LAYERS) -> list[str]:
    """Every import from a layer of ``package`` into a higher one, and every module of ``package``
    that sits in no layer (a flat module has no place in the order)."""

    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if parts[0] == package and len(parts) > 1 else None

    found = sorted(f"{m} is in no layer of {package}/" for m in graph if layer(m) is not None and layer(m) not in layers)
    for m, targets in graph.items():
        for t, _ in targets:
            if layer(m) in layers and layer(t) in layers and layers.index(layer(t)) > layers.index(layer(m)):
                found.append(f"{m} ({layer(m)}) imports {t} ({layer(t)})")
    return sorted(found)


def test_search_layers_import_only_downwards():
    assert arrows_up(module_imports(ROOT)) == []


def test_every_layer_of_search_exists_and_holds_modules():
    assert sorted(p.name for p in (ROOT / "search").iterdir() if (p / "__init__.py").is_file()) == sorted(SEARCH_LAYERS)
    assert [p.name for p in (ROOT / "search").glob("*.py")] == ["__init__.py"]


def test_a_planted_arrow_up_and_a_flat_module_are_found(tmp_path):
    for layer in ("low", "high"):
        (tmp_path / "pkg" / layer).mkdir(parents=True)
        (tmp_path / "pkg" / layer / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "high" / "workflow.py").write_text("from pkg.low.names import NAMES\n")  # down: fine
    (tmp_path / "pkg" / "low" / "names.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high.workflow import run\nNAMES = ()\n")
    (tmp_path / "pkg" / "flat.py").write_text("x = 1\n")
    graph = module_imports(tmp_path, ("pkg",))
    assert arrows_up(graph, "pkg", ("low", "high")) == ["pkg.flat is in no layer of pkg/",
                                                        "pkg.low.names (low) imports pkg.high (high)",
                                                        "pkg.low.names (low) imports pkg.high.workflow (high)"]


def test_no_module_imports_a_private_name_of_another():
    private = sorted(f"{m} imports {t}.{n}" for m, targets in module_imports(ROOT).items() for t, n in targets
                     if n.startswith("_") and not n.startswith("__"))
    assert private == []


@pytest.fixture
def planted(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import thing\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.c import _helper  # inside a function: counts too\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n_helper = 1\n")
    # A circle through a package's __init__: sub imports pkg.sub.leaf, whose package runs back into d.
    (tmp_path / "pkg" / "d.py").write_text("from pkg.sub.leaf import x\n")
    (tmp_path / "pkg" / "sub").mkdir()
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from pkg.d import y\n")
    (tmp_path / "pkg" / "sub" / "leaf.py").write_text("x = 1\n")
    return tmp_path


def test_a_deliberate_circle_and_private_import_are_found(planted):
    graph = module_imports(planted, ("pkg",))
    assert sorted(import_circles(graph)) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.sub"]]
    assert ("pkg.c", "_helper") in graph["pkg.b"]


def test_no_private_internals_of_other_libraries():
    # ray._private, MLflow's _tracking_client, attributes planted on third-party objects: each
    # would break silently when the library moves it. Found: (file, line).
    found = [(str(path.relative_to(ROOT)), line.strip()) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
             for line in path.read_text(encoding="utf-8").splitlines()
             if any(bad in line for bad in ("._private", "_tracking_client", "._signmix", "._client._"))]
    assert found == []
