"""Routing tables (Alertmanager ``TestRouteMatch`` style): inline rules, a message, a decision.

Every case is also checked against the naive evaluator and an explain run (``decide``).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.rules.helpers import decide, load, message

REFUND = """
- id: refund
  when: {text: {contains_any: [退款, refund]}}
  set: {team: billing, category: billing, tags: [refund]}
"""

OUTAGE_WORD = """
- id: outage
  when: {text: {contains_any: [down, 宕机, cannot log in], ascii_word: true}}
  set: {team: sre, category: incident, priority: urgent}
"""

ANNOTATE_THEN_ROUTE = """
- id: vip
  when: {sender_domain: {in: [bigcorp.example]}}
  set: {priority: high, tags: [vip], notify: [vip]}
- id: refund
  when: {text: {contains: refund}}
  set: {team: billing, tags: [refund]}
- id: after
  when: {text: {contains: refund}}
  set: {tags: [never]}
"""

CONTINUE = """
- id: big-order
  when: {fields.order.amount: {gte: 10000}}
  set: {team: billing, category: sales, priority: high, tags: [big]}
  continue: true
- id: refund
  when: {text: {contains: refund}}
  set: {team: sre, category: refunds, tags: [refund, big]}
- id: after
  set: {tags: [after]}
"""

STOP = """
- id: auto-replies
  when:
    any:
      - header.Auto-Submitted: {exists: true, not_equals: "no"}
      - subject: {regex: '^(自动回复|auto(matic)? ?reply)'}
  set: {category: auto-reply, priority: low, tags: [auto]}
  stop: true
- id: refund
  when: {text: {contains: refund}}
  set: {team: billing}
"""

PRIORITY = """
- id: urgent-word
  when: {subject: {contains: urgent}}
  set: {priority: urgent, tags: [urgent]}
- id: low-team
  when: {text: {contains: invoice}}
  set: {team: billing, priority: low}
"""

NEGATION = """
- id: refund
  when:
    all:
      - text: {contains_any: $refund_words}
      - not: {text: {contains_any: $refund_not}}
  set: {team: billing}
"""
NEGATION_LISTS = """
lists:
  refund_words: [退款, 退钱, refund]
  refund_not: [不需要退款, no refund needed]
"""

FIELDS = """
- id: order
  when:
    all:
      - channel: {equals: webhook}
      - fields.order.amount: {gte: 10000}
      - fields.customer.tier: {in: [gold, platinum]}
  set: {team: billing, tags: [big-order]}
- id: sku
  when: {fields.items.0.sku: {starts_with: VIP-}}
  set: {team: vip}
"""

HEADERS = """
- id: list-mail
  when: {header.List-Id: {contains: announce}}
  set: {tags: [mailing-list]}
- id: prio
  when: {header.x-priority: {lte: 2}}
  set: {priority: high}
"""

REGEX_CN = r"""
- id: invoice-number
  when: {text: {regex: '(发票|invoice)\s*(号|no\.?|#)\s*[a-z0-9-]{6,}'}}
  set: {tags: [has-invoice-no]}
"""

ADDRESSES = """
- id: sales-inbox
  when: {to: {equals: sales@corp.example}}
  set: {team: billing, category: sales}
- id: partner
  when: {from: {glob: "*@*.partner.example"}}
  set: {team: vip}
- id: name
  when: {name: {contains: 张}}
  set: {tags: [zhang]}
"""

MISSING = """
- id: no-subject
  when: {subject: {exists: false}}
  set: {tags: [no-subject]}
- id: not-equals-missing
  when: {header.x-mailer: {not_equals: outlook}}
  set: {tags: [not-outlook]}
- id: positive-missing
  when: {header.x-mailer: {contains: o}}
  set: {tags: [never]}
"""

CASE = """
- id: vip-caps
  when: {subject: {contains: VIP, case_sensitive: true}}
  set: {tags: [vip-caps]}
- id: vip-any
  when: {subject: {contains: VIP}}
  set: {tags: [vip-any]}
"""

MISC = """
- id: disabled
  enabled: false
  when: {text: {contains: refund}}
  set: {team: sre}
- id: attachments
  when: {attachments: {gt: 0}}
  set: {tags: [has-attachments]}
- id: all-words
  when: {body: {contains_all: [order, cancel]}}
  set: {tags: [cancel-order]}
- id: ends
  when: {subject: {ends_with: ["?", "？"]}}
  set: {tags: [question]}
- id: use
  when: {use: from_vip}
  set: {tags: [vip]}
- id: sla
  when: {text: {contains: refund}}
  set: {team: billing, sla: 2h}
"""
MISC_EXTRA = """
conditions:
  from_vip: {sender_domain: {in: [bigcorp.example]}}
sla:
  medium: {first_response: 1d}
  urgent: {first_response: 30m}
"""

BETWEEN = """
- id: mid-order
  when: {fields.order.amount: {between: [1000, 9999.5]}}
  set: {tags: [mid]}
- id: few-attachments
  when: {attachments: {between: [1, 2]}}
  set: {tags: [few]}
"""

RAW = """
- id: raw-full-width
  when: {subject: {contains: ＲＥＦＵＮＤ, raw: true}}
  set: {tags: [raw-fw]}
- id: raw-regex
  when: {subject: {regex: '^Re:', raw: true}}
  set: {tags: [raw-re]}
- id: folded
  when: {subject: {contains: refund}}
  set: {tags: [folded]}
"""

CASES: list[Any] = [
    # Chinese keywords match without word boundaries; full width and case are normalised.
    (
        "zh-substring",
        REFUND,
        "",
        {"subject": "我要退款了"},
        {"team": "billing", "rules": ("refund",)},
    ),
    ("full-width", REFUND, "", {"subject": "ＲＥＦＵＮＤ please"}, {"team": "billing"}),
    ("no-match", REFUND, "", {"subject": "hello"}, {"team": "triage", "fallback": True}),
    # ascii_word: "down" is not in "download"; Chinese keywords and CJK neighbours unaffected.
    (
        "ascii-word-miss",
        OUTAGE_WORD,
        "",
        {"subject": "Cannot download invoice"},
        {"team": "triage"},
    ),
    ("ascii-word-hit", OUTAGE_WORD, "", {"body": "site is DOWN!"}, {"team": "sre"}),
    ("ascii-word-cjk-neighbours", OUTAGE_WORD, "", {"body": "网站down了"}, {"team": "sre"}),
    ("ascii-word-zh", OUTAGE_WORD, "", {"subject": "网站宕机了"}, {"priority": "urgent"}),
    ("ascii-word-phrase", OUTAGE_WORD, "", {"body": "I cannot log in."}, {"team": "sre"}),
    # An annotating rule continues; a delivering rule stops.
    (
        "annotate-then-route",
        ANNOTATE_THEN_ROUTE,
        "",
        {"sender": "cto@BigCorp.example", "subject": "refund"},
        {
            "team": "billing",
            "priority": "high",
            "tags": ("vip", "refund"),
            "notify": ("vip",),
            "rules": ("vip", "refund"),
            "stopped_at": "refund",
        },
    ),
    # continue: team/category first-writer-wins, tags accumulate without duplicates.
    (
        "continue",
        CONTINUE,
        "",
        {"channel": "webhook", "fields": {"order": {"amount": 12000}}, "body": "refund"},
        {
            "team": "billing",
            "category": "sales",
            "tags": ("big", "refund"),
            "rules": ("big-order", "refund"),
            "stopped_at": "refund",
        },
    ),
    (
        "continue-reaches-catch-all",
        CONTINUE,
        "",
        {"fields": {"order": {"amount": "10000"}}},
        {"team": "billing", "tags": ("big", "after"), "rules": ("big-order", "after")},
    ),
    # stop: true on an annotating rule ends evaluation; the team stays the default.
    (
        "stop",
        STOP,
        "",
        {"headers": (("AUTO-SUBMITTED", "auto-replied"),), "subject": "refund"},
        {
            "team": "triage",
            "category": "auto-reply",
            "priority": "low",
            "stopped_at": "auto-replies",
        },
    ),
    (
        "stop-header-no",
        STOP,
        "",
        {"headers": (("Auto-Submitted", "No"),), "body": "refund"},
        {"team": "billing"},
    ),
    ("stop-regex-zh", STOP, "", {"subject": "自动回复：我在休假"}, {"category": "auto-reply"}),
    # Priority is only raised: a later rule's lower priority does not lower it.
    (
        "priority-raised",
        PRIORITY,
        "",
        {"subject": "URGENT invoice"},
        {"team": "billing", "priority": "urgent", "rules": ("urgent-word", "low-team")},
    ),
    ("priority-set-low", PRIORITY, "", {"subject": "invoice"}, {"priority": "low"}),
    ("priority-default", PRIORITY, "", {"subject": "hi"}, {"priority": "medium"}),
    # Exception lists for negated phrases.
    ("negation-hit", NEGATION, NEGATION_LISTS, {"body": "我要退钱"}, {"team": "billing"}),
    (
        "negation-except",
        NEGATION,
        NEGATION_LISTS,
        {"body": "问题已解决，不需要退款"},
        {"team": "triage"},
    ),
    # Structured webhook fields by dotted path, numbers compare numerically.
    (
        "fields",
        FIELDS,
        "",
        {
            "channel": "webhook",
            "fields": {"order": {"amount": 10000.0}, "customer": {"tier": "Gold"}},
        },
        {"team": "billing", "tags": ("big-order",)},
    ),
    (
        "fields-small",
        FIELDS,
        "",
        {"channel": "webhook", "fields": {"order": {"amount": 9999}}},
        {"team": "triage"},
    ),
    ("fields-list-index", FIELDS, "", {"fields": {"items": [{"sku": "vip-1"}]}}, {"team": "vip"}),
    # Header names are case-insensitive; numeric headers compare as numbers.
    (
        "headers",
        HEADERS,
        "",
        {"headers": (("LIST-ID", "<Announce.corp>"), ("X-Priority", "1"))},
        {"tags": ("mailing-list",), "priority": "high"},
    ),
    ("regex-zh", REGEX_CN, "", {"body": "请提供发票号 AB-123456"}, {"tags": ("has-invoice-no",)}),
    ("regex-en", REGEX_CN, "", {"body": "Invoice #ab-12345678"}, {"tags": ("has-invoice-no",)}),
    ("regex-short", REGEX_CN, "", {"body": "发票号 123"}, {"tags": ()}),
    # Recipients (any), sender glob, display name.
    (
        "to-any",
        ADDRESSES,
        "",
        {"recipients": ("a@corp.example", "SALES@corp.example")},
        {"team": "billing"},
    ),
    ("from-glob", ADDRESSES, "", {"sender": "bob@eu.partner.example"}, {"team": "vip"}),
    ("name-zh", ADDRESSES, "", {"sender_name": "张三"}, {"tags": ("zhang",)}),
    # Missing fields: positive operators false, exists: false and negations true.
    ("missing", MISSING, "", {"body": "x"}, {"tags": ("no-subject", "not-outlook")}),
    ("case-sensitive", CASE, "", {"subject": "vip customer"}, {"tags": ("vip-any",)}),
    (
        "case-sensitive-hit",
        CASE,
        "",
        {"subject": "VIP customer"},
        {"tags": ("vip-caps", "vip-any")},
    ),
    (
        "misc",
        MISC,
        MISC_EXTRA,
        {
            "subject": "cancel?",
            "body": "Order cancel",
            "attachments": 2,
            "sender": "a@bigcorp.example",
        },
        {
            "tags": ("has-attachments", "cancel-order", "question", "vip"),
            "sla_s": 86400.0,
            "fallback": True,
        },
    ),
    (
        "explicit-sla",
        MISC,
        MISC_EXTRA,
        {"subject": "refund？"},
        {"team": "billing", "sla_s": 7200.0},
    ),
    # between: inclusive at both ends; a missing field or a non-number never matches.
    ("between-low", BETWEEN, "", {"fields": {"order": {"amount": 1000}}}, {"tags": ("mid",)}),
    ("between-high", BETWEEN, "", {"fields": {"order": {"amount": "9999.5"}}}, {"tags": ("mid",)}),
    ("between-above", BETWEEN, "", {"fields": {"order": {"amount": 10000}}}, {"tags": ()}),
    ("between-text", BETWEEN, "", {"fields": {"order": {"amount": "many"}}}, {"tags": ()}),
    ("between-count", BETWEEN, "", {"attachments": 2}, {"tags": ("few",)}),
    ("between-zero", BETWEEN, "", {"attachments": 0}, {"tags": ()}),
    # raw: true matches the text as received: no NFKC, no casefolding (keywords neither).
    ("raw-full-width", RAW, "", {"subject": "ＲＥＦＵＮＤ"}, {"tags": ("raw-fw", "folded")}),
    ("raw-ascii", RAW, "", {"subject": "REFUND"}, {"tags": ("folded",)}),
    ("raw-regex-case", RAW, "", {"subject": "RE: refund"}, {"tags": ("folded",)}),
    ("raw-regex", RAW, "", {"subject": "Re: hi"}, {"tags": ("raw-re",)}),
]


@pytest.mark.parametrize(
    ("rules", "extra", "msg", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_route(rules: str, extra: str, msg: dict[str, Any], expected: dict[str, Any]) -> None:
    decision = decide(load(rules, extra), message(**msg))
    got = {key: getattr(decision, key) for key in expected}
    assert got == expected


def test_traditional_chinese_is_normalised() -> None:
    pytest.importorskip("opencc")
    ruleset = load(REFUND.replace("退款", "申请退款"), "settings: {normalize: {chinese: t2s}}\n")
    assert decide(ruleset, message(subject="申請退款")).team == "billing"


def test_keyword_written_full_width_matches_ascii_text() -> None:
    ruleset = load(REFUND.replace("refund]", "ＲＥＦＵＮＤ]"))
    assert decide(ruleset, message(body="please refund")).team == "billing"


def test_trace_has_spans_for_explain() -> None:
    from rules.engine import explain

    ruleset = load(REFUND + OUTAGE_WORD)
    routine = decide(ruleset, message(subject="Re: 我要退款", body="please"))
    assert [(t.rule, t.matched, t.conditions) for t in routine.trace] == [("refund", True, ())]
    (entry,) = explain(ruleset, message(subject="Re: 我要退款", body="please")).trace
    assert entry.rule == "refund"
    assert entry.matched
    (cond,) = entry.conditions
    assert (cond.field, cond.op, cond.matched) == ("text", "contains_any", True)
    assert [tuple(s) for s in cond.spans] == [("text", 6, 8, "退款")]


def test_explain_traces_every_rule_and_leaf() -> None:
    ruleset = load(NEGATION + OUTAGE_WORD, NEGATION_LISTS)
    decision = decide(ruleset, message(body="不需要退款"))
    from rules.engine import explain

    full = explain(ruleset, message(body="不需要退款"))
    assert [t.rule for t in full.trace] == ["refund", "outage"]
    assert [c.matched for c in full.trace[0].conditions] == [True, True]
    assert decision.stopped_at is None
    assert full.stopped_at is None


def test_as_record_is_json_ready() -> None:
    import json

    decision = decide(load(REFUND), message(subject="refund"))
    record = decision.as_record()
    assert json.loads(json.dumps(record)) == record
    assert set(record) == {
        "team",
        "category",
        "priority",
        "tags",
        "notify",
        "sla_s",
        "rules",
        "fallback",
        "ruleset_hash",
    }
    assert record["ruleset_hash"] == load(REFUND).hash


def test_evaluate_never_raises() -> None:
    from rules.engine import evaluate

    ruleset = load(REFUND)
    decision = evaluate(ruleset, None)  # type: ignore[arg-type]
    assert decision.team == "triage"
    assert decision.tags == ("routing-error",)
    assert decision.fallback
    assert decision.error


def test_raw_is_not_t2s_converted() -> None:
    pytest.importorskip("opencc")
    rules = REFUND.replace("[退款, refund]}", "[申請退款], raw: true}")
    ruleset = load(rules, "settings: {normalize: {chinese: t2s}}\n")
    assert decide(ruleset, message(subject="申請退款")).team == "billing"
    assert decide(ruleset, message(subject="申请退款")).team == "triage"


PARTS = """
- id: subject
  when: {subject: {contains_any: [refund, 退款]}}
  set: {tags: [subject]}
- id: body
  when: {body: {contains: refund}}
  set: {tags: [body]}
- id: both
  when: {all: [{subject: {contains: hello}}, {body: {contains: refund}}]}
  set: {tags: [both]}
"""


@pytest.mark.parametrize(
    ("subject", "body", "tags"),
    [
        ("refund", "", ("subject",)),
        ("hello", "refund please", ("body", "both")),
        ("hello refund", "no", ("subject",)),
        ("", "退款 refund", ("body",)),
        ("退款", "refund", ("subject", "body")),
    ],
)
def test_subject_and_body_keywords_are_told_apart(subject: str, body: str, tags: tuple) -> None:
    """The text's automaton scans subject and body apart: a hit is the field's own."""
    assert decide(load(PARTS), message(subject=subject, body=body)).tags == tags


def test_keyword_spanning_subject_and_body() -> None:
    """A keyword with a newline may span the one joining subject and body in ``text``: the
    text is then scanned whole and subject/body keywords are sorted out of its hits."""
    rules = (
        PARTS
        + """
- id: span
  when: {text: {contains: "hello\\nrefund"}}
  set: {tags: [span]}
"""
    )
    ruleset = load(rules)
    assert decide(ruleset, message(subject="hello", body="refund")).tags == ("body", "both", "span")
    assert decide(ruleset, message(subject="refund", body="hello")).tags == ("subject",)


SUBJECT_REGEXES = r"""
- id: text
  when: {text: {regex: 'invoice\s*#\d+'}}
  set: {tags: [text]}
- id: word-end
  when: {subject: {regex: 'down\b'}}
  set: {tags: [word-end]}
- id: start
  when: {subject: {regex: '^re:'}}
  set: {tags: [start]}
"""


@pytest.mark.parametrize(
    ("rules", "subject", "body", "tags"),
    [
        (SUBJECT_REGEXES, "site down", "load it", ("word-end",)),
        (SUBJECT_REGEXES, "download", "", ()),
        (SUBJECT_REGEXES, "Re: invoice #12", "", ("text", "start")),
        (SUBJECT_REGEXES, "hello", "re: down", ()),
        (
            SUBJECT_REGEXES + "- {id: end, when: {subject: {regex: 'ok$'}}, set: {tags: [end]}}\n",
            "ok",
            "ok",
            ("end",),
        ),
    ],
)
def test_subject_regexes_guarded_by_the_text_set(
    rules: str, subject: str, body: str, tags: tuple
) -> None:
    """Subject regexes also run in the text's set: the subject's runs only when one of them
    matched the text (with a ``$``, which looks past the subject, always)."""
    assert decide(load(rules), message(subject=subject, body=body)).tags == tags
