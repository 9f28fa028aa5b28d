"""Compile checked rules into a ``Program``: shared automata, regex sets, and a rule index.

* Every keyword of every rule on one field (and view) goes into ONE ``ahocorasick_rs``
  automaton over UTF-8 bytes; ``subject``, ``body`` and ``text`` share one, run once over
  ``text`` (scanning bytes is ~1.3x faster than ``str``, whose offsets the crate converts).
* Every regex and glob on one field goes into one RE2 ``Set`` (plus a compiled regex each,
  for spans), also matched against the UTF-8 bytes; ``equals``/``in`` become frozensets.
* Each rule is filed under the atoms its condition requires (``nodes.*.triggers``): a
  keyword, a regex, a value, a field that exists, or a number comparison (``gte: 10000`` is
  an atom satisfied by the message's number, not by the field's mere presence); per message
  only rules with a satisfied atom, plus the rules with no such atom, are evaluated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ahocorasick_rs
import re2

from rules.calendars import Calendar
from rules.decision import RuleTrace
from rules.fields import TEXT_GROUP
from rules.model import (
    AFFIX_OPS,
    KEYWORD_OPS,
    NUMBER_OPS,
    PATTERN_OPS,
    VALUE_OPS,
    All,
    AnyOf,
    Leaf,
    Node,
    Not,
    Rule,
    Use,
)
from rules.nodes import (
    AffixNode,
    AllNode,
    AnyNode,
    ExistsNode,
    KeywordNode,
    NotNode,
    NumberNode,
    RegexNode,
    TimeNode,
    ValueNode,
)
from rules.normalize import View
from rules.patterns import compile_regex, options

Key = tuple[str, View]


class RegexSet:
    """The regexes of one field and view, searched in one RE2 ``Set`` pass."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.regexes = [compile_regex(p) for p in patterns]
        self._set: Any = re2.Set.SearchSet(options())
        for pattern in patterns:
            self._set.Add(pattern)
        try:
            self._set.Compile()
        except re2.error:  # too big for RE2's set memory: search one by one instead
            self._set = None

    def matches(self, hay: bytes) -> list[int]:
        """Indexes of the patterns found in the UTF-8 text ``hay``."""
        if self._set is None:
            text = hay.decode("utf-8")
            return [i for i, rx in enumerate(self.regexes) if rx.search(text) is not None]
        return self._set.Match(hay) or []


@dataclass(frozen=True)
class CompiledRule:
    """An enabled rule with its compiled condition (None: matches every message)."""

    rule: Rule
    node: Any
    id: str = ""  # the rule's id and line, for its trace entry
    line: int = 0
    traced: tuple[RuleTrace, RuleTrace] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # the routine trace entries (no leaves), made once
        miss, hit = (RuleTrace(self.id, self.line, matched, ()) for matched in (False, True))
        entries = (miss, hit)
        object.__setattr__(self, "traced", entries)


@dataclass(frozen=True)
class Program:
    """Everything ``engine.evaluate`` needs beyond the ruleset's settings."""

    rules: tuple[CompiledRule, ...]
    automata: Mapping[Key, Any]  # (scope, view) → BytesAhoCorasick; scope "text" = text group
    keywords: Mapping[Key, tuple[str, ...]]  # (scope, view) → the automaton's keywords, by id
    regex_sets: Mapping[Key, RegexSet]  # (field, view)
    kw_index: Mapping[Key, Sequence[tuple[int, ...]]]  # keyword id → rules, () for none
    rx_index: Mapping[Key, Mapping[int, tuple[int, ...]]]
    val_index: Mapping[Key, Mapping[str, tuple[int, ...]]]
    ex_index: Mapping[str, tuple[int, ...]]
    always: frozenset[int]  # rules without a required atom: evaluated for every message
    stats: Mapping[str, int] = field(default_factory=dict)
    num_index: Mapping[str, Mapping[tuple[str, float], tuple[int, ...]]] = field(
        default_factory=dict
    )  # field → (gt|gte|lt|lte, limit) → rules


def scope_of(field_name: str) -> str:
    """The automaton a field's keywords go to: ``text`` for subject/body/text."""
    return "text" if field_name in TEXT_GROUP else field_name


class _Builder:
    def __init__(self, calendars: Mapping[str, Calendar]) -> None:
        self.calendars = calendars
        self.keywords: dict[Key, dict[str, int]] = defaultdict(dict)
        self.patterns: dict[Key, dict[str, int]] = defaultdict(dict)

    def node(self, node: Node) -> Any:
        if isinstance(node, Leaf):
            return self.leaf(node)
        if isinstance(node, All):
            return AllNode(tuple(self.node(c) for c in node.children))
        if isinstance(node, AnyOf):
            return AnyNode(tuple(self.node(c) for c in node.children))
        if isinstance(node, Not):
            return NotNode(self.node(node.child))
        if isinstance(node, Use):
            return self.node(node.child)
        raise TypeError(f"unknown condition node {node!r}")

    def leaf(self, leaf: Leaf) -> Any:
        op = leaf.op
        if op in KEYWORD_OPS:
            scope = scope_of(leaf.field)
            table = self.keywords[(scope, leaf.view)]
            ids = tuple(table.setdefault(k, len(table)) for k in leaf.value)  # type: ignore[attr-defined]
            return KeywordNode(leaf, scope, ids)
        if op in PATTERN_OPS:
            table = self.patterns[(leaf.field, leaf.view)]
            rid = table.setdefault(str(leaf.value), len(table))
            return RegexNode(leaf, rid, compile_regex(str(leaf.value)))
        if op in VALUE_OPS:
            return ValueNode(leaf)
        if op in AFFIX_OPS:
            return AffixNode(leaf)
        if op in NUMBER_OPS:
            return NumberNode(leaf)
        if op == "exists":
            return ExistsNode(leaf)
        if op == "time_in":
            return TimeNode(leaf, self.calendars[str(leaf.value)])
        raise ValueError(f"unknown operator {op!r}")


def _by_keyword(table: Mapping[int, tuple[int, ...]], count: int) -> tuple[tuple[int, ...], ...]:
    """A keyword-id → rules table as a tuple: indexing beats ``dict.get`` per hit."""
    return tuple(table.get(kw, ()) for kw in range(count))


def _index(rules: Sequence[CompiledRule]) -> tuple[dict[str, Any], frozenset[int]]:
    index: dict[str, Any] = {
        kind: defaultdict(lambda: defaultdict(list)) for kind in ("kw", "rx", "val", "num")
    }
    exists: dict[str, list[int]] = defaultdict(list)
    always = set()
    for i, compiled in enumerate(rules):
        found = compiled.node.triggers() if compiled.node is not None else None
        if found is None:
            always.add(i)
            continue
        for kind, key, atom in found:
            if kind == "ex":
                exists[str(key)].append(i)
            else:
                index[kind][key][atom].append(i)
    frozen: dict[str, Any] = {
        kind: {
            key: {a: tuple(dict.fromkeys(r)) for a, r in atoms.items()}
            for key, atoms in table.items()
        }
        for kind, table in index.items()
    }
    frozen["ex"] = {f: tuple(dict.fromkeys(r)) for f, r in exists.items()}
    return frozen, frozenset(always)


def compile_program(rules: Sequence[Rule], calendars: Mapping[str, Calendar]) -> Program:
    """Compile the enabled ``rules`` of a checked file."""
    builder = _Builder(calendars)
    compiled = tuple(
        CompiledRule(
            rule,
            builder.node(rule.when) if rule.when is not None else None,
            rule.id,
            rule.where.line,
        )
        for rule in rules
        if rule.enabled
    )
    automata = {
        key: ahocorasick_rs.BytesAhoCorasick([k.encode() for k in table])
        for key, table in builder.keywords.items()
        if table
    }
    regex_sets = {key: RegexSet(list(table)) for key, table in builder.patterns.items() if table}
    index, always = _index(compiled)
    kw_index = {
        key: _by_keyword(table, len(builder.keywords[key])) for key, table in index["kw"].items()
    }
    stats = {
        "rules": len(compiled),
        "keywords": sum(len(t) for t in builder.keywords.values()),
        "regexes": sum(len(t) for t in builder.patterns.values()),
        "unindexed": len(always),
    }
    return Program(
        rules=compiled,
        automata=automata,
        keywords={key: tuple(table) for key, table in builder.keywords.items()},
        regex_sets=regex_sets,
        kw_index=kw_index,
        rx_index=index["rx"],
        val_index=index["val"],
        ex_index=index["ex"],
        always=always,
        stats=stats,
        num_index=index["num"],
    )
