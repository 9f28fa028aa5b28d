"""YAML loading that keeps line and column of every node, and admin-facing problems.

Used for rule files and for the daemon config alike: ``load_yaml`` parses with ruamel.yaml
(YAML 1.2: ``no`` stays a string, duplicate keys are errors) and ``position`` maps a path of
keys and indexes — such as a pydantic error ``loc`` — back to a line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

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


class YamlFileError(Exception):
    """The file is not valid YAML (or has duplicate keys); ``problems`` says where."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Document:
    """A parsed YAML document with its text, for positions and snippets."""

    file: str
    text: str
    data: Any

    def line_text(self, line: int) -> str:
        """The 1-based ``line`` of the source, without its newline ('' when out of range)."""
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def problem(
        self,
        path: Sequence[str | int],
        code: str,
        message: str,
        *,
        severity: Severity = "error",
        at: Literal["key", "value"] = "value",
    ) -> Problem:
        """A problem placed at the node ``path`` leads to (or its nearest existing parent)."""
        line, col, width = position(self.data, path, at=at)
        return Problem(
            self.file,
            line,
            col,
            code,
            message,
            severity,
            source_line=self.line_text(line),
            width=width,
        )


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def load_yaml(text: str, file: str) -> Document:
    """Parse ``text``; raise ``YamlFileError`` naming file, line and column on bad YAML."""
    try:
        data = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        col = mark.column + 1 if mark is not None else 1
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        lines = text.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        code = "E002" if "duplicate key" in what else "E001"
        raise YamlFileError(
            [Problem(file, line, col, code, _yaml_message(what), source_line=src)]
        ) from None
    except ReaderError as exc:  # a control character; not a MarkedYAMLError
        before = text[: max(0, exc.position)]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        char = exc.character
        what = f"character U+{char:04X} is not allowed" if isinstance(char, int) else str(exc)
        problem = Problem(file, line, col, "E001", f"invalid YAML: {what}")
        raise YamlFileError([problem]) from None
    return Document(file, text, data)


_INDENT_HINTS = (
    "expected <block end>",
    "mapping values are not allowed",
    "could not find expected ':'",
)


def _yaml_message(what: str) -> str:
    """ruamel's text, shortened for duplicates and with a hint for indentation mistakes."""
    dup = re.search(r'found duplicate key "([^"]*)"', what)
    if dup:
        return f'duplicate key "{dup.group(1)}" (each key may appear once in a mapping)'
    hint = " (check the indentation)" if any(h in what for h in _INDENT_HINTS) else ""
    return f"invalid YAML: {what}{hint}"


def _node_width(node: Any) -> int:
    if isinstance(node, str | int | float) and not isinstance(node, bool):
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
    if isinstance(node, CommentedMap | CommentedSeq):
        line, col = node.lc.line + 1, node.lc.col + 1
    steps = list(path)
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(node, CommentedMap) and step in node:
            kline, kcol = node.lc.key(step)
            vline, vcol = node.lc.value(step)
            child = node[step]
            if last and at == "key":
                return kline + 1, kcol + 1, max(1, len(str(step)))
            line, col, width = vline + 1, vcol + 1, _node_width(child)
            node = child
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
            iline, icol = node.lc.item(step)
            child = node[step]
            line, col, width = iline + 1, icol + 1, _node_width(child)
            node = child
        else:
            break
    return line, col, width


def plain(node: Any) -> Any:
    """Turn ruamel's commented containers and scalar subclasses into plain Python values."""
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
