"""``triaged rules check|explain|test|diff``: the tools that let admins trust a rule file.

``check`` lists every problem of one or more rule files at once, with positions, and what
the files contain; ``explain`` shows, rule by rule, why one message (a file or a stored
message id) is routed where it is; ``test`` runs the rule file's own test cases
(``rules.testing``); ``diff`` replays stored and sample messages through two rule files and
lists every routing change. The work is in ``rules`` (pure); this module reads the config,
opens the store and prints. A failing command raises :class:`Failed`, which ``cli.main``
(like click itself) turns into exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import click

from router import config as config_mod
from router.errors import ConfigError, TriagedError
from router.message import Message
from rules import testing
from rules.engine import Facts, evaluate
from rules.engine import explain as explain_decision
from rules.explain import (
    changes,
    explanation,
    render_explanation,
    render_stored,
    summary,
    summary_line,
)
from rules.include import read_files
from rules.loader import RuleFileError, RuleSet, load_file
from rules.messages import MessageFileError, load_message, message_files, parse_time
from rules.show import overview
from rules.show import render as render_overview
from rules.source import Problem, YamlFileError, load_yaml

MESSAGE_SUFFIXES = (".eml", ".json")
_KEYS = ("team", "category", "priority", "tags")  # what diff compares
Stored = tuple[Message, dict[str, Any]]


class Failed(click.ClickException):
    """Exit status 1, after printing ``problems`` (and ``message``, if any) to stderr."""

    exit_code = 1

    def __init__(self, message: str = "", problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the problems, one ``file:line:col: CODE message`` block each."""
        for problem in self.problems:
            click.echo(problem.render(), err=True)
        if self.message:
            click.echo(self.message, err=True)


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Daemon config file [default: $TRIAGED_CONFIG or config/triaged.yaml].",
)
rules_option = click.option(
    "-r",
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Rule file to use instead of the config's.",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON document on stdout.",
)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _config_file(given: Path | None) -> Path:
    return given or Path(os.environ.get("TRIAGED_CONFIG", "config/triaged.yaml"))


def _config(given: Path | None) -> config_mod.Config:
    try:
        return config_mod.load(_config_file(given))
    except ConfigError as exc:
        errors = sum(p.severity == "error" for p in exc.problems)
        raise Failed(f"{_n(errors, 'error')} in the config — not loaded", exc.problems) from None


def _rules(path: Path, outputs: set[str] | None = None) -> RuleSet:
    try:
        return load_file(path, outputs=outputs)
    except RuleFileError as exc:
        raise Failed(f"{_n(len(exc.errors), 'error')} — rules not loaded", exc.problems) from None


def _rules_for(rules_path: Path | None, config_path: Path | None) -> RuleSet:
    """``-r`` as given, else the config's rule file with its team inboxes checked."""
    if rules_path is not None:
        return _rules(rules_path)
    cfg = _config(config_path)
    return _rules(cfg.rules, set(cfg.outputs))


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, indent=2))


@click.group("rules")
def rules_group() -> None:
    """Check, explain, test and diff rule files."""


# -- check --------------------------------------------------------------------------------------


def _merged(path: Path) -> tuple[Any, list[str]]:
    """The rule file's data with every included file merged in, and the files read.

    For the summary: counted over all files, also when the file does not load (its problems
    come from ``load_file``; they are not collected twice here).
    """
    try:
        main = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, YamlFileError):
        return None, [str(path)]
    tree = read_files(main, [])
    return tree.doc.data, [doc.file for doc in tree.docs]


def _check_file(path: Path, outputs: set[str] | None) -> tuple[list[Problem], dict[str, Any]]:
    ruleset: RuleSet | None = None
    try:
        ruleset = load_file(path, outputs=outputs)
        problems = list(ruleset.warnings)
    except RuleFileError as exc:
        problems = exc.problems
    raw, files = _merged(path)
    counts = summary(raw, ruleset)
    return problems, {
        "file": str(path),
        "loaded": ruleset is not None,
        "files_read": files,
        **counts,
    }


@rules_group.command("check")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@format_option
@click.option("--strict", is_flag=True, help="Warnings fail the check too.")
@config_option
def check(files: tuple[Path, ...], fmt: str, strict: bool, config_path: Path | None) -> None:
    """Report every error and warning of rule FILES (default: the config's rule file).

    With -c, team inboxes must name outputs of that config. Exit 1 on errors (and on
    warnings with --strict).
    """
    outputs: set[str] | None = None
    if config_path is not None or not files:
        cfg = _config(config_path)
        outputs, files = set(cfg.outputs), files or (cfg.rules,)
    problems: list[Problem] = []
    summaries = []
    for path in files:
        found, counts = _check_file(path, outputs)
        problems += found
        summaries.append(counts)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if fmt == "json":
        total = {"errors": errors, "warnings": warnings, "files": summaries}
        _echo_json({"problems": [p.as_dict() for p in problems], "summary": total})
    else:
        for problem in problems:
            click.echo(problem.render())
        for counts in summaries:
            click.echo(summary_line(counts))
        verdict = "NOT loaded" if errors else "ok"
        verdict = "failed (--strict)" if strict and warnings and not errors else verdict
        click.echo(f"{_n(errors, 'error')}, {_n(warnings, 'warning')} — {verdict}")
    if errors or (strict and warnings):
        raise Failed()


# -- show ---------------------------------------------------------------------------------------


@rules_group.command("show")
@rules_option
@config_option
@format_option
def show(rules_path: Path | None, config_path: Path | None, fmt: str) -> None:
    """Print the effective ruleset: every rule in evaluation order (with include:, from all
    files) with where it comes from, its condition and what it sets; teams, defaults, SLA
    and what the compiler built."""
    doc = overview(_rules_for(rules_path, config_path))
    if fmt == "json":
        _echo_json(doc)
    else:
        click.echo(render_overview(doc))


# -- explain ------------------------------------------------------------------------------------


def _with_store(cfg: config_mod.Config, action: Callable[[Any], Any]) -> Any:
    """Run ``action(store)`` on the config's store; ``None`` when the state has no store yet.

    Works beside a running daemon (the store is opened in admin mode: no lock, no pruning).
    Raises ``TriagedError`` when the state cannot be read.
    """
    from router.daemon import redis_url
    from router.store import open_store

    q = cfg.queue
    # opening a SQLite store creates it: a read-only command must not leave an empty state
    if q.type == "sqlite" and not (cfg.state_dir / "state.sqlite3").is_file():
        return None

    async def go() -> Any:
        store = await open_store(
            q.type, state_dir=cfg.state_dir, redis_url=redis_url(cfg), prefix=q.prefix, admin=True
        )
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _stored(config_path: Path | None, message_id: str) -> Stored:
    cfg = _config(config_path)
    try:
        found = _with_store(cfg, lambda store: store.decision(message_id))
    except TriagedError as exc:
        raise Failed(f"cannot read the stored decisions: {exc}") from None
    if found is None:
        raise Failed(f"no stored decision for message {message_id} in {cfg.state_dir}")
    return found  # type: ignore[no-any-return]


def _facts_of(message: Message) -> Facts:
    from router.dispatcher import facts_of

    return facts_of(message)


@rules_group.command("explain")
@click.argument("message")
@rules_option
@config_option
@click.option("--at", "at", metavar="TIME", help="Evaluate as if received at TIME (ISO 8601).")
@format_option
def explain(
    message: str, rules_path: Path | None, config_path: Path | None, at: str | None, fmt: str
) -> None:
    """Show why MESSAGE goes where it goes, rule by rule.

    MESSAGE is an .eml file, a JSON message file (the webhook body, plus channel, source,
    headers, received_at, to) or the id of a stored message (read from the config's state).
    """
    ruleset = _rules_for(rules_path, config_path)
    tz = ZoneInfo(ruleset.timezone)
    try:
        when = parse_time(at, tz) if at else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None
    path = Path(message)
    stored: Stored | None = None
    if path.is_file():
        facts = _read_message(path, tz)
    elif path.suffix.lower() in MESSAGE_SUFFIXES or os.sep in message:
        raise Failed(f"no such message file: {message}")
    else:
        stored = _stored(config_path, message)
        facts = _facts_of(stored[0])
    facts = replace(facts, received_at=when) if when else facts
    decision = explain_decision(ruleset, facts)
    doc = explanation(ruleset, decision, facts)
    if stored is not None:
        differs = changes(stored[1], decision.as_record())
        doc["stored"] = {"id": stored[0].id, "record": stored[1], "changes": differs}
    if fmt == "json":
        _echo_json(doc)
        return
    if stored is not None:
        click.echo(render_stored(doc["stored"], stored[0].source, ruleset.hash))
    click.echo(render_explanation(doc))
    if stored is not None:
        differs = doc["stored"]["changes"]
        verdict = "would differ: " + "; ".join(differs) if differs else "is the same"
        click.echo(f"decision {verdict} (stored → now)")


def _read_message(path: Path, tz: ZoneInfo) -> Facts:
    try:
        return load_message(path, received_at=datetime.now(UTC), tz=tz)
    except MessageFileError as exc:
        raise Failed(
            f"{_n(len(exc.problems), 'error')} in the message file", exc.problems
        ) from None


# -- test ---------------------------------------------------------------------------------------


def _test_files(
    files: tuple[Path, ...], rules_path: Path | None, config_path: Path | None
) -> list[Path]:
    if files:
        return list(files)
    base = rules_path or _config(config_path).rules
    found = sorted(base.parent.glob("*.test.yaml"))
    if not found:
        raise Failed(f"no *.test.yaml next to {base}")
    return found


@rules_group.command("test")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--coverage", "show_coverage", is_flag=True, help="List rules no test fired.")
@rules_option
@config_option
@format_option
def test(
    files: tuple[Path, ...],
    show_coverage: bool,
    rules_path: Path | None,
    config_path: Path | None,
    fmt: str,
) -> None:
    """Run YAML test FILES (default: every *.test.yaml next to the rule file).

    Each test file tests the rule file named like it without .test (or its rules: key);
    -r tests RULES instead. Exit 1 if a test fails or a test file has errors.
    """
    text = fmt == "text"
    cache = testing.RuleFiles()
    broken = 0
    problems: list[Problem] = []
    cases: list[dict[str, Any]] = []
    by_rules: dict[str, tuple[RuleSet, list[testing.Result]]] = {}
    for path in _test_files(files, rules_path, config_path):
        try:
            suite = testing.load_suite(path, cache, rules_path)
        except testing.SuiteError as exc:
            broken += 1
            problems += exc.problems
            for problem in exc.problems if text else ():
                click.echo(problem.render())
            continue
        results = testing.run_suite(suite)
        if text:
            for result in results:
                click.echo(testing.render_result(result, suite.file))
        cases += [testing.result_doc(result, suite.file) for result in results]
        by_rules.setdefault(suite.ruleset.file, (suite.ruleset, []))[1].extend(results)
    passed = sum(case["passed"] for case in cases)
    failed = len(cases) - passed
    if text:
        for ruleset, results in by_rules.values() if show_coverage else ():
            click.echo(testing.render_coverage(ruleset, results))
        bad = f", {_n(broken, 'test file')} with errors" if broken else ""
        click.echo(f"{passed} passed, {failed} failed{bad}")
    else:
        doc: dict[str, Any] = {"cases": cases, "problems": [p.as_dict() for p in problems]}
        if show_coverage:
            doc["coverage"] = [testing.coverage_doc(rs, res) for rs, res in by_rules.values()]
        doc["summary"] = {"passed": passed, "failed": failed, "broken_files": broken}
        _echo_json(doc)
    if failed or broken:
        raise Failed()


# -- diff ---------------------------------------------------------------------------------------


def _recent(config_path: Path | None, limit: int, notes: list[str]) -> list[Stored]:
    """Up to ``limit`` stored messages, newest first; a note instead when there are none."""
    file = _config_file(config_path)
    if limit <= 0:
        return []
    if config_path is None and not file.is_file():
        notes.append(f"no config at {file}: no stored messages replayed")
        return []
    cfg = _config(config_path)
    try:
        found = _with_store(cfg, lambda store: store.recent(limit))
    except TriagedError as exc:
        notes.append(f"stored messages skipped: {exc}")
        return []
    if found is None:
        notes.append(f"no stored messages in {cfg.state_dir}")
    return found or []


def _ref(facts: Facts, **where: str) -> dict[str, str]:
    """How a replayed message is named: stored id and source, or file; and its subject."""
    what = facts.subject or facts.body.strip().replace("\n", " ")[:40]
    return {**where, "subject": what}


def _messages(
    config_path: Path | None, limit: int, corpus: Sequence[Path], tz: ZoneInfo, notes: list[str]
) -> Iterator[tuple[dict[str, str], Facts]]:
    """(ref, facts) of the stored messages, then of the corpus files."""
    for message, _ in _recent(config_path, limit, notes):
        facts = _facts_of(message)
        yield _ref(facts, id=message.id, source=message.source), facts
    now = datetime.now(UTC)  # for files without a time of their own: one instant for all
    for path in message_files(corpus):
        try:
            facts = load_message(path, received_at=now, tz=tz)
        except MessageFileError as exc:
            notes.extend(f"skipped: {p}" for p in exc.problems)
            continue
        yield _ref(facts, file=str(path)), facts


def _change_line(item: dict[str, Any]) -> str:
    ref = item["message"]
    name = f"{ref['id']} ({ref['source']})" if "id" in ref else ref["file"]
    subject = json.dumps(ref["subject"], ensure_ascii=False)
    return f"{name} {subject}: {'; '.join(item['changes'])}"


@rules_group.command("diff")
@click.argument("old", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
@config_option
@click.option(
    "--corpus",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="An .eml or .json message file, or a directory of them (repeatable).",
)
@click.option("--limit", default=1000, show_default=True, help="Stored messages to replay.")
@format_option
def diff(
    old: Path, new: Path, config_path: Path | None, corpus: tuple[Path, ...], limit: int, fmt: str
) -> None:
    """List every message whose team, category, priority or tags differ between OLD and NEW.

    Replays the most recent stored messages (from the config's state) and the --corpus
    files through both rule files. Informational: exit 0 whatever changes.
    """
    before, after = _rules(old), _rules(new)
    notes: list[str] = []
    if before.hash == after.hash:
        notes.append("OLD and NEW are the same text: nothing can change")
    found: list[dict[str, Any]] = []
    total = 0
    for ref, facts in _messages(config_path, limit, corpus, ZoneInfo(after.timezone), notes):
        total += 1
        was, now = evaluate(before, facts).as_record(), evaluate(after, facts).as_record()
        if differs := changes(was, now):
            found.append({"message": ref, "changes": differs, "old": was, "new": now})
    counts = {k: sum(any(c.startswith(k) for c in f["changes"]) for f in found) for k in _KEYS}
    if fmt == "json":
        summary_doc = {"messages": total, "changed": len(found), **counts}
        _echo_json({"changes": found, "summary": summary_doc, "notes": notes})
        return
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for item in found:
        click.echo(_change_line(item))
    detail = ", ".join(f"{n} {k}" for k, n in counts.items())
    click.echo(f"{len(found)} of {total} messages would change ({detail})")
