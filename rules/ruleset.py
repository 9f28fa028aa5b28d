"""``RuleSet``: one loaded, checked and compiled rule file, immutable, swapped whole on reload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rules.calendars import Calendar
from rules.model import Defaults, Rule, SlaPolicy, Team
from rules.normalize import Pipeline, View
from rules.source import Problem

if TYPE_CHECKING:
    from rules.compiler import Program


@dataclass(frozen=True)
class RuleSet:
    """What ``evaluate`` needs, plus what the daemon shows (teams, hash, warnings).

    ``rules`` holds every rule in file order, disabled ones included (``Rule.enabled``);
    ``program`` is the compiled matcher for the enabled ones.
    """

    file: str
    hash: str  # sha256 hex of the source text (with includes: of every file's name and text)
    teams: Mapping[str, Team]
    defaults: Defaults
    rules: tuple[Rule, ...]
    categories: tuple[str, ...] | None
    sla: Mapping[str, SlaPolicy]
    calendars: Mapping[str, Calendar]
    views: Mapping[View, Pipeline] = field(repr=False)
    scan_limit: int
    timezone: str
    program: Program = field(repr=False)
    warnings: list[Problem] = field(default_factory=list)
    files: tuple[str, ...] = ()  # every file read: the main one, then included ones
    dirs: tuple[str, ...] = ()  # every included directory (a watcher lists them: new files)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """Ids of all rules in file order."""
        return tuple(rule.id for rule in self.rules)

    def rule(self, rule_id: str) -> Rule | None:
        """The rule with this id, or None."""
        return next((r for r in self.rules if r.id == rule_id), None)
