"""``triaged rules check|explain|test|diff`` as admins run them: output and exit codes.

Commands run in-process through ``click.testing.CliRunner`` on ``router.cli.cli``; one test
runs ``python -m router`` to check that ``main`` maps a failure to exit status 1 the same way.
The stored-decision tests open a real SQLite store in a temp state directory (no daemon).
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import subprocess
import sys
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from router.cli import cli
from router.message import Message, Sender
from router.store import open_store
from rules.engine import evaluate
from rules.loader import load_file
from tests.daemon_helpers import EXAMPLE_RULES, README_MESSAGE, write_config

DATA = Path(__file__).parent / "data"
BROKEN = DATA / "broken.yaml"
REFUND = DATA / "refund.json"
RULES_TEST = EXAMPLE_RULES.with_name("rules.test.yaml")


def run(*args: str | Path) -> Result:
    """``triaged ARGS`` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# -- show -------------------------------------------------------------------------------------


def test_show_lists_rules_of_every_included_file_in_evaluation_order(tmp_path: Path) -> None:
    """Steps: a main file including another; ``rules show`` lists the included rule first,
    each with its own file and line, its condition and its effect; JSON has the same."""
    (tmp_path / "billing.yaml").write_text(
        "teams:\n  billing: {inbox: [maildir]}\n"
        "rules:\n"
        "  - id: refund\n"
        "    when:\n"
        "      any: [{text: {contains_any: [退款, refund]}}, {subject: {regex: '^RMA-\\d+'}}]\n"
        "    set: {team: billing, tags: [billing]}\n",
        encoding="utf-8",
    )
    main = tmp_path / "rules.yaml"
    main.write_text(
        "version: 1\ninclude: [billing.yaml]\n"
        "teams:\n  triage: {inbox: [maildir], escalation: lead@example.cn}\n"
        "defaults: {team: triage, category: general, priority: medium}\n"
        "rules:\n"
        "  - id: vip\n"
        "    when: {not: {channel: {equals: telegram}}}\n"
        "    set: {priority: high}\n",
        encoding="utf-8",
    )
    result = run("rules", "show", "-r", main)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "(+1 included files)" in out
    assert "triage           inbox maildir, escalation lead@example.cn" in out
    assert out.index(f"1 refund  {tmp_path / 'billing.yaml'}:4") < out.index(f"2 vip     {main}:7")
    # the regex as the engine runs it: the fold view matches case-insensitively
    assert "when any(text contains_any [退款, refund], subject regex '(?i)^RMA-\\d+')" in out
    assert "→    team = billing, tags += billing  (delivering: stops)" in out
    assert "when not(channel equals [telegram])" in out
    assert "compiled: 2 enabled rules, 2 keywords in one automaton, 1 regexes" in out

    doc = json.loads(run("rules", "show", "-r", main, "--format", "json").stdout)
    assert [(r["n"], r["id"], r["line"]) for r in doc["rules"]] == [(1, "refund", 4), (2, "vip", 7)]
    assert doc["files"] == [str(main), str(tmp_path / "billing.yaml")]
    assert doc["compiled"]["regexes"] == 1


def test_show_of_a_broken_file_prints_the_problems_and_exits_1() -> None:
    result = run("rules", "show", "-r", BROKEN)
    assert result.exit_code == 1
    assert f"{BROKEN}:" in result.output


# -- check ------------------------------------------------------------------------------------


def test_check_reports_every_problem_with_position() -> None:
    result = run("rules", "check", BROKEN)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    located = [line for line in lines if line.startswith(f"{BROKEN}:") and " NOT " not in line]
    assert located == [
        f'{BROKEN}:7:3: W401 list "outage_words" is never used',
        f'{BROKEN}:8:3: W401 list "old_words" is never used',
        f'{BROKEN}:12:33: E102 unknown list "outage_word" (did you mean "outage_words"?)',
        f'{BROKEN}:13:26: E100 unknown key "priorty" in rules[0].set (did you mean "priority"?)',
    ]
    caret = lines.index(located[2]) + 2
    assert lines[caret].endswith("|" + " " * 33 + "^" * len("$outage_word"))
    assert (
        lines[-2] == f"{BROKEN}: NOT loaded — 1 rule, 2 lists, 0 conditions, 2 teams, 0 calendars"
    )
    assert lines[-1] == "2 errors, 2 warnings — NOT loaded"


def test_check_json_is_one_document() -> None:
    result = run("rules", "check", BROKEN, EXAMPLE_RULES, "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [(p["line"], p["col"], p["code"], p["severity"]) for p in doc["problems"]] == [
        (7, 3, "W401", "warning"),
        (8, 3, "W401", "warning"),
        (12, 33, "E102", "error"),
        (13, 26, "E100", "error"),
    ]
    assert doc["summary"]["errors"] == 2
    example = doc["summary"]["files"][1]
    assert example["loaded"] is True
    assert (example["rules"], example["teams"], example["lists"]) == (7, 5, 8)
    assert example["keywords_zh"] > 0
    assert example["keywords_en"] > 0


def test_check_clean_file_and_strict_warnings(tmp_path: Path) -> None:
    result = run("rules", "check", EXAMPLE_RULES)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "0 errors, 0 warnings — ok"
    warned = tmp_path / "warned.yaml"
    warned.write_text(
        EXAMPLE_RULES.read_text("utf-8") + "  - {id: x, when: {text: {contains: 单}}, set: {}}\n",
        encoding="utf-8",
    )
    assert run("rules", "check", warned).exit_code == 0
    strict = run("rules", "check", "--strict", warned)
    assert strict.exit_code == 1
    assert "W201" in strict.stdout
    assert strict.stdout.splitlines()[-1] == "0 errors, 1 warning — failed (--strict)"


def test_check_with_config_checks_inboxes_against_outputs(tmp_path: Path) -> None:
    config = write_config(tmp_path, outputs={"mail": {"type": "maildir", "path": "m"}})
    result = run("rules", "check", "-c", config)  # no FILE: the config's rule file
    assert result.exit_code == 1
    assert 'E110 unknown output "maildir"' in result.stdout
    assert run("rules", "check", EXAMPLE_RULES).exit_code == 0  # without -c: not checked


def test_check_summary_counts_every_included_file(tmp_path: Path) -> None:
    (tmp_path / "teams").mkdir()
    (tmp_path / "teams" / "billing.yaml").write_text(
        "teams:\n  billing: {inbox: [maildir]}\nlists:\n  bill_words: [发票, invoice]\n"
        "rules:\n  - {id: invoice, when: {text: {contains_any: $bill_words}}, "
        "set: {team: billing}}\n",
        encoding="utf-8",
    )
    (tmp_path / "teams" / "sales.yml").write_text(
        "teams:\n  sales: {inbox: [maildir]}\nrules:\n  - {id: quote, "
        "when: {text: {contains: 报价}}, set: {team: sales}}\n",
        encoding="utf-8",
    )
    main = tmp_path / "rules.yaml"
    main.write_text(
        "version: 1\ninclude: [teams/]\nteams:\n  triage: {inbox: [maildir]}\n"
        "defaults: {team: triage, category: general, priority: low}\n"
        "rules:\n  - {id: hello, when: {text: {contains: 你好}}, set: {tags: [hi]}}\n",
        encoding="utf-8",
    )
    result = run("rules", "check", main)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(
        f"{main}: 3 files, 3 rules, 1 list, 0 conditions, 3 teams, 0 calendars, "
    )
    doc = json.loads(run("rules", "check", main, "--format", "json").stdout)
    [counts] = doc["summary"]["files"]
    assert counts["files_read"] == [
        str(main),
        str(tmp_path / "teams" / "billing.yaml"),
        str(tmp_path / "teams" / "sales.yml"),
    ]
    assert (counts["rules"], counts["lists"], counts["teams"]) == (3, 1, 3)
    main.write_text(main.read_text("utf-8").replace("tags: [hi]", "team: nobody"), "utf-8")
    broken = run("rules", "check", main)
    assert broken.exit_code == 1
    summary_line = (
        f"{main}: NOT loaded — 3 files, 3 rules, 1 list, 0 conditions, 3 teams, 0 calendars"
    )
    assert summary_line in broken.stdout.splitlines()


# -- explain ----------------------------------------------------------------------------------


def test_explain_json_message_shows_keyword_and_span() -> None:
    result = run("rules", "explain", REFUND, "-r", EXAMPLE_RULES)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "✓ after-sales → team = aftersales" in out
    assert '"退款" at subject[14:16]: …8812345 申请«退款»' in out
    assert '"杂音" at body[10:12]' in out
    assert '✗ fields.tier in [vip, enterprise]  (saw "standard")' in out
    assert "· consultation: not evaluated (stopped at line" in out
    assert "RESULT team=aftersales category=after-sales priority=medium tags=[refund]" in out


def test_explain_json_format_and_at() -> None:
    args = ("rules", "explain", REFUND, "-r", EXAMPLE_RULES, "--format", "json")
    doc = json.loads(run(*args, "--at", "2026-03-07T23:10:00").stdout)
    assert doc["message"]["received_at"] == "2026-03-07T23:10:00+08:00"  # the rules' zone
    assert doc["message"]["weekday"] == "Saturday"
    assert doc["decision"]["team"] == "aftersales"
    assert doc["stopped_at"]["rule"] == "after-sales"
    statuses = {r["id"]: r["status"] for r in doc["rules"]}
    assert statuses["after-sales"] == "fired"
    assert statuses["complaint"] == "no match"
    bad = run(*args, "--at", "tomorrow")
    assert bad.exit_code == 2
    assert "invalid time" in bad.stderr


def test_explain_gbk_eml(tmp_path: Path) -> None:
    msg = MIMEText("你好，张喆的耳机有杂音，想申请退款。", "plain", "gbk")
    msg.set_param("charset", "gb2312")  # GBK text labelled gb2312, as mailers do
    subject = base64.b64encode("退款 喆".encode("gbk")).decode()
    msg["Subject"] = f"=?gb2312?b?{subject}?="
    msg["From"] = "zz@example.cn"
    msg["Date"] = "Wed, 04 Mar 2026 10:00:00 +0800"
    path = tmp_path / "gbk.eml"
    path.write_bytes(msg.as_bytes())
    result = run("rules", "explain", path, "-r", EXAMPLE_RULES)
    assert result.exit_code == 0, result.output
    assert 'subject  "退款 喆"' in result.stdout
    assert '"退款" at subject[0:2]' in result.stdout
    assert "RESULT team=aftersales" in result.stdout


def test_explain_bad_message_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"from": "a@b.cn", "text": 1}', encoding="utf-8")
    result = run("rules", "explain", path, "-r", EXAMPLE_RULES)
    assert result.exit_code == 1
    assert f"{path}:1:28: E109 text must be a string, got the number 1" in result.stderr
    missing = run("rules", "explain", tmp_path / "nope.eml", "-r", EXAMPLE_RULES)
    assert (missing.exit_code, missing.stderr.strip()) == (
        1,
        f"no such message file: {tmp_path / 'nope.eml'}",
    )


def stored_message(config: Path, rules: Path, **overrides: Any) -> Message:
    """Decide the README message (with ``overrides``) and record it in the config's state."""
    body: dict[str, Any] = {**README_MESSAGE, **overrides}
    message = Message(
        channel="webhook",
        source="shop",
        sender=Sender(address=body["from"], name=body["name"]),
        subject=body["subject"],
        text=body["text"],
        fields=body["fields"],
    )
    from router.dispatcher import facts_of

    decision = evaluate(load_file(rules), facts_of(message))
    record: dict[str, Any] = {**decision.as_record(), "decided_at": "2026-03-04T02:00:00+00:00"}

    async def put() -> None:
        store = await open_store("sqlite", state_dir=config.parent / "state")
        try:
            await store.record_decision(message, record)
        finally:
            await store.close()

    (config.parent / "state").mkdir(exist_ok=True)
    asyncio.run(put())
    return message


def test_explain_stored_message_by_id(tmp_path: Path) -> None:
    """Record a decision in a real SQLite store; explain by id re-evaluates it.

    Steps: the decision is made with the example rules; the config's rule file then gets
    退款 moved from after-sales to sales, so re-evaluation differs and says so.
    """
    config = write_config(tmp_path)
    message = stored_message(config, EXAMPLE_RULES)
    same = run("rules", "explain", message.id, "-c", config)
    assert same.exit_code == 0, same.output
    out = same.stdout
    assert out.startswith(f"stored   {message.id} (shop) decided 2026-03-04T02:00:00+00:00")
    assert "rules fired: after-sales" in out
    assert "(same as now)" in out
    assert out.rstrip().endswith("decision is the same (stored → now)")

    rules = tmp_path / "rules.yaml"
    text = rules.read_text("utf-8").replace("[退款, 退钱,", "[退钱,").replace("杂音, ", "")
    rules.write_text(text.replace("[价格, 报价,", "[价格, 报价, 退款,"), encoding="utf-8")
    moved = run("rules", "explain", message.id, "-c", config, "--format", "json")
    doc = json.loads(moved.stdout)
    assert doc["stored"]["record"]["ruleset_hash"] != doc["ruleset"]["hash"]
    assert doc["stored"]["changes"][0] == "team aftersales → sales"
    text_out = run("rules", "explain", message.id, "-c", config).stdout
    assert "rules changed" in text_out
    assert "decision would differ: team aftersales → sales;" in text_out


def test_explain_unknown_id(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run("rules", "explain", "01KUNKNOWN", "-c", config)
    assert result.exit_code == 1
    assert "no stored decision for message 01KUNKNOWN" in result.stderr
    assert not (tmp_path / "state").exists()  # a read-only command creates no state


# -- test -------------------------------------------------------------------------------------


def test_example_rule_tests_pass_with_full_coverage() -> None:
    result = run("rules", "test", RULES_TEST, "--coverage")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(line.startswith("PASS ") for line in lines[:-2])
    assert lines[-2] == f"coverage {EXAMPLE_RULES}: 7 of 7 rules fired"
    assert lines[-1].endswith("passed, 0 failed")


def test_default_test_files_come_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "rules.test.yaml").write_text(RULES_TEST.read_text("utf-8"), encoding="utf-8")
    result = run("rules", "test", "-c", config)
    assert result.exit_code == 0, result.output
    assert "PASS the README message" in result.stdout


def _one_pass_one_fail(path: Path, wrong: str) -> Path:
    """A test file against the example rules: case "ok" passes, case "wrong" expects ``wrong``."""
    path.write_text(
        f"rules: {EXAMPLE_RULES}\n"
        "tests:\n"
        "  - name: ok\n"
        "    message: {text: 你好}\n"
        "    expect: {team: triage}\n"
        "  - name: wrong\n"
        "    message: {text: 我要投诉}\n"
        f"    expect: {{{wrong}}}\n",
        encoding="utf-8",
    )
    return path


def test_failing_test_prints_a_diff_and_exits_1(tmp_path: Path) -> None:
    path = _one_pass_one_fail(tmp_path / "t.test.yaml", "team: aftersales, tags_include: [refund]")
    result = run("rules", "test", path, "--coverage")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:5] == [
        "PASS ok",
        f"FAIL wrong  ({path}:6)",
        "     team: expected aftersales, got complaints",
        "     tags_include: missing refund (tags are [complaint])",
        "     rules fired: complaint (stopped at complaint)",
    ]
    assert "never fired: urgent-words (line 45)" in result.stdout
    assert result.stdout.splitlines()[-1] == "1 passed, 1 failed"


def test_test_json_has_each_case_its_differences_and_coverage(tmp_path: Path) -> None:
    path = _one_pass_one_fail(
        tmp_path / "t.test.yaml", "team: aftersales, tags_include: [refund], priority: high"
    )
    result = run("rules", "test", path, "--coverage", "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    ok, wrong = doc["cases"]
    assert ok == {
        "name": "ok",
        "file": str(path),
        "line": 3,
        "passed": True,
        "differences": [],
        "rules_fired": [],
        "stopped_at": None,
    }
    assert (wrong["name"], wrong["file"], wrong["line"], wrong["passed"]) == (
        "wrong",
        str(path),
        6,
        False,
    )
    assert wrong["differences"] == [
        {
            "key": "team",
            "expected": "aftersales",
            "actual": "complaints",
            "message": "team: expected aftersales, got complaints",
        },
        {
            "key": "tags_include",
            "expected": ["refund"],
            "actual": ["complaint"],
            "message": "tags_include: missing refund (tags are [complaint])",
        },
    ]
    assert wrong["rules_fired"] == ["complaint"]
    [cov] = doc["coverage"]
    assert (cov["rules_file"], cov["rules"], cov["fired"]) == (str(EXAMPLE_RULES), 7, 1)
    assert {"id": "urgent-words", "file": str(EXAMPLE_RULES), "line": 45} in cov["never_fired"]
    assert doc["problems"] == []
    assert doc["summary"] == {"passed": 1, "failed": 1, "broken_files": 0}
    passing = run("rules", "test", RULES_TEST, "--format", "json")
    assert passing.exit_code == 0, passing.output
    assert "coverage" not in json.loads(passing.stdout)


def misspelt_test_file(tmp_path: Path) -> Path:
    """A test file whose one case expects ``teem`` (line 5, column 14: E100)."""
    path = tmp_path / "t.test.yaml"
    path.write_text(
        f"rules: {EXAMPLE_RULES}\ntests:\n  - name: x\n    message: {{text: 你好}}\n"
        "    expect: {teem: triage}\n",
        encoding="utf-8",
    )
    return path


def test_test_json_lists_test_file_problems(tmp_path: Path) -> None:
    path = misspelt_test_file(tmp_path)
    result = run("rules", "test", path, "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["cases"] == []
    [problem] = doc["problems"]
    assert (problem["file"], problem["line"], problem["col"], problem["code"]) == (
        str(path),
        5,
        14,
        "E100",
    )
    assert doc["summary"] == {"passed": 0, "failed": 0, "broken_files": 1}


def test_test_file_errors_exit_1_with_positions(tmp_path: Path) -> None:
    path = misspelt_test_file(tmp_path)
    result = run("rules", "test", path)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == (
        f'{path}:5:14: E100 unknown key "teem" in tests[0].expect (did you mean "team"?)'
    )
    path.write_text("tests:\n  - {name: x\n", encoding="utf-8")
    result = run("rules", "test", path, "-r", EXAMPLE_RULES)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:3:1: E001 invalid YAML")


# -- diff -------------------------------------------------------------------------------------


def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    messages = {
        "sub/refund.json": {"from": "a", "subject": "我想退款", "source": "shop"},
        "vip.json": {"from": "b", "text": "价格多少", "fields": {"tier": "vip"}},
        "hello.json": {"from": "c", "text": "你好"},
        "crash.json": {"from": "d", "text": "系统崩溃了"},
    }
    for name, body in messages.items():
        (folder / name).write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
    return folder


def new_rules(tmp_path: Path) -> Path:
    """The example rules with 退款 moved to sales and a second VIP tag."""
    text = EXAMPLE_RULES.read_text("utf-8").replace("[退款, 退钱,", "[退钱,")
    text = text.replace("[价格, 报价,", "[价格, 报价, 退款,")
    text = text.replace("tags: [vip]}", "tags: [vip, key-account]}")
    path = tmp_path / "new.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_diff_lists_changed_messages_only(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg")
    stored = stored_message(config, EXAMPLE_RULES, text="谢谢")
    new = new_rules(tmp_path)
    result = run("rules", "diff", EXAMPLE_RULES, new, "-c", config, "--corpus", corpus(tmp_path))
    assert result.exit_code == 0, result.output
    moved = (
        "team aftersales → sales; category after-sales → consultation; priority medium → low;"
        " tags -refund"
    )
    assert result.stdout.splitlines() == [
        f'{stored.id} (shop) "订单 88812345 申请退款": {moved}',
        f'{tmp_path / "corpus" / "sub" / "refund.json"} "我想退款": {moved}',
        f'{tmp_path / "corpus" / "vip.json"} "价格多少": tags +key-account',
        "3 of 5 messages would change (2 team, 2 category, 2 priority, 3 tags)",
    ]


def test_diff_json_and_notes_without_state(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg")  # its state dir does not exist yet
    new = new_rules(tmp_path)
    args = ("rules", "diff", EXAMPLE_RULES, new, "-c", config, "--corpus", corpus(tmp_path))
    doc = json.loads(run(*args, "--format", "json").stdout)
    assert doc["summary"] == {
        "messages": 4,
        "changed": 2,
        "team": 1,
        "category": 1,
        "priority": 1,
        "tags": 2,
    }
    assert doc["notes"] == [f"no stored messages in {tmp_path / 'cfg' / 'state'}"]
    change = doc["changes"][0]
    assert (change["old"]["team"], change["new"]["team"]) == ("aftersales", "sales")
    same = run("rules", "diff", EXAMPLE_RULES, EXAMPLE_RULES, "-c", config, "--limit", "0")
    assert same.exit_code == 0
    assert same.stdout == "0 of 0 messages would change (0 team, 0 category, 0 priority, 0 tags)\n"
    assert "OLD and NEW are the same text" in same.stderr


# -- through main() ------------------------------------------------------------------------------


def test_main_maps_failures_to_exit_status_1() -> None:
    """``python -m router``: ``main`` runs the commands with standalone_mode=False."""

    def triaged(*args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "router", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    broken = triaged("rules", "check", BROKEN)
    assert broken.returncode == 1
    assert f"{BROKEN}:12:33: E102" in broken.stdout
    assert triaged("rules", "test", RULES_TEST).returncode == 0
    bad_rules = triaged("rules", "explain", REFUND, "-r", BROKEN)
    assert bad_rules.returncode == 1
    assert bad_rules.stderr.splitlines()[-1] == "2 errors — rules not loaded"


def test_explain_and_diff_read_the_state_beside_a_running_daemon(tmp_path: Path) -> None:
    """A running daemon holds the SQLite state's lock file; the operator commands read anyway."""
    config = write_config(tmp_path)
    message = stored_message(config, EXAMPLE_RULES)
    lock = os.open(tmp_path / "state" / "state.sqlite3.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        explained = run("rules", "explain", message.id, "-c", config)
        diffed = run("rules", "diff", EXAMPLE_RULES, EXAMPLE_RULES, "-c", config)
    finally:
        os.close(lock)
    assert explained.exit_code == 0, explained.output
    assert explained.stdout.startswith(f"stored   {message.id} (shop)")
    assert diffed.exit_code == 0
    assert diffed.stdout.splitlines()[-1].startswith("0 of 1 messages would change")
