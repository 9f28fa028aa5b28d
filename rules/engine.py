"""Evaluate one message against a compiled ruleset: ``evaluate(ruleset, facts) -> Decision``.

Pure and synchronous. Per message: normalise the fields rules look at (once each), run each
keyword automaton once over the UTF-8 of its field (subject, body and text share one pass),
each regex set once, look the values up in the rule index, then
evaluate only the candidate rules in file order with the stop/continue semantics of
``rules.decision``. The routine trace lists the rules evaluated and whether each matched;
its leaves are left out (recording them and their keyword spans cost about a fifth of the
evaluation, and only explain shows them). ``explain=True`` evaluates every rule without the
index and without short-circuits, so the trace shows every leaf with its spans, regex leaves
too (one more RE2 search each); it decides exactly the same.
``evaluate`` never raises: an internal error gives the defaults tagged ``routing-error``.
"""

from __future__ import annotations

from collections.abc import Collection

from rules.compiler import Program, scope_of
from rules.decision import (
    Accumulator,
    ConditionTrace,
    Decision,
    RuleTrace,
    Span,
    error_decision,
)
from rules.fields import Facts, FieldReader
from rules.nodes import COMPARE
from rules.normalize import View, as_number
from rules.ruleset import RuleSet

__all__ = ["ConditionTrace", "Decision", "Facts", "RuleTrace", "Span", "evaluate"]

Match = tuple[int, int, int]  # (keyword id, start, end): byte offsets into one value
Hit = tuple[int, bytes, int, int, int]  # (value index, the value's UTF-8, start, end, keyword)


class Scan:
    """Per-message caches shared by all rules: keyword hits, regex-set results.

    Keywords of ``subject``, ``body`` and ``text`` are found by ONE automaton pass over the
    UTF-8 of ``text`` (subject + "\\n" + body); a hit ending within the subject is also a
    subject hit, one starting after the newline a body hit.
    """

    __slots__ = ("_found", "found_ids", "found_rx", "full", "prog", "reader")

    def __init__(self, prog: Program, reader: FieldReader, full: bool) -> None:
        self.prog, self.reader, self.full = prog, reader, full
        self._found: dict[tuple[str, View], list[list[Match]]] = {}
        # (field, view) → keyword ids found / regex ids matched; nodes read these directly
        self.found_ids: dict[tuple[str, View], set[int]] = {}
        self.found_rx: dict[tuple[str, View], frozenset[int]] = {}

    def _matches(self, scope: str, view: View) -> list[list[Match]]:
        """The automaton's overlapping matches in each value of ``scope`` (one pass each)."""
        key = (scope, view)
        found = self._found.get(key)
        if found is None:
            automaton = self.prog.automata.get(key)
            values = self.reader.encoded(scope, view) if automaton is not None else None
            find = automaton.find_matches_as_indexes if automaton is not None else None
            found = [find(v, overlapping=True) for v in values] if find and values else []
            self._found[key] = found
        return found

    def _cut(self, view: View) -> int:
        """Byte length of the subject: where the body starts in ``text`` (after a newline)."""
        return len((self.reader.encoded("subject", view) or (b"",))[0])

    def keyword_ids(self, field: str, view: View) -> set[int]:
        """Ids of the keywords of ``field``'s automaton that occur in it."""
        key = (field, view)
        ids = self.found_ids.get(key)
        if ids is None:
            found = self._matches(scope_of(field), view)
            if field == "subject" and found:
                cut = self._cut(view)
                ids = {kw for kw, _, end in found[0] if end <= cut}
            elif field == "body" and found:
                cut = self._cut(view)
                ids = {kw for kw, start, _ in found[0] if start > cut}
            else:
                ids = {m[0] for matches in found for m in matches}
            self.found_ids[key] = ids
        return ids

    def hits(self, field: str, view: View, wanted: Collection[int]) -> list[Hit]:
        """Occurrences of the ``wanted`` keywords in ``field``, offsets into its own value."""
        found = self._matches(scope_of(field), view)
        values = self.reader.encoded(field, view)
        if not found or not values:
            return []
        if field == "subject":
            cut, hay = self._cut(view), values[0]
            return [(0, hay, s, e, kw) for kw, s, e in found[0] if e <= cut and kw in wanted]
        if field == "body":
            cut, hay = self._cut(view), values[0]
            return [
                (0, hay, s - cut - 1, e - cut - 1, kw)
                for kw, s, e in found[0]
                if s > cut and kw in wanted
            ]
        return [
            (vi, values[vi], s, e, kw)
            for vi, matches in enumerate(found)
            for kw, s, e in matches
            if kw in wanted
        ]

    def regex_matches(self, field: str, view: View) -> frozenset[int]:
        """Ids of the field's regexes that match at least one of its values."""
        key = (field, view)
        found = self.found_rx.get(key)
        if found is None:
            regex_set = self.prog.regex_sets.get(key)
            values = self.reader.encoded(field, view) if regex_set is not None else None
            ids: set[int] = set()
            for value in values or ():
                ids.update(regex_set.matches(value))  # type: ignore[union-attr]
            found = self.found_rx[key] = frozenset(ids)
        return found

    def candidates(self) -> list[int]:
        """Indexes of the rules that may match, in file order."""
        prog, reader = self.prog, self.reader
        found = set(prog.always)
        update = found.update
        for (scope, view), by_keyword in prog.kw_index.items():
            ids = self.found_ids.get((scope, view))
            for kw in self.keyword_ids(scope, view) if ids is None else ids:
                update(by_keyword[kw])
        for (field, view), table in prog.rx_index.items():
            for rid in self.regex_matches(field, view):
                update(table.get(rid, ()))
        strings = reader.strings
        for (field, view), values in prog.val_index.items():
            for value in strings(field, view) or ():
                rules = values.get(value)
                if rules is not None:
                    update(rules)
        for field, rules in prog.ex_index.items():
            if reader.raw(field) is not None:
                update(rules)
        for field, limits in prog.num_index.items():
            raw = reader.raw(field)
            numbers = [n for n in map(as_number, raw) if n is not None] if raw else None
            for (op, limit), rules in limits.items() if numbers else ():
                compare = COMPARE[op]
                for n in numbers:  # type: ignore[union-attr]
                    if compare(n, limit):
                        update(rules)
                        break
        return sorted(found)


def _evaluate(ruleset: RuleSet, facts: Facts, explain: bool) -> Decision:
    prog = ruleset.program
    scan = Scan(prog, FieldReader(facts, ruleset.views, ruleset.scan_limit), explain)
    acc = Accumulator()
    trace: list[RuleTrace] = []
    rules = prog.rules
    if explain:  # every rule, every leaf recorded with its spans
        for compiled in rules:
            rec: list[ConditionTrace] = []
            node = compiled.node
            matched = node is None or node.test(scan, rec)
            trace.append(_new_trace(RuleTrace, (compiled.id, compiled.line, matched, tuple(rec))))
            if matched and acc.fire(compiled.rule):
                break
        return acc.decision(ruleset, tuple(trace))
    for index in scan.candidates():  # routine: candidate rules, no leaf trace
        compiled = rules[index]
        node = compiled.node
        matched = node is None or node.test(scan, None)
        trace.append(compiled.traced[matched])
        if matched and acc.fire(compiled.rule):
            break
    return acc.decision(ruleset, tuple(trace))


_new_trace = tuple.__new__  # builds the NamedTuple without its keyword-handling __new__


def evaluate(ruleset: RuleSet, facts: Facts, *, explain: bool = False) -> Decision:
    """Route one message. Never raises; see the module docstring."""
    try:
        return _evaluate(ruleset, facts, explain)
    except Exception as exc:  # a bug must not lose the message: route to the defaults (D4)
        return error_decision(ruleset, exc)


def explain(ruleset: RuleSet, facts: Facts) -> Decision:
    """``evaluate`` with every rule and every leaf in the trace."""
    return evaluate(ruleset, facts, explain=True)
