"""``include:``: read a rule file and the files it includes into one merged document.

``include`` (top level of any rule file) is a list of paths relative to the including file:
a file, or a directory whose ``*.yaml``/``*.yml`` files are read in lexical order. Included
files may hold ``include``, ``lists``, ``conditions``, ``calendars``, ``teams``,
``categories`` and ``rules``; everything else (``version``, ``settings``, ``defaults``,
``sla``) belongs to the main file only (E100).

Order: files are read depth first; each file's includes come before the file itself, so
included rules are placed, in include order, *before* the including file's own rules (the
main file's rules are last). A file reached twice is read once; a file that includes itself,
directly or not, is an error (E114). Names of lists, conditions, calendars and teams must be
unique across files (E113), rule ids too (E111, checked by the loader); both positions are
named. Every node keeps its own file and position, so problems in an included file carry
that file's name, line and column (``MergedDocument.problem``). The included directories are
listed too (``Tree.dirs``), so a watcher can notice a file added to or removed from one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rules.source import Document, Problem, YamlFileError, load_yaml, position
from rules.yaml12 import YamlMap, YamlSeq

__all__ = ["INCLUDED_KEYS", "SUFFIXES", "MergedDocument", "Tree", "listing", "read_files"]

INCLUDED_KEYS = ("include", "lists", "conditions", "calendars", "teams", "categories", "rules")
SUFFIXES = (".yaml", ".yml")  # the files an included directory gives
_NAMED = ("lists", "conditions", "calendars", "teams")
_KIND = {"lists": "list", "conditions": "condition", "calendars": "calendar", "teams": "team"}


@dataclass(frozen=True)
class MergedDocument(Document):
    """The main document with the sections of included files merged in.

    ``origins`` maps (section, name or merged index) to the document that wrote the entry;
    problems under it are reported in that document's file.
    """

    origins: dict[tuple[str | int, ...], Document] = field(default_factory=dict)
    docs: dict[str, Document] = field(default_factory=dict)

    def origin(self, path: Any) -> Document:
        """The document the node at ``path`` was written in."""
        if len(path) >= 2:
            found = self.origins.get((path[0], path[1]))
            if found is not None:
                return found
        return self.origins.get(tuple(path[:1]), self)

    def by_file(self, file: str) -> Document:
        """The document read from ``file``."""
        return self.docs.get(file, self)


@dataclass
class _Reader:
    """Reads the include tree depth first; problems go to ``out``."""

    out: list[Problem]
    order: list[Document] = field(default_factory=list)  # includes before includers
    files: list[str] = field(default_factory=list)  # every file read, main first
    dirs: list[str] = field(default_factory=list)  # every directory included, first seen first
    _stack: list[str] = field(default_factory=list)  # resolved paths being read
    _seen: set[str] = field(default_factory=set)  # resolved paths read

    def visit(self, doc: Document, main: bool) -> None:
        self.files.append(doc.file)
        self._stack.append(_key(doc.file))
        self._seen.add(self._stack[-1])
        data = doc.data
        if not main and data is not None and not isinstance(data, dict):
            msg = f"an included rule file is a mapping with {', '.join(INCLUDED_KEYS)}"
            self.out.append(doc.problem([], "E109", msg))
        if isinstance(data, dict):
            if not main:
                self._check_keys(doc)
            for i, target in self._targets(doc):
                self._include(doc, i, target)
        self._stack.pop()
        self.order.append(doc)

    def _check_keys(self, doc: Document) -> None:
        for key in doc.data:
            if key not in INCLUDED_KEYS:
                allowed = ", ".join(INCLUDED_KEYS)
                msg = f'key "{key}" is not allowed in an included file (only {allowed})'
                self.out.append(doc.problem([key], "E100", msg, at="key"))

    def _targets(self, doc: Document) -> list[tuple[int, Path]]:
        value = doc.data.get("include")
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            msg = "include must be a list of file or directory paths"
            self.out.append(doc.problem(["include"], "E109", msg))
            return []
        base = Path(doc.file).parent
        out: list[tuple[int, Path]] = []
        for i, name in enumerate(value):
            path = base / name
            if path.is_dir():
                if str(path) not in self.dirs:
                    self.dirs.append(str(path))
                try:
                    out.extend((i, p) for p in listing(path))
                except OSError as exc:
                    msg = f"cannot read included directory {path}: {exc.strerror}"
                    self.out.append(doc.problem(["include", i], "E000", msg))
            else:
                out.append((i, path))
        return out

    def _include(self, doc: Document, i: int, path: Path) -> None:
        key = _key(str(path))
        if key in self._stack:
            chain = " → ".join([*(Path(f).name for f in self._stack), path.name])
            self.out.append(doc.problem(["include", i], "E114", f"include cycle: {chain}"))
            return
        if key in self._seen:
            return  # already read (included from two places): read once
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            msg = f"cannot read included file {path}: {reason}"
            self.out.append(doc.problem(["include", i], "E000", msg))
            return
        try:
            child = load_yaml(text, str(path))
        except YamlFileError as exc:
            self.files.append(str(path))
            self._seen.add(key)
            self.out.extend(exc.problems)
            return
        self.visit(child, main=False)


def _key(file: str) -> str:
    return str(Path(file).resolve())


def listing(directory: Path) -> list[Path]:
    """The rule files an included ``directory`` gives, in name order; ``OSError`` if unreadable."""
    found = [p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.name)


class Tree(NamedTuple):
    """What ``read_files`` read: the merged document, every document, every directory."""

    doc: Document  # ``main`` itself when nothing was merged
    docs: list[Document]  # main first, then included files in the order first read
    dirs: list[str]  # included directories, as joined to their including file's folder


def read_files(main: Document, out: list[Problem]) -> Tree:
    """The merged document (``main`` itself without includes), every document and directory read."""
    if not isinstance(main.data, dict) or "include" not in main.data:
        return Tree(main, [main], [])
    reader = _Reader(out)
    reader.visit(main, main=True)
    docs = {d.file: d for d in reader.order}
    ordered = [docs[f] for f in reader.files if f in docs]
    if len(reader.order) == 1:
        return Tree(main, ordered, reader.dirs)
    merged = YamlMap(main.data)
    merged.lc, merged.keys_at = main.data.lc, dict(main.data.keys_at)
    origins: dict[tuple[str | int, ...], Document] = {}
    for section in _NAMED:
        _merge_named(merged, section, reader.order, origins, out)
    _merge_sequence(merged, reader.order, origins, out, "rules", unique=False)
    _merge_sequence(merged, reader.order, origins, out, "categories", unique=True)
    data = MergedDocument(main.file, main.text, merged, origins, docs)
    return Tree(data, ordered, reader.dirs)


def _merge_named(
    merged: YamlMap,
    section: str,
    order: list[Document],
    origins: dict[tuple[str | int, ...], Document],
    out: list[Problem],
) -> None:
    """Merge one section of names; E113 for a name defined in two files."""
    parts = [(d, d.data.get(section)) for d in order if isinstance(d.data, dict)]
    parts = [(d, v) for d, v in parts if v is not None]
    if not parts or any(not isinstance(v, dict) for d, v in parts if d is order[-1]):
        return  # nothing to merge, or the main file's section is invalid (the loader says so)
    result = YamlMap()
    result.keys_at = {}
    first: dict[str, Document] = {}
    for doc, value in parts:
        if not isinstance(value, dict):
            out.append(doc.problem([section], "E109", f"{section} must be a mapping of names"))
            continue
        for name, entry in value.items():
            if name in first:
                line, col, _ = position(first[name].data, [section, name], at="key")
                at = f"{first[name].file}:{line}:{col}"
                msg = f'duplicate {_KIND[section]} "{name}" (first at {at})'
                out.append(doc.problem([section, name], "E113", msg, at="key"))
                continue
            first[name] = doc
            result[name] = entry
            result.keys_at[name] = value.keys_at[name]
            origins[(section, name)] = doc
    _place(merged, section, result, parts[0][0], parts[-1][0], origins)


def _place(
    merged: YamlMap,
    section: str,
    value: YamlMap | YamlSeq,
    first: Document,
    last: Document,
    origins: dict[tuple[str | int, ...], Document],
) -> None:
    """Put a merged section in the main mapping, positioned where a file wrote it."""
    owner = last if section in last.data.keys_at else first
    value.lc = owner.data[section].lc if hasattr(owner.data[section], "lc") else (0, 0)
    merged[section] = value
    merged.keys_at[section] = owner.data.keys_at[section]
    origins[(section,)] = owner


def _parts(order: list[Document], section: str, out: list[Problem]) -> list[tuple[Document, Any]]:
    """The (document, list) of each file with a ``section`` list; None if the main one is bad.

    An included file's section that is not a list is reported here (E109); the main file's
    is left to the loader.
    """
    parts = []
    for doc in order:
        value = doc.data.get(section) if isinstance(doc.data, dict) else None
        if value is None:
            continue
        if isinstance(value, list):
            parts.append((doc, value))
        elif doc is order[-1]:
            return []
        else:
            msg = f"{section} must be a list, got {type(value).__name__}"
            out.append(doc.problem([section], "E109", msg))
    return parts


def _merge_sequence(
    merged: YamlMap,
    order: list[Document],
    origins: dict[tuple[str | int, ...], Document],
    out: list[Problem],
    section: str,
    *,
    unique: bool,
) -> None:
    """Concatenate ``section`` of every file (includes first, main last); ``unique`` keeps the
    first of equal items (categories), otherwise every item stays (rules: ids are checked later).
    """
    parts = _parts(order, section, out)
    if not parts:
        return
    result = YamlSeq()
    result.items_at = []
    for doc, value in parts:
        for item, at in zip(value, value.items_at, strict=True):
            if unique and item in result:
                continue
            origins[(section, len(result))] = doc
            result.append(item)
            result.items_at.append(at)
    _place(merged, section, result, parts[0][0], parts[-1][0], origins)
