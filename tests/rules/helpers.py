"""Builders shared by the rule tests: a small rule file around a ``rules:`` block, messages."""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rules.engine import Decision, Facts, evaluate
from rules.loader import RuleSet, load_text
from rules.naive import evaluate_naive

SHANGHAI = ZoneInfo("Asia/Shanghai")
WEDNESDAY_10AM = datetime(2026, 3, 4, 10, 0, tzinfo=SHANGHAI)

HEADER = """\
version: 1
teams:
  triage: {inbox: [maildir]}
  billing: {inbox: [maildir]}
  sre: {inbox: [maildir]}
  vip: {inbox: [maildir]}
defaults: {team: triage, category: general, priority: medium}
"""


def rule_file(rules: str, extra: str = "") -> str:
    """HEADER + ``extra`` top-level YAML + ``rules:`` with the given (dedented) list."""
    body = textwrap.indent(textwrap.dedent(rules).strip("\n"), "  ")
    return HEADER + textwrap.dedent(extra) + "rules:\n" + body + "\n"


def load(rules: str, extra: str = "") -> RuleSet:
    """Load a rule file built by ``rule_file`` (named rules.yaml in problems)."""
    return load_text(rule_file(rules, extra), "rules.yaml")


def message(**overrides: Any) -> Facts:
    """An e-mail on a Wednesday at 10:00 in Shanghai, with ``overrides``."""
    base: dict[str, Any] = {
        "channel": "email",
        "source": "support-mail",
        "subject": "",
        "body": "",
        "sender": "customer@example.com",
        "sender_name": "",
        "recipients": ("support@corp.example",),
        "headers": (),
        "fields": {},
        "attachments": 0,
        "received_at": WEDNESDAY_10AM,
    }
    base.update(overrides)
    return Facts(**base)


def decide(ruleset: RuleSet, facts: Facts) -> Decision:
    """Evaluate, checking that the naive evaluator and an explain run decide the same."""
    decision = evaluate(ruleset, facts)
    assert decision.error is None, decision.error
    assert evaluate_naive(ruleset, facts).as_record() == decision.as_record()
    explained = evaluate(ruleset, facts, explain=True)
    assert explained.as_record() == decision.as_record()
    assert explained.stopped_at == decision.stopped_at
    return decision
