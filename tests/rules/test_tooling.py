"""The pure parts of ``triaged rules``: message files → Facts, the test runner, explain.

CLI behaviour (exit codes, output) is in ``test_cli_rules.py``; here the modules are called
directly, tables where possible (Alertmanager-style).
"""

from __future__ import annotations

import base64
import textwrap
from datetime import UTC, datetime
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules.engine import explain
from rules.explain import changes, explanation, render_explanation, summary
from rules.loader import load_file
from rules.messages import (
    MessageError,
    MessageFileError,
    decode_bytes,
    facts_from_eml,
    facts_from_mapping,
    load_message,
)
from rules.testing import FROZEN_AT, RuleFiles, SuiteError, load_suite, rules_file_of, run_suite
from tests.rules.helpers import SHANGHAI, load, message

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_RULES = REPO / "config" / "rules.yaml"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def gbk_subject(text: str) -> str:
    """An RFC 2047 encoded word labelled gb2312 carrying GBK bytes (as real mailers do)."""
    return f"=?gb2312?b?{base64.b64encode(text.encode('gbk')).decode()}?="


# -- message mappings -----------------------------------------------------------------------


def test_mapping_is_the_webhook_body_plus_extras() -> None:
    facts = facts_from_mapping(
        {
            "from": "a@b.cn",
            "name": "张伟",
            "subject": "退款",
            "text": "你好",
            "recipients": ["support@corp.example"],
            "to": "sales@corp.example",
            "headers": {"X-Priority": "1", "Received": ["a", "b"]},
            "received_at": "2026-03-07T23:10:00",
            "order": 42,
        },
        received_at=NOW,
        tz=SHANGHAI,
    )
    assert (facts.channel, facts.sender, facts.sender_name) == ("webhook", "a@b.cn", "张伟")
    assert facts.recipients == ("support@corp.example", "sales@corp.example")
    assert facts.headers == (("X-Priority", "1"), ("Received", "a"), ("Received", "b"))
    assert facts.received_at == datetime(2026, 3, 7, 23, 10, tzinfo=SHANGHAI)  # naive: rule tz
    assert facts.fields == {"order": 42}  # unknown top-level keys join fields, as in the webhook


@pytest.mark.parametrize(
    ("data", "issue"),
    [
        ({"from": 1}, (("from",), "from must be a string, got the number 1")),
        ({"subjet": "x"}, (("subjet",), 'unknown message key "subjet" (did you mean "subject"?)')),
        ({"text": "a", "body": "b"}, (("body",), "give text or body, not both")),
        ({"received_at": "soon"}, (("received_at",), 'invalid time "soon"')),
        ({"headers": {"X": {"a": 1}}}, (("headers", "X"), "header X must be a string")),
    ],
)
def test_mapping_problems_name_the_key(data: dict[str, Any], issue: tuple[Any, str]) -> None:
    with pytest.raises(MessageError) as caught:
        facts_from_mapping(data, received_at=NOW, tz=UTC, extra="error")
    where, text = caught.value.issues[0]
    assert where == issue[0]
    assert text.startswith(issue[1])


def test_json_file_problems_have_positions(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{\n  "from": "a@b.cn",\n  "text": 5\n}\n', encoding="utf-8")
    with pytest.raises(MessageFileError) as caught:
        load_message(path, received_at=NOW, tz=UTC)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:3:11: E109 text must be a string, got the number 5"
    ]
    path.write_text('{"from": "a@b.cn",\n "text": }', encoding="utf-8")
    with pytest.raises(MessageFileError) as caught:
        load_message(path, received_at=NOW, tz=UTC)
    assert str(caught.value.problems[0]).startswith(f"{path}:2:10: E001 invalid JSON")


# -- e-mail ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "charset", "text"),
    [
        ("张喆要退款".encode("gbk"), "gb2312", "张喆要退款"),  # 喆 is GBK, not GB2312
        ("张喆要退款".encode("gb18030"), "GBK", "张喆要退款"),
        ("退款".encode(), "us-ascii", "退款"),  # mislabelled UTF-8
        ("退款".encode("gbk"), None, "退款"),
        (b"caf\xe9", "x-unknown-charset", "caf\ufffd"),
    ],
)
def test_decode_bytes_falls_back(raw: bytes, charset: str | None, text: str) -> None:
    assert decode_bytes(raw, charset) == text


def test_gbk_email_labelled_gb2312_decodes() -> None:
    msg = MIMEText("你好，张喆的耳机有杂音，想申请退款。", "plain", "gbk")
    msg.set_param("charset", "gb2312")
    msg["Subject"] = gbk_subject("订单 申请退款 喆")
    msg["From"] = f"{gbk_subject('张喆')} <zz@example.cn>"
    msg["To"] = "support@corp.example, Sales <sales@corp.example>"
    msg["Date"] = "Sat, 07 Mar 2026 23:10:00 +0800"
    facts = facts_from_eml(msg.as_bytes(), received_at=NOW, tz=UTC)
    assert facts.subject == "订单 申请退款 喆"
    assert facts.body == "你好，张喆的耳机有杂音，想申请退款。"
    assert (facts.sender, facts.sender_name) == ("zz@example.cn", "张喆")
    assert facts.recipients == ("support@corp.example", "sales@corp.example")
    assert facts.received_at == datetime(2026, 3, 7, 23, 10, tzinfo=SHANGHAI)


def test_raw_8bit_gbk_header_and_attachment_count() -> None:
    outer = MIMEMultipart()
    outer.attach(MIMEText("<p>页面<b>打不开</b></p><script>x()</script>", "html", "utf-8"))
    outer.attach(MIMEApplication(b"%PDF", Name="invoice.pdf"))
    head = b"From: a@b.cn\nSubject: " + "退款申请 喆".encode("gbk") + b"\n"
    facts = facts_from_eml(head + outer.as_bytes(), received_at=NOW, tz=UTC)
    assert facts.subject == "退款申请 喆"
    assert facts.body == "页面打不开"  # HTML only: its visible text
    assert facts.attachments == 1
    assert facts.received_at == NOW  # no Date: header


def test_broken_headers_never_stop_the_parse() -> None:
    raw = b"From: <<<@@>\nTo: ,,,;\nDate: not a date\nSubject: =?bogus?q?x?=\n\nbody\n"
    facts = facts_from_eml(raw, received_at=NOW, tz=UTC)
    assert (facts.body, facts.received_at) == ("body\n", NOW)


def test_stdlib_emailmessage_roundtrip() -> None:
    msg = EmailMessage()
    msg["Subject"] = "退款"
    msg["From"] = "张伟 <zw@example.cn>"
    msg.set_content("想申请退款")
    facts = facts_from_eml(msg.as_bytes(), received_at=NOW, tz=UTC)
    assert (facts.subject, facts.sender_name, facts.body.strip()) == ("退款", "张伟", "想申请退款")


# -- test runner -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rules"),
    [("rules.test.yaml", "rules.yaml"), ("a.test.yml", "a.yml"), ("x.yaml", "x.yaml")],
)
def test_rules_file_of_drops_test(name: str, rules: str) -> None:
    assert rules_file_of(Path("/c") / name) == Path("/c") / rules
    assert rules_file_of(Path("/c") / name, "../r.yaml") == Path("/c/../r.yaml")


def suite_file(tmp_path: Path, body: str) -> Path:
    (tmp_path / "rules.yaml").write_text(EXAMPLE_RULES.read_text("utf-8"), "utf-8")
    path = tmp_path / "rules.test.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_runner_reports_pass_and_fail_with_a_diff(tmp_path: Path) -> None:
    path = suite_file(
        tmp_path,
        """\
        tests:
          - name: pass
            message: {text: 我要退款}
            expect: {team: aftersales, tags: [refund], rules: [after-sales]}
          - name: fail
            message: {text: 我要投诉, fields: {tier: vip}}
            expect: {team: aftersales, tags: [complaint, refund], not_tags: [vip], fallback: true}
        """,
    )
    results = run_suite(load_suite(path, RuleFiles()))
    assert [r.passed for r in results] == [True, False]
    assert results[1].mismatches == (
        "team: expected aftersales, got complaints",
        "tags: expected [complaint, refund], got [vip, complaint] (missing refund; unexpected vip)",
        "not_tags: has vip (tags are [vip, complaint])",
        "fallback: expected true, got false",
    )


def test_test_file_errors_have_positions(tmp_path: Path) -> None:
    path = suite_file(
        tmp_path,
        """\
        defaults: {recieved_at: "2026-03-04T10:00:00+08:00"}
        tests:
          - name: typo
            message: {text: 你好}
            expect: {team: triag, tag: [x], rules: [refund]}
        """,
    )
    with pytest.raises(SuiteError) as caught:
        load_suite(path, RuleFiles())
    assert [str(p) for p in caught.value.problems] == [
        f'{path}:1:12: E100 unknown message key "recieved_at" (did you mean "received_at"?)',
        f'{path}:5:20: E104 unknown team "triag" (did you mean "triage"?)',
        f'{path}:5:27: E100 unknown key "tag" in tests[0].expect (did you mean "tags"?)',
        f'{path}:5:45: E109 unknown rule "refund"'
        " (known: urgent-words, vip-customer, outage, complaint, technical, after-sales,"
        " consultation)",
    ]


def test_a_broken_rule_file_is_reported_through_the_suite(tmp_path: Path) -> None:
    path = tmp_path / "t.test.yaml"
    path.write_text("rules: missing.yaml\ntests: []\n", encoding="utf-8")
    with pytest.raises(SuiteError) as caught:
        load_suite(path, RuleFiles())
    assert str(caught.value.problems[0]).endswith(
        "missing.yaml:1:1: E000 cannot read: No such file or directory"
    )


def test_frozen_clock_without_received_at(tmp_path: Path) -> None:
    rules = tmp_path / "hours.yaml"
    rules.write_text(
        "version: 1\nsettings: {timezone: Asia/Shanghai}\n"
        "teams: {a: {inbox: [x]}, night: {inbox: [x]}}\n"
        "calendars: {day: {times: [{start: '09:00', end: '18:00'}]}}\n"
        "defaults: {team: a, category: c, priority: low}\n"
        "rules:\n  - {id: night, when: {not: {time_in: day}}, set: {team: night}}\n",
        encoding="utf-8",
    )
    path = tmp_path / "hours.test.yaml"
    path.write_text(
        "tests:\n"
        "  - {name: frozen, message: {text: x}, expect: {team: a}}\n"
        "  - name: night\n"
        "    message: {text: x, received_at: '2026-03-04 23:00'}\n"
        "    expect: {team: night}\n",
        encoding="utf-8",
    )
    suite = load_suite(path, RuleFiles())
    assert suite.cases[0].facts.received_at == FROZEN_AT
    assert [r.passed for r in run_suite(suite)] == [True, True]


# -- explain, summary, changes -------------------------------------------------------------------


def test_explanation_places_chinese_keywords_in_subject_and_body() -> None:
    ruleset = load_file(EXAMPLE_RULES)
    facts = message(subject="订单 88812345 申请退款", body="耳机有杂音")
    doc = explanation(ruleset, explain(ruleset, facts), facts)
    after_sales = next(r for r in doc["rules"] if r["id"] == "after-sales")
    words, refund = after_sales["condition"]["children"]  # any: [after-sales words, all: …]
    leaf = refund["children"][0]

    def spans(node: dict[str, Any]) -> list[tuple[str, int, int, str]]:
        return [(s["field"], s["start"], s["end"], s["keyword"]) for s in node["spans"]]

    assert spans(words) == [("body", 3, 5, "杂音")]
    assert spans(leaf) == [("subject", 14, 16, "退款")]
    assert leaf["spans"][0]["context"] == "…8812345 申请«退款»"
    assert doc["rules"][-1]["status"] == f"not evaluated (stopped at line {after_sales['line']})"
    text = render_explanation(doc)
    assert '"退款" at subject[14:16]' in text
    assert "✓ after-sales → team = aftersales" in text


def test_explanation_shows_the_negated_phrase() -> None:
    ruleset = load_file(EXAMPLE_RULES)
    facts = message(body="问题已解决，不需要退款，谢谢")
    text = render_explanation(explanation(ruleset, explain(ruleset, facts), facts))
    assert "✗ after-sales: no match" in text
    assert "✗ not" in text
    assert '"不需要退款" at body[6:11]' in text


def test_summary_counts_keywords_by_script() -> None:
    ruleset = load(
        """
        - id: r
          when: {text: {contains_any: [退款, refund, 退货]}, subject: {regex: 'inv[0-9]+'}}
          set: {team: billing}
        """
    )
    counts = summary({"rules": [{}], "lists": {"a": []}}, ruleset)
    assert counts == {
        "rules": 1,
        "lists": 1,
        "conditions": 0,
        "teams": 0,
        "calendars": 0,
        "keywords_zh": 2,
        "keywords_en": 1,
        "regexes": 1,
        "unindexed": 0,
    }


def test_changes_between_records() -> None:
    old = {"team": "aftersales", "category": "c", "priority": "low", "tags": ["refund", "vip"]}
    new = {"team": "billing", "category": "c", "priority": "low", "tags": ["vip", "new"]}
    assert changes(old, new) == ["team aftersales → billing", "tags +new -refund"]
    assert changes(old, dict(old)) == []


def test_time_in_shows_the_local_time() -> None:
    ruleset = load(
        "- {id: r, when: {time_in: day}, set: {team: sre}}",
        "settings: {timezone: Asia/Shanghai}\n"
        "calendars: {day: {times: [{start: '09:00', end: '18:00'}]}}\n",
    )
    facts = message(received_at=datetime(2026, 3, 7, 15, 10, tzinfo=UTC))
    doc = explanation(ruleset, explain(ruleset, facts), facts)
    assert doc["rules"][0]["condition"]["seen"] == "2026-03-07 23:10 +0800 (Saturday)"
    assert doc["message"]["received_at"] == "2026-03-07T23:10:00+08:00"
    assert ZoneInfo(ruleset.timezone) == SHANGHAI
