"""Compiled condition nodes: what ``engine`` runs for each candidate rule.

Each node has ``test(scan, rec)``, which reads the per-message ``Scan`` (keyword hits from
the shared automata, regex-set results, normalised values) and appends a ``ConditionTrace``
per evaluated leaf to ``rec``; and ``triggers()``, the atoms at least one of which must be
satisfied for the node to be true (None when there is no such set) — the rule index.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rules.calendars import Calendar
from rules.decision import ConditionTrace, Span
from rules.model import Leaf
from rules.normalize import View, as_number, boundary_ok

if TYPE_CHECKING:
    from rules.engine import Scan

Trigger = tuple[str, tuple[str, View] | str, Any]  # (kind, key, atom)
_RANK = {"kw": 0, "rx": 1, "val": 2, "ex": 3}
_MAX_SPANS = 16
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def literals(leaf: Leaf) -> tuple[str, ...]:
    """The normalised literals of a keyword, value or affix leaf."""
    assert isinstance(leaf.value, tuple)
    return leaf.value


def _label(field: str, index: int, count: int) -> str:
    return field if count <= 1 else f"{field}[{index}]"


class LeafNode:
    """Base for leaves: ``info`` is the static part of the trace entry."""

    __slots__ = ("field", "leaf", "view")

    def __init__(self, leaf: Leaf) -> None:
        self.leaf, self.field, self.view = leaf, leaf.field, leaf.view

    def record(self, rec: list[ConditionTrace] | None, ok: bool, spans: tuple[Span, ...]) -> bool:
        if rec is not None:
            where = self.leaf.where
            rec.append(ConditionTrace(where.path, where.line, self.field, self.leaf.op, ok, spans))
        return ok

    def triggers(self) -> list[Trigger] | None:
        return None


class KeywordNode(LeafNode):
    """contains / contains_any / contains_all, answered from the shared automaton's hits."""

    __slots__ = ("every", "ids", "keywords", "scope", "word")

    def __init__(self, leaf: Leaf, scope: str, ids: tuple[int, ...]) -> None:
        super().__init__(leaf)
        self.scope, self.ids = scope, ids
        self.keywords = dict(zip(ids, literals(leaf), strict=True))
        self.every = leaf.op == "contains_all"
        self.word = leaf.ascii_word

    def _occurrences(self, hits: dict[int, list[Any]], kw: int) -> list[Any]:
        found = hits.get(kw)
        if not found or not self.word:
            return found or []
        return [h for h in found if boundary_ok(h[1], h[2], h[3])]

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        hits = scan.keyword_hits(self.field, self.view)
        if self.every:
            ok = all(self._occurrences(hits, k) for k in self.ids)
        elif not self.word:
            ok = not self.keywords.keys().isdisjoint(hits)
        else:
            ok = any(self._occurrences(hits, k) for k in hits if k in self.keywords)
        return self.record(rec, ok, self._spans(scan, hits) if ok and rec is not None else ())

    def _spans(self, scan: Scan, hits: dict[int, list[Any]]) -> tuple[Span, ...]:
        count = len(scan.reader.strings(self.field, self.view) or ())
        spans = [
            Span(_label(self.field, vi, count), start, end, self.keywords[k])
            for k in hits
            if k in self.keywords
            for vi, _, start, end in self._occurrences(hits, k)
        ]
        spans.sort()
        return tuple(spans[:_MAX_SPANS])

    def triggers(self) -> list[Trigger] | None:
        key = (self.scope, self.view)
        if self.every:  # one keyword is required: take the longest (likely the rarest)
            longest = max(self.ids, key=lambda k: len(self.keywords[k]))
            return [("kw", key, longest)]
        return [("kw", key, k) for k in self.ids]


class RegexNode(LeafNode):
    """regex / glob: whether it matched comes from the field's RE2 set pass."""

    __slots__ = ("regex", "rid")

    def __init__(self, leaf: Leaf, rid: int, regex: Any) -> None:
        super().__init__(leaf)
        self.rid, self.regex = rid, regex

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        ok = self.rid in scan.regex_matches(self.field, self.view)
        spans: tuple[Span, ...] = ()
        if ok and rec is not None:
            values = scan.reader.strings(self.field, self.view) or ()
            found = [(i, self.regex.search(v)) for i, v in enumerate(values)]
            spans = tuple(
                Span(_label(self.field, i, len(values)), m.start(), m.end(), m.group(0))
                for i, m in found
                if m is not None
            )
        return self.record(rec, ok, spans)

    def triggers(self) -> list[Trigger] | None:
        return [("rx", (self.field, self.view), self.rid)]


class ValueNode(LeafNode):
    """equals / in (and their negations) against a frozenset of normalised values."""

    __slots__ = ("negate", "values")

    def __init__(self, leaf: Leaf) -> None:
        super().__init__(leaf)
        self.values = frozenset(literals(leaf))
        self.negate = leaf.op in ("not_equals", "not_in")

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        values = scan.reader.strings(self.field, self.view) or ()
        found = [i for i, v in enumerate(values) if v in self.values]
        ok = bool(found) != self.negate
        spans: tuple[Span, ...] = ()
        if found and rec is not None:
            n = len(values)
            spans = tuple(
                Span(_label(self.field, i, n), 0, len(values[i]), values[i]) for i in found
            )
        return self.record(rec, ok, spans)

    def triggers(self) -> list[Trigger] | None:
        if self.negate:
            return None
        return [("val", (self.field, self.view), v) for v in sorted(self.values)]


class AffixNode(LeafNode):
    """starts_with / ends_with any of the literals."""

    __slots__ = ("affixes", "prefix")

    def __init__(self, leaf: Leaf) -> None:
        super().__init__(leaf)
        self.affixes = literals(leaf)
        self.prefix = leaf.op == "starts_with"

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        values = scan.reader.strings(self.field, self.view) or ()
        if self.prefix:
            ok = any(v.startswith(self.affixes) for v in values)
        else:
            ok = any(v.endswith(self.affixes) for v in values)
        return self.record(rec, ok, ())


class ExistsNode(LeafNode):
    """exists: true / false (an empty string or list counts as missing)."""

    __slots__ = ()

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        ok = (scan.reader.raw(self.field) is not None) == self.leaf.value
        return self.record(rec, ok, ())

    def triggers(self) -> list[Trigger] | None:
        return [("ex", self.field, None)] if self.leaf.value else None


class NumberNode(LeafNode):
    """gt / gte / lt / lte; numeric strings count as numbers, other values never match."""

    __slots__ = ("compare", "limit")

    def __init__(self, leaf: Leaf) -> None:
        super().__init__(leaf)
        assert isinstance(leaf.value, float)
        self.compare, self.limit = _COMPARE[leaf.op], leaf.value

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        numbers = (as_number(v) for v in scan.reader.raw(self.field) or ())
        ok = any(n is not None and self.compare(n, self.limit) for n in numbers)
        return self.record(rec, ok, ())


class TimeNode(LeafNode):
    """time_in: the message's ``received_at`` is inside the calendar."""

    __slots__ = ("calendar",)

    def __init__(self, leaf: Leaf, calendar: Calendar) -> None:
        super().__init__(leaf)
        self.calendar = calendar

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        when = (scan.reader.raw("received_at") or (None,))[0]
        ok = isinstance(when, datetime) and self.calendar.contains(when)
        return self.record(rec, ok, ())


class AllNode:
    """All children true; short-circuits unless the scan is an explain run."""

    __slots__ = ("children",)

    def __init__(self, children: tuple[Any, ...]) -> None:
        self.children = children

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        if scan.full:
            return all([c.test(scan, rec) for c in self.children])
        return all(c.test(scan, rec) for c in self.children)

    def triggers(self) -> list[Trigger] | None:
        options: list[list[Trigger]] = [t for c in self.children if (t := c.triggers()) is not None]
        if not options:
            return None
        return min(options, key=lambda ts: (max((_RANK[t[0]] for t in ts), default=0), len(ts)))


class AnyNode:
    """Some child true; short-circuits unless the scan is an explain run."""

    __slots__ = ("children",)

    def __init__(self, children: tuple[Any, ...]) -> None:
        self.children = children

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        if scan.full:
            return any([c.test(scan, rec) for c in self.children])
        return any(c.test(scan, rec) for c in self.children)

    def triggers(self) -> list[Trigger] | None:
        out: list[Trigger] = []
        for child in self.children:
            found = child.triggers()
            if found is None:
                return None
            out.extend(found)
        return out


class NotNode:
    """The child is false."""

    __slots__ = ("child",)

    def __init__(self, child: Any) -> None:
        self.child = child

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        return not self.child.test(scan, rec)

    def triggers(self) -> list[Trigger] | None:
        return None
