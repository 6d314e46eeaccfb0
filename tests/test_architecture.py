"""The package's layers, read from the source: which module imports which (at the top or inside
a function; ``TYPE_CHECKING`` blocks aside). No import cycles, connectors and the provider's
client know nothing of the daemon, and the store's parts never reach up into the daemon."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
Graph = Mapping[str, set[str]]

# Layer rules: a module whose name starts with the key may import, of the project's modules,
# only those whose names start with one of the values (itself included).
ALLOWED: dict[str, tuple[str, ...]] = {
    "orchestrator.connectors": ("orchestrator.connectors", "orchestrator.exceptions"),
    "orchestrator.provider": (
        "orchestrator.provider",
        "orchestrator.exceptions",
        "orchestrator.model",
        "orchestrator.phone",
    ),
    "orchestrator.model": ("orchestrator.model",),
    "orchestrator.exceptions": ("orchestrator.exceptions",),
}
# The daemon's parts: the store (and everything under it) never imports these.
DAEMON = (
    "orchestrator.daemon",
    "orchestrator.intake",
    "orchestrator.api",
    "orchestrator.bus",
    "orchestrator.cli",
    "orchestrator.demo",
    "orchestrator.remote",
)
STORE = ("orchestrator.store",)


def project_modules() -> dict[str, Path]:
    """Every module of ``orchestrator`` and the built-in plugins by dotted name (a package by
    its ``__init__``)."""
    found: dict[str, Path] = {}
    # The built-ins live in plugins/ and are the package orchestrator_plugins.
    for base, package in ((ROOT, "orchestrator"), (ROOT / "plugins", "orchestrator_plugins")):
        for path in (base / package).rglob("*.py"):
            name = ".".join(path.relative_to(base).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(source: str, name: str, modules: Iterable[str]) -> set[str]:
    """The project's modules ``source`` imports (``TYPE_CHECKING`` blocks aside)."""
    known = set(modules)
    named: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    named.add(full if full in known else node.module)

        def visit_Import(self, node: ast.Import) -> None:
            named.update(alias.name for alias in node.names)

    Visitor().visit(ast.parse(source))
    out: set[str] = set()
    for target in named:
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in known and target != name:
            out.add(target)
            # Importing a package's module runs the package's __init__ first, unless the
            # importer is inside that package (then the package is being set up already).
            parts = target.split(".")
            for end in range(1, len(parts)):
                package = ".".join(parts[:end])
                if package in known and not _under(name, (package,)):
                    out.add(package)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, modules)
        for name, path in modules.items()
    }


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(graph: Graph) -> list[str]:
    """Each import that breaks a layer rule, as ``importer -> imported``."""
    out = []
    for name, imported in sorted(graph.items()):
        for layer, allowed in ALLOWED.items():
            if _under(name, (layer,)):
                out += [
                    f"{name} -> {other}"
                    for other in sorted(imported)
                    if other.startswith("orchestrator") and not _under(other, allowed)
                ]
        if _under(name, STORE):
            out += [f"{name} -> {other}" for other in sorted(imported) if _under(other, DAEMON)]
    return out


def test_the_checks_see_what_they_check() -> None:
    """The checker finds a cycle and a layer broken in a made-up graph (so the real tree
    passing means something)."""
    made_up = {
        "orchestrator.connectors.sqlite": {"orchestrator.daemon.supervisor"},
        "orchestrator.daemon.supervisor": {"orchestrator.store"},
        "orchestrator.store": {"orchestrator.daemon.supervisor"},
    }
    assert cycles(made_up) == [["orchestrator.daemon.supervisor", "orchestrator.store"]]
    assert violations(made_up) == [
        "orchestrator.connectors.sqlite -> orchestrator.daemon.supervisor",
        "orchestrator.store -> orchestrator.daemon.supervisor",
    ]
    deferred = imports_of(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from orchestrator.daemon import supervisor\n"
        "def f():\n    from orchestrator import store\n",
        "orchestrator.x",
        ["orchestrator.daemon.supervisor", "orchestrator.store", "orchestrator"],
    )
    assert deferred == {"orchestrator.store"}
    # A module of a package brings in the package's __init__ (the way a package re-exporting
    # a module that imports one of its submodules goes round in a circle).
    through = imports_of(
        "from orchestrator.testing.events import make_event\n",
        "orchestrator.ruletest",
        ["orchestrator", "orchestrator.testing", "orchestrator.testing.events"],
    )
    assert through == {"orchestrator.testing", "orchestrator.testing.events"}


def test_no_module_imports_itself_round_about() -> None:
    assert cycles(import_graph()) == []


def test_each_layer_imports_only_what_it_may() -> None:
    graph = import_graph()
    assert {"orchestrator.connectors.sqlite", "orchestrator.provider.client"} <= set(graph)
    assert violations(graph) == []


@pytest.mark.parametrize("package", ["orchestrator.connectors", "orchestrator.provider"])
def test_lower_layers_know_nothing_of_the_daemon(package: str) -> None:
    graph = import_graph()
    reached: set[str] = set()
    todo = [name for name in graph if _under(name, (package,))]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph[name]
    assert not [name for name in reached if _under(name, DAEMON + STORE)]


#: What plugins may import of the orchestrator: the public kit, nothing else.
KIT = ("orchestrator", "orchestrator.plugin")


def _kit_violations(paths: Iterable[Path]) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            out += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if _under(name, ("orchestrator",)) and name not in KIT
            ]
    return out


def test_plugins_use_only_the_public_kit() -> None:
    """The built-ins and the example plugin import only ``orchestrator`` and
    ``orchestrator.plugin``: what they need, a third-party plugin can have too."""
    built_in = sorted((ROOT / "plugins" / "orchestrator_plugins").glob("*.py"))
    example = sorted((ROOT / "examples" / "orchestrator-teams" / "src").rglob("*.py"))
    assert len(built_in) >= 5 and example
    assert _kit_violations([*built_in, *example]) == []
    made_up = ROOT / "tests" / "stores.py"  # imports the store: not a plugin's business
    assert _kit_violations([made_up])


def stray_errors(modules: Iterable[str]) -> list[str]:
    """Public exception classes defined outside ``orchestrator.exceptions``, or outside the one
    tree. Private ones (``_Name``: control flow inside a module) and the simulator's (it plays
    the provider, not us) are left alone."""
    import importlib
    import inspect

    from orchestrator.exceptions import OrchestratorError

    out = []
    for name in sorted(modules):
        if _under(name, ("orchestrator.provider.simulator",)):
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if not (inspect.isclass(value) and issubclass(value, BaseException)):
                continue
            if value.__module__ != name or attr.startswith("_"):
                continue  # imported from elsewhere, or private
            if name != "orchestrator.exceptions" or not issubclass(value, OrchestratorError):
                out.append(f"{name}.{attr}")
    return out


def test_every_error_is_in_the_one_tree() -> None:
    """Every public error is defined in ``orchestrator/exceptions.py`` and descends from
    ``OrchestratorError``: a caller catching the root catches everything we raise."""
    modules = [
        m for m in project_modules() if m.startswith("orchestrator.") and not m.endswith("__main__")
    ]
    assert stray_errors(modules) == []
    # The check sees a stray: this module defines one.
    assert stray_errors([__name__]) == [f"{__name__}.StrayError"]


class StrayError(Exception):
    """Defined here so the check above has something to find."""
