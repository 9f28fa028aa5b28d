"""Parse ``when`` blocks and named ``conditions`` into the tree of ``rules.model`` nodes.

A condition is a mapping whose entries are ANDed: ``all``/``any`` (lists of conditions),
``not`` (a condition), ``use`` (a named condition), ``time_in`` (a calendar, on
``received_at``) and fields, each with a mapping of operators and options. Every problem is
reported with its position (E102 unknown list, E103 unknown condition, E105 unknown
calendar, E107 unknown operator, E108 unknown field, E109 bad value, E112 cyclic ``use``,
E130 bad regex) and parsing goes on, so one run finds them all. Options: ``ascii_word``,
``case_sensitive``, ``raw`` (view "raw": no normalisation of text or keywords). Warnings
found here: W201 short keyword, W203 option without effect, W210 keyword variant (see
``rules.checks.VARIANTS``), W303 all/any/not nested deeper than 4.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

from rules.checks import too_deep, useless_options, variant_warning
from rules.fields import FIELDS, Kind, canonical_field, field_kind, operator_applies
from rules.model import (
    KEYWORD_OPS,
    NUMBER_OPS,
    OPERATORS,
    OPTIONS,
    All,
    AnyOf,
    Leaf,
    Node,
    Not,
    Use,
    Where,
)
from rules.normalize import View, canonical, is_cjk, is_short_keyword
from rules.patterns import glob_to_regex, regex_error, with_view
from rules.schema import describe, dotted, suggest
from rules.source import Document, Problem, Severity, YamlMap, YamlSeq, position

Path = list[str | int]
Item = tuple[object, Path]  # a literal and where it was written
COMBINATORS = ("all", "any", "not", "use", "time_in")
_LIST_OPS = ("contains_any", "contains_all", "keywords", "in", "not_in")
_MAYBE_LIST_OPS = ("starts_with", "ends_with", "glob", "contains_any", "contains_all", "keywords")


class ConditionParser:
    """Parses conditions of one file; collects problems in ``out`` and tracks what is used."""

    def __init__(
        self,
        doc: Document,
        views: Mapping[View, Callable[[str], str]],
        lists: Mapping[str, list[Any]],
        conditions: Mapping[str, Any],
        calendars: Collection[str],
        out: list[Problem],
    ) -> None:
        self.doc, self.views, self.out = doc, views, out
        self.lists, self.conditions, self.calendars = lists, conditions, calendars
        self.used_lists: set[str] = set()
        self.used_conditions: set[str] = set()
        self._resolved: dict[str, Node | None] = {}
        self._stack: list[str] = []
        self._seen: set[tuple[int, int, str]] = set()
        self._containers: dict[tuple[str | int, ...], YamlMap | YamlSeq] = {}

    # -- problems and positions -------------------------------------------------------------

    def report(
        self,
        path: Path,
        code: str,
        msg: str,
        *,
        at: Literal["key", "value"] = "value",
        severity: Severity = "error",
    ) -> None:
        """Add one problem (a warning at the same place and code is reported once)."""
        problem = self.doc.problem(path, code, msg, severity=severity, at=at)
        key = (problem.line, problem.col, code)
        if severity == "warning" and key in self._seen:
            return
        self._seen.add(key)
        self.out.append(problem)

    def where(self, path: Path) -> Where:
        """The ``Where`` of the node at ``path``.

        Mappings and lists the parser walks through are registered by path, so a node is
        placed in one step from its parent instead of a walk from the root (4,000+ nodes in
        a 1,000-rule file).
        """
        parent = self._containers.get(tuple(path[:-1])) if path else None
        step = path[-1] if path else None
        if type(parent) is YamlMap and step in parent.keys_at:
            line, col = parent.keys_at[step][2:]
        elif type(parent) is YamlSeq and type(step) is int and 0 <= step < len(parent):
            line, col = parent.items_at[step]
        else:
            line, col, _ = position(self.doc.data, path)
            return Where(dotted(path), line, col, self.doc.origin(path).file)
        return Where(dotted(path), line + 1, col + 1, self.doc.origin(path).file)

    def enter(self, node: object, path: Path) -> None:
        """Register a mapping or list the parser is about to read (see ``where``)."""
        if type(node) is YamlMap or type(node) is YamlSeq:
            self._containers[tuple(path)] = node

    # -- combinators --------------------------------------------------------------------------

    def parse(self, node: object, path: Path) -> Node | None:
        """The tree for a condition mapping, or None when it has errors (reported)."""
        if not isinstance(node, dict) or not node:
            msg = "a condition must be a non-empty mapping, like {subject: {contains: refund}}"
            hint = " (leave out when: to match every message)" if node == {} else ""
            self.report(path, "E109", f"{msg}; got {describe(node)}{hint}")
            return None
        self.enter(node, path)
        terms = [self._term(key, value, [*path, key]) for key, value in node.items()]
        if any(t is None for t in terms):
            return None
        nodes = [t for t in terms if t is not None]
        return nodes[0] if len(nodes) == 1 else All(tuple(nodes), self.where(path))

    def _term(self, key: object, value: object, path: Path) -> Node | None:
        if key in ("all", "any"):
            self._check_depth(path)
            if not isinstance(value, list):
                self.report(
                    path, "E109", f'"{key}" takes a list of conditions, got {describe(value)}'
                )
                return None
            self.enter(value, path)
            children = [self.parse(c, [*path, i]) for i, c in enumerate(value)]
            if any(c is None for c in children):
                return None
            kids = tuple(c for c in children if c is not None)
            return All(kids, self.where(path)) if key == "all" else AnyOf(kids, self.where(path))
        if key in ("all", "any", "not"):
            self._check_depth(path)
        if key == "not":
            child = self.parse(value, path)
            return None if child is None else Not(child, self.where(path))
        if key == "use":
            return self._use(value, path)
        if key == "time_in":
            return self._leaf("received_at", "time", "time_in", value, path, "fold", False)
        if isinstance(key, str) and field_kind(canonical_field(key)) is not None:
            return self._field(key, value, path)
        self._unknown_field(key, path)
        return None

    def _check_depth(self, path: Path) -> None:
        """W303 where all/any/not nesting (counted in the written path) first exceeds 4."""
        msg = too_deep(path)
        if msg is not None:
            self.report(path, "W303", msg, at="key", severity="warning")

    def _unknown_field(self, key: object, path: Path) -> None:
        if key in OPERATORS:
            msg = f'operator "{key}" needs a field: write {{text: {{{key}: ...}}}}'
        else:
            text = str(key)
            head, dot, rest = text.partition(".")
            hint = suggest(text, [*FIELDS, *COMBINATORS])
            if dot and not hint:
                close = suggest(head, ["header", "fields"])
                hint = close.replace('"?', f'.{rest}"?') if close else ""
            msg = f'unknown field "{text}"{hint}'
        self.report(path, "E108", msg, at="key")

    def _use(self, name: object, path: Path) -> Node | None:
        if not isinstance(name, str) or name not in self.conditions:
            hint = suggest(name, list(self.conditions))
            self.report(path, "E103", f'unknown condition "{name}"{hint}')
            return None
        self.used_conditions.add(name)
        child = self.named(name, path)
        return None if child is None else Use(name, child, self.where(path))

    def named(self, name: str, at: Path | None = None) -> Node | None:
        """The tree of named condition ``name`` (parsed once; cycles are E112 at ``at``)."""
        if name in self._resolved:
            return self._resolved[name]
        if name in self._stack:
            cycle = " → ".join([*self._stack[self._stack.index(name) :], name])
            self.report(at or ["conditions", name], "E112", f"cyclic use: {cycle}")
            return None
        self._stack.append(name)
        node = self.parse(self.conditions[name], ["conditions", name])
        self._stack.pop()
        self._resolved[name] = node
        return node

    # -- fields and operators -----------------------------------------------------------------

    def _field(self, key: str, spec: object, path: Path) -> Node | None:
        field = canonical_field(key)
        kind = field_kind(field)
        assert kind is not None
        if not isinstance(spec, dict) or not spec:
            example = "{gte: 1}" if kind == "number" else '{equals: "x"}'
            msg = f'field "{key}" needs a mapping of operators, like {key}: {example}'
            self.report(path, "E109", f"{msg}; got {describe(spec)}")
            return None
        self.enter(spec, path)
        opts: dict[str, bool] = {}
        for name in OPTIONS:
            value = spec.get(name, False)
            if not isinstance(value, bool):
                self.report([*path, name], "E109", f"{name} must be true or false")
            opts[name] = value is True
        view: View = "raw" if opts["raw"] else "case" if opts["case_sensitive"] else "fold"
        self._option_warnings(key, spec, opts, path)
        ops = [k for k in spec if k not in OPTIONS]
        if not ops:
            self.report(path, "E109", f'no operator for field "{key}" (only options)')
            return None
        leaves = [self._op(field, kind, op, spec[op], [*path, op], view, opts) for op in ops]
        if any(leaf is None for leaf in leaves):
            return None
        nodes = tuple(leaf for leaf in leaves if leaf is not None)
        return nodes[0] if len(nodes) == 1 else All(nodes, self.where(path))

    def _option_warnings(
        self, key: str, spec: dict[str, Any], opts: dict[str, bool], path: Path
    ) -> None:
        """W203 for options that change nothing here."""
        ops = [k for k in spec if k not in OPTIONS]
        for option, msg in useless_options(key, ops, opts):
            self.report([*path, option], "W203", msg, at="key", severity="warning")

    def _op(
        self,
        field: str,
        kind: Kind,
        op: object,
        value: object,
        path: Path,
        view: View,
        opts: dict[str, bool],
    ) -> Node | None:
        if not isinstance(op, str) or op not in OPERATORS:
            self.report(path, "E107", f'unknown operator "{op}"{suggest(op, OPERATORS)}', at="key")
            return None
        if not operator_applies(op, kind, field):
            self.report(
                path, "E109", f'operator "{op}" does not apply to field "{field}"', at="key"
            )
            return None
        return self._leaf(field, kind, op, value, path, view, opts["ascii_word"])

    def _leaf(
        self, field: str, kind: Kind, op: str, value: object, path: Path, view: View, word: bool
    ) -> Leaf | None:
        where = self.where(path)
        if op in ("exists",):
            if not isinstance(value, bool):
                self.report(path, "E109", f"exists must be true or false, got {describe(value)}")
                return None
            return Leaf(field, op, value, where)
        if op == "between":
            return self._between(field, value, path)
        if op in NUMBER_OPS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.report(path, "E109", f"{op} takes a number, got {describe(value)}")
                return None
            return Leaf(field, op, float(value), where)
        if op == "time_in":
            if not isinstance(value, str) or value not in self.calendars:
                hint = suggest(value, list(self.calendars))
                self.report(path, "E105", f'unknown calendar "{value}"{hint}')
                return None
            return Leaf("received_at", op, value, where)
        if op == "regex":
            return self._regex(field, value, path, view)
        return self._literal_leaf(field, op, value, path, view, word)

    def _between(self, field: str, value: object, path: Path) -> Leaf | None:
        ok = isinstance(value, list) and len(value) == 2
        numbers = [v for v in value if _is_number(v)] if isinstance(value, list) else []
        if not ok or len(numbers) != 2:
            msg = f"between takes [low, high], two numbers, got {describe(value)}"
            self.report(path, "E109", msg)
            return None
        low, high = float(numbers[0]), float(numbers[1])
        if low > high:
            self.report(path, "E109", f"between [{numbers[0]}, {numbers[1]}]: low is above high")
            return None
        return Leaf(field, "between", (low, high), self.where(path))

    def _regex(self, field: str, value: object, path: Path, view: View) -> Leaf | None:
        if not isinstance(value, str) or not value:
            self.report(path, "E109", f"regex takes one pattern string, got {describe(value)}")
            return None
        pattern = with_view(self.views["raw" if view == "raw" else "case"](value), view)
        error = regex_error(pattern)
        if error:
            self.report(path, "E130", f'invalid regex "{value}": {error}')
            return None
        return Leaf(field, "regex", pattern, self.where(path), view)

    def _literal_leaf(
        self, field: str, op: str, value: object, path: Path, view: View, word: bool
    ) -> Leaf | None:
        items = self._items(op, value, path)
        if items is None:
            return None
        norm = self.views[view]
        literals: list[str] = []
        written: list[tuple[str, str, Path]] = []  # keywords: as written, normalised, where
        for item, ipath in items:
            text = canonical(item)
            if text is None:
                self.report(ipath, "E109", f"{op} values must be strings or numbers")
                return None
            text = norm(text)
            if op in (*KEYWORD_OPS, "keywords", "starts_with", "ends_with") and not text.strip():
                self.report(ipath, "E109", f"empty value in {op}")
                return None
            if op in (*KEYWORD_OPS, "keywords"):
                self._check_keyword(text, ipath, word)
                written.append((str(item), text, ipath))
            if text not in literals:
                literals.append(text)
        self._check_variants(written, literals)
        if op == "glob":
            return Leaf(field, op, glob_to_regex(literals), self.where(path), view)
        canon = "contains_any" if op == "keywords" else op
        return Leaf(field, canon, tuple(literals), self.where(path), view, word)

    def _check_keyword(self, keyword: str, path: Path, word: bool) -> None:
        if not is_short_keyword(keyword):
            return
        cjk = is_cjk(keyword.strip()[0])
        if word and not cjk:
            return
        advice = "a one-character Chinese keyword" if cjk else "add ascii_word: true"
        msg = f'short keyword "{keyword}" may match inside unrelated words ({advice})'
        self.report(path, "W201", msg, severity="warning")

    def _check_variants(self, written: list[tuple[str, str, Path]], literals: list[str]) -> None:
        """W210 for keywords holding a variant whose common mainland form is absent."""
        for original, text, path in written:
            listed = str(path[1]) if path[0] == "lists" else None
            msg = variant_warning(original, text, literals, listed)
            if msg is not None:
                self.report(path, "W210", msg, severity="warning")

    def _items(self, op: str, value: object, path: Path) -> list[Item] | None:
        """Literals of an operator value: one scalar, a list, ``$name``; ``$$`` escapes ``$``."""
        if op in _LIST_OPS or op in _MAYBE_LIST_OPS:
            if isinstance(value, str) and value.startswith("$") and not value.startswith("$$"):
                items = self._list_ref(value[1:], path)
            elif isinstance(value, list):
                items = self._list_items(value, path)
            elif op in _MAYBE_LIST_OPS and not isinstance(value, dict | list | None):
                items = [(_unescape(value), path)]
            else:
                self.report(path, "E109", f"{op} takes a list or $list_name, got {describe(value)}")
                return None
            if items is not None and not items:
                self.report(path, "E109", f"{op} needs at least one value")
                return None
            return items
        if isinstance(value, list | dict) or value is None:
            hint = ' (use "in" for a list)' if op == "equals" else ""
            hint = ' (use "not_in" for a list)' if op == "not_equals" else hint
            hint = ' (use "contains_any" for a list)' if op == "contains" else hint
            self.report(path, "E109", f"{op} takes one value, got {describe(value)}{hint}")
            return None
        return [(value, path)]

    def _list_items(self, value: list[Any], path: Path) -> list[Item] | None:
        out: list[Item] = []
        ok = True
        for i, item in enumerate(value):
            if isinstance(item, str) and item.startswith("$") and not item.startswith("$$"):
                ref = self._list_ref(item[1:], [*path, i])
                ok = ok and ref is not None
                out.extend(ref or ())
            else:
                out.append((_unescape(item), [*path, i]))
        return out if ok else None

    def _list_ref(self, name: str, path: Path) -> list[Item] | None:
        if name not in self.lists:
            self.report(path, "E102", f'unknown list "{name}"{suggest(name, list(self.lists))}')
            return None
        self.used_lists.add(name)
        return [(item, ["lists", name, i]) for i, item in enumerate(self.lists[name])]


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _unescape(value: object) -> object:
    return value[1:] if isinstance(value, str) and value.startswith("$$") else value
