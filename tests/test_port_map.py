"""``docs/PORT-MAP.md`` covers every C++ file and names only Python objects that exist.

The map has one ``### <C++ files> -> <Python modules>`` section per C++ file of
``src/{net,node,miner,rpc,consensus}`` at ``0b7ac867`` and one
``C++ | Python | note`` table per section.  A Python cell is either
``not ported: <reason>`` or starts with one backticked dotted name; this test
imports the longest importable module prefix of each name and looks the rest up
as attributes (dataclass fields and annotated class attributes count, since they
are not class attributes when they have no default).  A Python class, function,
method or property mapped from a C++ name it is not the mechanical translation of
must name that C++ name in its docstring (rule in
:func:`test_renamed_objects_name_their_cpp_original`).  The C++ repository is not
needed: the expected file list is written out below.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "PORT-MAP.md"

#: Every file under the five ported directories at 0b7ac867 (``git ls-tree``).
CPP_FILES = frozenset({
    "src/consensus/chain.cpp", "src/consensus/chain.h",
    "src/consensus/fees.cpp", "src/consensus/fees.h",
    "src/consensus/params.h",
    "src/consensus/pow.cpp", "src/consensus/pow.h",
    "src/consensus/tx_validation.cpp", "src/consensus/tx_validation.h",
    "src/consensus/validation.cpp", "src/consensus/validation.h",
    "src/miner/controller.cpp", "src/miner/controller.h",
    "src/miner/dilithion-miner.cpp",
    "src/net/dns.cpp", "src/net/dns.h",
    "src/net/net.cpp", "src/net/net.h",
    "src/net/peers.cpp", "src/net/peers.h",
    "src/net/protocol.cpp", "src/net/protocol.h",
    "src/net/serialize.cpp", "src/net/serialize.h",
    "src/net/socket.cpp", "src/net/socket.h",
    "src/net/tx_relay.cpp", "src/net/tx_relay.h",
    "src/node/block_index.cpp", "src/node/block_index.h",
    "src/node/blockchain_storage.cpp", "src/node/blockchain_storage.h",
    "src/node/dilithion-node.cpp",
    "src/node/genesis.cpp", "src/node/genesis.h",
    "src/node/mempool.cpp", "src/node/mempool.h",
    "src/node/utxo_set.cpp", "src/node/utxo_set.h",
    "src/rpc/auth.cpp", "src/rpc/auth.h",
    "src/rpc/ratelimiter.cpp", "src/rpc/ratelimiter.h",
    "src/rpc/server.cpp", "src/rpc/server.h",
})

HEADING = re.compile(r"^###\s+(?P<cpp>.+?)\s+->\s+(?P<py>.+?)\s*$")
NOT_PORTED = re.compile(r"^not ported:\s*\S")
FIRST_NAME = re.compile(r"`([^`]*)`")
DOTTED = re.compile(r"dilithion(\.[A-Za-z_][A-Za-z0-9_]*)*")
MODULE_PATH = re.compile(r"dilithion(/[A-Za-z_][A-Za-z0-9_]*)*\.py")


@dataclasses.dataclass
class Row:
    line: int
    section: str
    cpp: str
    python: str


@dataclasses.dataclass
class Section:
    line: int
    title: str
    cpp_files: list[str]
    py_side: str
    rows: list[Row] = dataclasses.field(default_factory=list)


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; a ``|`` inside backticks does not split."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") else body
    cells, current, in_code = [], [], False
    for ch in body:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    cells.append("".join(current).strip())
    return cells


@functools.lru_cache(maxsize=1)
def parse() -> tuple[list[Section], list[Row]]:
    """Sections with their rows, and every row of every table with a ``Python`` column."""
    sections: list[Section] = []
    rows: list[Row] = []
    current: Section | None = None
    title = ""
    header: list[str] | None = None
    for number, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("#"):
            header = None
            title = line.lstrip("#").strip()
            m = HEADING.match(line)
            if m:
                current = Section(number, title, [f.strip() for f in m["cpp"].split(",")],
                                  m["py"])
                sections.append(current)
            elif line.startswith("## ") or line.startswith("# "):
                current = None
            continue
        if not line.lstrip().startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the separator row
        if "Python" not in header:
            continue
        py = cells[header.index("Python")] if header.index("Python") < len(cells) else ""
        cpp = cells[header.index("C++")] if "C++" in header and header.index("C++") < len(cells) else ""
        row = Row(number, title, cpp, py)
        rows.append(row)
        if current is not None and title == current.title:
            current.rows.append(row)
    return sections, rows


def _declared_field(cls: type, name: str) -> bool:
    """A dataclass field or an annotated class attribute (it may have no default)."""
    if dataclasses.is_dataclass(cls) and any(f.name == name for f in dataclasses.fields(cls)):
        return True
    for klass in cls.__mro__:
        if name in getattr(klass, "__dataclass_fields__", {}):
            return True
        try:
            if name in inspect.get_annotations(klass):
                return True
        except Exception:  # noqa: BLE001 - a broken annotation is simply "not declared"
            pass
    return False


def resolve(name: str) -> str | None:
    """``None`` if ``name`` exists, else why not."""
    parts = name.split(".")
    obj = None
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            return f"importing {module_name} failed: {exc!r}"
        except Exception as exc:  # noqa: BLE001 - report, do not crash the collection
            return f"importing {module_name} failed: {exc!r}"
        break
    if obj is None:
        return "no importable module prefix"
    rest = parts[i:]
    for depth, attr in enumerate(rest):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            continue
        if isinstance(obj, type) and _declared_field(obj, attr) and depth == len(rest) - 1:
            return None
        return f"{'.'.join(parts[:i + depth])} has no attribute {attr!r}"
    return None


def python_names() -> list[tuple[str, str]]:
    """``(dotted name, where)`` for every mapped cell and every module in a heading."""
    sections, rows = parse()
    names = []
    for row in rows:
        if NOT_PORTED.match(row.python):
            continue
        m = FIRST_NAME.search(row.python)
        if m and row.python.startswith("`"):
            names.append((m.group(1), f"line {row.line} ({row.cpp})"))
    for section in sections:
        for target in section.py_side.split(","):
            target = target.strip()
            if MODULE_PATH.fullmatch(target):
                names.append((target[:-3].replace("/", "."), f"line {section.line} (heading)"))
    return names


def test_sections_cover_exactly_the_cpp_files():
    sections, _ = parse()
    listed = [f for s in sections for f in s.cpp_files]
    duplicates = sorted({f for f in listed if listed.count(f) > 1})
    assert not duplicates, f"C++ files with more than one section: {duplicates}"
    assert set(listed) == CPP_FILES, (
        f"missing sections: {sorted(CPP_FILES - set(listed))}; "
        f"unknown files: {sorted(set(listed) - CPP_FILES)}")


def test_section_headings_name_modules_or_say_not_ported():
    sections, _ = parse()
    bad = []
    for s in sections:
        targets = [t.strip() for t in s.py_side.split(",")]
        if s.py_side.strip() == "not ported":
            continue
        bad += [f"line {s.line}: {t!r}" for t in targets if not MODULE_PATH.fullmatch(t)]
    assert not bad, "heading targets must be dilithion/...py paths or 'not ported':\n" + "\n".join(bad)


def test_every_section_has_a_table_with_rows():
    sections, _ = parse()
    empty = [f"line {s.line}: {s.title}" for s in sections if not s.rows]
    assert not empty, "sections without mapped names:\n" + "\n".join(empty)


def test_every_python_cell_is_a_name_or_not_ported():
    _, rows = parse()
    assert len(rows) > 300, f"only {len(rows)} rows parsed: is the table format intact?"
    bad = []
    for row in rows:
        text = row.python
        if NOT_PORTED.match(text):
            continue
        m = FIRST_NAME.match(text)
        if not m or not DOTTED.fullmatch(m.group(1)):
            bad.append(f"line {row.line} ({row.cpp or '?'}): {text!r}")
    assert not bad, ("Python cells must start with one backticked dotted `dilithion...` name "
                     "or read 'not ported: <reason>':\n" + "\n".join(bad))


def test_every_python_name_exists():
    missing = {}
    for name, where in python_names():
        if name in missing:
            continue
        why = resolve(name)
        if why is not None:
            missing[name] = f"{name}  [{where}]: {why}"
    assert not missing, ("PORT-MAP.md names Python objects that do not exist:\n"
                         + "\n".join(missing[n] for n in sorted(missing)))


# --- renamed objects name their C++ original in their docstring --------------

#: A C++ cell that is a name list: backticked names separated by commas, then
#: at most one parenthesised remark.  Any other cell is a description.
NAME_LIST = re.compile(r"^(?P<names>`[^`]+`(?:\s*,\s*`[^`]+`)*)(?:\s*\([^()]*\))?$")
CPP_KEYWORD = re.compile(r"^(?:class|struct|enum|static|namespace)\s+")
CPP_CONSTRUCTOR = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\([^()]*\)$")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Mixed-case acronyms that snake_case keeps as one word (``IsIPv4`` -> ``is_ipv4``).
ONE_WORD = {"IPv4": "Ipv4", "IPv6": "Ipv6"}


def snake_case(name: str) -> str:
    """``GetUTXOCount`` -> ``get_utxo_count``; ``RPC_GetBlock`` -> ``rpc_get_block``."""
    for word, replacement in ONE_WORD.items():
        name = name.replace(word, replacement)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return name.lower()


def cpp_names(cell: str) -> list[tuple[str, bool]] | None:
    """``(identifier, is_constructor)`` per name of a name-list cell; ``None`` for a description.

    In each backticked name a leading ``class``/``struct``/``enum``/``static``/
    ``namespace`` and any ``Scope::`` qualifiers are dropped, and ``Name(args)`` is
    the constructor of ``Name``.  What is left must be a bare identifier.
    """
    m = NAME_LIST.match(cell)
    if not m:
        return None
    names = []
    for span in re.findall(r"`([^`]+)`", m["names"]):
        text = CPP_KEYWORD.sub("", span.strip())
        ctor = CPP_CONSTRUCTOR.match(text)
        text = (ctor["name"] if ctor else text).split("::")[-1]
        if not IDENTIFIER.fullmatch(text):
            return None
        names.append((text, bool(ctor)))
    return names


def _lookup(dotted: str) -> tuple[str, object] | None:
    """The attribute name and the object as stored (a ``property``, not its value), or ``None``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        break
    else:
        return None
    rest = parts[i:]
    if not rest:
        return None  # a module
    for attr in rest[:-1]:
        owner = getattr(owner, attr, None)
    try:
        if isinstance(owner, type):
            return rest[-1], inspect.getattr_static(owner, rest[-1])
        return rest[-1], getattr(owner, rest[-1])
    except AttributeError:
        return None  # a dataclass field or annotated attribute without a default


def code_object(dotted: str) -> tuple[str, str, object, str | None] | None:
    """``(kind, attribute name, identity, docstring)`` of a class, function, method or
    property; ``None`` for modules, fields, constants and other data."""
    found = _lookup(dotted)
    if found is None:
        return None
    attr, obj = found
    if isinstance(obj, type):
        return "class", attr, obj, obj.__dict__.get("__doc__")
    if isinstance(obj, property):
        return "function", attr, obj, obj.fget.__doc__ if obj.fget else None
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    callback = getattr(obj, "callback", None)  # a click command: the decorated function
    if not inspect.isroutine(obj) and inspect.isfunction(callback):
        obj = callback
    if inspect.isroutine(obj):
        return "function", attr, obj, obj.__doc__
    return None


def mechanical(cpp: str, constructor: bool, kind: str) -> str:
    """The Python name the porting rule gives ``cpp``."""
    if constructor:
        return "__init__"
    if kind == "class":
        return cpp[1:] if re.match(r"C[A-Z]", cpp) else cpp
    return snake_case(cpp)


def renamed_names() -> dict[int, tuple[str, str | None, dict[str, list[int]]]]:
    """Per Python object: its first mapped dotted name, its docstring and the C++
    names mapped to it under another name (with the map lines naming them)."""
    _, rows = parse()
    out: dict[int, tuple[str, str | None, dict[str, list[int]]]] = {}
    for row in rows:
        if NOT_PORTED.match(row.python) or not row.python.startswith("`"):
            continue
        names = cpp_names(row.cpp)
        if names is None:
            continue
        dotted = FIRST_NAME.match(row.python).group(1)
        found = code_object(dotted)
        if found is None:
            continue
        kind, attr, obj, doc = found
        for cpp, constructor in names:
            expected = mechanical(cpp, constructor, kind)
            if attr == expected or (not constructor and attr.lstrip("_") == expected):
                continue
            entry = out.setdefault(id(obj), (dotted, doc, {}))
            entry[2].setdefault(cpp, []).append(row.line)
    return out


def _mentions(doc: str | None, identifier: str) -> bool:
    """``identifier`` occurs in ``doc`` as a whole word (``Error`` in ``RPCResponse::Error``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(identifier)}(?![A-Za-z0-9_])",
                     doc or "") is not None


def test_renamed_objects_name_their_cpp_original():
    """A Python class, function, method or property whose name is not the mechanical
    translation of the C++ name mapped to it has that C++ name in its docstring, so
    a grep for the C++ name finds the Python code.

    * Rows: those whose Python cell is a class, function, method or property (a
      property counts with its getter's docstring, a click command with its
      function's).  Modules, dataclass fields, constants and other attributes are
      skipped, as are ``not ported`` rows.
    * C++ cells: only name lists count: one or more backticked names separated by
      commas, then at most one parenthesised remark without nested parentheses:
      "`ProcessInvMessage` (private)", "`struct Stats`, `GetStats`",
      "`CRPCServer(port)`".  In each name a leading class/struct/enum/static/
      namespace and any ``Scope::`` qualifiers are dropped, and ``Name(args)`` is a
      constructor of ``Name``; what is left must be a bare identifier.  Any other
      cell is a description and is skipped: "`SetInvHandler` lambda (...)",
      "`CDataStream` constructors (...)", "`main`: main loop",
      "`VersionHandler` ... `TxHandler` (handler typedefs)".
    * Mechanical translation: a constructor becomes ``__init__``; for a Python
      class, the C++ name without a leading ``C`` before a capital (``CPeerManager``
      -> ``PeerManager``); for anything else its snake_case (``GetConnectedPeers`` ->
      ``get_connected_peers``, ``IPv4``/``IPv6`` one word), leading underscores on
      the Python name allowed.
    * Any other Python name is a rename: every C++ name mapped to the object that
      way must appear in its docstring as a bare identifier (``ConnectToPeer``).
    """
    renamed = renamed_names()
    count = sum(len(names) for _, _, names in renamed.values())
    assert count > 150, f"only {count} renamed C++ names found: is the table format intact?"
    offenders = []
    for dotted, doc, names in renamed.values():
        missing = [f"{cpp} (line {', '.join(map(str, lines))})"
                   for cpp, lines in sorted(names.items()) if not _mentions(doc, cpp)]
        if missing:
            offenders.append(f"{dotted}: {'; '.join(missing)}")
    assert not offenders, (f"{len(offenders)} renamed Python objects do not name their C++ "
                           "original in the docstring:\n" + "\n".join(sorted(offenders)))
