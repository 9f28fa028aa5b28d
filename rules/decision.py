"""The result of evaluating a message: ``Decision``, its trace, and the merge semantics.

Merge rules (research D5/D6): team and category are first-writer-wins; priority is only
ever raised (the most urgent of the firing rules, else the default); tags and notify
accumulate without duplicates, in order; ``sla_s`` is the first explicit ``sla`` of a
firing rule, else the ``sla`` entry for the final priority. A rule that sets a team stops
evaluation unless ``continue: true``; ``stop: true`` always stops.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class Accumulator:
    """Applies firing rules in order; ``fire`` says whether evaluation stops."""

    __slots__ = ("category", "fired", "notify", "rank", "sla_s", "stopped_at", "tags", "team")

    def __init__(self) -> None:
        self.team: str | None = None
        self.category: str | None = None
        self.rank = -1
        self.tags: dict[str, None] = {}
        self.notify: dict[str, None] = {}
        self.sla_s: float | None = None
        self.fired: list[str] = []
        self.stopped_at: str | None = None

    def fire(self, rule: Rule) -> bool:
        """Apply ``rule``'s action; True when it stops evaluation."""
        self.fired.append(rule.id)
        action = rule.action
        if self.team is None:
            self.team = action.team
        if self.category is None:
            self.category = action.category
        if action.priority is not None:
            self.rank = max(self.rank, PRIORITY_RANK[action.priority])
        for tag in action.tags:
            self.tags[tag] = None
        for team in action.notify:
            self.notify[team] = None
        if self.sla_s is None:
            self.sla_s = action.sla_s
        if rule.stops:
            self.stopped_at = rule.id
            return True
        return False

    def decision(self, ruleset: RuleSet, trace: tuple[RuleTrace, ...]) -> Decision:
        """The final decision, defaults filling what no rule set."""
        defaults = ruleset.defaults
        priority = PRIORITIES[self.rank] if self.rank >= 0 else defaults.priority
        sla_s = self.sla_s
        if sla_s is None and priority in ruleset.sla:
            sla_s = ruleset.sla[priority].first_response_s
        return Decision(
            team=self.team or defaults.team,
            category=self.category or defaults.category,
            priority=priority,
            tags=tuple(self.tags),
            notify=tuple(self.notify),
            sla_s=sla_s,
            rules=tuple(self.fired),
            fallback=self.team is None,
            ruleset_hash=ruleset.hash,
            trace=trace,
            stopped_at=self.stopped_at,
        )


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
