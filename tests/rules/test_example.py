"""The example rule file loads cleanly and routes the research note's test cases."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from rules.loader import load_file
from rules.schema import json_schema
from tests.rules.helpers import SHANGHAI, decide, message

EXAMPLE = Path(__file__).parent / "data" / "example.yaml"
OUTPUTS = {"support-mail", "billing-mail", "sre-chat", "vip-mail"}

CASES: list[Any] = [
    (
        "simplified-refund",
        {
            "channel": "telegram",
            "sender": "tg:5550001",
            "body": "你好，我要申请退款，订单号 88812345",
        },
        {"team": "billing", "category": "billing", "priority": "medium", "rules": ("refund",)},
    ),
    ("traditional-refund", {"subject": "申請退款", "body": "請盡快處理"}, {"team": "billing"}),
    ("negated-refund", {"body": "问题已解决，不需要退款，谢谢"}, {"team": "triage", "tags": ()}),
    ("download-is-not-down", {"subject": "Cannot download invoice"}, {"team": "triage"}),
    (
        "vip-outage-at-night",
        {
            "sender": "cto@bigcorp.example",
            "subject": "网站宕机了",
            "received_at": datetime(2026, 3, 7, 23, 10, tzinfo=SHANGHAI),
        },
        {
            "team": "sre",
            "priority": "urgent",
            "tags": ("vip", "off-hours", "outage"),
            "notify": ("vip",),
            "sla_s": 1800.0,
        },
    ),
    (
        "auto-reply-stops",
        {"headers": (("Auto-Submitted", "auto-replied"),), "body": "refund"},
        {
            "team": "triage",
            "category": "auto-reply",
            "priority": "low",
            "stopped_at": "auto-replies",
        },
    ),
    (
        "big-order-continues",
        {
            "channel": "webhook",
            "fields": {"order": {"amount": 25000}},
            "body": "Invoice no. INV-2026-001",
        },
        {
            "team": "billing",
            "category": "sales",
            "priority": "high",
            "sla_s": 7200.0,
            "tags": ("has-invoice-no",),
            "rules": ("big-order", "invoice-number"),
        },
    ),
    (
        "unmatched-falls-back",
        {"channel": "webhook", "fields": {"event": "ping"}},
        {
            "team": "triage",
            "category": "general",
            "priority": "medium",
            "rules": (),
            "fallback": True,
        },
    ),
]


@pytest.fixture(scope="module")
def ruleset() -> Any:
    pytest.importorskip("opencc")
    pytest.importorskip("holidays")
    return load_file(EXAMPLE, outputs=OUTPUTS)


def test_example_loads_without_warnings(ruleset: Any) -> None:
    assert ruleset.warnings == []
    assert ruleset.rule_ids == (
        "auto-replies",
        "vip",
        "off-hours",
        "outage",
        "refund",
        "big-order",
        "invoice-number",
    )
    assert ruleset.teams["sre"].inbox == ("sre-chat", "support-mail")
    assert ruleset.teams["sre"].escalation == "oncall@corp.example"
    assert len(ruleset.hash) == 64


@pytest.mark.parametrize(("msg", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_example_routes(ruleset: Any, msg: dict[str, Any], expected: dict[str, Any]) -> None:
    decision = decide(ruleset, message(**msg))
    assert {key: getattr(decision, key) for key in expected} == expected


def test_json_schema_is_exported() -> None:
    schema = json_schema()
    assert set(schema["required"]) == {"version", "teams", "defaults"}
    assert "rules" in schema["properties"]
    json.dumps(schema)


def test_shipped_json_schema_is_current() -> None:
    """Regenerate with: python -m rules.schema > rules/rule-file.schema.json"""
    shipped = Path(__file__).parents[2] / "rules" / "rule-file.schema.json"
    assert json.loads(shipped.read_text(encoding="utf-8")) == json_schema()


def test_explain_renders_the_trace(ruleset: Any) -> None:
    from rules.engine import explain
    from rules.explain import explanation, render_explanation

    facts = message(
        sender="cto@bigcorp.example",
        subject="网站宕机了",
        received_at=datetime(2026, 3, 7, 23, 10, tzinfo=SHANGHAI),
    )
    text = render_explanation(explanation(ruleset, explain(ruleset, facts), facts))
    assert '"宕机" at subject[2:4]: 网站«宕机»了' in text
    assert "   65  · refund: not evaluated (stopped at line 58)" in text
    assert "(saw 2026-03-07 23:10 +0800 (Saturday))" in text
    assert text.endswith(
        "RESULT team=sre category=incident priority=urgent tags=[vip, off-hours, outage]"
        " notify=[vip] sla=30m\n       rules fired: vip, off-hours, outage"
    )
