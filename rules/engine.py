"""Evaluate one message against a compiled ruleset: ``evaluate(ruleset, facts) -> Decision``.

Pure and synchronous. Per message: normalise the fields rules look at (once each), run each
keyword automaton once, each regex set once, look the values up in the rule index, then
evaluate only the candidate rules in file order with the stop/continue semantics of
``rules.decision``. ``explain=True`` evaluates every rule without the index and without
short-circuits, so the trace shows every leaf; it decides exactly the same.
``evaluate`` never raises: an internal error gives the defaults tagged ``routing-error``.
"""

from __future__ import annotations

from rules.compiler import Program
from rules.decision import (
    Accumulator,
    ConditionTrace,
    Decision,
    RuleTrace,
    Span,
    error_decision,
)
from rules.fields import TEXT_GROUP, Facts, FieldReader
from rules.normalize import View
from rules.ruleset import RuleSet

__all__ = ["ConditionTrace", "Decision", "Facts", "RuleTrace", "Span", "evaluate"]

Hits = dict[int, list[tuple[int, str, int, int]]]  # keyword id → (value index, value, start, end)


class Scan:
    """Per-message caches shared by all rules: keyword hits, regex-set results, values."""

    __slots__ = ("_hits", "_rx", "full", "prog", "reader")

    def __init__(self, prog: Program, reader: FieldReader, full: bool) -> None:
        self.prog, self.reader, self.full = prog, reader, full
        self._hits: dict[tuple[str, View], Hits] = {}
        self._rx: dict[tuple[str, View], frozenset[int]] = {}

    def keyword_hits(self, field: str, view: View) -> Hits:
        """Every occurrence of every keyword of ``field``'s automaton (overlapping)."""
        key = (field, view)
        hits = self._hits.get(key)
        if hits is not None:
            return hits
        if field in TEXT_GROUP:
            self._scan_text(view)
            return self._hits[key]
        hits = {}
        automaton = self.prog.automata.get(key)
        values = self.reader.strings(field, view)
        if automaton is not None and values:
            for vi, value in enumerate(values):
                for kw, start, end in automaton.find_matches_as_indexes(value, overlapping=True):
                    hits.setdefault(kw, []).append((vi, value, start, end))
        self._hits[key] = hits
        return hits

    def _scan_text(self, view: View) -> None:
        """One pass over ``text`` yields the hits of subject, body and text."""
        subject: Hits = {}
        body: Hits = {}
        text: Hits = {}
        automaton = self.prog.automata.get(("text", view))
        joined = self.reader.strings("text", view)
        if automaton is not None and joined:
            hay = joined[0]
            subj = (self.reader.strings("subject", view) or ("",))[0]
            rest = (self.reader.strings("body", view) or ("",))[0]
            cut = len(subj)
            for kw, start, end in automaton.find_matches_as_indexes(hay, overlapping=True):
                text.setdefault(kw, []).append((0, hay, start, end))
                if end <= cut:
                    subject.setdefault(kw, []).append((0, subj, start, end))
                elif start > cut:
                    body.setdefault(kw, []).append((0, rest, start - cut - 1, end - cut - 1))
        self._hits[("subject", view)] = subject
        self._hits[("body", view)] = body
        self._hits[("text", view)] = text

    def regex_matches(self, field: str, view: View) -> frozenset[int]:
        """Ids of the field's regexes that match at least one of its values."""
        key = (field, view)
        found = self._rx.get(key)
        if found is None:
            regex_set = self.prog.regex_sets.get(key)
            values = self.reader.strings(field, view)
            ids: set[int] = set()
            if regex_set is not None and values:
                for value in values:
                    ids.update(regex_set.matches(value))
            found = self._rx[key] = frozenset(ids)
        return found

    def candidates(self) -> list[int]:
        """Indexes of the rules that may match, in file order."""
        prog, reader = self.prog, self.reader
        found = set(prog.always)
        for (scope, view), table in prog.kw_index.items():
            for kw in self.keyword_hits(scope, view):
                found.update(table.get(kw, ()))
        for (field, view), table in prog.rx_index.items():
            for rid in self.regex_matches(field, view):
                found.update(table.get(rid, ()))
        for (field, view), values in prog.val_index.items():
            for value in reader.strings(field, view) or ():
                found.update(values.get(value, ()))
        for field, rules in prog.ex_index.items():
            if reader.raw(field) is not None:
                found.update(rules)
        return sorted(found)


def _evaluate(ruleset: RuleSet, facts: Facts, explain: bool) -> Decision:
    prog = ruleset.program
    scan = Scan(prog, FieldReader(facts, ruleset.views, ruleset.scan_limit), explain)
    order = range(len(prog.rules)) if explain else scan.candidates()
    acc = Accumulator()
    trace: list[RuleTrace] = []
    for index in order:
        compiled = prog.rules[index]
        rule = compiled.rule
        rec: list[ConditionTrace] = []
        matched = compiled.node is None or compiled.node.test(scan, rec)
        trace.append(RuleTrace(rule.id, rule.where.line, matched, tuple(rec)))
        if matched and acc.fire(rule):
            break
    return acc.decision(ruleset, tuple(trace))


def evaluate(ruleset: RuleSet, facts: Facts, *, explain: bool = False) -> Decision:
    """Route one message. Never raises; see the module docstring."""
    try:
        return _evaluate(ruleset, facts, explain)
    except Exception as exc:  # a bug must not lose the message: route to the defaults (D4)
        return error_decision(ruleset, exc)


def explain(ruleset: RuleSet, facts: Facts) -> Decision:
    """``evaluate`` with every rule and every leaf in the trace."""
    return evaluate(ruleset, facts, explain=True)
