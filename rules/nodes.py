"""Compiled condition nodes: what ``engine`` runs for each candidate rule.

Each node has ``test(scan, rec)``, which reads the per-message ``Scan`` (keyword hits from
the shared automata, regex-set results, normalised values) and appends a ``ConditionTrace``
per evaluated leaf to ``rec``; and ``triggers()``, the atoms at least one of which must be
satisfied for the node to be true (None when there is no such set) — the rule index. Each
atom also says whether it is *sure*: whether its being satisfied is enough for the node to
be true (a ``text`` contains_any keyword, a regex, an equals/in value, gt…, exists: true —
also inside ``any``): a rule the index selects through a sure atom matched, without a test.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rules.calendars import Calendar
from rules.decision import ConditionTrace, Span
from rules.model import Leaf
from rules.normalize import View, as_number, boundary_ok_bytes, char_offset

if TYPE_CHECKING:
    from rules.engine import Hit, Scan

Trigger = tuple[str, tuple[str, View] | str, Any, bool]  # (kind, key, atom, sure)
Weigh = Callable[[Trigger], float]  # how often an atom is expected to be satisfied
_RANK = {"kw": 0, "rx": 1, "val": 2, "num": 3, "ex": 3}


_MAX_SPANS = 16
_new_trace = _new_span = tuple.__new__  # builds NamedTuples without keyword handling
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "between": lambda n, limit: limit[0] <= n <= limit[1],  # type: ignore[index]
}


def literals(leaf: Leaf) -> tuple[str, ...]:
    """The normalised literals of a keyword, value or affix leaf."""
    assert isinstance(leaf.value, tuple)
    return leaf.value


def _label(field: str, index: int, count: int) -> str:
    return field if count <= 1 else f"{field}[{index}]"


class LeafNode:
    """Base for leaves: ``info`` is the static part of the trace entry; the entries without
    spans are made once (they are immutable) and shared by every evaluation."""

    __slots__ = ("field", "info", "key", "leaf", "traced", "view")

    def __init__(self, leaf: Leaf) -> None:
        self.leaf, self.field, self.view = leaf, leaf.field, leaf.view
        self.key = (leaf.field, leaf.view)
        self.info = (leaf.where.path, leaf.where.line, leaf.field, leaf.op)
        self.traced = (
            _new_trace(ConditionTrace, (*self.info, False, ())),
            _new_trace(ConditionTrace, (*self.info, True, ())),
        )

    def record(self, rec: list[ConditionTrace] | None, ok: bool, spans: tuple[Span, ...]) -> bool:
        """Append this leaf's trace entry to ``rec`` (when tracing) and return ``ok``."""
        if rec is not None:
            rec.append(
                _new_trace(ConditionTrace, (*self.info, ok, spans)) if spans else self.traced[ok]
            )
        return ok

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        return None


class KeywordNode(LeafNode):
    """contains / contains_any / contains_all, answered from the shared automaton's hits."""

    __slots__ = ("every", "id_set", "ids", "keywords", "scope", "scope_key", "word")

    def __init__(self, leaf: Leaf, scope: str, ids: tuple[int, ...]) -> None:
        super().__init__(leaf)
        self.scope, self.ids, self.id_set = scope, ids, frozenset(ids)
        self.scope_key = (scope, leaf.view)
        self.keywords = dict(zip(ids, literals(leaf), strict=True))
        self.every = leaf.op == "contains_all"
        self.word = leaf.ascii_word

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        every, id_set, found_ids = self.every, self.id_set, scan.found_ids
        ids = found_ids.get(self.key)
        if ids is None:
            # A subject or body keyword is found by the text's scan, whose ids the index
            # has mostly collected already: when they fail the test, the subject's or the
            # body's (a subset of them) fail it too, and need not be picked out of its hits.
            ids = found_ids.get(self.scope_key)
            if ids is None or (id_set <= ids if every else not id_set.isdisjoint(ids)):
                ids = scan.keyword_ids(self.field, self.view)
        ok = id_set <= ids if every else not id_set.isdisjoint(ids)
        if rec is None and not (ok and self.word):  # the routine case: no trace, no spans
            return ok
        hits = None
        if ok and self.word:  # the automaton found them; are some on word boundaries?
            hits = scan.hits(self.field, self.view, self.id_set & ids)
            if rec is None and not self.every:  # routine contains_any: the first will do
                return any(boundary_ok_bytes(h[1], h[2], h[3]) for h in hits)
            hits = self._bounded(hits)
            found = {h[4] for h in hits}
            ok = found >= self.id_set if self.every else bool(found)
        if not ok or rec is None:
            return self.record(rec, ok, ())
        if hits is None:
            hits = scan.hits(self.field, self.view, self.id_set)
        return self.record(rec, ok, self._spans(scan, hits))

    @staticmethod
    def _bounded(hits: list[Hit]) -> list[Hit]:
        return [h for h in hits if boundary_ok_bytes(h[1], h[2], h[3])]

    def _spans(self, scan: Scan, hits: list[Hit]) -> tuple[Span, ...]:
        """The first hits as spans: character offsets into the normalised value, in order."""
        count = len(scan.reader.encoded(self.field, self.view) or ())
        keywords = self.keywords
        if len(hits) == 1 and count == 1:  # the common case
            _, hay, start, _, kw = hits[0]
            chars = char_offset(hay, start)
            return (_new_span(Span, (self.field, chars, chars + len(keywords[kw]), keywords[kw])),)
        ordered = sorted(
            (_label(self.field, vi, count), start, end, keywords[kw], hay)
            for vi, hay, start, end, kw in hits
        )
        spans = []
        label, done, chars = "", 0, 0  # byte offsets → characters, incrementally per value
        for field, start, _, keyword, hay in ordered[:_MAX_SPANS]:
            if field != label:
                label, done, chars = field, 0, 0
            chars += char_offset(hay, start, done)
            done = start
            spans.append(Span(field, chars, chars + len(keyword), keyword))
        return tuple(spans)

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        key = self.scope_key
        if self.every:  # one keyword is required: take the longest (likely the rarest)
            longest = max(self.ids, key=lambda k: len(self.keywords[k]))
            return [("kw", key, longest, False)]
        # not sure: subject/body keywords are found by the whole text's scan (a hit may be in
        # the other part), and ascii_word hits may fail the boundary test
        sure = self.field == self.scope and not self.word
        return [("kw", key, k, sure) for k in self.ids]


class RegexNode(LeafNode):
    """regex / glob: whether it matched comes from the field's RE2 set pass; where it matched
    (one more RE2 search over the value) is worked out for explain runs only."""

    __slots__ = ("regex", "rid")

    def __init__(self, leaf: Leaf, rid: int, regex: Any) -> None:
        super().__init__(leaf)
        self.rid, self.regex = rid, regex

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        found = scan.found_rx.get(self.key)
        if found is None:
            found = scan.regex_matches(self.field, self.view)
        ok = self.rid in found
        if rec is None:
            return ok
        if not ok:  # (spans cost one more search: explain only, as rec is)
            return self.record(rec, ok, ())
        values = scan.reader.encoded(self.field, self.view) or ()
        spans = []
        for i, hay in enumerate(values):
            found = self.regex.search(hay)  # on the UTF-8 the set matched: byte offsets
            if found is not None:
                start = char_offset(hay, found.start())
                text = hay[found.start() : found.end()].decode("utf-8")
                spans.append(
                    Span(_label(self.field, i, len(values)), start, start + len(text), text)
                )
        return self.record(rec, ok, tuple(spans))

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        return [("rx", (self.field, self.view), self.rid, True)]


class ValueNode(LeafNode):
    """equals / in (and their negations) against a frozenset of normalised values."""

    __slots__ = ("negate", "values")

    def __init__(self, leaf: Leaf) -> None:
        super().__init__(leaf)
        self.values = frozenset(literals(leaf))
        self.negate = leaf.op in ("not_equals", "not_in")

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        values = scan.reader.strings(self.field, self.view) or ()
        if len(values) == 1 and rec is None:  # the common case: one value, no trace
            return (values[0] in self.values) != self.negate
        if len(values) == 1 and values[0] not in self.values:
            return self.record(rec, self.negate, ())
        found = [i for i, v in enumerate(values) if v in self.values]
        ok = bool(found) != self.negate
        spans: tuple[Span, ...] = ()
        if found and rec is not None:
            n = len(values)
            spans = tuple(
                Span(_label(self.field, i, n), 0, len(values[i]), values[i]) for i in found
            )
        return self.record(rec, ok, spans)

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        if self.negate:
            return None
        return [("val", (self.field, self.view), v, True) for v in sorted(self.values)]


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

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        return [("ex", self.field, None, False)]  # a missing field starts and ends with nothing


class ExistsNode(LeafNode):
    """exists: true / false (an empty string or list counts as missing)."""

    __slots__ = ()

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        ok = (scan.reader.raw(self.field) is not None) == self.leaf.value
        return self.record(rec, ok, ())

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        return [("ex", self.field, None, True)] if self.leaf.value else None


class NumberNode(LeafNode):
    """gt / gte / lt / lte; numeric strings count as numbers, other values never match."""

    __slots__ = ("compare", "limit")

    def __init__(self, leaf: Leaf) -> None:
        super().__init__(leaf)
        assert isinstance(leaf.value, float | tuple)
        self.compare, self.limit = COMPARE[leaf.op], leaf.value

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        ok = False
        for value in scan.reader.raw(self.field) or ():
            number = as_number(value)
            if number is not None and self.compare(number, self.limit):
                ok = True
                break
        return ok if rec is None else self.record(rec, ok, ())

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        if self.leaf.op == "between":  # a value >= low is needed: the index tests that
            return [("num", self.field, ("gte", self.limit[0]), False)]  # type: ignore[index]
        return [("num", self.field, (self.leaf.op, self.limit), True)]


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
        if rec is not None:  # explain: every child, for the trace
            return all([c.test(scan, rec) for c in self.children])
        for child in self.children:  # noqa: SIM110 -- a loop is faster than all(generator)
            if not child.test(scan, rec):
                return False
        return True

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        """The atoms of one child: the rarest kind (keywords before regexes before values
        before numbers), then the fewest expected hits (``weigh``)."""
        if len(self.children) == 1:
            return self.children[0].triggers(weigh)  # type: ignore[no-any-return]
        best = self._best(weigh)
        if best is None:
            return None
        return [(kind, key, atom, False) for kind, key, atom, _ in best[1]]  # others must hold

    def _best(self, weigh: Weigh) -> tuple[int, list[Trigger]] | None:
        """The child whose atoms ``triggers`` takes, and those atoms; None when none has any."""
        options: list[tuple[int, list[Trigger]]] = [
            (i, t) for i, c in enumerate(self.children) if (t := c.triggers(weigh)) is not None
        ]
        if not options:
            return None
        return min(
            options,
            key=lambda o: (max((_RANK[t[0]] for t in o[1]), default=0), sum(map(weigh, o[1]))),
        )

    def residual(self, weigh: Weigh) -> Any:
        """What is left to test when the index selected this node's rule through one of its
        ``triggers`` (same ``weigh``): when each of them is sure for the child they come
        from, that child holds, and only the others need a test (an ``all`` of a keyword and
        a channel, selected by the keyword: only the channel). Else the node itself."""
        best = self._best(weigh) if len(self.children) > 1 else None
        if best is None or not all(t[3] for t in best[1]):
            return self
        rest = tuple(c for i, c in enumerate(self.children) if i != best[0])
        return rest[0] if len(rest) == 1 else AllNode(rest)


class AnyNode:
    """Some child true; short-circuits unless the scan is an explain run."""

    __slots__ = ("children",)

    def __init__(self, children: tuple[Any, ...]) -> None:
        self.children = children

    def test(self, scan: Scan, rec: list[ConditionTrace] | None) -> bool:
        if rec is not None:  # explain: every child, for the trace
            return any([c.test(scan, rec) for c in self.children])
        for child in self.children:  # noqa: SIM110 -- a loop is faster than any(generator)
            if child.test(scan, rec):
                return True
        return False

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        out: list[Trigger] = []
        for child in self.children:
            found = child.triggers(weigh)
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

    def triggers(self, weigh: Weigh) -> list[Trigger] | None:
        return None
