"""The machine-readable divergence catalogue (``docs/cpp-divergences.toml``).

One ``[[divergence]]`` per row of ``docs/CPP-DIVERGENCES.md`` (``id`` is the
row's first column, word for word; :func:`check_markdown` keeps the two in
step), with a one-line ``reason``, ``exercised`` (whether the built-in corpus
makes the C++ node show it; if not, ``not_exercised`` says why), and matchers:

```toml
[[divergence.match]]
kind = "wire"                               # the Difference kind
subject = 'wire\\.version\\.user_agent'       # regex, must match the whole subject
cpp = '"/Dilithion:'                        # optional regex searched in the JSON value
python = '...'                              # optional, likewise
step = '...'                                # optional regex searched in the step name
```

A difference is known when some matcher of some entry matches it; the first
entry in file order wins.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .observe import Difference, dumps

KINDS = ("consensus", "wire", "disconnect", "ban", "rpc", "storage", "process")


class CatalogueError(Exception):
    """A catalogue file that cannot be used; ``str()`` is the one line to print."""


@dataclass
class Matcher:
    kind: str
    subject: re.Pattern
    cpp: re.Pattern | None = None
    python: re.Pattern | None = None
    step: re.Pattern | None = None

    def matches(self, diff: Difference, step_name: str) -> bool:
        return (diff.kind == self.kind and self.subject.fullmatch(diff.subject) is not None
                and (self.cpp is None or self.cpp.search(dumps(diff.cpp)) is not None)
                and (self.python is None or self.python.search(dumps(diff.python)) is not None)
                and (self.step is None or self.step.search(step_name) is not None))


@dataclass
class Entry:
    id: str
    reason: str
    exercised: bool
    not_exercised: str = ""
    matchers: list[Matcher] = field(default_factory=list)


@dataclass
class Catalogue:
    entries: list[Entry]

    def explain(self, diff: Difference, step_name: str) -> Entry | None:
        for entry in self.entries:
            if any(m.matches(diff, step_name) for m in entry.matchers):
                return entry
        return None


def _regex(where: str, key: str, value) -> re.Pattern | None:
    if value is None:
        return None
    try:
        return re.compile(value)
    except (re.error, TypeError) as exc:
        raise CatalogueError(f"{where}: field '{key}': not a regular expression: {exc}") from None


def load_catalogue(path: Path) -> Catalogue:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise CatalogueError(f"catalogue {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"catalogue {path}: not valid TOML: {exc}") from None
    entries = []
    for i, raw in enumerate(data.get("divergence", []), 1):
        where = f"catalogue {path}: divergence {i}"
        if not isinstance(raw.get("id"), str) or not isinstance(raw.get("reason"), str):
            raise CatalogueError(f"{where}: needs string fields 'id' and 'reason'")
        entry = Entry(raw["id"], raw["reason"], bool(raw.get("exercised", False)),
                      str(raw.get("not_exercised", "")))
        if not entry.exercised and not entry.not_exercised:
            raise CatalogueError(f"{where} ({entry.id}): 'exercised = false' needs 'not_exercised'")
        for m in raw.get("match", []):
            if m.get("kind") not in KINDS:
                raise CatalogueError(f"{where} ({entry.id}): field 'kind': one of {KINDS}")
            entry.matchers.append(Matcher(m["kind"], _regex(where, "subject", m.get("subject")),
                                          _regex(where, "cpp", m.get("cpp")),
                                          _regex(where, "python", m.get("python")),
                                          _regex(where, "step", m.get("step"))))
            if entry.matchers[-1].subject is None:
                raise CatalogueError(f"{where} ({entry.id}): a matcher needs 'subject'")
        entries.append(entry)
    return Catalogue(entries)


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
