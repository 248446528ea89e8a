"""The machine-readable divergence catalogue (``docs/cpp-divergences.toml``).

One ``[[divergence]]`` per row of ``docs/CPP-DIVERGENCES.md`` (``id`` is the
row's first column, word for word; :func:`check_markdown` keeps the two in
step), with a one-line ``reason``, ``exercised`` (whether the built-in corpus or a
committed fuzz finding, ``data/found/``, makes the C++ node show it; if not,
``not_exercised`` says why), matchers and,
for an exercised entry, the cases recorded from a real C++ run:

```toml
[[divergence.match]]
on = 'send ping bad-magic|send block bad-size'   # step signatures (signature.py), fullmatch
kind = 'wire'                                    # the Difference kind
subject = 'wire\\.no-reply'                       # fullmatch of the subject
cpp = 'true'                                     # fullmatch of dumps(C++ side's value)
python = 'false'                                 # fullmatch of dumps(our side's value)

[[divergence.case]]                              # one observed difference, word for word
on = 'send ping bad-magic'
kind = 'wire'
subject = 'wire.no-reply'
cpp = 'true'                                     # dumps() of the value, canonical JSON
python = 'false'
```

Every matcher field is required: an entry explains a difference only on the
steps, subjects and values it names.  A difference is known when some matcher
of some entry matches it; the first entry in file order wins (the tests hold
every recorded case to be explained by its own entry).
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .observe import Difference, dumps

KINDS = ("consensus", "wire", "disconnect", "ban", "rpc", "storage", "process")
#: Every field a matcher must have (all regular expressions but ``kind``), and a case.
MATCH_FIELDS = ("on", "kind", "subject", "cpp", "python")
CASE_FIELDS = MATCH_FIELDS


class CatalogueError(Exception):
    """A catalogue file that cannot be used; ``str()`` is the one line to print."""


@dataclass
class Matcher:
    """Which differences an entry explains: every field must fullmatch."""
    on: re.Pattern
    kind: str
    subject: re.Pattern
    cpp: re.Pattern
    python: re.Pattern

    def matches(self, diff: Difference, on: str) -> bool:
        return (diff.kind == self.kind and self.on.fullmatch(on) is not None
                and self.subject.fullmatch(diff.subject) is not None
                and self.cpp.fullmatch(dumps(diff.cpp)) is not None
                and self.python.fullmatch(dumps(diff.python)) is not None)


@dataclass
class Case:
    """One difference a real C++ run showed, with the signature of its step."""
    on: str
    kind: str
    subject: str
    cpp: str                             # dumps() of the value
    python: str

    def difference(self) -> Difference:
        return Difference(self.kind, self.subject, json.loads(self.cpp), json.loads(self.python))


@dataclass
class Entry:
    id: str
    reason: str
    exercised: bool
    not_exercised: str = ""
    matchers: list[Matcher] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)


@dataclass
class Catalogue:
    entries: list[Entry]

    def explain(self, diff: Difference, on: str) -> Entry | None:
        """The first entry with a matcher for ``diff`` seen on a step of signature ``on``
        (:meth:`dilithion.tools.diff.signature.StepSignatures.of`)."""
        for entry in self.entries:
            if any(m.matches(diff, on) for m in entry.matchers):
                return entry
        return None


def _regex(where: str, key: str, value) -> re.Pattern:
    try:
        return re.compile(value)
    except (re.error, TypeError) as exc:
        raise CatalogueError(f"{where}: field '{key}': not a regular expression: {exc}") from None


def _fields(where: str, raw, required: tuple[str, ...]) -> dict:
    """The table's fields, all present, strings, and nothing else."""
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where}: must be a table")
    for key in required:
        if not isinstance(raw.get(key), str):
            raise CatalogueError(f"{where}: field '{key}': missing (every one of"
                                 f" {', '.join(required)} is required, as a string)")
    unknown = sorted(set(raw) - set(required))
    if unknown:
        raise CatalogueError(f"{where}: field '{unknown[0]}': unknown field")
    if raw["kind"] not in KINDS:
        raise CatalogueError(f"{where}: field 'kind': one of {', '.join(KINDS)}")
    return raw


def _matcher(where: str, raw) -> Matcher:
    m = _fields(where, raw, MATCH_FIELDS)
    return Matcher(_regex(where, "on", m["on"]), m["kind"], _regex(where, "subject", m["subject"]),
                   _regex(where, "cpp", m["cpp"]), _regex(where, "python", m["python"]))


def _case(where: str, raw) -> Case:
    c = _fields(where, raw, CASE_FIELDS)
    for side in ("cpp", "python"):
        try:
            canonical = dumps(json.loads(c[side]))
        except ValueError:
            raise CatalogueError(f"{where}: field '{side}': not JSON") from None
        if canonical != c[side]:
            raise CatalogueError(f"{where}: field '{side}': not canonical JSON (write {canonical})")
    return Case(c["on"], c["kind"], c["subject"], c["cpp"], c["python"])


def _entry(where: str, raw) -> Entry:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) \
            or not isinstance(raw.get("reason"), str):
        raise CatalogueError(f"{where}: needs string fields 'id' and 'reason'")
    entry = Entry(raw["id"], raw["reason"], bool(raw.get("exercised", False)),
                  str(raw.get("not_exercised", "")))
    where = f"{where} ({entry.id})"
    if not entry.exercised and not entry.not_exercised:
        raise CatalogueError(f"{where}: 'exercised = false' needs 'not_exercised'")
    entry.matchers = [_matcher(f"{where}: match {i}", m)
                      for i, m in enumerate(raw.get("match", []), 1)]
    entry.cases = [_case(f"{where}: case {i}", c) for i, c in enumerate(raw.get("case", []), 1)]
    if entry.exercised and not (entry.matchers and entry.cases):
        raise CatalogueError(f"{where}: 'exercised = true' needs a [[divergence.match]] and a"
                             f" recorded [[divergence.case]]")
    if not entry.exercised and (entry.matchers or entry.cases):
        raise CatalogueError(f"{where}: 'exercised = false' takes no matchers or cases")
    return entry


def load_catalogue(path: Path) -> Catalogue:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise CatalogueError(f"catalogue {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"catalogue {path}: not valid TOML: {exc}") from None
    return Catalogue([_entry(f"catalogue {path}: divergence {i}", raw)
                      for i, raw in enumerate(data.get("divergence", []), 1)])


def markdown_ids(markdown: str) -> list[str]:
    """The first column of every table row of ``CPP-DIVERGENCES.md``."""
    ids = []
    for line in markdown.splitlines():
        cells = line.split("|")
        if line.startswith("| ") and len(cells) > 2:
            first = cells[1].strip()
            if first not in ("ID", "---"):
                ids.append(first)
    return ids


def check_markdown(catalogue: Catalogue, markdown: str) -> list[str]:
    """Problems keeping the table and the catalogue from describing the same rows."""
    rows = markdown_ids(markdown)
    ids = [e.id for e in catalogue.entries]
    problems = [f"row '{r}' has no catalogue entry" for r in rows if r not in ids]
    problems += [f"catalogue entry '{i}' has no row in the table" for i in ids if i not in rows]
    problems += [f"catalogue entry '{i}' appears twice" for i in sorted(set(ids))
                 if ids.count(i) > 1]
    return problems
