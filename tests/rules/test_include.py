"""``include:``: several rule files, merged, with problems placed in the file that has them."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from rules.loader import RuleFileError, digest_files, load_file
from tests.rules.helpers import decide, message

MAIN = """\
version: 1
include: [{includes}]
teams:
  triage: {{inbox: [maildir]}}
defaults: {{team: triage, category: general, priority: medium}}
rules:
  - id: main-rule
    when: {{text: {{contains_any: $refund_words}}}}
    set: {{tags: [main]}}
"""

BILLING = """\
teams:
  billing: {inbox: [maildir]}
lists:
  refund_words: [退款, refund]
rules:
  - id: refund
    when: {text: {contains_any: $refund_words}}
    set: {team: billing, tags: [billing]}
    continue: true
"""


def write(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (name → dedented text) under ``root``; the path of the first one."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / next(iter(files))


def problems(root: Path, files: dict[str, str]) -> list[str]:
    with pytest.raises(RuleFileError) as info:
        load_file(write(root, files))
    return [str(p).replace(f"{root}/", "") for p in info.value.problems]


def test_included_names_and_rules_before_the_main_files_rules(tmp_path: Path) -> None:
    main = write(
        tmp_path, {"main.yaml": MAIN.format(includes="billing.yaml"), "billing.yaml": BILLING}
    )
    ruleset = load_file(main)
    assert ruleset.rule_ids == ("refund", "main-rule")
    assert ruleset.files == (str(main), str(tmp_path / "billing.yaml"))
    assert ruleset.rule("refund").where.file == str(tmp_path / "billing.yaml")  # type: ignore[union-attr]
    decision = decide(ruleset, message(subject="我要退款"))
    assert decision.team == "billing"
    assert decision.tags == ("billing", "main")


def test_directory_read_in_lexical_order(tmp_path: Path) -> None:
    rule = "rules:\n  - id: {id}\n    set: {{tags: [{id}]}}\n"
    main = write(
        tmp_path,
        {
            "main.yaml": MAIN.format(includes="billing.yaml, more"),
            "billing.yaml": BILLING,
            "more/b.yml": rule.format(id="b"),
            "more/a.yaml": rule.format(id="a"),
            "more/c.txt": "not: read\n",
        },
    )
    ruleset = load_file(main)
    assert ruleset.rule_ids == ("refund", "a", "b", "main-rule")
    assert [Path(f).name for f in ruleset.files] == ["main.yaml", "billing.yaml", "a.yaml", "b.yml"]


def test_hash_covers_included_files(tmp_path: Path) -> None:
    main = write(
        tmp_path, {"main.yaml": MAIN.format(includes="billing.yaml"), "billing.yaml": BILLING}
    )
    ruleset = load_file(main)
    assert digest_files(ruleset.files) == ruleset.hash
    (tmp_path / "billing.yaml").write_text(BILLING.replace("refund]", "refund, 退钱]"), "utf-8")
    assert load_file(main).hash != ruleset.hash
    assert digest_files(ruleset.files) == load_file(main).hash


def test_single_file_hash_is_the_texts_sha256(tmp_path: Path) -> None:
    text = MAIN.replace("include: [{includes}]\n", "").replace("$refund_words", "[退款]")
    main = write(tmp_path, {"main.yaml": text.format()})
    ruleset = load_file(main)
    assert ruleset.files == (str(main),)
    assert ruleset.hash == hashlib.sha256(main.read_bytes()).hexdigest()
    assert digest_files(ruleset.files) == ruleset.hash


def test_nested_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    main = write(
        tmp_path,
        {
            "main.yaml": MAIN.format(includes="sub/mid.yaml"),
            "sub/mid.yaml": "include: [billing.yaml]\n",
            "sub/billing.yaml": BILLING,
        },
    )
    assert load_file(main).rule_ids == ("refund", "main-rule")


DUP_RULE = "rules:\n  - id: main-rule\n    set: {tags: [x]}\n"

INCLUDE_ERRORS = [
    (
        "duplicate-rule-id",
        {"billing.yaml": BILLING, "dup.yaml": DUP_RULE},
        "billing.yaml, dup.yaml",
        'main.yaml:7:9: E111 duplicate rule id "main-rule" (first at dup.yaml:2:5)',
    ),
    (
        "duplicate-list",
        {"billing.yaml": BILLING, "dup.yaml": "lists:\n  refund_words: [x]\n"},
        "billing.yaml, dup.yaml",
        'dup.yaml:2:3: E113 duplicate list "refund_words" (first at billing.yaml:4:3)',
    ),
    (
        "duplicate-team",
        {"billing.yaml": BILLING.replace("billing: {", "triage: {")},
        "billing.yaml",
        'main.yaml:4:3: E113 duplicate team "triage" (first at billing.yaml:2:3)',
    ),
    (
        "error-in-included-file",
        {"billing.yaml": BILLING.replace("contains_any", "contians_any")},
        "billing.yaml",
        'billing.yaml:7:19: E107 unknown operator "contians_any" (did you mean "contains_any"?)',
    ),
    (
        "yaml-error-in-included-file",
        {"billing.yaml": "lists:\n  a: [x\n"},
        "billing.yaml",
        "billing.yaml:3:1: E001 invalid YAML: while parsing a flow sequence expected ',' or ']', "
        "but got '<stream end>'",
    ),
    (
        "main-only-key",
        {"billing.yaml": BILLING + "defaults: {team: billing}\n"},
        "billing.yaml",
        'billing.yaml:10:1: E100 key "defaults" is not allowed in an included file (only '
        "include, lists, conditions, calendars, teams, categories, rules)",
    ),
    (
        "missing-file",
        {"billing.yaml": BILLING},
        "billing.yaml, nope.yaml",
        "main.yaml:2:25: E000 cannot read included file nope.yaml: No such file or directory",
    ),
    (
        "not-a-mapping",
        {"billing.yaml": BILLING, "list.yaml": "- a\n- b\n"},
        "billing.yaml, list.yaml",
        "list.yaml:1:1: E109 an included rule file is a mapping with include, lists, conditions, "
        "calendars, teams, categories, rules",
    ),
    (
        "unknown-team-in-included-rule",
        {"billing.yaml": BILLING.replace("team: billing", "team: biling")},
        "billing.yaml",
        'billing.yaml:8:17: E104 unknown team "biling" (did you mean "billing"?)',
    ),
    (
        "cycle",
        {"billing.yaml": "include: [main.yaml]\n" + BILLING},
        "billing.yaml",
        "billing.yaml:1:11: E114 include cycle: main.yaml → billing.yaml → main.yaml",
    ),
]


@pytest.mark.parametrize(
    ("files", "includes", "expected"),
    [case[1:] for case in INCLUDE_ERRORS],
    ids=[case[0] for case in INCLUDE_ERRORS],
)
def test_include_error_position_and_text(
    tmp_path: Path, files: dict[str, str], includes: str, expected: str
) -> None:
    found = problems(tmp_path, {"main.yaml": MAIN.format(includes=includes), **files})
    assert expected in found, found


def test_warnings_carry_the_included_file(tmp_path: Path) -> None:
    extra = BILLING.replace("lists:\n", "lists:\n  stale: [x]\n")
    main = write(
        tmp_path, {"main.yaml": MAIN.format(includes="billing.yaml"), "billing.yaml": extra}
    )
    warnings = [str(w).replace(f"{tmp_path}/", "") for w in load_file(main).warnings]
    assert warnings == ['billing.yaml:4:3: W401 list "stale" is never used']


def test_file_included_twice_is_read_once(tmp_path: Path) -> None:
    main = write(
        tmp_path,
        {
            "main.yaml": MAIN.format(includes="billing.yaml, again.yaml"),
            "billing.yaml": BILLING,
            "again.yaml": "include: [billing.yaml]\n",
        },
    )
    assert load_file(main).rule_ids == ("refund", "main-rule")


def test_digest_sees_files_added_to_and_removed_from_included_directories(tmp_path: Path) -> None:
    """Steps: an empty included directory; a file added to it, then renamed, then removed.
    Each step changes the digest of the loaded ruleset's files and directories, and the
    ruleset loaded after it has that digest as its hash."""
    rule = "rules:\n  - id: {id}\n    set: {{tags: [{id}]}}\n"
    main = write(
        tmp_path,
        {"main.yaml": MAIN.format(includes="billing.yaml, more/"), "billing.yaml": BILLING},
    )
    more = tmp_path / "more"
    more.mkdir()
    ruleset = load_file(main)
    assert ruleset.dirs == (str(more),)
    assert digest_files(ruleset.files, ruleset.dirs) == ruleset.hash
    (more / "notes.txt").write_text("not a rule file\n")
    assert digest_files(ruleset.files, ruleset.dirs) == ruleset.hash

    (more / "a.yaml").write_text(rule.format(id="a"))
    added = digest_files(ruleset.files, ruleset.dirs)
    assert added != ruleset.hash
    assert digest_files(ruleset.files) == ruleset.hash  # without the directories: unseen
    ruleset = load_file(main)
    assert ruleset.rule_ids == ("refund", "a", "main-rule")
    assert digest_files(ruleset.files, ruleset.dirs) == ruleset.hash

    (more / "a.yaml").rename(more / "b.yaml")
    assert digest_files(ruleset.files, ruleset.dirs) not in (None, ruleset.hash)
    ruleset = load_file(main)
    assert ruleset.rule_ids == ("refund", "a", "main-rule")
    assert digest_files(ruleset.files, ruleset.dirs) == ruleset.hash

    (more / "b.yaml").unlink()
    removed = digest_files(ruleset.files, ruleset.dirs)
    assert removed not in (None, ruleset.hash)
    assert removed == load_file(main).hash


def test_nested_included_directory_is_recorded_once(tmp_path: Path) -> None:
    main = write(
        tmp_path,
        {
            "main.yaml": MAIN.format(includes="billing.yaml, sub/mid.yaml, sub/d"),
            "billing.yaml": BILLING,
            "sub/mid.yaml": "include: [d/]\n",
            "sub/d/x.yaml": "lists:\n  x: [y]\n",
        },
    )
    ruleset = load_file(main)
    assert ruleset.dirs == (str(tmp_path / "sub" / "d"),)
    assert digest_files(ruleset.files, ruleset.dirs) == ruleset.hash
