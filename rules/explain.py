"""Render a ``Decision`` trace for people: which rules were considered, what matched where.

Used by ``triaged rules explain``; pass a decision from ``engine.explain`` to see every leaf
of every rule, or one from ``evaluate`` to see what the daemon actually evaluated.
"""

from __future__ import annotations

from rules.decision import ConditionTrace, Decision
from rules.ruleset import RuleSet


def _condition(cond: ConditionTrace) -> str:
    mark = "✓" if cond.matched else "✗"
    spans = ", ".join(f'"{s.keyword}" at {s.field}[{s.start}:{s.end}]' for s in cond.spans)
    negated = " [inside not]" if ".not." in f".{cond.path}." else ""
    found = f": {spans}" if spans else ""
    return f"        {mark} {cond.field} {cond.op}{found}{negated}  (line {cond.line})"


def _rules(ruleset: RuleSet, decision: Decision) -> list[str]:
    traces = {t.rule: t for t in decision.trace}
    ids = list(ruleset.rule_ids)
    stop = ids.index(decision.stopped_at) if decision.stopped_at in ids else len(ids)
    lines = []
    for index, rule in enumerate(ruleset.rules):
        trace = traces.get(rule.id)
        if trace is not None:
            lines.append(f"  {trace.line:>4} {rule.id}: {'fired' if trace.matched else 'no match'}")
            lines.extend(_condition(cond) for cond in trace.conditions)
            continue
        if not rule.enabled:
            why = "disabled"
        elif index > stop:
            why = f"not evaluated (stopped at {decision.stopped_at})"
        else:
            why = "skipped: none of its required keywords or values is present"
        lines.append(f"  {rule.where.line:>4} {rule.id}: {why}")
    return lines


def render(ruleset: RuleSet, decision: Decision) -> str:
    """A multi-line, human-readable account of ``decision``, rules in file order."""
    lines = [f"ruleset sha256:{decision.ruleset_hash[:12]}  {ruleset.file}"]
    lines.extend(_rules(ruleset, decision))
    if decision.error:
        lines.append(f"ERROR {decision.error} (routed to the defaults)")
    sla = f" sla={decision.sla_s:g}s" if decision.sla_s is not None else ""
    lines.append(
        f"RESULT team={decision.team}{' (fallback)' if decision.fallback else ''}"
        f" category={decision.category} priority={decision.priority}{sla}"
        f" tags=[{', '.join(decision.tags)}] notify=[{', '.join(decision.notify)}]"
    )
    return "\n".join(lines)
