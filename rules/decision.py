"""The result of evaluating a message: ``Decision``, its trace, and the merge semantics.

Merge rules (research D5/D6): team and category are first-writer-wins; priority is only
ever raised (the most urgent of the firing rules, else the default); tags and notify
accumulate without duplicates, in order; ``sla_s`` is the first explicit ``sla`` of a
firing rule, else the ``sla`` entry for the final priority. A rule that sets a team stops
evaluation unless ``continue: true``; ``stop: true`` always stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from rules.model import PRIORITIES, PRIORITY_RANK, Rule

if TYPE_CHECKING:
    from rules.ruleset import RuleSet

ROUTING_ERROR = "routing-error"


class Span(NamedTuple):
    """Where a condition matched: offsets into the *normalised* value of ``field``."""

    field: str  # "subject", or "to[1]" for the second value of a multi-valued field
    start: int
    end: int
    keyword: str  # the keyword, value or matched text


class ConditionTrace(NamedTuple):
    """One operator leaf that was evaluated, and whether it was true."""

    path: str  # e.g. "rules[3].when.all[1].text.contains_any"
    line: int
    field: str
    op: str
    matched: bool
    spans: tuple[Span, ...]


class RuleTrace(NamedTuple):
    """One rule considered, and the leaves evaluated for it (short-circuited unless explain)."""

    rule: str
    line: int
    matched: bool
    conditions: tuple[ConditionTrace, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a message goes and why; ``fallback`` means no rule set the team."""

    team: str
    category: str
    priority: str
    tags: tuple[str, ...]
    notify: tuple[str, ...]
    sla_s: float | None
    rules: tuple[str, ...]
    fallback: bool
    ruleset_hash: str
    trace: tuple[RuleTrace, ...] = ()
    stopped_at: str | None = None
    error: str | None = None  # set when evaluation hit a bug and fell back to the defaults

    def as_record(self) -> dict[str, Any]:
        """The JSON-ready part stored with each routed message."""
        return {
            "team": self.team,
            "category": self.category,
            "priority": self.priority,
            "tags": list(self.tags),
            "notify": list(self.notify),
            "sla_s": self.sla_s,
            "rules": list(self.rules),
            "fallback": self.fallback,
            "ruleset_hash": self.ruleset_hash,
        }


class Effect(NamedTuple):
    """What a firing rule contributes to the decision, flattened once per rule (the compiler
    keeps one per rule: merging then reads no ``Rule``/``Action`` attributes)."""

    rule: str
    team: str | None
    category: str | None
    rank: int  # PRIORITY_RANK of the rule's priority, -1 when it sets none
    tags: tuple[str, ...]
    notify: tuple[str, ...]
    sla_s: float | None
    stops: bool


def effect(rule: Rule) -> Effect:
    """The ``Effect`` of ``rule`` firing."""
    action = rule.action
    rank = -1 if action.priority is None else PRIORITY_RANK[action.priority]
    return Effect(
        rule.id,
        action.team,
        action.category,
        rank,
        action.tags,
        action.notify,
        action.sla_s,
        rule.stops,
    )


class Accumulator:
    """Collects the firing rules in order; ``fire`` says whether evaluation stops, and
    ``decision`` merges them (``decide``)."""

    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired: list[Effect] = []

    def fire(self, rule: Rule) -> bool:
        """Record ``rule`` as firing; True when it stops evaluation."""
        done = effect(rule)
        self.fired.append(done)
        return done.stops

    def decision(self, ruleset: RuleSet, trace: tuple[RuleTrace, ...]) -> Decision:
        """The final decision, defaults filling what no rule set."""
        return decide(ruleset, self.fired, trace)


def decide(
    ruleset: RuleSet, fired: Sequence[Effect], trace: tuple[RuleTrace, ...] = ()
) -> Decision:
    """Merge the effects of the ``fired`` rules (in firing order; only the last may stop)
    into the decision, defaults filling what no rule set.

    One pass with local variables at the end of an evaluation: the engine's routine path
    calls this directly (a few rules fire per message, so merging as they fire would only
    add attribute traffic).
    """
    team: str | None = None
    category: str | None = None
    sla_s: float | None = None
    rank = -1
    tags: dict[str, None] = {}
    notify: dict[str, None] = {}
    for _, rule_team, rule_category, rule_rank, rule_tags, rule_notify, rule_sla, _ in fired:
        if team is None:
            team = rule_team
        if category is None:
            category = rule_category
        if rule_rank > rank:
            rank = rule_rank
        for tag in rule_tags:
            tags[tag] = None
        for target in rule_notify:
            notify[target] = None
        if sla_s is None:
            sla_s = rule_sla
    defaults = ruleset.defaults
    priority = PRIORITIES[rank] if rank >= 0 else defaults.priority
    if sla_s is None and priority in ruleset.sla:
        sla_s = ruleset.sla[priority].first_response_s
    last = fired[-1] if fired else None
    # Decision(...) as the frozen dataclass's __init__ would, without its object.__setattr__
    # per field: the slots are set through their descriptors (a third of ``decide``).
    decision = _new(Decision)
    _team(decision, team or defaults.team)
    _category(decision, category or defaults.category)
    _priority(decision, priority)
    _tags(decision, tuple(tags))
    _notify(decision, tuple(notify))
    _sla(decision, sla_s)
    _rules(decision, tuple(map(_RULE, fired)))
    _fallback(decision, team is None)
    _hash(decision, ruleset.hash)
    _trace(decision, trace)
    _stopped(decision, last.rule if last is not None and last.stops else None)
    _error(decision, None)
    return decision


_new = object.__new__
_RULE = itemgetter(0)  # Effect.rule, without a comprehension's call
_FIELDS = (  # every field of Decision, in the order ``decide`` sets them
    "team",
    "category",
    "priority",
    "tags",
    "notify",
    "sla_s",
    "rules",
    "fallback",
    "ruleset_hash",
    "trace",
    "stopped_at",
    "error",
)
if set(_FIELDS) != set(Decision.__dataclass_fields__):  # a new field must be set in decide
    raise RuntimeError("rules.decision: decide does not set every field of Decision")
(
    _team,
    _category,
    _priority,
    _tags,
    _notify,
    _sla,
    _rules,
    _fallback,
    _hash,
    _trace,
    _stopped,
    _error,
) = (getattr(Decision, name).__set__ for name in _FIELDS)


def error_decision(ruleset: RuleSet, exc: BaseException) -> Decision:
    """Defaults plus the ``routing-error`` tag: a message is never lost to a bug (D4)."""
    decision = Accumulator().decision(ruleset, ())
    return Decision(
        team=decision.team,
        category=decision.category,
        priority=decision.priority,
        tags=(ROUTING_ERROR,),
        notify=(),
        sla_s=decision.sla_s,
        rules=(),
        fallback=True,
        ruleset_hash=ruleset.hash,
        error=f"{type(exc).__name__}: {exc}",
    )
