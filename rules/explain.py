"""Say why a message went where it went: a ``Decision`` trace for people, and related views.

Used by ``triaged rules explain|check|diff``. ``explanation`` turns a decision from
``engine.explain`` (every rule up to the stop, every leaf) into one JSON-ready document:
each rule with ✓/✗ and its condition tree, every leaf with the field, where it matched
(offsets into the *normalised* subject or body, the keyword, some context) and, for fields
other than the text, the value it saw. ``render_explanation`` prints it. Also here:
``summary`` (what a rule file contains, for ``check``), ``changes`` (how two decision
records differ, for ``diff`` and for re-explaining a stored decision) and ``render``, the
compact trace of a decision alone, when the message itself is not at hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rules.decision import ConditionTrace, Decision
from rules.fields import TEXT_GROUP, Facts, FieldReader
from rules.model import KEYWORD_OPS, PATTERN_OPS, Action, All, AnyOf, Leaf, Node, Not, Rule, Use
from rules.normalize import is_cjk
from rules.ruleset import RuleSet

__all__ = [
    "changes",
    "explanation",
    "format_duration",
    "render_explanation",
    "render_stored",
    "summary",
    "summary_line",
]

_CONTEXT = 10  # characters shown either side of a match
_SHOWN = 6  # literals listed per leaf before "+N more"
Doc = dict[str, Any]


def format_duration(seconds: float | None) -> str:
    """``1800`` → ``30m``; ``None`` → ``none``."""
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def leaf_values(leaf: Leaf) -> Any:
    """The leaf's operand, JSON-ready: a list of literals, a pattern, a number, a name."""
    value = leaf.value
    return list(value) if isinstance(value, tuple) else value


def shown(values: Any, op: str) -> str:
    """An operand as one short line: at most a few literals of a list, patterns quoted."""
    if isinstance(values, list):
        more = f", +{len(values) - _SHOWN} more" if len(values) > _SHOWN else ""
        return "[" + ", ".join(str(v) for v in values[:_SHOWN]) + more + "]"
    if isinstance(values, bool):
        return str(values).lower()
    if isinstance(values, float):
        return f"{values:g}"
    return f"'{values}'" if op in PATTERN_OPS else str(values)


class _Reader:
    """The normalised values of one message, to place spans and show what a leaf saw."""

    def __init__(self, ruleset: RuleSet, facts: Facts) -> None:
        self.reader = FieldReader(facts, ruleset.views, ruleset.scan_limit)
        self.tz = ZoneInfo(ruleset.timezone)

    def place(self, leaf: Leaf, field: str, start: int, end: int) -> tuple[str, int, int, str]:
        """(field, start, end, context): a ``text`` span moved into subject or body."""
        if field == "text":  # subject + "\n" + body: say which of the two
            cut = len((self.reader.strings("subject", leaf.view) or ("",))[0])
            if end <= cut:
                field = "subject"
            elif start > cut:
                field, start, end = "body", start - cut - 1, end - cut - 1
        values = self.reader.strings(field.split("[")[0], leaf.view) or ("",)
        index = int(field.split("[")[1].rstrip("]")) if "[" in field else 0
        hay = values[index] if index < len(values) else ""
        left, right = max(0, start - _CONTEXT), end + _CONTEXT
        before, after = "…" * (left > 0), "…" * (right < len(hay))
        context = f"{before}{hay[left:start]}«{hay[start:end]}»{hay[end:right]}{after}"
        return field, start, end, context.replace("\n", " ")

    def seen(self, leaf: Leaf) -> str | None:
        """What a non-text leaf compared (``None`` for text: its spans say enough)."""
        if leaf.field in TEXT_GROUP:
            return None
        if leaf.op == "time_in":
            when = (self.reader.raw("received_at") or (None,))[0]
            if not isinstance(when, datetime):
                return None
            return when.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %z (%A)")
        if leaf.op in ("gt", "gte", "lt", "lte", "between", "exists"):
            raw = self.reader.raw(leaf.field)
            return "missing" if raw is None else ", ".join(str(v) for v in raw)
        values = self.reader.strings(leaf.field, leaf.view)
        return "missing" if values is None else ", ".join(f'"{v}"' for v in values)


def _all(results: Sequence[bool | None]) -> bool | None:
    if any(r is False for r in results):
        return False
    return True if all(r is True for r in results) else None


def _any(results: Sequence[bool | None]) -> bool | None:
    if any(r is True for r in results):
        return True
    return False if all(r is False for r in results) else None


def _leaf(leaf: Leaf, traces: Mapping[str, ConditionTrace], reader: _Reader) -> Doc:
    trace = traces.get(leaf.where.path)
    spans = []
    for span in trace.spans if trace is not None else ():
        field, start, end, context = reader.place(leaf, span.field, span.start, span.end)
        spans.append(
            {
                "field": field,
                "start": start,
                "end": end,
                "keyword": span.keyword,
                "context": context,
            }
        )
    node: Doc = {
        "kind": "leaf",
        "matched": trace.matched if trace is not None else None,
        "line": leaf.where.line,
        "field": leaf.field,
        "op": leaf.op,
        "values": leaf_values(leaf),
        "spans": spans,
    }
    seen = reader.seen(leaf) if trace is not None else None
    if seen is not None:
        node["seen"] = seen
    return node


def _tree(node: Node, traces: Mapping[str, ConditionTrace], reader: _Reader) -> Doc:
    if isinstance(node, Leaf):
        return _leaf(node, traces, reader)
    if isinstance(node, Not):
        child = _tree(node.child, traces, reader)
        matched = None if child["matched"] is None else not child["matched"]
        return {"kind": "not", "matched": matched, "line": node.where.line, "children": [child]}
    if isinstance(node, Use):
        child = _tree(node.child, traces, reader)
        out = {"kind": "use", "name": node.name, "matched": child["matched"]}
        return {**out, "line": node.where.line, "children": [child]}
    assert isinstance(node, All | AnyOf)
    children = [_tree(c, traces, reader) for c in node.children]
    combine = _all if isinstance(node, All) else _any
    matched = combine([c["matched"] for c in children])
    kind = "all" if isinstance(node, All) else "any"
    return {"kind": kind, "matched": matched, "line": node.where.line, "children": children}


def effect_text(rule: Rule) -> str:
    """What a rule sets, and whether firing it stops evaluation."""
    a: Action = rule.action
    parts = [f"team = {a.team}"] if a.team else []
    parts += [f"category = {a.category}"] if a.category else []
    parts += [f"priority ≥ {a.priority}"] if a.priority else []
    parts += [f"tags += {', '.join(a.tags)}"] if a.tags else []
    parts += [f"notify += {', '.join(a.notify)}"] if a.notify else []
    parts += [f"sla = {format_duration(a.sla_s)}"] if a.sla_s is not None else []
    how = "stops" if rule.stops else "continues"
    kind = "delivering" if rule.delivering else "annotating"
    return f"{', '.join(parts) or 'nothing'}  ({kind}: {how})"


def _rule(
    rule: Rule, decision: Decision, reader: _Reader, stop_line: int | None, after_stop: bool
) -> Doc:
    trace = next((t for t in decision.trace if t.rule == rule.id), None)
    out: Doc = {"id": rule.id, "line": rule.where.line, "effect": effect_text(rule)}
    if trace is None:
        if not rule.enabled:
            out["status"] = "disabled"
        elif after_stop:  # by rule order: with include, rules from several files
            out["status"] = f"not evaluated (stopped at line {stop_line})"
        else:
            out["status"] = "not evaluated (none of its required keywords or values is present)"
        return out
    out["status"] = "fired" if trace.matched else "no match"
    traces = {c.path: c for c in trace.conditions}
    out["condition"] = None if rule.when is None else _tree(rule.when, traces, reader)
    return out


def _message(facts: Facts, tz: str) -> Doc:
    when = facts.received_at.astimezone(ZoneInfo(tz))
    return {
        "channel": facts.channel,
        "source": facts.source,
        "from": facts.sender,
        "name": facts.sender_name,
        "to": list(facts.recipients),
        "received_at": when.isoformat(),
        "weekday": when.strftime("%A"),
        "subject": facts.subject,
        "text": facts.body,
        "headers": len(facts.headers),
        "attachments": facts.attachments,
    }


def explanation(ruleset: RuleSet, decision: Decision, facts: Facts) -> Doc:
    """A JSON-ready account of ``decision`` (best from ``engine.explain``), rules in file order."""
    reader = _Reader(ruleset, facts)
    stop = ruleset.rule(decision.stopped_at) if decision.stopped_at else None
    stop_line = stop.where.line if stop is not None else None
    stop_at = ruleset.rules.index(stop) if stop is not None else None
    return {
        "ruleset": {"file": ruleset.file, "hash": decision.ruleset_hash},
        "message": _message(facts, ruleset.timezone),
        "rules": [
            _rule(rule, decision, reader, stop_line, stop_at is not None and i > stop_at)
            for i, rule in enumerate(ruleset.rules)
        ],
        "stopped_at": None if stop is None else {"rule": stop.id, "line": stop_line},
        "error": decision.error,
        "decision": {**decision.as_record(), "stopped_at": decision.stopped_at},
    }


# -- text ---------------------------------------------------------------------------------------

_MARK = {True: "✓", False: "✗", None: "·"}


def _node_lines(node: Doc, depth: int) -> list[str]:
    pad = "  " * depth
    mark = _MARK[node["matched"]]
    if node["kind"] != "leaf":
        name = f"use {node['name']}" if node["kind"] == "use" else node["kind"]
        lines = [f"{pad}{mark} {name}"]
        for child in node["children"]:
            lines += _node_lines(child, depth + 1)
        return lines
    seen = f"  (saw {node['seen']})" if "seen" in node else ""
    line = f"{pad}{mark} {node['field']} {node['op']} {shown(node['values'], node['op'])}{seen}"
    lines = [line if node["matched"] is not None else f"{line}  not evaluated"]
    for span in node["spans"] if "seen" not in node else ():
        where = f"{span['field']}[{span['start']}:{span['end']}]"
        lines.append(f'{pad}    "{span["keyword"]}" at {where}: {span["context"]}')
    return lines


def _rule_lines(rule: Doc) -> list[str]:
    status = rule["status"]
    if "condition" not in rule:
        return [f"{rule['line']:>5}  · {rule['id']}: {status}"]
    fired = status == "fired"
    head = f"{rule['line']:>5}  {_MARK[fired]} {rule['id']}"
    head += f" → {rule['effect']}" if fired else ": no match"
    if rule["condition"] is None:
        return [head, "         (no when: matches every message)"]
    return [head, *_node_lines(rule["condition"], 4)]


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _header(doc: Doc) -> list[str]:
    m = doc["message"]
    who = m["from"] + (f" ({m['name']})" if m["name"] else "")
    source = f", source {m['source']}" if m["source"] else ""
    text = m["text"] if len(m["text"]) <= 200 else m["text"][:200] + "…"
    return [
        f"ruleset  sha256:{doc['ruleset']['hash'][:12]}  {doc['ruleset']['file']}",
        f"message  {m['channel']} from {who or '(unknown)'}{source},"
        f" received {m['received_at']} ({m['weekday']})",
        f"subject  {_quoted(m['subject'])}",
        f"text     {_quoted(text)} ({len(m['text'])} chars)",
    ]


def render_explanation(doc: Doc) -> str:
    """The text form of an ``explanation``: header, one block per rule, the result."""
    lines = _header(doc)
    for rule in doc["rules"]:
        lines += _rule_lines(rule)
    d = doc["decision"]
    if doc["error"]:
        lines.append(f"ERROR {doc['error']} (routed to the defaults, tagged routing-error)")
    fallback = " (fallback: no rule set the team)" if d["fallback"] else ""
    lines.append(
        f"RESULT team={d['team']}{fallback} category={d['category']} priority={d['priority']}"
        f" tags=[{', '.join(d['tags'])}] notify=[{', '.join(d['notify'])}]"
        f" sla={format_duration(d['sla_s'])}"
    )
    lines.append(f"       rules fired: {', '.join(d['rules']) or 'none'}")
    return "\n".join(lines)


def render_stored(stored: Mapping[str, Any], source: str, current_hash: str) -> str:
    """The stored decision record of a message (``explanation(...)["stored"]``), for people."""
    record = stored["record"]
    hash_ = str(record.get("ruleset_hash", ""))
    same = "same as now" if hash_ == current_hash else f"now {current_hash[:12]}: rules changed"
    return "\n".join(
        [
            f"stored   {stored['id']} ({source}) decided {record.get('decided_at', '?')}",
            f"         team={record.get('team')} category={record.get('category')}"
            f" priority={record.get('priority')} tags=[{', '.join(record.get('tags') or ())}]",
            f"         rules fired: {', '.join(record.get('rules') or ()) or 'none'}",
            f"         ruleset sha256:{hash_[:12]} ({same})",
            "re-evaluated with the current rules:",
        ]
    )


# -- rule file summary and decision changes ----------------------------------------------------


def _section(raw: Any, name: str) -> int:
    value = raw.get(name) if isinstance(raw, Mapping) else None
    return len(value) if isinstance(value, Mapping | list) else 0


def _leaves(node: Node | None) -> list[Leaf]:
    if node is None:
        return []
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, Not | Use):
        return _leaves(node.child)
    return [leaf for child in node.children for leaf in _leaves(child)]


def summary(raw: Any, ruleset: RuleSet | None) -> dict[str, int | None]:
    """Counts of a rule file: sections from its ``raw`` data; the rest when it loaded.

    ``raw`` is the data with included files merged in, so the counts are of every file.
    """
    out: dict[str, int | None] = {
        name: _section(raw, name) for name in ("rules", "lists", "conditions", "teams", "calendars")
    }
    out.update(keywords_zh=None, keywords_en=None, regexes=None, unindexed=None)
    if ruleset is None:
        return out
    leaves = [leaf for rule in ruleset.rules for leaf in _leaves(rule.when)]
    words = {str(v) for leaf in leaves if leaf.op in KEYWORD_OPS for v in leaf.value}  # type: ignore[attr-defined]
    zh = sum(1 for w in words if any(is_cjk(ch) for ch in w))
    out.update(
        keywords_zh=zh,
        keywords_en=len(words) - zh,
        regexes=len({str(leaf.value) for leaf in leaves if leaf.op in PATTERN_OPS}),
        unindexed=len(ruleset.program.always),
    )
    return out


def _count(n: int, word: str) -> str:
    single = word[:-2] if word.endswith("xes") else word[:-1]
    return f"{n} {single if n == 1 else word}"


def summary_line(s: Mapping[str, Any]) -> str:
    """One line of a ``summary`` with ``file``, ``loaded`` and ``files_read`` (if any) added.

    With includes, the counts are of every file read, and the line says how many there were.
    """
    names = ("rules", "lists", "conditions", "teams", "calendars")
    counts = ", ".join(_count(s[k], k) for k in names)
    read = len(s.get("files_read") or ())
    counts = f"{read} files, {counts}" if read > 1 else counts
    if not s["loaded"]:
        return f"{s['file']}: NOT loaded — {counts}"
    kw = s["keywords_zh"] + s["keywords_en"]
    return (
        f"{s['file']}: {counts}, {kw} keywords ({s['keywords_zh']} zh / {s['keywords_en']} en),"
        f" {_count(s['regexes'], 'regexes')}, {_count(s['unindexed'], 'rules')} evaluated on"
        " every message (no indexable keyword or value)"
    )


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """How decision record ``new`` differs from ``old``: ``team a → b``, ``tags +x -y``…"""
    found = [
        f"{key} {old.get(key)} → {new.get(key)}"
        for key in ("team", "category", "priority")
        if old.get(key) != new.get(key)
    ]
    before, after = list(old.get("tags") or ()), list(new.get("tags") or ())
    added = [f"+{t}" for t in after if t not in before]
    removed = [f"-{t}" for t in before if t not in after]
    if added or removed:
        found.append("tags " + " ".join(added + removed))
    return found
