"""Every admin mistake is reported as ``file:line:col: CODE message`` at the offending node."""

from __future__ import annotations

import textwrap

import pytest

from rules.loader import RuleFileError, load_file, load_text

GOOD_HEAD = """\
version: 1
teams:
  triage: {inbox: [maildir]}
  billing: {inbox: [maildir]}
lists:
  refund_words: [退款, refund]
defaults: {team: triage, category: general, priority: medium}
rules:
"""


def problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(RuleFileError) as info:
        load_text(textwrap.dedent(text), "rules.yaml", **kwargs)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


ERRORS = [
    (
        "unknown-operator",
        GOOD_HEAD + "  - id: r\n    when: {text: {contians: refund}}\n",
        'rules.yaml:10:19: E107 unknown operator "contians" (did you mean "contains"?)',
    ),
    (
        "bad-indentation",
        "version: 1\nteams:\n  triage: {inbox: [maildir]}\n   billing: {inbox: [maildir]}\n",
        "rules.yaml:4:4: E001 invalid YAML: while parsing a block mapping expected <block end>, "
        "but found '<block mapping start>' (check the indentation)",
    ),
    (
        "unknown-list",
        GOOD_HEAD
        + "  - id: r\n    when: {text: {contains_any: $refund_word}}\n    set: {team: billing}\n",
        'rules.yaml:10:33: E102 unknown list "refund_word" (did you mean "refund_words"?)',
    ),
    (
        "bad-regex",
        GOOD_HEAD + "  - id: r\n    when: {subject: {regex: '(?<=发票)\\d+'}}\n",
        'rules.yaml:10:29: E130 invalid regex "(?<=发票)\\d+": invalid perl operator: (?<= '
        "(RE2 supports no look-around or back-references)",
    ),
    (
        "duplicate-key",
        "version: 1\nteams:\n  triage: {inbox: [maildir]}\n  triage: {inbox: [x]}\n",
        'rules.yaml:4:3: E002 duplicate key "triage" (each key may appear once in a mapping)',
    ),
    (
        "duplicate-rule-id",
        GOOD_HEAD + "  - id: r\n    set: {tags: [a]}\n  - id: r\n    set: {tags: [b]}\n",
        'rules.yaml:11:9: E111 duplicate rule id "r" (first at line 9)',
    ),
    (
        "missing-defaults",
        "version: 1\nteams:\n  triage: {inbox: [maildir]}\nrules: []\n",
        'rules.yaml:1:1: E101 missing required key "defaults" in the file',
    ),
    (
        "unknown-team-in-rule",
        GOOD_HEAD + "  - id: r\n    when: {text: {contains: x}}\n    set: {team: biling}\n",
        'rules.yaml:11:17: E104 unknown team "biling" (did you mean "billing"?)',
    ),
    (
        "unknown-key",
        GOOD_HEAD + "  - id: r\n    set: {tags: [x], priorty: high}\n",
        'rules.yaml:10:22: E100 unknown key "priorty" in rules[0].set (did you mean "priority"?)',
    ),
    (
        "unknown-field",
        GOOD_HEAD + "  - id: r\n    when: {subjet: {contains: x}}\n",
        'rules.yaml:10:12: E108 unknown field "subjet" (did you mean "subject"?)',
    ),
    (
        "header-typo",
        GOOD_HEAD + "  - id: r\n    when: {headers.x-foo: {exists: true}}\n",
        'rules.yaml:10:12: E108 unknown field "headers.x-foo" (did you mean "header.x-foo"?)',
    ),
    (
        "bad-priority",
        GOOD_HEAD + "  - id: r\n    set: {priority: urgnt}\n",
        'rules.yaml:10:21: E109 invalid rules[0].set.priority: the string "urgnt", '
        'expected one of urgent, high, medium, low (did you mean "urgent"?)',
    ),
    (
        "wrong-type",
        GOOD_HEAD + "  - id: r\n    set: {tags: [x]}\n    continue: yes\n",
        'rules.yaml:11:15: E109 rules[0].continue must be true or false, got the string "yes"',
    ),
    (
        "operator-value",
        GOOD_HEAD + "  - id: r\n    when: {attachments: {gt: many}}\n",
        'rules.yaml:10:30: E109 gt takes a number, got the string "many"',
    ),
    (
        "operator-on-wrong-field",
        GOOD_HEAD + "  - id: r\n    when: {received_at: {contains: x}}\n",
        'rules.yaml:10:26: E109 operator "contains" does not apply to field "received_at"',
    ),
    (
        "unknown-condition",
        GOOD_HEAD + "  - id: r\n    when: {use: from_vips}\n",
        'rules.yaml:10:17: E103 unknown condition "from_vips"',
    ),
    (
        "unknown-calendar",
        GOOD_HEAD + "  - id: r\n    when: {time_in: bussiness}\n",
        'rules.yaml:10:21: E105 unknown calendar "bussiness"',
    ),
    (
        "bad-duration",
        GOOD_HEAD + "  - id: r\n    set: {sla: 4 hours}\n",
        "rules.yaml:10:16: E109 rules[0].set.sla: invalid duration '4 hours': "
        "write a number and a unit, like 30m, 4h, 1d",
    ),
    (
        "unknown-category",
        GOOD_HEAD.replace("rules:\n", "categories: [general, billing]\nrules:\n")
        + "  - id: r\n    set: {category: bililng}\n",
        'rules.yaml:11:21: E106 unknown category "bililng" (did you mean "billing"?)',
    ),
    (
        "control-character",
        "version: 1\nteams: \x7f\n",
        "rules.yaml:2:8: E001 invalid YAML: character U+007F is not allowed",
    ),
    (
        "not-a-mapping",
        "- just\n- a list\n",
        "rules.yaml:1:1: E109 a rule file is a mapping with version, teams, defaults and rules; "
        "got a list",
    ),
    (
        "between-not-a-pair",
        GOOD_HEAD + "  - id: r\n    when: {attachments: {between: [1]}}\n",
        "rules.yaml:10:35: E109 between takes [low, high], two numbers, got a list",
    ),
    (
        "between-backwards",
        GOOD_HEAD + "  - id: r\n    when: {attachments: {between: [5, 1]}}\n",
        "rules.yaml:10:35: E109 between [5, 1]: low is above high",
    ),
    (
        "between-on-text",
        GOOD_HEAD + "  - id: r\n    when: {subject: {between: [1, 2]}}\n",
        'rules.yaml:10:22: E109 operator "between" does not apply to field "subject"',
    ),
    (
        "raw-not-bool",
        GOOD_HEAD + "  - id: r\n    when: {subject: {contains: x, raw: 1}}\n",
        "rules.yaml:10:40: E109 raw must be true or false",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [pytest.param(*e[1:], id=e[0]) for e in ERRORS])
def test_error_position_and_text(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_every_error_is_reported_at_once() -> None:
    text = GOOD_HEAD + textwrap.dedent(
        """\
          - id: a
            when: {text: {contians: refund}}
          - id: a
            when: {text: {contains_any: $refund_word}}
            set: {team: biling, priority: urgnt}
          - id: c
            when: {subject: {regex: '(x'}, subjct: {equals: x}}
        """
    )
    codes = [p.split(": ", 1)[1].split(" ", 1)[0] for p in problems(text)]
    found = [code for code in codes if code.startswith("E")]
    assert found == ["E107", "E111", "E102", "E104", "E109", "E130", "E108"]


def test_unknown_output_when_outputs_given() -> None:
    text = GOOD_HEAD.replace("triage: {inbox: [maildir]}", "triage: {inbox: [maildr, email]}")
    found = [p for p in problems(text, outputs={"maildir", "email"}) if " E" in p]
    assert found == ['rules.yaml:3:20: E110 unknown output "maildr" (did you mean "maildir"?)']
    load_text(text, "rules.yaml")  # outputs=None: not checked


def test_cyclic_use() -> None:
    text = (
        GOOD_HEAD.replace(
            "rules:\n", "conditions:\n  a: {use: b}\n  b: {any: [{use: a}]}\nrules:\n"
        )
        + "  - id: r\n    when: {use: a}\n"
    )
    assert "rules.yaml:10:19: E112 cyclic use: a → b → a" in problems(text)


def test_problems_render_with_snippet_and_caret() -> None:
    with pytest.raises(RuleFileError) as info:
        load_text(GOOD_HEAD + "  - id: r\n    when: {text: {contians: refund}}\n", "rules.yaml")
    (problem,) = info.value.errors
    assert problem.render().splitlines()[1:] == [
        "   10 |     when: {text: {contians: refund}}",
        "      |                   ^^^^^^^^",
    ]


def test_unreadable_file(tmp_path: object) -> None:
    with pytest.raises(RuleFileError) as info:
        load_file("/nonexistent/rules.yaml")
    assert (
        str(info.value)
        == "/nonexistent/rules.yaml:1:1: E000 cannot read: No such file or directory"
    )


def test_warnings_do_not_block() -> None:
    text = (
        "version: 1\n"
        "teams: {triage: {inbox: [maildir]}}\n"
        "lists: {old: [x], words: [退, ab, abc]}\n"
        "conditions: {never: {subject: {exists: true}}}\n"
        "defaults: {team: triage, category: general, priority: medium}\n"
        "rules:\n"
        "  - id: words\n"
        "    when: {text: {contains_any: $words}, channel: {equals: x, ascii_word: true}}\n"
        "  - id: catch-all\n"
        "    set: {team: triage}\n"
        "  - id: dead\n"
        "    set: {tags: [x]}\n"
    )
    ruleset = load_text(text, "rules.yaml")
    assert [str(w) for w in ruleset.warnings] == [
        'rules.yaml:3:9: W401 list "old" is never used',
        'rules.yaml:3:27: W201 short keyword "退" may match inside unrelated words '
        "(a one-character Chinese keyword)",
        'rules.yaml:3:30: W201 short keyword "ab" may match inside unrelated words '
        "(add ascii_word: true)",
        'rules.yaml:4:14: W402 condition "never" is never used',
        "rules.yaml:8:63: W203 ascii_word only affects contains, contains_any, contains_all "
        "and keywords",
        'rules.yaml:11:5: W301 rule "dead" can never fire: rule "catch-all" (line 9) '
        "matches every message and stops",
    ]


def test_raw_option_warnings() -> None:
    text = GOOD_HEAD + (
        "  - id: r\n"
        "    when: {attachments: {gt: 1, raw: true}, subject: {contains: x, raw: true, "
        "case_sensitive: true}}\n"
    )
    ruleset = load_text(text, "rules.yaml")
    assert [str(w) for w in ruleset.warnings if w.code == "W203"] == [
        'rules.yaml:10:33: W203 raw only affects text operators, not those on "attachments"',
        "rules.yaml:10:79: W203 case_sensitive has no effect with raw: true "
        "(raw text is never casefolded)",
    ]


WARNINGS = [
    (
        "variant-in-list",
        "lists:\n  account_words: [帐号, 密码]\n",
        "  - id: r\n    when: {text: {contains_any: $account_words}}\n",
        'rules.yaml:5:19: W210 keyword "帐号" holds the variant "帐号"; '
        'list "account_words" has no "账号" '
        "(common mainland form: text written with it will not match)",
    ),
    (
        "variant-inline",
        "",
        "  - id: r\n    when: {text: {contains_any: [帐单, 发票]}}\n",
        'rules.yaml:6:34: W210 keyword "帐单" holds the variant "帐单"; '
        'the keywords have no "账单" '
        "(common mainland form: text written with it will not match)",
    ),
    (
        "continue-then-team",
        "",
        "  - id: big\n    when: {attachments: {gt: 2}}\n    set: {team: triage}\n"
        "    continue: true\n"
        "  - id: big-refund\n    when: {attachments: {gt: 2}, text: {contains: refund}}\n"
        "    set: {team: billing, tags: [r]}\n",
        'rules.yaml:9:5: W302 rule "big-refund" sets team but fires only after rule "big" '
        "(line 5) set it and continued: first writer wins, so this has no effect on it "
        "(heuristic)",
    ),
    (
        "annotating-category-first",
        "",
        "  - id: tag\n    set: {category: vip}\n"
        "  - id: refund\n    when: {text: {contains: refund}}\n    set: {category: refunds}\n",
        'rules.yaml:7:5: W302 rule "refund" sets category but fires only after rule "tag" '
        "(line 5) set it and continued: first writer wins, so this has no effect on it "
        "(heuristic)",
    ),
    (
        "deep-nesting",
        "",
        "  - id: r\n"
        "    when: {any: [{all: [{not: {any: [{not: {text: {contains: refund}}}]}}]}]}\n",
        "rules.yaml:6:39: W303 condition nested deeper than 4 (all/any/not); move a part into "
        "a named condition and use it",
    ),
]


def _two_teams(extra: str, rules: str) -> str:
    """A rule file with teams triage and billing, ``extra`` sections and ``rules``."""
    return (
        "version: 1\nteams: {triage: {inbox: [x]}, billing: {inbox: [x]}}\n"
        "defaults: {team: triage, category: general, priority: medium}\n"
        + extra
        + "rules:\n"
        + rules
    )


@pytest.mark.parametrize(
    ("extra", "rules", "expected"), [pytest.param(*w[1:], id=w[0]) for w in WARNINGS]
)
def test_warning_position_and_text(extra: str, rules: str, expected: str) -> None:
    text = _two_teams(extra, rules)
    assert expected in [str(w) for w in load_text(text, "rules.yaml").warnings]


@pytest.mark.parametrize(
    ("extra", "rules"),
    [
        pytest.param(
            "lists:\n  a: [帐号, 账号]\n",
            "  - id: r\n    when: {text: {contains_any: $a}}\n",
            id="both-forms",
        ),
        pytest.param(
            "",
            "  - id: big\n    when: {attachments: {gt: 2}}\n    set: {team: triage}\n"
            "    continue: true\n"
            "  - id: refund\n    when: {text: {contains: refund}}\n    set: {team: billing}\n",
            id="other-condition",
        ),
        pytest.param(
            "",
            "  - id: r\n    when: {any: [{all: [{not: {any: [{text: {contains: x1}}]}}]}]}\n",
            id="depth-4",
        ),
    ],
)
def test_no_warning(extra: str, rules: str) -> None:
    text = _two_teams(extra, rules)
    codes = {w.code for w in load_text(text, "rules.yaml").warnings}
    assert not codes & {"W210", "W302", "W303"}


def test_traditional_keyword_normalised_by_t2s_warns() -> None:
    pytest.importorskip("opencc")
    text = (
        "version: 1\nteams: {triage: {inbox: [x]}}\n"
        "settings: {normalize: {chinese: t2s}}\n"
        "defaults: {team: triage, category: general, priority: medium}\n"
        "rules:\n  - id: r\n    when: {text: {contains_any: [帳號]}}\n"
    )
    assert [str(w) for w in load_text(text, "rules.yaml").warnings] == [
        'rules.yaml:7:34: W210 keyword "帳號" normalises to "帐号"; the keywords have no "账号" '
        "(common mainland form: text written with it will not match)"
    ]
