"""The reference evaluator: interprets the condition tree directly, rule by rule.

No automaton, no regex set, no index — ``str.find`` for keywords and one RE2 search per
regex. Slow, and obviously right; the property tests check that ``engine.evaluate``
decides exactly as this does on generated rules and messages.
"""

from __future__ import annotations

import operator
from datetime import datetime
from functools import lru_cache
from typing import Any

from rules.decision import Accumulator, Decision
from rules.fields import Facts, FieldReader
from rules.model import All, AnyOf, Leaf, Node, Not, Use
from rules.normalize import as_number, boundary_ok
from rules.patterns import compile_regex
from rules.ruleset import RuleSet

_COMPARE = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> Any:
    return compile_regex(pattern)


def occurs(hay: str, keyword: str, word: bool) -> bool:
    """Whether ``keyword`` occurs in ``hay`` (on word boundaries when ``word``)."""
    start = hay.find(keyword)
    while start >= 0:
        if not word or boundary_ok(hay, start, start + len(keyword)):
            return True
        start = hay.find(keyword, start + 1)
    return False


def _text_leaf(leaf: Leaf, values: tuple[str, ...]) -> bool:
    op, value = leaf.op, leaf.value
    if op in ("contains", "contains_any"):
        return any(occurs(v, k, leaf.ascii_word) for k in value for v in values)  # type: ignore[attr-defined]
    if op == "contains_all":
        return all(any(occurs(v, k, leaf.ascii_word) for v in values) for k in value)  # type: ignore[attr-defined]
    if op in ("equals", "in"):
        return any(v in value for v in values)  # type: ignore[operator]
    if op in ("not_equals", "not_in"):
        return not any(v in value for v in values)  # type: ignore[operator]
    if op == "starts_with":
        return any(v.startswith(k) for k in value for v in values)  # type: ignore[attr-defined]
    if op == "ends_with":
        return any(v.endswith(k) for k in value for v in values)  # type: ignore[attr-defined]
    if op in ("regex", "glob"):
        return any(_regex(str(value)).search(v) is not None for v in values)
    raise ValueError(f"not a text operator: {op}")


def _leaf(leaf: Leaf, reader: FieldReader, ruleset: RuleSet) -> bool:
    op = leaf.op
    if op == "exists":
        return (reader.raw(leaf.field) is not None) == leaf.value
    if op == "between":
        low, high = leaf.value  # type: ignore[misc]
        numbers = [as_number(v) for v in reader.raw(leaf.field) or ()]
        return any(n is not None and low <= n <= high for n in numbers)
    if op in _COMPARE:
        numbers = [as_number(v) for v in reader.raw(leaf.field) or ()]
        limit = float(str(leaf.value))
        return any(n is not None and _COMPARE[op](n, limit) for n in numbers)
    if op == "time_in":
        when = (reader.raw("received_at") or (None,))[0]
        calendar = ruleset.calendars[str(leaf.value)]
        return isinstance(when, datetime) and calendar.contains(when)
    return _text_leaf(leaf, reader.strings(leaf.field, leaf.view) or ())


def test(node: Node, reader: FieldReader, ruleset: RuleSet) -> bool:
    """The truth of condition ``node`` for the message behind ``reader``."""
    if isinstance(node, Leaf):
        return _leaf(node, reader, ruleset)
    if isinstance(node, All):
        return all(test(c, reader, ruleset) for c in node.children)
    if isinstance(node, AnyOf):
        return any(test(c, reader, ruleset) for c in node.children)
    if isinstance(node, Not):
        return not test(node.child, reader, ruleset)
    if isinstance(node, Use):
        return test(node.child, reader, ruleset)
    raise TypeError(f"unknown node {node!r}")


def evaluate_naive(ruleset: RuleSet, facts: Facts) -> Decision:
    """Decide like ``engine.evaluate`` (without a trace), the slow and simple way."""
    reader = FieldReader(facts, ruleset.views, ruleset.scan_limit)
    acc = Accumulator()
    for rule in ruleset.rules:
        if not rule.enabled:
            continue
        if (rule.when is None or test(rule.when, reader, ruleset)) and acc.fire(rule):
            break
    return acc.decision(ruleset, ())
