"""Property tests: the indexed engine decides exactly as the naive evaluator, and never raises.

Rule files are generated as JSON (valid YAML) from a small vocabulary with overlapping
keywords (退/退款/申请退款, down/download), full-width and upper-case variants, nested
all/any/not, named conditions, lists, and every operator family; messages from the same
vocabulary plus arbitrary Unicode.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.engine import evaluate
from rules.fields import FieldReader
from rules.loader import RuleSet, load_text
from rules.naive import evaluate_naive
from rules.normalize import (
    _MARKS,
    _PLAIN_BYTES,
    Normalizer,
    boundary_ok,
    boundary_ok_bytes,
    char_offset,
    fast_nfkc,
    is_word_char,
    needs_casefold,
    plain_utf8,
)
from tests.rules.helpers import message

KEYWORDS = ["退款", "退", "申请退款", "refund", "down", "download", "VIP", "Ｒefund", "no refund"]
KEYWORDS += ["!\n我要"]  # spans subject and body in ``text`` (the engine scans it whole then)
PIECES = [
    *KEYWORDS,
    "我要",
    " ",
    "!",
    "DOWN",
    "ＲＥＦＵＮＤ",
    "invoice #12345678",
    "\n",
    "不需要退款",
    "s",
]
TEXT_FIELDS = [
    "subject",
    "body",
    "text",
    "from",
    "name",
    "to",
    "header.x-tag",
    "fields.tier",
    "channel",
]
REGEXES = [r"^re:", r"(发票|invoice)\s*#?\s*\d{6,}", r"down\b", r"退.?款", r"[A-Z]{3}", r"^$"]
TEAMS = ["triage", "billing", "sre", "vip"]

keywords = st.lists(st.sampled_from(KEYWORDS), min_size=1, max_size=3)
list_ref = st.sampled_from(["$words", "$more"])
options = st.fixed_dictionaries(
    {},
    optional={"ascii_word": st.booleans(), "case_sensitive": st.booleans(), "raw": st.booleans()},
)


def _with(op: str, value: Any, opts: dict[str, Any]) -> dict[str, Any]:
    return {op: value, **opts}


keyword_leaf = st.builds(
    lambda field, op, kws, opts: {field: _with(op, kws[0] if op == "contains" else kws, opts)},
    st.sampled_from(TEXT_FIELDS),
    st.sampled_from(["contains", "contains_any", "contains_all", "keywords"]),
    st.one_of(keywords, list_ref.map(lambda r: [r])),
    options,
)
value_leaf = st.builds(
    lambda field, op, kws, opts: {field: _with(op, kws[0] if "equals" in op else kws, opts)},
    st.sampled_from(TEXT_FIELDS),
    st.sampled_from(["equals", "not_equals", "in", "not_in", "starts_with", "ends_with", "glob"]),
    st.lists(
        st.sampled_from([*KEYWORDS, "email", "webhook", "gold", "*refund*", "?"]),
        min_size=1,
        max_size=3,
    ),
    options,
)
regex_leaf = st.builds(
    lambda field, pattern, opts: {field: _with("regex", pattern, opts)},
    st.sampled_from(TEXT_FIELDS),
    st.sampled_from(REGEXES),
    options,
)
other_leaf = st.one_of(
    st.builds(
        lambda f, b: {f: {"exists": b}},
        st.sampled_from([*TEXT_FIELDS, "attachments"]),
        st.booleans(),
    ),
    st.builds(
        lambda f, op, n: {f: {op: n}},
        st.sampled_from(["attachments", "fields.amount", "header.x-tag"]),
        st.sampled_from(["gt", "gte", "lt", "lte"]),
        st.integers(0, 3),
    ),
    st.builds(
        lambda f, low, span: {f: {"between": [low, low + span]}},
        st.sampled_from(["attachments", "fields.amount", "header.x-tag"]),
        st.integers(0, 3),
        st.sampled_from([0, 0.5, 2]),
    ),
    st.just({"time_in": "always"}),
    st.sampled_from([{"use": "c1"}, {"use": "c2"}]),
)
leaf = st.one_of(keyword_leaf, value_leaf, regex_leaf, other_leaf)


def _combine(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.lists(children, max_size=3).map(lambda cs: {"all": cs}),
        st.lists(children, max_size=3).map(lambda cs: {"any": cs}),
        children.map(lambda c: {"not": c}),
        st.tuples(children, children).map(lambda t: {**t[0], **t[1]}),  # several keys: ANDed
    )


condition = st.recursive(leaf, _combine, max_leaves=6)
named = st.recursive(st.one_of(keyword_leaf, value_leaf, regex_leaf), _combine, max_leaves=3)

action = st.fixed_dictionaries(
    {},
    optional={
        "team": st.sampled_from(TEAMS),
        "category": st.sampled_from(["a", "b"]),
        "priority": st.sampled_from(["low", "medium", "high", "urgent"]),
        "tags": st.lists(st.sampled_from(["t1", "t2", "t3"]), max_size=2),
        "notify": st.lists(st.sampled_from(TEAMS), max_size=2),
    },
)
flow = st.sampled_from([{}, {}, {"continue": True}, {"stop": True}, {"enabled": False}])


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    rules = []
    for i in range(draw(st.integers(1, 8))):
        rule: dict[str, Any] = {"id": f"r{i}", "set": draw(action), **draw(flow)}
        if draw(st.integers(0, 9)):
            rule["when"] = draw(condition)
        rules.append(rule)
    doc = {
        "version": 1,
        "settings": {"normalize": {"casefold": draw(st.booleans())}},
        "teams": {team: {"inbox": ["maildir"]} for team in TEAMS},
        "lists": {"words": draw(keywords), "more": draw(keywords)},
        "conditions": {"c1": draw(named), "c2": draw(named)},
        "sla": {"urgent": {"first_response": "30m"}},
        "defaults": {"team": "triage", "category": "general", "priority": "medium"},
        "rules": rules,
    }
    return json.dumps(doc, ensure_ascii=False)


vocab_text = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
any_text = st.one_of(vocab_text, st.text(max_size=30))
messages = st.builds(
    message,
    channel=st.sampled_from(["email", "webhook", "telegram"]),
    subject=any_text,
    body=any_text,
    sender=st.sampled_from(["a@bigcorp.example", "x@VIP.example", "", "tg:123"]),
    sender_name=vocab_text,
    recipients=st.lists(st.sampled_from(["support@x", "REFUND@x", "vip@x"]), max_size=2).map(tuple),
    headers=st.lists(
        st.tuples(st.sampled_from(["X-Tag", "x-tag", "Other"]), any_text), max_size=2
    ).map(tuple),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "tier": st.sampled_from(["gold", "VIP", "download"]),
            "amount": st.integers(0, 4),
        },
    ),
    attachments=st.integers(0, 3),
)


def _load(text: str) -> RuleSet:
    return load_text(text, "generated.yaml")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_files(), st.lists(messages, min_size=1, max_size=4))
def test_indexed_engine_decides_like_naive(text: str, batch: list[Any]) -> None:
    ruleset = _load(text)
    for facts in batch:
        fast = evaluate(ruleset, facts)
        assert fast.error is None, fast.error
        slow = evaluate_naive(ruleset, facts)
        assert (fast.as_record(), fast.stopped_at) == (slow.as_record(), slow.stopped_at)
        full = evaluate(ruleset, facts, explain=True)
        assert (full.as_record(), full.stopped_at) == (fast.as_record(), fast.stopped_at)
        assert [t.rule for t in fast.trace if t.matched] == list(fast.rules)


@st.composite
def leaf_files(draw: st.DrawFn) -> str:
    """One leaf per rule, no combinators: dense coverage of keyword and boundary matching."""
    leaves = st.one_of(keyword_leaf, value_leaf, regex_leaf)
    rules = [{"id": f"r{i}", "when": draw(leaves)} for i in range(draw(st.integers(1, 3)))]
    doc = {
        "version": 1,
        "teams": {"triage": {"inbox": ["maildir"]}},
        "lists": {"words": draw(keywords), "more": draw(keywords)},
        "defaults": {"team": "triage", "category": "general", "priority": "medium"},
        "rules": rules,
    }
    return json.dumps(doc, ensure_ascii=False)


vocab_messages = st.builds(
    message, subject=vocab_text, body=vocab_text, sender_name=vocab_text, channel=vocab_text
)


@settings(max_examples=500, deadline=None)
@given(leaf_files(), st.lists(vocab_messages, min_size=1, max_size=4))
def test_leaves_match_like_naive(text: str, batch: list[Any]) -> None:
    ruleset = _load(text)
    for facts in batch:
        fast, slow = evaluate(ruleset, facts), evaluate_naive(ruleset, facts)
        assert fast.rules == slow.rules


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200),
    st.text(max_size=50),
    st.lists(st.tuples(st.text(), st.text()), max_size=3),
)
def test_evaluate_never_raises_on_any_text(body: str, subject: str, headers: list[Any]) -> None:
    ruleset = _RULES
    facts = message(body=body, subject=subject, headers=tuple(headers), sender=subject)
    decision = evaluate(ruleset, facts)
    assert decision.error is None, decision.error


_RULES = _load(
    json.dumps(
        {
            "version": 1,
            "teams": {"triage": {"inbox": ["x"]}},
            "defaults": {"team": "triage", "category": "general", "priority": "medium"},
            "rules": [
                {"id": "kw", "when": {"text": {"contains_any": KEYWORDS, "ascii_word": True}}},
                {"id": "rx", "when": {"any": [{"subject": {"regex": r}} for r in REGEXES]}},
                {
                    "id": "hdr",
                    "when": {"header.x-tag": {"glob": "*a?b*"}, "from": {"ends_with": "x"}},
                },
            ],
        },
        ensure_ascii=False,
    )
)


# -- the fast paths of normalisation and matching decide exactly as the plain definitions ---

TRICKY = (
    "aZ ßſ退款帳號，：！？（）；　ＲＥＦＵＮＤ①ﬁ…\u00a0\u0301\u0308e\u212aK\u2160Ⓐµ“”·¥Σςİǅᏸꭰ\ud800"
    "。、’‘—–か\u3099\u1100\u1161㐀"  # marks, a kana and a Hangul jamo that compose, CJK ext. A
)
tricky_text = st.text(alphabet=st.sampled_from(TRICKY), max_size=40) | st.text(max_size=40)


@settings(max_examples=500, deadline=None)
@given(tricky_text)
def test_fast_nfkc_is_nfkc(text: str) -> None:
    assert fast_nfkc(text) == unicodedata.normalize("NFKC", text)


@settings(max_examples=300, deadline=None)
@given(tricky_text, st.booleans(), st.booleans())
def test_pipeline_bytes_are_the_utf8_of_its_text(text: str, nfkc: bool, casefold: bool) -> None:
    for pipeline in Normalizer(nfkc, casefold).build().values():
        assert pipeline.encode(text) == pipeline(text).encode()


@settings(max_examples=300, deadline=None)
@given(tricky_text, tricky_text, st.booleans())
def test_text_normalised_whole_is_its_parts_normalised(
    subject: str, body: str, casefold: bool
) -> None:
    """``FieldReader`` normalises subject + newline + body in one piece (``_joined``)."""
    views = Normalizer(True, casefold).build()
    reader = FieldReader(message(subject=subject, body=body), views, 1 << 20)
    parts = [views["fold"].encode(part) for part in (subject, body)]
    expected = (parts[0] + b"\n" + parts[1],) if subject or body else None
    assert reader.encoded("text", "fold") == expected
    assert reader.encoded("subject", "fold") == ((parts[0],) if subject else None)
    assert reader.encoded("body", "fold") == ((parts[1],) if body else None)


def test_no_character_but_a_newline_normalises_to_one() -> None:
    """Why ``FieldReader`` may cut the subject off the text at its first newline."""
    makes_newline = [
        hex(code)
        for code in range(0x110000)
        if code != 0x0A
        and not 0xD800 <= code <= 0xDFFF
        and "\n" in unicodedata.normalize("NFKC", chr(code)).casefold()
    ]
    assert makes_newline == []


def _composition_trailers() -> set[str]:
    """Characters that canonical composition may merge into the character before them."""
    out = {chr(c) for c in (*range(0x1161, 0x1176), *range(0x11A8, 0x11C3))}  # Hangul V, T
    for code in range(0x110000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            out.add(chr(int(parts[1], 16)))
    return out


def test_plain_characters_are_left_alone_by_nfkc_and_casefold() -> None:
    """What ``plain_utf8`` lets through: characters NFKD leaves alone, without a combining
    class, that compose with nothing before them and that casefold keeps (ASCII: A–Z only)."""
    trailers = _composition_trailers()
    every = (chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    plain = [ch for ch in every if ch.encode()[0] in _PLAIN_BYTES]  # translate deletes them
    assert len(plain) == 128 + 0x6000  # ASCII and U+4000–U+9FFF (leads E4–E9), no more
    marks = [mark for mark, lead in _MARKS if mark.encode()[0] == lead]
    assert len(marks) == len(_MARKS)
    for ch in plain + marks:
        assert unicodedata.normalize("NFKD", ch) == ch, hex(ord(ch))
        assert unicodedata.combining(ch) == 0, hex(ord(ch))
        assert ch not in trailers, hex(ord(ch))
        assert ch.casefold() == (ch.lower() if ch.isascii() else ch), hex(ord(ch))
    assert plain_utf8("退款。“refund”") == "退款。“refund”".encode()
    assert plain_utf8("か\u3099") is None  # composes into が
    assert plain_utf8("ＲＥＦＵＮＤ") is None


def test_bytes_casefold_shortcut_covers_every_code_point() -> None:
    """``needs_casefold`` flags every non-ASCII character that casefold changes."""
    missed = [
        hex(code)
        for code in range(0x80, 0x110000)
        if not 0xD800 <= code <= 0xDFFF
        and chr(code).casefold() != chr(code)
        and not needs_casefold(chr(code).encode())
    ]
    assert missed == []


def test_cjk_leads_start_no_word_character() -> None:
    """``boundary_ok_bytes`` takes a character with a lead byte E3–E9 (U+3000–U+9FFF) for a
    non-word character without decoding it."""
    assert not any(is_word_char(chr(code)) for code in range(0x3000, 0xA000))
    assert {chr(code).encode()[0] for code in range(0x3000, 0xA000)} == set(range(0xE3, 0xEA))


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab_1 退款.é\u0301ΣＡⅻの。"), min_size=1, max_size=12),
    st.data(),
)
def test_boundaries_on_bytes_match_boundaries_on_text(hay: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(hay) - 1))  # a hit: a non-empty keyword
    end = data.draw(st.integers(start + 1, len(hay)))
    raw = hay.encode()
    offset = len(hay[:start].encode())
    assert char_offset(raw, offset) == start
    assert boundary_ok_bytes(raw, offset, offset + len(hay[start:end].encode())) == boundary_ok(
        hay, start, end
    )
