"""The package layout of docs/architecture.md, checked on the source: imports run one way.

Every module of smtpmon/ is read with `ast` (nothing is imported) and its imports of smtpmon
modules become the edges of a graph. The tests fail on an import cycle between modules, on an
import from a lower layer to a higher one, on PyYAML or prometheus_client in the engine's
packages, and on a package that is in no layer (whoever adds a package places it below).
Imports inside functions and under `if TYPE_CHECKING:` count: they are dependencies too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "smtpmon"

# Low to high: a module may import from its own layer and the layers before it, never after.
# Packages that share a layer must not form a cycle (test_no_import_cycle).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("smtpmon", "smtpmon.build", "smtpmon.logs"),  # the version, the git revision; every layer logs
    ("smtpmon.net",),  # the hub (event loop) and the name-lookup pool
    ("smtpmon.smtp",),  # the probe engine: reply codes, results, client, session, transcript
    ("smtpmon.dns", "smtpmon.mailtls", "smtpmon.maillog"),  # issues 17, 18, 19
    ("smtpmon.config",),  # YAML and web-config files, the one host:port grammar
    ("smtpmon.exposition",),  # store, text exposition, self-metrics
    ("smtpmon.web",),  # wire, server, routes, /probe, landing page
    ("smtpmon.runtime",),  # scheduler, daemon
    ("smtpmon.commands",),  # run, probe, explain, check-config
    ("smtpmon.cli", "smtpmon.__main__"),
)
# Packages that take plain values and return frozen ones: no file formats, no Prometheus.
ENGINE_PACKAGES = ("smtpmon.net", "smtpmon.smtp", "smtpmon.dns", "smtpmon.mailtls", "smtpmon.maillog")
ENGINE_FORBIDDEN = ("yaml", "prometheus_client")


def module_names(root: Path) -> dict[str, Path]:
    """Every module under `root` (the smtpmon/ directory) by dotted name; a package is its
    __init__.py."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the file, anywhere in it. Names under the
    package are resolved to the module imported: `from smtpmon.config import load` is
    smtpmon.config.load, `from smtpmon import __version__` is smtpmon."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in modules else base, node.lineno))
    return found


def internal(imported: str, modules: dict[str, Path]) -> str | None:
    """The smtpmon module an import names (itself or the package it is in), else None."""
    while imported and imported not in modules:
        imported = imported.rpartition(".")[0]
    return imported or None


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the most specific entry containing `module`, None if none does."""
    best: tuple[int, int] | None = None
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or module.startswith(entry + ".") and entry != "smtpmon":
                if best is None or len(entry) > best[1]:
                    best = (index, len(entry))
    return None if best is None else best[0]


def graph(root: Path) -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]], dict[str, list[tuple[str, int]]]]:
    """Modules, their imports of smtpmon modules, and their other imports (top-level names)."""
    modules = module_names(root)
    edges, external = {}, {}
    for name, path in modules.items():
        edges[name], external[name] = [], []
        for imported, line in imports_of(name, path, modules):
            target = internal(imported, modules) if imported.split(".")[0] == root.name else None
            if target is not None:
                if target != name:
                    edges[name].append((target, line))
            else:
                external[name].append((imported.split(".")[0], line))
    return modules, edges, external


def unplaced_packages(root: Path) -> list[str]:
    modules, _, _ = graph(root)
    return sorted({name for name in modules if layer_of(name) is None})


def upward_imports(root: Path) -> list[str]:
    modules, edges, _ = graph(root)
    problems = []
    for name, targets in edges.items():
        for target, line in targets:
            low, high = layer_of(name), layer_of(target)
            if low is not None and high is not None and high > low:
                problems.append(f"{modules[name].relative_to(root.parent)}:{line}: {name} "
                                f"(layer {low}) imports {target} (layer {high})")
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), as a sorted list."""
    _, edges, _ = graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return cycles


def forbidden_engine_imports(root: Path) -> list[str]:
    modules, _, external = graph(root)
    problems = []
    for name, imported in external.items():
        if not any(name == package or name.startswith(package + ".") for package in ENGINE_PACKAGES):
            continue
        for top, line in imported:
            if top in ENGINE_FORBIDDEN:
                problems.append(f"{modules[name].relative_to(root.parent)}:{line}: {name} imports {top}")
    return problems


# -- the checks, on smtpmon/ ------------------------------------------------------------------

def test_every_package_has_a_layer():
    assert unplaced_packages(SOURCE) == [], (
        "place these in LAYERS (tests/test_architecture.py) and in docs/architecture.md"
    )


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert upward_imports(SOURCE) == []


def test_no_import_cycle():
    assert import_cycles(SOURCE) == []


def test_the_engine_imports_neither_yaml_nor_prometheus_client():
    assert forbidden_engine_imports(SOURCE) == []


def test_the_graph_sees_the_imports_it_checks():
    """The checks above pass on an empty graph too: make sure this one is the real one."""
    modules, edges, external = graph(SOURCE)
    assert "smtpmon.smtp.results" in {target for target, _ in edges["smtpmon.smtp.replycodes"]}
    assert "smtpmon.exposition.metrics" in {target for target, _ in edges["smtpmon.exposition.store"]}
    assert "yaml" in {top for top, _ in external["smtpmon.config.yamldoc"]}
    assert "prometheus_client" in {top for top, _ in external["smtpmon.exposition.metrics"]}


# -- the checks catch what they are for, on a small tree written here -------------------------

def write_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "smtpmon"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


GOOD = {
    "logs.py": "",
    "net/__init__.py": "", "net/hub.py": "from smtpmon.logs import x\n",
    "smtp/__init__.py": "", "smtp/session.py": "from smtpmon.net.hub import Hub\n",
    "config/__init__.py": "", "config/load.py": "import yaml\nfrom smtpmon.smtp import session\n",
}


def test_a_good_tree_passes(tmp_path):
    root = write_tree(tmp_path, GOOD)
    assert (unplaced_packages(root), upward_imports(root), import_cycles(root),
            forbidden_engine_imports(root)) == ([], [], [], [])


@pytest.mark.parametrize("statement", [
    "from smtpmon.config.load import Config",
    "from smtpmon.config import load",
    "from ..config import load",
    "import smtpmon.config.load",
    "def later():\n    from smtpmon.config import load\n",
])
def test_an_import_from_the_engine_up_to_config_is_caught(tmp_path, statement):
    root = write_tree(tmp_path, {**GOOD, "smtp/session.py": statement + "\n"})
    [problem] = upward_imports(root)
    assert "smtpmon.smtp.session (layer 2) imports smtpmon.config" in problem


def test_a_cycle_is_caught(tmp_path):
    root = write_tree(tmp_path, {**GOOD, "smtp/results.py": "from smtpmon.smtp.session import x\n",
                                 "smtp/session.py": "from typing import TYPE_CHECKING\n"
                                                    "if TYPE_CHECKING:\n"
                                                    "    from smtpmon.smtp.results import y\n"})
    assert import_cycles(root) == [["smtpmon.smtp.results", "smtpmon.smtp.session"]]


@pytest.mark.parametrize("statement", ["import yaml", "from prometheus_client import Gauge",
                                       "import prometheus_client.utils"])
def test_yaml_or_prometheus_client_in_the_engine_is_caught(tmp_path, statement):
    root = write_tree(tmp_path, {**GOOD, "net/lookups.py": statement + "\n"})
    [problem] = forbidden_engine_imports(root)
    assert "smtpmon.net.lookups imports" in problem


def test_a_package_without_a_layer_is_named(tmp_path):
    root = write_tree(tmp_path, {**GOOD, "newthing/__init__.py": "", "newthing/a.py": ""})
    assert unplaced_packages(root) == ["smtpmon.newthing", "smtpmon.newthing.a"]
