"""Warnings about a rule file that loads but is probably not what its author meant.

W401/W402: a list or named condition nobody uses (Falco's unused list/macro warnings).
W301: a rule after an enabled rule that matches every message and stops, so it can never fire.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from rules.model import All, Rule
from rules.source import Document, Problem


def unused(
    doc: Document, defined: Mapping[str, Any], used: Collection[str], kind: str, code: str
) -> list[Problem]:
    """A warning at each name in ``defined`` that is not in ``used``."""
    section = "lists" if kind == "list" else "conditions"
    return [
        doc.problem(
            [section, name], code, f'{kind} "{name}" is never used', severity="warning", at="key"
        )
        for name in defined
        if name not in used
    ]


def _matches_everything(rule: Rule) -> bool:
    return rule.when is None or (isinstance(rule.when, All) and not rule.when.children)


def unreachable_rules(doc: Document, rules: Iterable[Rule]) -> list[Problem]:
    """W301 for each enabled rule after one that matches every message and stops."""
    out: list[Problem] = []
    blocker: Rule | None = None
    for rule in rules:
        if not rule.enabled:
            continue
        if blocker is not None:
            msg = (
                f'rule "{rule.id}" can never fire: rule "{blocker.id}" (line {blocker.where.line})'
                " matches every message and stops"
            )
            line, col = rule.where.line, rule.where.col
            out.append(Problem(doc.file, line, col, "W301", msg, "warning", doc.line_text(line)))
        elif _matches_everything(rule) and rule.stops:
            blocker = rule
    return out
