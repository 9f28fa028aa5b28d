"""Compile checked rules into a ``Program``: shared automata, regex sets, and a rule index.

* Every keyword of every rule on one field (and view) goes into ONE Aho-Corasick automaton
  over UTF-8 bytes (``daachorse``'s double array: on 3,000 mixed Chinese and English keywords
  its overlapping scan is ~2x faster than ``ahocorasick_rs``'s, with the same matches);
  ``subject``, ``body`` and ``text`` share one, run once over ``text``.
* Every regex and glob on one field goes into one RE2 ``Set`` (plus a compiled regex each,
  for spans), also matched against the UTF-8 bytes; ``equals``/``in`` become frozensets.
* Each rule is filed under the atoms its condition requires (``nodes.*.triggers``): a
  keyword, a regex, a value, a field that exists, or a number comparison (``gte: 10000`` is
  an atom satisfied by the message's number, not by the field's mere presence); per message
  only rules with a satisfied atom, plus the rules with no such atom, are evaluated — and
  not even tested when the atom is *sure*, enough for the condition to hold (``entry``);
  an ``all`` whose atoms are sure for the child they come from tests only its other
  children (``AllNode.residual``).
* The subject's regexes also go into the text's set, as a guard (``_add_guards``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import daachorse
import re2

from rules.calendars import Calendar
from rules.decision import Effect, RuleTrace, effect
from rules.fields import TEXT_GROUP, Accessor, accessor
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
    COMPARE,
    AffixNode,
    AllNode,
    AnyNode,
    ExistsNode,
    KeywordNode,
    NotNode,
    NumberNode,
    RegexNode,
    TimeNode,
    Trigger,
    ValueNode,
    literals,
)
from rules.normalize import View
from rules.patterns import compile_regex, options

Key = tuple[str, View]
ByAtom = tuple[tuple[int, ...], ...]  # atom id (keyword, regex) → rules, () for none
Limit = tuple[Callable[[float, Any], bool], Any, tuple[int, ...]]  # (compare, limit, rules)
# The fields the index looks up: field, (field, view), normalised value → rules, a memo (raw
# value → its rules and normalised values: ``engine._value_rules``) and the field's accessor;
# for numbers: field, limits, memo (raw value → rules), accessor.
Memo = dict[object, tuple[int, ...]]
ValueMemo = dict[object, tuple[tuple[int, ...], tuple[str, ...] | None]]
ValueScan = tuple[str, Key, Mapping[str, tuple[int, ...]], ValueMemo, Accessor]
NumberScan = tuple[str, tuple[Limit, ...], Memo, Accessor]
# (node, trace entry when not matched, when matched, effect, whether firing stops)
Routine = tuple[Any, RuleTrace, RuleTrace, Effect, bool]


class RegexSet:
    """The regexes of one field and view, searched in one RE2 ``Set`` pass."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.regexes = [compile_regex(p) for p in patterns]
        regex_set: Any = re2.Set.SearchSet(options())
        for pattern in patterns:
            regex_set.Add(pattern)
        try:
            regex_set.Compile()
        except re2.error:  # too big for RE2's set memory: search one by one instead
            regex_set = None
        # The wrapper's Match only encodes str and maps [] to None; it is called per message
        # with bytes, so call the extension's set (when the wrapper still exposes it) directly.
        self._match = getattr(regex_set, "_set", regex_set)

    def matches(self, hay: bytes) -> list[int]:
        """Indexes of the patterns found in the UTF-8 text ``hay``."""
        if self._match is None:
            text = hay.decode("utf-8")
            return [i for i, rx in enumerate(self.regexes) if rx.search(text) is not None]
        return self._match.Match(hay) or []


@dataclass(frozen=True)
class CompiledRule:
    """An enabled rule with its compiled condition (None: matches every message)."""

    rule: Rule
    node: Any
    id: str = ""  # the rule's id and line, for its trace entry
    line: int = 0


@dataclass(frozen=True)
class Program:
    """Everything ``engine.evaluate`` needs beyond the ruleset's settings."""

    rules: tuple[CompiledRule, ...]
    automata: Mapping[Key, Any]  # (scope, view) → DoubleArrayAhoCorasick; "text": text group
    keywords: Mapping[Key, tuple[str, ...]]  # (scope, view) → the automaton's keywords, by id
    regex_sets: Mapping[Key, RegexSet]  # (field, view)
    # The rule index, as flat tuples the engine walks per message (no dict views). It files
    # *entries*: ``entry(rule, sure)``, the rule's index and whether the atom it is filed
    # under is enough for its condition to hold (``nodes``), so that the sorted entries of
    # the satisfied atoms are the candidate rules in file order, each first as sure if it is.
    kw_index: tuple[tuple[Key, Any, ByAtom], ...]  # (scope, view), automaton, keyword → rules
    rx_index: tuple[tuple[Key, RegexSet, ByAtom], ...]  # (field, view), set, regex → rules
    val_index: tuple[ValueScan, ...]
    ex_index: tuple[tuple[str, tuple[int, ...]], ...]  # field → rules needing it present
    num_index: tuple[NumberScan, ...]
    always: frozenset[int]  # entries of the rules without a required atom: evaluated always
    stats: Mapping[str, int] = field(default_factory=dict)
    # ("subject", view) → ids, in the text's set of that view, of every subject regex: when
    # none matched the text, none matches the subject (``_add_guards``)
    regex_guards: Mapping[Key, frozenset[int]] = field(default_factory=dict)
    # per rule, what the routine evaluation reads of it (``_routine``)
    routine: tuple[Routine, ...] = ()


def scope_of(field_name: str) -> str:
    """The automaton a field's keywords go to: ``text`` for subject/body/text."""
    return "text" if field_name in TEXT_GROUP else field_name


class _Builder:
    def __init__(self, calendars: Mapping[str, Calendar]) -> None:
        self.calendars = calendars
        self.keywords: dict[Key, dict[str, int]] = defaultdict(dict)
        self.patterns: dict[Key, dict[str, int]] = defaultdict(dict)
        self.values: dict[Key, set[str]] = defaultdict(set)  # the values rules compare with

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
            self.values[(leaf.field, leaf.view)].update(literals(leaf))
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


def entry(rule: int, sure: bool) -> int:
    """The index entry of rule number ``rule`` (``Program``): sorted entries keep the rules'
    order, and a rule's sure entry comes before its other one."""
    return 2 * rule + (not sure)


def _by_atom(table: Mapping[int, tuple[int, ...]], count: int) -> ByAtom:
    """An atom-id → rules table as a tuple: indexing beats ``dict.get`` per hit."""
    return tuple(table.get(atom, ()) for atom in range(count))


def _routine(rules: Sequence[CompiledRule], tests: Sequence[Any]) -> tuple[Routine, ...]:
    """Per rule, what the routine evaluation reads of it, in one tuple: the node its entries
    that are not sure test (``tests``: ``_index``), its trace entries (immutable, so made
    once and shared by every evaluation) and its ``Effect``."""
    out = []
    for compiled, node in zip(rules, tests, strict=True):
        miss, hit = (RuleTrace(compiled.id, compiled.line, ok, ()) for ok in (False, True))
        out.append((node, miss, hit, effect(compiled.rule), compiled.rule.stops))
    return tuple(out)


def _add_guards(patterns: dict[Key, dict[str, int]]) -> dict[Key, frozenset[int]]:
    """Add the subject's regexes of a view to its text's set, when it has one, as a guard.

    A regex that matches the subject matches the text (subject + "\\n" + body) there too,
    unless it looks at what follows the subject: ``$`` and ``\\z`` (a ``\\b`` or ``\\B``
    sees the newline as the end of the text: neither is a word character). So when none of
    them matched the text, the subject's own set need not run (an RE2 call on a short subject
    costs more than its regexes add to the text's pass). A subject regex that may look past
    the subject (any ``$``, conservatively) leaves the subject's set unguarded.
    """
    guards = {}
    for (name, view), table in patterns.items():
        text = patterns.get(("text", view))
        if name != "subject" or not text or not table:
            continue
        if any("$" in pattern or "\\z" in pattern for pattern in table):
            continue
        guards[(name, view)] = frozenset(text.setdefault(p, len(text)) for p in table)
    return guards


def _index(
    rules: Sequence[CompiledRule], values: Mapping[Key, set[str]]
) -> tuple[dict[str, Any], frozenset[int], list[Any]]:
    """The rule index; the entries of the rules evaluated always; and per rule the node its
    entries that are not sure test: the rule's own, or what is left of an ``all`` when the
    atoms it is filed under are sure for one of its children (``AllNode.residual``)."""
    index: dict[str, Any] = {
        kind: defaultdict(lambda: defaultdict(list)) for kind in ("kw", "rx", "val", "num")
    }
    exists: dict[str, list[int]] = defaultdict(list)
    always = set()
    tests = [compiled.node for compiled in rules]

    def weigh(trigger: Trigger) -> float:
        """Expected hits of an atom: a value of a field the rules name few values of (a
        channel: email, imap, webhook) is more common than one of many (sender domains)."""
        kind, key = trigger[0], trigger[1]
        return 1 / len(values[key]) if kind == "val" else 1.0  # type: ignore[index]

    for i, compiled in enumerate(rules):
        if compiled.node is None:  # matches every message
            always.add(entry(i, True))
            continue
        found = compiled.node.triggers(weigh)
        if found is None:
            always.add(entry(i, False))
            continue
        if isinstance(compiled.node, AllNode):  # (selected only through ``found``)
            tests[i] = compiled.node.residual(weigh)
        for kind, key, atom, sure in found:
            if kind == "ex":
                exists[str(key)].append(entry(i, sure))
            else:
                index[kind][key][atom].append(entry(i, sure))
    frozen: dict[str, Any] = {
        kind: {
            key: {a: tuple(dict.fromkeys(r)) for a, r in atoms.items()}
            for key, atoms in table.items()
        }
        for kind, table in index.items()
    }
    frozen["ex"] = {f: tuple(dict.fromkeys(r)) for f, r in exists.items()}
    return frozen, frozenset(always), tests


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
        key: daachorse.DoubleArrayAhoCorasick([k.encode() for k in table])
        for key, table in builder.keywords.items()
        if table
    }
    regex_count = sum(len(t) for t in builder.patterns.values())  # before the guards join
    regex_guards = _add_guards(builder.patterns)  # (the sets and ``rx_index`` see them)
    regex_sets = {key: RegexSet(list(table)) for key, table in builder.patterns.items() if table}
    index, always, tests = _index(compiled, builder.values)
    kw_index = tuple(
        (key, automata[key], _by_atom(table, len(builder.keywords[key])))
        for key, table in index["kw"].items()
    )
    rx_index = tuple(
        (key, regex_sets[key], _by_atom(table, len(builder.patterns[key])))
        for key, table in index["rx"].items()
    )
    num_index = tuple(
        (
            name,
            tuple((COMPARE[op], limit, rules) for (op, limit), rules in limits.items()),
            {},
            accessor(name),
        )
        for name, limits in index["num"].items()
    )
    stats = {
        "rules": len(compiled),
        "keywords": sum(len(t) for t in builder.keywords.values()),
        "regexes": regex_count,
        "unindexed": len(always),
    }
    return Program(
        rules=compiled,
        automata=automata,
        keywords={key: tuple(table) for key, table in builder.keywords.items()},
        regex_sets=regex_sets,
        regex_guards=regex_guards,
        kw_index=kw_index,
        rx_index=rx_index,
        val_index=tuple(
            (key[0], key, table, {}, accessor(key[0])) for key, table in index["val"].items()
        ),
        ex_index=tuple(index["ex"].items()),
        num_index=num_index,
        always=always,
        stats=stats,
        routine=_routine(compiled, tests),
    )
