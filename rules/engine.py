"""Evaluate one message against a compiled ruleset: ``evaluate(ruleset, facts) -> Decision``.

Pure and synchronous. Per message: normalise the fields rules look at (once each), run each
keyword automaton once over the UTF-8 of its field (subject, body and text share one pass),
each regex set once (the subject's only when one of its regexes matched the text), look the
values up in the rule index (the entries of a field's value are remembered from message to
message: channels, domains and tiers recur), then evaluate only the candidate rules in file
order with the stop/continue semantics of ``rules.decision``; a rule selected through an
atom that is enough for its condition (a ``text`` keyword, a regex, a value) matched without
a test. The routine trace lists the rules evaluated and whether each matched;
its leaves are left out (recording them and their keyword spans cost about a fifth of the
evaluation, and only explain shows them). ``explain=True`` evaluates every rule without the
index and without short-circuits, so the trace shows every leaf with its spans, regex leaves
too (one more RE2 search each); it decides exactly the same.
``evaluate`` never raises: an internal error gives the defaults tagged ``routing-error``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from operator import itemgetter
from typing import Any

from rules.compiler import Key, Limit, Program, RegexSet, ValueMemo, scope_of
from rules.decision import (
    Accumulator,
    ConditionTrace,
    Decision,
    Effect,
    RuleTrace,
    Span,
    decide,
    error_decision,
)
from rules.fields import Facts, FieldReader
from rules.normalize import View, as_number
from rules.ruleset import RuleSet

__all__ = ["ConditionTrace", "Decision", "Facts", "RuleTrace", "Span", "evaluate"]

Match = tuple[int, int, int]  # (start, end, keyword id): byte offsets into one value
Hit = tuple[int, bytes, int, int, int]  # (value index, the value's UTF-8, start, end, keyword)


class Scan:
    """Per-message caches shared by all rules: keyword hits, regex-set results.

    Keywords of ``subject``, ``body`` and ``text`` are found by ONE automaton pass over the
    UTF-8 of ``text`` (subject + "\\n" + body); a hit ending within the subject is also a
    subject hit, one starting after the newline a body hit.
    """

    __slots__ = ("_found", "found_ids", "found_rx", "prog", "reader")

    def __init__(self, prog: Program, reader: FieldReader) -> None:
        self.prog, self.reader = prog, reader
        self._found: dict[tuple[str, View], list[list[Match]]] = {}
        # (field, view) → keyword ids found / regex ids matched; nodes read these directly
        self.found_ids: dict[tuple[str, View], set[int]] = {}
        self.found_rx: dict[tuple[str, View], Collection[int]] = {}

    def _matches(self, scope: str, view: View) -> list[list[Match]]:
        """The automaton's overlapping matches in each value of ``scope`` (one pass each)."""
        key = (scope, view)
        found = self._found.get(key)
        if found is None:
            automaton = self.prog.automata.get(key)
            values = self.reader.encoded(scope, view) if automaton is not None else None
            find = automaton.find_overlapping if automaton is not None else None
            found = [find(v) for v in values] if find and values else []
            self._found[key] = found
        return found

    def _scope_ids(self, key: Key, automaton: Any) -> set[int]:
        """Scan the values of a keyword scope (``key`` is (scope, view)) with its automaton:
        cache the matches and return the ids found (``keyword_ids`` of the scope itself)."""
        values = self.reader.encoded(*key)
        find = automaton.find_overlapping
        if values is None:
            found: list[list[Match]] = []
            ids: set[int] = set()
        elif len(values) == 1:  # the common case: one pass
            found = [find(values[0])]
            ids = set(map(_KEYWORD, found[0]))  # (a comprehension is one more call)
        else:
            found = [find(v) for v in values]
            ids = {m[2] for matches in found for m in matches}
        self._found[key] = found
        self.found_ids[key] = ids
        return ids

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
                ids = {kw for _, end, kw in found[0] if end <= cut}
            elif field == "body" and found:
                cut = self._cut(view)
                ids = {kw for start, _, kw in found[0] if start > cut}
            else:
                ids = {m[2] for matches in found for m in matches}
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
            return [(0, hay, s, e, kw) for s, e, kw in found[0] if e <= cut and kw in wanted]
        if field == "body":
            cut, hay = self._cut(view), values[0]
            return [
                (0, hay, s - cut - 1, e - cut - 1, kw)
                for s, e, kw in found[0]
                if s > cut and kw in wanted
            ]
        return [
            (vi, values[vi], s, e, kw)
            for vi, matches in enumerate(found)
            for s, e, kw in matches
            if kw in wanted
        ]

    def regex_matches(self, field: str, view: View) -> Collection[int]:
        """Ids of the field's regexes that match at least one of its values."""
        key = (field, view)
        found = self.found_rx.get(key)
        if found is None:
            found = self._regex_ids(key, self.prog.regex_sets[key])
        return found

    def _regex_ids(self, key: Key, regex_set: RegexSet) -> Collection[int]:
        """Run the regex set of ``key`` (field, view) over the field's values; cache the ids."""
        guard = self.prog.regex_guards.get(key)
        if guard is not None and guard.isdisjoint(self.regex_matches("text", key[1])):
            values = None  # none of the subject's regexes matched the text (compiler._add_guards)
        else:
            values = self.reader.encoded(*key)
        found: Collection[int]
        if values is None:
            found = ()
        elif len(values) == 1:  # the common case: the set's own answer (a short list)
            found = regex_set.matches(values[0])
        else:
            found = {rid for value in values for rid in regex_set.matches(value)}
        self.found_rx[key] = found
        return found

    def candidates(self) -> list[int]:
        """Entries (``Program``) of the rules that may match, in file order; fills the caches
        the nodes of those rules read (keyword ids, regex ids, raw and normalised values) on
        the way."""
        prog, reader = self.prog, self.reader
        found = set(prog.always)
        update = found.update
        for key, automaton, by_keyword in prog.kw_index:
            for kw in self._scope_ids(key, automaton):
                update(by_keyword[kw])
        for key, regex_set, by_regex in prog.rx_index:
            for rid in self._regex_ids(key, regex_set):
                update(by_regex[rid])
        facts = reader.facts
        raw_cache = reader._raw  # the nodes read the same values: ``FieldReader.raw``
        strings_cache = reader._strings
        for field, key, table, memo, get in prog.val_index:
            values = raw_cache[field] = get(facts)  # (only a miss normalises them)
            if values is None:
                strings_cache[key] = None
                continue
            one = values[0] if len(values) == 1 else None
            known = memo.get(one) if type(one) is str else None
            if known is None:  # normalise and look up (and remember a single string's rules)
                known = _value_rules(reader, key, table, memo, one)
            rules, strings_cache[key] = known  # what ``FieldReader.strings`` would return
            update(rules)
        raw = reader.raw
        for field, rules in prog.ex_index:
            if raw(field) is not None:
                update(rules)
        for field, limits, memo, get in prog.num_index:
            values = raw_cache[field] = get(facts)
            if values is None:
                continue
            one = values[0] if len(values) == 1 else None
            rules = memo.get(one) if type(one) in _SCALARS else None
            if rules is None:
                rules = _number_rules(values, limits, memo, one)
            update(rules)
        return sorted(found)


_KEYWORD = itemgetter(2)  # Match's keyword id
_MEMO_SIZE = 4096  # raw values remembered per indexed field (channels, domains, tiers, …)


def _value_rules(
    reader: FieldReader,
    key: Key,
    table: Mapping[str, tuple[int, ...]],
    memo: ValueMemo,
    one: object,
) -> tuple[tuple[int, ...], tuple[str, ...] | None]:
    """The index entries of the normalised values of field ``key`` (field, view), and those
    values; when its value is ``one`` string, remembered in ``memo`` (raw string → both), as
    the values of the fields the index looks up (channel, sender domain, tier, headers) recur
    from message to message: their normalisation was a tenth of an evaluation, and the value
    nodes of the candidate rules read them again. The memo belongs to the ``Program``, whose
    views and scan limit do not change. Not ``text``: its one raw value (subject + "\\n" +
    body) does not say where the subject ends, which its normalised value may depend on.
    """
    strings = reader.strings(*key)
    rules = tuple(e for value in strings or () for e in table.get(value, ()))
    if type(one) is str and key[0] != "text":
        if len(memo) >= _MEMO_SIZE:  # arbitrary values (a header with ids): start over
            memo.clear()
        memo[one] = (rules, strings)
    return rules, strings


_SCALARS = (int, str)  # raw values a memo keys: counts, amounts, numeric strings


def _number_rules(
    values: tuple[object, ...],
    limits: tuple[Limit, ...],
    memo: dict[object, tuple[int, ...]],
    one: object,
) -> tuple[int, ...]:
    """The index entries of the limits some number of ``values`` satisfies; when the value
    is ``one`` int or string, remembered in ``memo`` (``_value_rules``)."""
    numbers = [n for n in map(as_number, values) if n is not None]
    rules: tuple[int, ...] = ()
    for compare, limit, entries in limits if numbers else ():
        for n in numbers:
            if compare(n, limit):
                rules += entries
                break
    if type(one) in _SCALARS:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[one] = rules
    return rules


def _evaluate(ruleset: RuleSet, facts: Facts, explain: bool) -> Decision:
    prog = ruleset.program
    scan = Scan(prog, FieldReader(facts, ruleset.views, ruleset.scan_limit))
    trace: list[RuleTrace] = []
    if explain:  # every rule, every leaf recorded with its spans
        acc = Accumulator()
        for compiled in prog.rules:
            rec: list[ConditionTrace] = []
            node = compiled.node
            matched = node is None or node.test(scan, rec)
            trace.append(_new_trace(RuleTrace, (compiled.id, compiled.line, matched, tuple(rec))))
            if matched and acc.fire(compiled.rule):
                break
        return acc.decision(ruleset, tuple(trace))
    fired: list[Effect] = []  # routine: candidate rules, no leaf trace
    routine = prog.routine
    last = -1
    for entry in scan.candidates():  # see ``Program``: a rule's sure entry comes first
        index = entry >> 1
        if index == last:  # its other entry: evaluated already
            continue
        last = index
        node, miss, hit, effect, stops = routine[index]
        if entry & 1 and not node.test(scan, None):
            trace.append(miss)
            continue
        trace.append(hit)
        fired.append(effect)
        if stops:
            break
    return decide(ruleset, fired, tuple(trace))


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
