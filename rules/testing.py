"""Run a rule file's own test cases (research/rules.md §5.3): ``triaged rules test``.

A test file is YAML, named like its rule file with ``.test`` (``rules.test.yaml`` tests
``rules.yaml``; ``rules:`` names another one, relative to the test file)::

    defaults:                          # merged under every test's message
      received_at: "2026-03-04T10:00:00+08:00"
    tests:
      - name: refund in Chinese goes to after-sales
        message: {from: a@b.cn, subject: 申请退款, text: 耳机有杂音}
        expect: {team: aftersales, tags: [refund], rules: [after-sales]}

``message`` is a message mapping (``rules.messages``; unknown keys are errors here). The
clock is frozen: ``received_at`` comes from the message, else ``defaults``, else
``FROZEN_AT`` — never the wall clock, so time-window rules test the same every day.
``expect`` keys: ``team``, ``category``, ``priority``, ``tags`` (exactly these, any order),
``tags_include``, ``not_tags``, ``notify`` (exactly these), ``rules`` (the exact fired list,
in order) and ``fallback`` (no rule set the team). Problems in a test file are positioned
like the checker's: E000 cannot read · E001 YAML · E002 duplicate key · E100 unknown key ·
E101 missing key · E104 unknown team · E106 unknown category · E109 invalid value · E111
duplicate test name. Pure: reads the test file and its rule file, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

from rules.engine import Decision, Facts, evaluate
from rules.loader import RuleFileError, RuleSet, load_file
from rules.messages import MessageError, facts_from_mapping
from rules.model import PRIORITIES
from rules.schema import describe, dotted, suggest
from rules.source import Document, Problem, ProblemsError, YamlFileError, load_yaml, plain, position

__all__ = [
    "FROZEN_AT",
    "Case",
    "Miss",
    "Result",
    "RuleFiles",
    "Suite",
    "SuiteError",
    "coverage",
    "coverage_doc",
    "load_suite",
    "render_coverage",
    "render_result",
    "result_doc",
    "rules_file_of",
    "run_suite",
]

FROZEN_AT = datetime(2026, 3, 4, 10, 0, tzinfo=timezone(timedelta(hours=8)))  # a Wednesday
TOP_KEYS = ("rules", "defaults", "tests")
CASE_KEYS = ("name", "message", "expect")
_LIST_KEYS = ("tags", "tags_include", "not_tags", "notify", "rules")
EXPECT_KEYS = ("team", "category", "priority", *_LIST_KEYS, "fallback")
PathT = list[str | int]


class SuiteError(ProblemsError):
    """A test file (or its rule file) that cannot be run; ``problems`` lists them all."""


@dataclass(frozen=True)
class Case:
    """One test: its message as ``Facts`` and the expected parts of the decision."""

    name: str
    line: int
    facts: Facts
    expect: Mapping[str, Any]


@dataclass(frozen=True)
class Suite:
    """A loaded test file with the ruleset it tests."""

    file: str
    ruleset: RuleSet
    cases: tuple[Case, ...]


class Miss(NamedTuple):
    """One expectation missed: ``expect`` key, its value, what the decision had, one line."""

    key: str  # an ``expect`` key, or "error" when the evaluation failed
    expected: Any
    actual: Any
    message: str


@dataclass(frozen=True)
class Result:
    """One test run: the decision and every expectation it missed."""

    case: Case
    decision: Decision
    misses: tuple[Miss, ...]

    @property
    def mismatches(self) -> tuple[str, ...]:
        """One line per miss."""
        return tuple(m.message for m in self.misses)

    @property
    def passed(self) -> bool:
        """No expectation missed."""
        return not self.misses


def rules_file_of(test_file: Path, given: object = None) -> Path:
    """The rule file a test file tests: ``given`` relative to it, else its name minus ``.test``."""
    if isinstance(given, str) and given:
        return test_file.parent / given
    name = test_file.name
    for suffix in (".test.yaml", ".test.yml"):
        if name.endswith(suffix):
            return test_file.with_name(name[: -len(suffix)] + suffix[5:])
    return test_file.with_name(test_file.stem.removesuffix(".test") + ".yaml")


class RuleFiles:
    """``load_file`` with each rule file loaded once (its ``RuleFileError`` too)."""

    def __init__(self) -> None:
        self.loaded: dict[Path, RuleSet | RuleFileError] = {}

    def __call__(self, path: Path) -> RuleSet:
        """The ruleset at ``path``; raises ``RuleFileError``."""
        key = path.resolve()
        if key not in self.loaded:
            try:
                self.loaded[key] = load_file(path)
            except RuleFileError as exc:
                self.loaded[key] = exc
        found = self.loaded[key]
        if isinstance(found, RuleFileError):
            raise found
        return found


def _read(path: Path) -> Document:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
        raise SuiteError([Problem(file, 1, 1, "E000", f"cannot read: {reason}")]) from None
    try:
        return load_yaml(text, file)
    except YamlFileError as exc:
        raise SuiteError(exc.problems) from None


def load_suite(
    path: Path, load_rules: Callable[[Path], RuleSet], rules: Path | None = None
) -> Suite:
    """Read the test file at ``path``; ``SuiteError`` lists every problem at its position.

    ``rules`` overrides the rule file; ``load_rules`` loads one (``RuleFileError``), so a
    caller running many test files can load each rule file once.
    """
    doc = _read(path)
    check = _Checker(doc)
    raw = plain(doc.data)
    if not isinstance(raw, dict):
        msg = f"a test file is a mapping with tests (and rules, defaults); got {describe(raw)}"
        raise SuiteError([doc.problem([], "E109", msg)])
    check.keys(raw, [], TOP_KEYS, ("tests",))
    if not isinstance(raw.get("rules", ""), str):
        check.report(["rules"], "E109", f"rules must be a file name, got {describe(raw['rules'])}")
    try:
        ruleset = load_rules(rules or rules_file_of(path, raw.get("rules")))
    except RuleFileError as exc:
        raise SuiteError([*check.out, *exc.problems]) from None
    cases = check.cases(raw, ruleset)
    if check.out:
        raise SuiteError(sorted(check.out, key=lambda p: (p.line, p.col)))
    return Suite(str(path), ruleset, tuple(cases))


def _where(path: PathT) -> str:
    """`` in tests[2].expect`` (or `` in the test file``), for messages."""
    text = dotted(path)
    return f" in {text}" if text else " in the test file"


class _Checker:
    """Checks one test file; every problem goes to ``out``."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.out: list[Problem] = []
        self.ruleset: RuleSet | None = None
        self.tz: tzinfo = UTC

    def report(
        self, path: PathT, code: str, msg: str, at: Literal["key", "value"] = "value"
    ) -> None:
        """One problem at ``path`` (the same problem once only)."""
        problem = self.doc.problem(path, code, msg, at=at)
        if problem not in self.out:
            self.out.append(problem)

    def keys(
        self, raw: Mapping[str, Any], path: PathT, allowed: Sequence[str], required: Sequence[str]
    ) -> None:
        """E100 for each key not ``allowed``, E101 for each ``required`` key missing."""
        for key in raw:
            if key not in allowed:
                hint = suggest(key, allowed) or f" (known: {', '.join(allowed)})"
                msg = f'unknown key "{key}"{_where(path)}{hint}'
                self.report([*path, key], "E100", msg, at="key")
        for key in required:
            if key not in raw:
                self.report(path, "E101", f'missing required key "{key}"{_where(path)}')

    def cases(self, raw: Mapping[str, Any], ruleset: RuleSet) -> list[Case]:
        """The valid cases; problems for the others."""
        self.ruleset, self.tz = ruleset, ZoneInfo(ruleset.timezone)
        defaults = raw.get("defaults") or {}
        if not isinstance(defaults, dict):
            msg = f"defaults must be a mapping of message keys, got {describe(defaults)}"
            self.report(["defaults"], "E109", msg)
            defaults = {}
        tests = raw.get("tests")
        if not isinstance(tests, list):
            if "tests" in raw:
                self.report(["tests"], "E109", f"tests must be a list, got {describe(tests)}")
            return []
        cases: list[Case] = []
        first: dict[str, int] = {}
        for i, item in enumerate(tests):
            case = self.case(item, ["tests", i], defaults)
            if case is not None and case.name in first:
                msg = f'duplicate test name "{case.name}" (first at line {first[case.name]})'
                self.report(["tests", i, "name"], "E111", msg)
            elif case is not None:
                first[case.name] = case.line
                cases.append(case)
        return cases

    def case(self, item: object, path: PathT, defaults: Mapping[str, Any]) -> Case | None:
        """One test, or None (problems reported)."""
        if not isinstance(item, dict):
            msg = f"a test is a mapping with name, message and expect; got {describe(item)}"
            self.report(path, "E109", msg)
            return None
        before = len(self.out)
        self.keys(item, path, CASE_KEYS, CASE_KEYS)
        name = item.get("name")
        if "name" in item and (not isinstance(name, str) or not name.strip()):
            msg = f"name must be a non-empty string, got {describe(name)}"
            self.report([*path, "name"], "E109", msg)
        facts = self.facts(item.get("message"), [*path, "message"], defaults)
        expect = self.expect(item.get("expect"), [*path, "expect"])
        if facts is None or expect is None or len(self.out) > before:
            return None
        return Case(str(name), position(self.doc.data, path)[0], facts, expect)

    def facts(self, message: object, path: PathT, defaults: Mapping[str, Any]) -> Facts | None:
        """The message merged over ``defaults``; problems placed where the key was written."""
        if not isinstance(message, dict):
            if message is not None:
                msg = f"message must be a mapping of message keys, got {describe(message)}"
                self.report(path, "E109", msg)
            return None
        merged = {**defaults, **message}
        try:
            return facts_from_mapping(merged, received_at=FROZEN_AT, tz=self.tz, extra="error")
        except MessageError as exc:
            for where, msg in exc.issues:
                base = path if not where or where[0] in message else ["defaults"]
                if msg.startswith("unknown"):
                    self.report([*base, *where], "E100", msg, at="key")
                else:
                    self.report([*base, *where], "E109", msg)
            return None

    def expect(self, expect: object, path: PathT) -> dict[str, Any] | None:
        """The checked ``expect`` mapping, or None (problems reported)."""
        if not isinstance(expect, dict) or not expect:
            if expect is not None:
                msg = f"expect must be a non-empty mapping of {', '.join(EXPECT_KEYS)}"
                self.report(path, "E109", f"{msg}; got {describe(expect)}")
            return None
        before = len(self.out)
        self.keys(expect, path, EXPECT_KEYS, ())
        for key, value in expect.items():
            if key in EXPECT_KEYS:
                self.value(key, value, [*path, key])
        return dict(expect) if len(self.out) == before else None

    def value(self, key: str, value: object, path: PathT) -> None:
        """Check one expected value: its type, and the names it refers to."""
        rs = self.ruleset
        assert rs is not None
        if key == "fallback":
            if not isinstance(value, bool):
                self.report(path, "E109", f"fallback must be true or false, got {describe(value)}")
            return
        items = value if key in _LIST_KEYS else [value]
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            kind = "a list of strings" if key in _LIST_KEYS else "a string"
            self.report(path, "E109", f"{key} must be {kind}, got {describe(value)}")
            return
        known: tuple[Sequence[str], str, str] | None = {
            "team": (list(rs.teams), "E104", "team"),
            "notify": (list(rs.teams), "E104", "team"),
            "category": (list(rs.categories or ()), "E106", "category"),
            "priority": (list(PRIORITIES), "E109", "priority"),
            "rules": (list(rs.rule_ids), "E109", "rule"),
        }.get(key)
        if known is None or (key == "category" and rs.categories is None):
            return
        names, code, what = known
        for i, item in enumerate(items):
            if item not in names:
                where = path if key not in _LIST_KEYS else [*path, i]
                hint = suggest(item, names) or f" (known: {', '.join(names[:12])})"
                self.report(where, code, f'unknown {what} "{item}"{hint}')


# -- running ------------------------------------------------------------------------------------


def _listed(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _set_diff(key: str, want: Sequence[str], got: Sequence[str]) -> str | None:
    missing = [v for v in want if v not in got]
    extra = [v for v in got if v not in want]
    if not missing and not extra:
        return None
    parts = [
        f"missing {', '.join(missing)}" if missing else "",
        f"unexpected {', '.join(extra)}" if extra else "",
    ]
    why = "; ".join(p for p in parts if p)
    return f"{key}: expected {_listed(want)}, got {_listed(got)} ({why})"


def _mismatch(key: str, want: Any, d: Decision) -> str | None:
    """One line saying how ``d`` misses ``expect[key]``, or None when it meets it."""
    if key in ("team", "category", "priority", "fallback"):
        got = getattr(d, key)
        if got == want:
            return None
        shown = (lambda v: str(v).lower()) if key == "fallback" else str
        return f"{key}: expected {shown(want)}, got {shown(got)}"
    if key in ("tags", "notify"):
        return _set_diff(key, want, getattr(d, key))
    if key == "tags_include":
        missing = [t for t in want if t not in d.tags]
        return (
            f"tags_include: missing {', '.join(missing)} (tags are {_listed(d.tags)})"
            if missing
            else None
        )
    if key == "not_tags":
        present = [t for t in want if t in d.tags]
        return (
            f"not_tags: has {', '.join(present)} (tags are {_listed(d.tags)})" if present else None
        )
    if list(d.rules) == list(want):
        return None
    return f"rules: expected {_listed(want)}, got {_listed(d.rules)}"


def _actual(key: str, d: Decision) -> Any:
    """What ``d`` has for ``expect[key]``: the tag keys compare with the tags."""
    name = "tags" if key in ("tags_include", "not_tags") else key
    value = getattr(d, name)
    return list(value) if isinstance(value, tuple) else value


def run_case(ruleset: RuleSet, case: Case) -> Result:
    """Evaluate one case as the daemon would and compare with its expectations."""
    d = evaluate(ruleset, case.facts)
    found = [(key, want, _mismatch(key, want, d)) for key, want in case.expect.items()]
    misses = [Miss(key, want, _actual(key, d), msg) for key, want, msg in found if msg]
    if d.error:
        misses.insert(0, Miss("error", None, d.error, f"evaluation failed: {d.error}"))
    return Result(case, d, tuple(misses))


def run_suite(suite: Suite) -> list[Result]:
    """Every case of ``suite``, in file order."""
    return [run_case(suite.ruleset, case) for case in suite.cases]


def render_result(result: Result, file: str) -> str:
    """``PASS name``, or ``FAIL name`` with one indented line per miss and the rules fired."""
    if result.passed:
        return f"PASS {result.case.name}"
    d = result.decision
    fired = ", ".join(d.rules) or "none"
    stop = f" (stopped at {d.stopped_at})" if d.stopped_at else ""
    lines = [f"FAIL {result.case.name}  ({file}:{result.case.line})"]
    lines += [f"     {m}" for m in result.mismatches]
    lines.append(f"     rules fired: {fired}{stop}")
    return "\n".join(lines)


def coverage(ruleset: RuleSet, results: Sequence[Result]) -> list[str]:
    """Ids of the enabled rules that no test fired, in file order."""
    fired = {rule for r in results for rule in r.decision.rules}
    return [rule.id for rule in ruleset.rules if rule.enabled and rule.id not in fired]


def render_coverage(ruleset: RuleSet, results: Sequence[Result]) -> str:
    """``coverage rules.yaml: 5 of 7 rules fired; never fired: a (line 9), b (line 20)``."""
    missed = coverage(ruleset, results)
    enabled = [r for r in ruleset.rules if r.enabled]
    line = f"coverage {ruleset.file}: {len(enabled) - len(missed)} of {len(enabled)} rules fired"
    if missed:
        where = {r.id: r.where.line for r in ruleset.rules}
        line += "; never fired: " + ", ".join(f"{rid} (line {where[rid]})" for rid in missed)
    return line


def result_doc(result: Result, file: str) -> dict[str, Any]:
    """One test run for ``--format json``: ``render_result`` as data."""
    d = result.decision
    return {
        "name": result.case.name,
        "file": file,
        "line": result.case.line,
        "passed": result.passed,
        "differences": [m._asdict() for m in result.misses],
        "rules_fired": list(d.rules),
        "stopped_at": d.stopped_at,
    }


def coverage_doc(ruleset: RuleSet, results: Sequence[Result]) -> dict[str, Any]:
    """``render_coverage`` as data; each rule never fired with its file and line."""
    missed = set(coverage(ruleset, results))
    enabled = sum(r.enabled for r in ruleset.rules)
    never = [
        {"id": r.id, "file": r.where.file, "line": r.where.line}
        for r in ruleset.rules
        if r.id in missed
    ]
    return {
        "rules_file": ruleset.file,
        "rules": enabled,
        "fired": enabled - len(missed),
        "never_fired": never,
    }
