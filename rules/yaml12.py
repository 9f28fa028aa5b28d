"""libyaml (PyYAML's C parser) to ``YamlMap``/``YamlSeq``/scalars, YAML 1.2 style.

``compose`` runs libyaml's composer with a resolver that leaves untagged plain scalars to
``_plain_scalar`` (YAML 1.2 core schema, read as ruamel.yaml reads it); ``Builder`` turns the
node tree into dicts and lists that remember the line and column of every key, value and
item, and collects problems (duplicate keys, unsupported tags, recursive aliases, non-scalar
keys) as ``(line, col, code, message)``, 0-based. When libyaml rejects a text,
``ruamel_fallback`` reads it with ruamel.yaml instead (YAML 1.2 allows a little more than
libyaml), or words the parse error as the ruamel-based checker always did. ``rules.source``
builds ``Problem``s from these.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from yaml import MarkedYAMLError, ScalarNode
from yaml.composer import Composer
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: its pure-Python parser, as slow as ruamel's
    CParser = None

Found = tuple[int, int, str, str]  # (line, col, code, message): 0-based position


class YamlMap(dict):  # type: ignore[type-arg]
    """A mapping that knows where it starts (``lc``) and where each key and value is written.

    ``lc`` is (line, col) and ``keys_at[key]`` is (key line, key col, value line, value col),
    all 0-based.
    """

    __slots__ = ("keys_at", "lc")


class YamlSeq(list):  # type: ignore[type-arg]
    """A sequence that knows where it starts (``lc``) and each item (``items_at``), 0-based."""

    __slots__ = ("items_at", "lc")


# -- libyaml -------------------------------------------------------------------------------

_PLAIN = "?"  # tag of an untagged plain scalar: resolved by ``_plain_scalar``
_STR = "tag:yaml.org,2002:str"
_COLLECTION = "!collection"


class _Resolver:
    """Leaves plain scalars to ``_plain_scalar``: a composer's resolver, path-independent."""

    def resolve(self, kind: type, value: object, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _STR
        return _COLLECTION

    def descend_resolver(self, *_: object) -> None:
        """No path-dependent resolution."""

    def ascend_resolver(self, *_: object) -> None:
        """No path-dependent resolution."""


class _PyComposer(_Resolver, Reader, Scanner, Parser, Composer):
    """PyYAML's pure-Python composer, for an installation without libyaml."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)


_Composer: Any = _PyComposer
if CParser is not None:

    class _CComposer(_Resolver, CParser):  # type: ignore[misc]
        """libyaml's composer (C), ~30x faster than the pure-Python one."""

    _Composer = _CComposer


def compose(text: str) -> Any:
    """The node tree of the single document in ``text`` (None when empty); raises PyYAML's
    errors (``MarkedYAMLError``, ``ReaderError``) or ``UnicodeEncodeError`` (lone surrogates)."""
    parser = _Composer(text)
    try:
        return parser.get_single_node()
    finally:
        parser.dispose()


_NUMBER_START = frozenset("0123456789+-.")
_WORDS: dict[str, object] = {
    **dict.fromkeys(("~", "null", "Null", "NULL"), None),
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}
_FLOAT = re.compile(
    r"[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?"
)
_SPECIAL_FLOATS = {
    **{f"{s}.{w}": float(f"{s}inf") for s in ("", "+", "-") for w in ("inf", "Inf", "INF")},
    **dict.fromkeys((".nan", ".NaN", ".NAN"), float("nan")),
}
_INT = re.compile(r"[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9_]*[0-9][0-9_]*)")
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d?)-(\d\d?)(?:(?:[Tt]|[ \t]+)(\d\d?):(\d\d):(\d\d)(?:\.(\d*))?"
    r"(?:[ \t]*(Z|[-+]\d\d?(?::?\d\d)?))?)?"
)


def _plain_scalar(text: str) -> object:
    """YAML 1.2 core-schema value of an untagged plain scalar (ruamel's reading)."""
    if not text:
        return None
    if text[0] not in _NUMBER_START:
        return _WORDS.get(text, text)
    if _FLOAT.fullmatch(text):
        return float(text.replace("_", ""))
    if _INT.fullmatch(text):
        return _int(text)
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if _TIMESTAMP.fullmatch(text):
        return _timestamp(text)
    return text


def _int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2], 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _timestamp(text: str) -> object:
    """A ``date`` or ``datetime`` (aware when a zone is given); the text itself if invalid."""
    m = _TIMESTAMP.fullmatch(text)
    assert m is not None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        if hour is None:
            return date(int(year), int(month), int(day)) if len(month + day) == 4 else text
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        tz = None
        if zone == "Z":
            tz = UTC
        elif zone:
            digits = zone[1:].replace(":", "")
            hh, mm = (int(digits[:-2]), int(digits[-2:])) if len(digits) > 2 else (int(digits), 0)
            offset = timedelta(hours=hh, minutes=mm)
            tz = timezone(-offset if zone[0] == "-" else offset)
        parts = (int(year), int(month), int(day), int(hour), int(minute), int(second), micro)
        return datetime(*parts, tzinfo=tz)
    except ValueError:
        return text


def _explicit(tag: str, text: str) -> object:
    """The value of a scalar with an explicit core tag; ``ValueError`` when it does not fit."""
    short = tag.removeprefix("tag:yaml.org,2002:")
    if short == "str":
        return text
    value = _plain_scalar(text)
    kinds = {"int": int, "float": float, "bool": bool, "null": type(None)}
    if short == "float" and type(value) is int:
        return float(value)
    if short in kinds and type(value) is kinds[short]:
        return value
    if short == "timestamp" and isinstance(value, date):
        return value
    if short in kinds or short == "timestamp":
        raise ValueError(f'"{text}" is not a valid !!{short}')
    raise ValueError(f'unsupported tag "{_tag_name(tag)}"')


def _tag_name(tag: str) -> str:
    """``tag:yaml.org,2002:set`` as written: ``!!set``."""
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


class Builder:
    """libyaml nodes → ``YamlMap``/``YamlSeq``/scalars; problems as (line, col, code, text)."""

    def __init__(self) -> None:
        self.problems: list[tuple[int, int, str, str]] = []
        self.memo: dict[int, Any] = {}  # aliases share their node: build it once
        self.active: set[int] = set()

    def report(self, node: Any, code: str, message: str) -> None:
        mark = node.start_mark
        self.problems.append((mark.line, mark.column, code, message))

    def build(self, node: Any) -> Any:
        if node.id == "scalar":
            return self.scalar(node)
        key = id(node)
        if key in self.memo:
            return self.memo[key]
        if key in self.active:
            self.report(node, "E001", "invalid YAML: recursive alias (a node inside itself)")
            return None
        self.active.add(key)
        value = self.mapping(node) if node.id == "mapping" else self.sequence(node)
        self.active.discard(key)
        self.memo[key] = value
        return value

    def scalar(self, node: Any) -> Any:
        tag = node.tag
        if tag == _PLAIN:
            return _plain_scalar(node.value)
        if tag == _STR:
            return node.value
        try:
            return _explicit(tag, node.value)
        except ValueError as exc:
            self.report(node, "E001", f"invalid YAML: {exc}")
            return node.value

    def sequence(self, node: Any) -> YamlSeq:
        self._check_tag(node, "seq")
        out = YamlSeq()
        mark = node.start_mark
        out.lc = (mark.line, mark.column)
        out.items_at = items_at = []
        value = self.value
        for item in node.value:
            mark = item.start_mark
            items_at.append((mark.line, mark.column))
            out.append(value(item))
        return out

    def value(self, node: Any) -> Any:
        """``build``, with the common case — an untagged plain scalar — inlined."""
        if node.tag == _PLAIN:  # only scalars are tagged _PLAIN
            text = node.value
            if text and text[0] not in _NUMBER_START:
                return _WORDS.get(text, text)
            return _plain_scalar(text)
        return self.build(node)

    def mapping(self, node: Any) -> YamlMap:
        self._check_tag(node, "map")
        out = YamlMap()
        mark = node.start_mark
        out.lc = (mark.line, mark.column)
        out.keys_at = at = {}
        merges = []
        for knode, vnode in node.value:
            if knode.id != "scalar":
                self.report(knode, "E001", "invalid YAML: a key must be a single value")
                continue
            if knode.tag == _PLAIN and knode.value == "<<":
                merges.append(vnode)
                continue
            key = self.value(knode)
            if key in at:
                msg = f'duplicate key "{key}" (each key may appear once in a mapping)'
                self.report(knode, "E002", msg)
                continue
            km, vm = knode.start_mark, vnode.start_mark
            out[key] = self.value(vnode)
            at[key] = (km.line, km.column, vm.line, vm.column)
        for merge in merges:
            self._merge(out, merge)
        return out

    def _merge(self, out: YamlMap, node: Any) -> None:
        """``<<: *base`` or ``<<: [*a, *b]``: keys not written here come from the bases."""
        value = self.build(node)
        for base in value if isinstance(value, YamlSeq) else [value]:
            if not isinstance(base, YamlMap):
                self.report(node, "E001", "invalid YAML: << takes a mapping or a list of them")
                return
            for key, item in base.items():
                if key not in out:
                    out[key] = item
                    out.keys_at[key] = base.keys_at[key]

    def _check_tag(self, node: Any, kind: str) -> None:
        if node.tag not in (_COLLECTION, f"tag:yaml.org,2002:{kind}"):
            self.report(node, "E001", f'invalid YAML: unsupported tag "{_tag_name(node.tag)}"')


# -- syntax errors -------------------------------------------------------------------------


def ruamel_fallback(text: str, exc: Exception) -> tuple[Any, Found | None]:
    """For text libyaml rejected: ruamel.yaml's reading of it as (data, None) — YAML 1.2 (and
    ruamel) accept a little more, such as JSON's surrogate-pair escapes ``"\\ud83d\\ude00"`` —
    or (None, the problem), worded by ruamel as the checker always did when it rejects it too.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError as RuamelMarkedError
    from ruamel.yaml.reader import ReaderError as RuamelReaderError

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(text)
    except (RuamelMarkedError, RuamelReaderError) as ruamel_exc:
        return None, _problem_of(text, ruamel_exc)
    except Exception:  # ruamel failing otherwise: libyaml's own error is the better one
        return None, _problem_of(text, exc)
    return _from_ruamel(data, set()), None


def _problem_of(text: str, exc: Exception) -> Found:
    if isinstance(exc, MarkedYAMLError) or hasattr(exc, "problem_mark"):
        error: Any = exc
        mark = error.problem_mark or error.context_mark
        what = " ".join(part for part in (error.context, error.problem) if part)
        code = "E002" if "duplicate key" in what else "E001"
        line, col = (mark.line, mark.column) if mark is not None else (0, 0)
        return line, col, code, _yaml_message(what)
    if isinstance(exc, ReaderError) or hasattr(exc, "character"):
        error = exc
        before = text[: max(0, error.position)]
        line, col = before.count("\n"), len(before) - (before.rfind("\n") + 1)
        char = error.character
        what = f"character U+{ord(char) if isinstance(char, str) else char:04X} is not allowed"
        return line, col, "E001", f"invalid YAML: {what}"
    return 0, 0, "E001", f"invalid YAML: {exc}"


def _from_ruamel(node: Any, active: set[int]) -> Any:
    """ruamel's commented containers as ``YamlMap``/``YamlSeq`` with the same positions."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, CommentedMap | CommentedSeq):
        return _plain_value(node)
    if id(node) in active:  # a recursive alias
        return None
    active.add(id(node))
    out: Any
    if isinstance(node, CommentedMap):
        out = YamlMap()
        out.keys_at = {}
        for key, value in node.items():
            try:
                where = (*node.lc.key(key), *node.lc.value(key))
            except (KeyError, TypeError):  # a merged key: placed at the mapping
                where = (node.lc.line, node.lc.col) * 2
            out[_plain_value(key)] = _from_ruamel(value, active)
            out.keys_at[_plain_value(key)] = where
    else:
        out = YamlSeq(_from_ruamel(item, active) for item in node)
        out.items_at = [tuple(node.lc.item(i)) for i in range(len(node))]
    out.lc = (node.lc.line, node.lc.col)
    active.discard(id(node))
    return out


def _plain_value(value: Any) -> Any:
    """ruamel's scalar subclasses (ScalarInt, ScalarFloat, TimeStamp, …) as plain values."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, datetime):
        return datetime.fromisoformat(value.isoformat())
    return getattr(value, "value", value)  # a TaggedScalar: its text


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
