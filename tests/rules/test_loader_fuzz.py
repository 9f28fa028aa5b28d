"""Whatever an admin writes, loading ends in a RuleSet or a RuleFileError — never a traceback."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.loader import RuleFileError, RuleSet, load_text

KEYS = [
    *("version", "settings", "teams", "categories", "calendars", "sla", "lists", "conditions"),
    *("defaults", "rules", "id", "when", "set", "continue", "stop", "enabled", "team", "category"),
    *("priority", "tags", "notify", "inbox", "all", "any", "not", "use", "time_in", "subject"),
    *("text", "from", "header.x", "fields.a.b", "attachments", "received_at", "contains"),
    *("contains_any", "equals", "in", "regex", "glob", "exists", "gt", "ascii_word", "weekdays"),
    *("times", "start", "end", "holidays", "location", "first_response", "normalize", "chinese"),
    *("timezone", "words", "t", "c", "always", "urgent", "low"),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [*KEYS, "$words", "$nope", "$$x", "(", "09:00", "24:00", "4h", "CN", "t2s", ""]
    ),
    st.text(max_size=5),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
GOOD = {
    "version": 1,
    "teams": {"t": {"inbox": ["x"]}},
    "lists": {"words": ["退款", "refund"]},
    "defaults": {"team": "t", "category": "c", "priority": "low"},
    "rules": [{"id": "r", "when": {"text": {"contains": "x"}}}],
}


def _outcome(text: str) -> RuleSet | RuleFileError:
    try:
        return load_text(text, "fuzz.yaml", outputs={"x"})
    except RuleFileError as exc:
        error = exc
    assert error.errors, "RuleFileError without an error"
    assert all(p.line >= 1 and p.col >= 1 for p in error.problems)
    return error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(list(GOOD)), VALUES, max_size=5))
def test_mutated_sections(overrides: dict[str, Any]) -> None:
    _outcome(json.dumps({**GOOD, **overrides}, ensure_ascii=False))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["when", "set", "id", "stop"]), VALUES), max_size=3))
def test_mutated_rules(changes: list[tuple[str, Any]]) -> None:
    rule: dict[str, Any] = {"id": "r"}
    rule.update(changes)
    _outcome(json.dumps({**GOOD, "rules": [rule, {"id": "s", "when": VALUES_EXAMPLE}]}))


VALUES_EXAMPLE = {"any": [{"use": "nope"}, {"subject": {"regex": "(?P<x>a)"}}]}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _outcome(text)
