"""Each ``dilithion/net`` module owns its state: no class reaches into another module's privates.

Issue 22 found the receive path written as a mixin of ``ConnectionManager``
(``net_receive.py`` used ten of its host's private members: ``self._close``,
``self._guarded``, ``self._unframed`` ...) and misbehaviour scoring as a
function of ``banman`` that was the body of a ``ConnectionManager`` method.
Collaborators now get what they need as named constructor arguments and
callbacks.  This test keeps it so, by reading the source (no imports):

* a module *defines* a private name ``_x`` when it has a function or method
  ``_x``, assigns ``self._x`` / ``cls._x``, or binds ``_x`` in a class body or
  at module level;
* a module *reaches* into another module when it reads or writes ``obj._x``
  (any ``obj``, ``self`` included: that is how a mixin reaches into its host)
  for a ``_x`` it does not define itself but another ``dilithion/net`` module
  does.

Privates of the standard library (``namedtuple._replace``) are no net module's
and do not count.  A name defined in both modules is not caught; the check is a
tripwire for the pattern, not a type checker.
"""
from __future__ import annotations

import ast
from pathlib import Path

NET = Path(__file__).resolve().parent.parent / "dilithion" / "net"

#: ``module: {private name, ...}`` reaches that are allowed, each with its reason.
ALLOWED: dict[str, set[str]] = {}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
    for scope in [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for stmt in scope.body:
            targets = (stmt.targets if isinstance(stmt, ast.Assign) else
                       [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in stmt.names)
    return {n for n in names if _private(n)}


def reaches(net_dir: Path = NET) -> list[str]:
    """``module:line obj._name`` for every reach into another net module's private."""
    trees = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(net_dir.glob("*.py"))}
    defined = {name: _defined(tree) for name, tree in trees.items()}
    found = []
    for module, tree in trees.items():
        elsewhere = set().union(*(d for m, d in defined.items() if m != module))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            name = node.attr
            if name in defined[module] or name not in elsewhere \
                    or name in ALLOWED.get(module, set()):
                continue
            owners = sorted(m for m, d in defined.items() if m != module and name in d)
            found.append((module, node.lineno, f"{module}.py:{node.lineno} {ast.unparse(node)} "
                                                f"(private of {', '.join(owners)})"))
    return [text for _, _, text in sorted(found)]


def test_no_net_module_reaches_into_another_modules_privates():
    found = reaches()
    assert not found, ("classes of dilithion/net reach into private members of another "
                       "module's classes (pass a collaborator or a callback instead):\n"
                       + "\n".join(found))


def test_the_check_sees_a_mixin_and_a_foreign_private(tmp_path):
    """The tripwire trips: a mixin using its host's ``self._close`` and a function
    reading ``connman._conns`` are both reported."""
    (tmp_path / "host.py").write_text(
        "class Host(Mixin):\n"
        "    def __init__(self):\n"
        "        self._conns = {}\n"
        "    def _close(self, conn):\n"
        "        pass\n")
    (tmp_path / "mixin.py").write_text(
        "class Mixin:\n"
        "    def _own(self):\n"
        "        self._close(None)\n"
        "        return self._own\n"
        "def count(connman):\n"
        "    return len(connman._conns)\n")
    found = reaches(tmp_path)
    assert [f.split(" (")[0] for f in found] == ["mixin.py:3 self._close",
                                                 "mixin.py:6 connman._conns"], found
