"""``triaged rules show``: the effective ruleset as the engine runs it.

With ``include:`` the rules of several files form one ordered list; this shows that list (each
rule with the file and line it comes from, its condition on one line, what it sets and whether
it stops), the teams, defaults, SLA policies, calendars, and what the compiler made of it
(keywords in the automaton, regexes in the RE2 sets, rules evaluated for every message because
they have no indexable atom). Modelled on ``amtool config routes show``.
"""

from __future__ import annotations

from typing import Any

from rules.explain import effect_text, format_duration, leaf_values, shown
from rules.model import All, AnyOf, Leaf, Node, Not, Rule, Use
from rules.ruleset import RuleSet

Doc = dict[str, Any]


def condition_text(node: Node | None) -> str:
    """A condition on one line: ``all(text contains_any [退款, …], not(channel equals x))``."""
    if node is None:
        return "every message"
    if isinstance(node, Leaf):
        word = " (Latin words whole)" if node.ascii_word else ""
        return f"{node.field} {node.op} {shown(leaf_values(node), node.op)}{word}"
    if isinstance(node, Use):
        return f"use {node.name}"
    if isinstance(node, Not):
        return f"not({condition_text(node.child)})"
    kind = "all" if isinstance(node, All) else "any"
    assert isinstance(node, All | AnyOf)
    return f"{kind}({', '.join(condition_text(child) for child in node.children)})"


def _rule(index: int, rule: Rule) -> Doc:
    return {
        "n": index,
        "id": rule.id,
        "file": rule.where.file,
        "line": rule.where.line,
        "enabled": rule.enabled,
        "when": condition_text(rule.when),
        "effect": effect_text(rule),
    }


def overview(ruleset: RuleSet) -> Doc:
    """The ruleset as a JSON-ready document (what ``--format json`` prints)."""
    defaults = ruleset.defaults
    return {
        "file": ruleset.file,
        "hash": ruleset.hash,
        "files": list(ruleset.files),
        "defaults": {
            "team": defaults.team,
            "category": defaults.category,
            "priority": defaults.priority,
        },
        "teams": [
            {"id": t.id, "inbox": list(t.inbox), "escalation": t.escalation}
            for t in ruleset.teams.values()
        ],
        "sla": {
            priority: {
                "first_response": format_duration(policy.first_response_s),
                "resolve": format_duration(policy.resolve_s),
                "calendar": policy.calendar,
            }
            for priority, policy in ruleset.sla.items()
        },
        "calendars": sorted(ruleset.calendars),
        "rules": [_rule(n, rule) for n, rule in enumerate(ruleset.rules, 1)],
        "compiled": dict(ruleset.program.stats),
    }


def render(doc: Doc) -> str:
    """The text form of ``overview``."""
    files = doc["files"]
    more = f" (+{len(files) - 1} included files)" if len(files) > 1 else ""
    d = doc["defaults"]
    lines = [
        f"ruleset sha256:{doc['hash'][:12]}…  {doc['file']}{more}",
        f"defaults: team {d['team']}, category {d['category']}, priority {d['priority']}",
        "teams:",
    ]
    for team in doc["teams"]:
        escalation = f", escalation {team['escalation']}" if team["escalation"] else ""
        lines.append(f"  {team['id']:<16} inbox {', '.join(team['inbox'])}{escalation}")
    if doc["sla"]:
        lines.append("sla:")
        for priority, policy in doc["sla"].items():
            lines.append(
                f"  {priority:<8} first response {policy['first_response']}, "
                f"resolve {policy['resolve']} ({policy['calendar']})"
            )
    lines.append("rules, in evaluation order:")
    width = max((len(rule["id"]) for rule in doc["rules"]), default=0)
    for rule in doc["rules"]:
        where = f"{rule['file'] or doc['file']}:{rule['line']}"
        off = "  [disabled]" if not rule["enabled"] else ""
        lines.append(f"  {rule['n']:>3} {rule['id']:<{width}}  {where}{off}")
        lines.append(f"      when {rule['when']}")
        lines.append(f"      →    {rule['effect']}")
    c = doc["compiled"]
    lines.append(
        f"compiled: {c.get('rules', 0)} enabled rules, {c.get('keywords', 0)} keywords in one "
        f"automaton, {c.get('regexes', 0)} regexes in RE2 sets, "
        f"{c.get('unindexed', 0)} evaluated for every message (no indexable atom)"
    )
    return "\n".join(lines)
