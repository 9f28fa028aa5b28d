"""YAML loading that keeps line and column of every node, and admin-facing problems.

Used for rule files and for the daemon config alike. ``load_yaml`` parses with libyaml (PyYAML's
C parser, ``rules.yaml12``: a 1,000-rule file in ~50 ms, where ruamel.yaml's pure-Python
round-trip parser took 1.5 s) into dicts and lists (``YamlMap``, ``YamlSeq``) that remember
where each key, value and item was written; ``position`` maps a path of keys and indexes —
such as a pydantic error ``loc`` — back to a line and column.

Scalars follow YAML 1.2 (the core schema, as ruamel.yaml resolves it): ``no``/``on``/``yes``
stay strings, ``010`` is 10, ``0o10`` is 8, ``1:30`` is a string, ``1_000`` is 1000; a
timestamp such as ``2026-03-04`` becomes a ``date``/``datetime`` as ruamel made it; ``<<``
merges mappings. Errors: a duplicate key is E002; an unsupported tag (``!foo``, ``!!set``), a
recursive alias or a non-scalar key is E001. When libyaml rejects a text, it is parsed again
with ruamel.yaml: YAML 1.2 allows a little more (JSON's surrogate-pair escapes), and its
wording of a syntax error is what the checker has always shown; ruamel is not imported
otherwise.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from rules.yaml12 import Builder, Found, YamlMap, YamlSeq, compose, ruamel_fallback

__all__ = [
    "Document",
    "Problem",
    "Severity",
    "YamlFileError",
    "YamlMap",
    "YamlSeq",
    "gc_paused",
    "load_yaml",
    "plain",
    "position",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One problem in a file; ``line`` and ``col`` are 1-based; ``code`` like ``E102``."""

    file: str
    line: int
    col: int
    code: str
    message: str
    severity: Severity = "error"
    source_line: str = field(default="", compare=False)
    width: int = field(default=1, compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.code} {self.message}"

    def render(self) -> str:
        """The one-line form plus the offending line and a caret under the column."""
        text = str(self)
        if self.source_line:
            gutter = f"{self.line:>5} | "
            caret = " " * (len(gutter) - 2) + "| " + " " * (self.col - 1) + "^" * max(1, self.width)
            text += f"\n{gutter}{self.source_line}\n{caret}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form for ``--format json``."""
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }


class ProblemsError(Exception):
    """An error that carries every problem found, each with its position."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class YamlFileError(ProblemsError):
    """The file is not valid YAML (or has duplicate keys); ``problems`` says where."""


@dataclass(frozen=True)
class Document:
    """A parsed YAML document with its text, for positions and snippets."""

    file: str
    text: str
    data: Any

    @cached_property
    def _lines(self) -> list[str]:
        return self.text.splitlines()

    def line_text(self, line: int) -> str:
        """The 1-based ``line`` of the source, without its newline ('' when out of range)."""
        lines = self._lines
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def origin(self, path: Sequence[str | int]) -> Document:
        """The document the node at ``path`` was written in (itself; see ``rules.include``)."""
        del path
        return self

    def by_file(self, file: str) -> Document:
        """The document read from ``file`` (itself; see ``rules.include``)."""
        del file
        return self

    def problem(
        self,
        path: Sequence[str | int],
        code: str,
        message: str,
        *,
        severity: Severity = "error",
        at: Literal["key", "value"] = "value",
    ) -> Problem:
        """A problem placed at the node ``path`` leads to (or its nearest existing parent),
        in the file that wrote that node (``origin``: an included file's, once merged)."""
        src = self.origin(path)
        line, col, width = position(self.data, path, at=at)
        return Problem(
            src.file,
            line,
            col,
            code,
            message,
            severity,
            source_line=src.line_text(line),
            width=width,
        )


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that form no cycles.

    Loading allocates ~10^5 containers; generation-0 collections triggered by them scan the
    young heap again and again and took more time than libyaml's parse.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_yaml(text: str, file: str) -> Document:
    """Parse ``text``; raise ``YamlFileError`` naming file, line and column of every problem."""
    with gc_paused():
        return _load_yaml(text, file)  # libyaml's node tree is freed before the GC resumes


def _load_yaml(text: str, file: str) -> Document:
    try:
        root = compose(text)
    except Exception as exc:  # syntax errors, control characters, lone surrogates
        data, problem = ruamel_fallback(text, exc)
        if problem is not None:
            raise YamlFileError(_problems(text, file, [problem])) from None
        return Document(file, text, data)
    builder = Builder()
    data = builder.build(root) if root is not None else None
    if builder.problems:
        raise YamlFileError(_problems(text, file, sorted(builder.problems)))
    return Document(file, text, data)


def _problems(text: str, file: str, found: Sequence[Found]) -> list[Problem]:
    lines = text.splitlines()
    return [
        Problem(file, line + 1, col + 1, code, message, source_line=_line(lines, line + 1))
        for line, col, code, message in found
    ]


def _line(lines: Sequence[str], line: int) -> str:
    return lines[line - 1] if 0 < line <= len(lines) else ""


# -- positions and plain values ------------------------------------------------------------


def _node_width(node: Any) -> int:
    kind = type(node)
    if kind is str or kind is int or kind is float:
        return max(1, len(str(node)))
    return 1


def position(
    data: Any, path: Iterable[str | int], *, at: Literal["key", "value"] = "value"
) -> tuple[int, int, int]:
    """(line, col, width), 1-based, of the node at ``path``; the deepest existing parent otherwise.

    ``at="key"`` points at a mapping key itself (for unknown or duplicate keys).
    """
    line, col, width = 1, 1, 1
    node = data
    if isinstance(node, _CONTAINERS):
        line, col = node.lc[0] + 1, node.lc[1] + 1
    steps = path if isinstance(path, list | tuple) else list(path)
    last = len(steps) - 1
    for i, step in enumerate(steps):
        kind = type(node)
        if kind is YamlMap and step in node.keys_at:
            kline, kcol, vline, vcol = node.keys_at[step]
            if i == last and at == "key":
                return kline + 1, kcol + 1, max(1, len(str(step)))
            node = node[step]
            line, col, width = vline + 1, vcol + 1, _node_width(node)
        elif kind is YamlSeq and type(step) is int and 0 <= step < len(node):
            iline, icol = node.items_at[step]
            node = node[step]
            line, col, width = iline + 1, icol + 1, _node_width(node)
        else:
            break
    return line, col, width


_CONTAINERS = (YamlMap, YamlSeq)


def plain(node: Any) -> Any:
    """Plain ``dict``/``list`` copies of ``YamlMap``/``YamlSeq`` (scalars are plain already)."""
    if isinstance(node, dict):
        return {plain(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node
