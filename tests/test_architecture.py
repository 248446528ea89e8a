"""The architecture is a checked contract, not a convention.

* the layers of ``.importlinter`` hold (no module imports from a layer above it);
* every module of the package is placed in a layer (a new module cannot slip by);
* no two modules import each other, directly or through others (no cycle);
* no module grows past about 600 lines (split by job before that);
* wiring happens in ``dilithion/node/init.py`` only: no other module of the
  package registers a tip listener, a message handler or a handshake or
  disconnect listener, or sets another object's sink, delivery observers, peer
  filter or propagation record;
* components take their collaborators, not the ``NodeContext`` (only the
  assembly, the chain loader's tool helper, the node program, the RPC methods
  and the tools read it).
* ``dilithion-lab`` and ``dilithion-diff`` do not import each other: what both
  need lives in the harness, ``dilithion.testing`` (an independence contract).
"""
from __future__ import annotations

import ast
import configparser
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / ".importlinter"
MAX_MODULE_LINES = 600


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("dilithion", exclude_type_checking_imports=True, cache_dir=None)


def layer_modules() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    layers = parser["importlinter:contract:layers"]["layers"]
    return [name.strip() for line in layers.splitlines() for name in line.replace("|", ":").split(":")
            if name.strip()]


def test_import_linter_contracts_are_kept():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(CONFIG), no_cache=True) == 0, \
        "lint-imports reports an upward or sideways import (run `lint-imports` for the chain)"


def test_the_lab_and_the_diff_are_independent(graph):
    """The contract is stated (so ``lint-imports`` above enforces it) and holds."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    independent = [sorted(section["modules"].split()) for name, section in parser.items()
                   if name.startswith("importlinter:contract:")
                   and section.get("type") == "independence"]
    assert ["dilithion.tools.diff", "dilithion.tools.lab"] in independent
    lab, diff = "dilithion.tools.lab", "dilithion.tools.diff"
    sideways = [(a, b) for a, b in ((lab, diff), (diff, lab))
                if graph.chain_exists(importer=a, imported=b, as_packages=True)]
    assert sideways == [], f"imports between the lab and the diff: {sideways}"


def test_every_module_belongs_to_a_layer(graph):
    layers = layer_modules()
    unplaced = sorted(m for m in graph.modules
                      if m != "dilithion" and not any(m == l or m.startswith(l + ".") for l in layers)
                      and not any(l.startswith(m + ".") for l in layers))
    assert unplaced == [], f"modules in no layer of .importlinter: {unplaced}"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
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
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_modules(graph):
    assert _cycles(graph) == []


def test_cycle_detection_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other are reported."""
    pkg = tmp_path / "cyclic_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclic_pkg import b\n")
    (pkg / "b.py").write_text("from cyclic_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("cyclic_pkg", cache_dir=None)) == [["cyclic_pkg.a",
                                                                        "cyclic_pkg.b"]]


def test_no_module_over_the_size_limit():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines())
             for p in (REPO / "dilithion").rglob("*.py")}
    too_big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert too_big == {}, f"split these by job (limit {MAX_MODULE_LINES} lines): {too_big}"


# ---------------------------------------------------------------- wiring in one place
WIRING_MODULE = "dilithion/node/init.py"
#: Methods that register one component on another.
REGISTRATION_METHODS = {"add_tip_listener", "add_handler", "add_handshake_listener",
                        "add_disconnect_listener"}
#: Attributes of a component that another component is plugged into.
REGISTRATION_ATTRIBUTES = {"sink", "delivery_observers", "announce_filters", "propagation"}


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _hook_target(target: ast.AST) -> bool:
    """``x.sink = ...`` or ``x.delivery_observers[k] = ...`` on an object other than ``self``."""
    if isinstance(target, ast.Subscript):
        target = target.value
    return (isinstance(target, ast.Attribute) and target.attr in REGISTRATION_ATTRIBUTES
            and not _is_self(target.value))


def registrations(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for every registration in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in REGISTRATION_METHODS:
            found.append((node.lineno, node.func.attr))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in (target.elts if isinstance(target, ast.Tuple) else [target]):
                    if _hook_target(part):
                        found.append((node.lineno, ast.unparse(part)))
    return sorted(found)


def registrations_outside_init(root: Path) -> dict[str, list[tuple[int, str]]]:
    return {path.relative_to(root).as_posix(): found
            for path in sorted((root / "dilithion").rglob("*.py"))
            if path.relative_to(root).as_posix() != WIRING_MODULE
            and (found := registrations(path.read_text()))}


def test_only_node_init_wires_components():
    assert registrations_outside_init(REPO) == {}, \
        f"register components in {WIRING_MODULE} (NodeAssembly._wire), not in the component"


def test_wiring_check_finds_a_registration_elsewhere(tmp_path):
    """The check above can fail: a component that registers itself is reported."""
    module = tmp_path / "dilithion" / "mining" / "selfwired.py"
    module.parent.mkdir(parents=True)
    module.write_text("class Miner:\n"
                      "    def __init__(self, chain, connman, processor, broadcaster):\n"
                      "        chain.add_tip_listener(self.on_tip)\n"
                      "        connman.sink = processor\n"
                      "        connman.delivery_observers['block'] = self.offer\n"
                      "        self.announce_filters = None\n"
                      "        broadcaster.announce_filters = self.filters\n")
    (tmp_path / "dilithion" / "node").mkdir()
    (tmp_path / "dilithion" / "node" / "init.py").write_text("chain.add_tip_listener(f)\n")
    assert registrations_outside_init(tmp_path) == {"dilithion/mining/selfwired.py": [
        (3, "add_tip_listener"), (4, "connman.sink"), (5, "connman.delivery_observers['block']"),
        (7, "broadcaster.announce_filters")]}


#: Modules that may read components from the ``NodeContext``: the assembly, the tool
#: helper ``open_chain_state``, the context itself and the node program.  The RPC
#: methods and the tools (layers above) are the tools boundary and not checked here.
CONTEXT_READERS = {"dilithion/node/init.py", "dilithion/node/chain_loader.py",
                   "dilithion/node/context.py", "dilithion/node/dilithion_node.py"}
COMPONENT_PACKAGES = ("consensus", "net", "node", "mining")


def test_components_take_collaborators_not_the_node_context():
    offenders = []
    for package in COMPONENT_PACKAGES:
        for path in sorted((REPO / "dilithion" / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name in CONTEXT_READERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.arg) and node.arg == "ctx" \
                        or isinstance(node, ast.Name) and node.id == "NodeContext":
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == [], f"pass the collaborators, not the NodeContext: {offenders}"
