"""Load a rule file: YAML with positions → schema → semantic checks → compile → ``RuleSet``.

Every problem in the file is collected before giving up, and ``RuleFileError`` carries them
all (errors and warnings), each as ``file:line:col: CODE message`` at the offending node.
Warnings never block loading; they are on ``RuleSet.warnings``. Error codes:

E000 cannot read · E001 YAML syntax · E002 duplicate key · E100 unknown key · E101 missing
key · E102 unknown list · E103 unknown condition · E104 unknown team · E105 unknown calendar
· E106 unknown category · E107 unknown operator · E108 unknown field · E109 invalid value ·
E110 unknown output · E111 duplicate rule id · E112 cyclic use · E130 invalid regex · E140
missing optional package · E113 name defined in two files · E114 include cycle. Warnings:
W201 short keyword · W203 option without effect · W210 keyword variant without its mainland
form · W301 rule can never fire · W302 team/category set after the first writer · W303
condition nested deeper than 4 · W401 unused list · W402 unused condition. Several files:
see ``rules.include``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from rules.calendars import ALWAYS, build_calendars
from rules.checks import shadowed_settings, unreachable_rules, unused
from rules.compiler import compile_program
from rules.conditions import ConditionParser
from rules.include import SUFFIXES, listing, read_files
from rules.model import PRIORITIES_DESC, Action, Defaults, Rule, SlaPolicy, Team, Where
from rules.normalize import Normalizer, NormalizerUnavailable, Pipeline, View
from rules.ruleset import RuleSet
from rules.schema import (
    REQUIRED,
    TOP_LEVEL,
    CalendarModel,
    DefaultsModel,
    RuleModel,
    SettingsModel,
    SlaModel,
    TeamModel,
    describe,
    problems_of,
    suggest,
)
from rules.source import (
    Document,
    Problem,
    ProblemsError,
    YamlFileError,
    gc_paused,
    load_yaml,
    plain,
)

__all__ = ["RuleFileError", "RuleSet", "digest_files", "load_file", "load_text"]

_STRICT = ConfigDict(strict=True)


class RuleFileError(ProblemsError):
    """A rule file that cannot be used; ``problems`` lists every error (and the warnings)."""

    @property
    def errors(self) -> list[Problem]:
        """Only the errors."""
        return [p for p in self.problems if p.severity == "error"]


def load_file(path: Path | str, *, outputs: Collection[str] | None = None) -> RuleSet:
    """Load and compile the rule file at ``path``; raise ``RuleFileError`` listing all problems.

    With ``outputs``, every team inbox entry must name one of them (E110).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
        raise RuleFileError([Problem(str(path), 1, 1, "E000", f"cannot read: {reason}")]) from None
    return load_text(text, str(path), outputs=outputs)


def load_text(text: str, file: str, *, outputs: Collection[str] | None = None) -> RuleSet:
    """Load and compile rule-file ``text`` (``file`` names it in problems)."""
    with gc_paused():  # the intermediate objects are freed before the collector resumes
        return _load_text(text, file, outputs)


def _load_text(text: str, file: str, outputs: Collection[str] | None) -> RuleSet:
    try:
        main = load_yaml(text, file)
    except YamlFileError as exc:
        raise RuleFileError(exc.problems) from None
    problems: list[Problem] = []
    doc, docs, dirs = read_files(main, problems)
    parts = _Loader(doc, outputs, problems).run()
    rank = {d.file: i for i, d in enumerate(docs)}
    problems.sort(key=lambda p: (rank.get(p.file, len(rank)), p.line, p.col))
    if parts is None or any(p.severity == "error" for p in problems):
        raise RuleFileError(problems)
    program = compile_program(parts["rules"], parts["calendars"])
    return RuleSet(
        file=file,
        hash=_digest(docs),
        program=program,
        warnings=problems,
        files=tuple(d.file for d in docs),
        dirs=tuple(dirs),
        **parts,
    )


def _digest(docs: list[Document]) -> str:
    """sha256 hex of the main file's text; with includes, of every file's name and text."""
    return _hash([(d.file, d.text) for d in docs])


def _hash(texts: list[tuple[str, str]]) -> str:
    if len(texts) == 1:
        return hashlib.sha256(texts[0][1].encode("utf-8", "surrogatepass")).hexdigest()
    sha = hashlib.sha256()
    for file, text in texts:
        for part in (file, text):
            sha.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return sha.hexdigest()


def digest_files(files: Sequence[str], dirs: Sequence[str] = ()) -> str | None:
    """The ``RuleSet.hash`` that a ruleset's ``files`` and ``dirs`` give now; None if unreadable.

    For a watcher: differs from the loaded ``hash`` as soon as any file read changed, or a rule
    file was added to or removed from an included directory (a new file is hashed after the
    others, a removed one is left out).
    """
    listed = [str(p) for d in dirs for p in _listing(Path(d))]
    now, known = set(listed), set(files)
    kept = [f for f in files if f in now or not _listable(f, dirs)]
    new = [f for f in listed if f not in known]
    if new:  # a file read under another spelling of its path is not new
        read = {str(Path(f).resolve()) for f in files}
        new = [f for f in new if str(Path(f).resolve()) not in read]
    try:
        return _hash([(f, Path(f).read_text(encoding="utf-8")) for f in [*kept, *sorted(new)]])
    except (OSError, UnicodeDecodeError):
        return None


def _listing(directory: Path) -> list[Path]:
    """``listing``, empty when the directory is gone: the reload then says why."""
    try:
        return listing(directory)
    except OSError:
        return []


def _listable(file: str, dirs: Sequence[str]) -> bool:
    """Whether ``file`` is one a listing of ``dirs`` would give (so is gone if not listed)."""
    path = Path(file)
    return path.suffix in SUFFIXES and str(path.parent) in dirs


class _Loader:
    """One pass over one document; problems go to ``out``."""

    def __init__(self, doc: Document, outputs: Collection[str] | None, out: list[Problem]):
        self.doc, self.outputs, self.out = doc, outputs, out

    def run(self) -> dict[str, Any] | None:
        """The parts of a ``RuleSet`` (all but file, hash, program, warnings), or None."""
        if not isinstance(self.doc.data, dict):
            msg = "a rule file is a mapping with version, teams, defaults and rules"
            self.out.append(
                self.doc.problem([], "E109", f"{msg}; got {describe(plain(self.doc.data))}")
            )
            return None
        raw: dict[str, Any] = self.doc.data  # a YamlMap: a dict, read only
        self._top_level(raw)
        given = raw.get("settings")
        settings = self._validate(SettingsModel, {} if given is None else given, ["settings"])
        settings = settings or SettingsModel()
        views = self._views(settings)
        calendars = build_calendars(
            self.doc, self._entries(raw, "calendars", CalendarModel), settings.timezone, self.out
        )
        calendar_names = {ALWAYS, *self._names(raw, "calendars")}
        teams = self._teams(raw)
        team_names = set(self._names(raw, "teams"))
        categories = self._validate(list[str] | None, raw.get("categories"), ["categories"])
        lists = self._lists(raw)
        conditions = self._mapping(raw, "conditions")
        parser = ConditionParser(self.doc, views, lists, conditions, calendar_names, self.out)
        for name in conditions:
            parser.named(name)
        refs = _Refs(team_names, categories)
        rules = self._rules(raw, parser, refs)
        defaults = self._defaults(raw, refs)
        sla = self._sla(raw, calendar_names)
        self.out.extend(unused(self.doc, lists, parser.used_lists, "list", "W401"))
        self.out.extend(unused(self.doc, conditions, parser.used_conditions, "condition", "W402"))
        self.out.extend(unreachable_rules(self.doc, rules))
        self.out.extend(shadowed_settings(self.doc, rules))
        if defaults is None:
            return None
        return {
            "rules": tuple(rules),
            "teams": MappingProxyType(teams),
            "defaults": defaults,
            "categories": tuple(categories) if categories is not None else None,
            "sla": MappingProxyType(sla),
            "calendars": MappingProxyType(calendars),
            "views": MappingProxyType(views),
            "scan_limit": settings.scan_limit_chars,
            "timezone": settings.timezone,
        }

    # -- generic helpers ------------------------------------------------------------------

    def _top_level(self, raw: dict[str, Any]) -> None:
        for key in raw:
            if key not in TOP_LEVEL:
                msg = f'unknown key "{key}" in the file{suggest(key, TOP_LEVEL)}'
                self.out.append(self.doc.problem([key], "E100", msg, at="key"))
        for key in REQUIRED:
            if key not in raw:
                msg = f'missing required key "{key}" in the file'
                self.out.append(self.doc.problem([], "E101", msg))
        if "version" in raw:
            self._validate(Literal[1], raw["version"], ["version"])

    def _validate(self, tp: Any, value: Any, path: list[str | int]) -> Any:
        """``value`` validated as ``tp`` (problems at ``path``), or None when invalid."""
        try:
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                return tp.model_validate(value)
            return _adapter(tp).validate_python(value)
        except ValidationError as exc:
            self.out.extend(problems_of(self.doc, path, tp, exc))
            return None

    def _mapping(self, raw: dict[str, Any], section: str) -> dict[str, Any]:
        value = raw.get(section)
        if value is None:
            return {}
        if not isinstance(value, dict):
            msg = f"{section} must be a mapping of names, got {describe(value)}"
            self.out.append(self.doc.problem([section], "E109", msg))
            return {}
        good = {}
        for key, entry in value.items():
            if isinstance(key, str) and key:
                good[key] = entry
            else:
                msg = f"names in {section} must be strings, got {describe(key)}"
                self.out.append(self.doc.problem([section, key], "E109", msg, at="key"))
        return good

    def _names(self, raw: dict[str, Any], section: str) -> list[str]:
        value = raw.get(section)
        return [k for k in value if isinstance(k, str)] if isinstance(value, dict) else []

    def _entries(self, raw: dict[str, Any], section: str, model: type[BaseModel]) -> dict[str, Any]:
        out = {}
        for name, entry in self._mapping(raw, section).items():
            valid = self._validate(model, entry, [section, name])
            if valid is not None:
                out[name] = valid
        return out

    # -- sections -------------------------------------------------------------------------

    def _views(self, settings: SettingsModel) -> dict[View, Pipeline]:
        norm = settings.normalize
        try:
            return Normalizer(norm.nfkc, norm.casefold, norm.chinese).build()
        except NormalizerUnavailable as exc:
            path: list[str | int] = ["settings", "normalize", "chinese"]
            self.out.append(self.doc.problem(path, "E140", str(exc)))
            return Normalizer(norm.nfkc, norm.casefold, "none").build()

    def _teams(self, raw: dict[str, Any]) -> dict[str, Team]:
        teams = {}
        for name, model in self._entries(raw, "teams", TeamModel).items():
            for i, target in enumerate(model.inbox):
                if self.outputs is not None and target not in self.outputs:
                    hint = suggest(target, sorted(self.outputs))
                    path: list[str | int] = ["teams", name, "inbox", i]
                    self.out.append(
                        self.doc.problem(path, "E110", f'unknown output "{target}"{hint}')
                    )
            teams[name] = Team(name, tuple(model.inbox), model.escalation, model.description)
        return teams

    def _lists(self, raw: dict[str, Any]) -> dict[str, list[Any]]:
        lists = {}
        for name, items in self._mapping(raw, "lists").items():
            if not isinstance(items, list):
                msg = f"list {name} must be a list of strings, got {describe(items)}"
                self.out.append(self.doc.problem(["lists", name], "E109", msg))
                continue
            for i, item in enumerate(items):
                if isinstance(item, bool) or not isinstance(item, str | int | float):
                    msg = f"items of list {name} must be strings or numbers, got {describe(item)}"
                    self.out.append(self.doc.problem(["lists", name, i], "E109", msg))
            lists[name] = items
        return lists

    def _rules(self, raw: dict[str, Any], parser: ConditionParser, refs: _Refs) -> list[Rule]:
        items = raw.get("rules") or []  # "rules:" with every rule commented out is empty
        if not isinstance(items, list):
            msg = f"rules must be a list of rules, got {describe(items)}"
            self.out.append(self.doc.problem(["rules"], "E109", msg))
            return []
        rules: list[Rule] = []
        first: dict[str, Where] = {}
        parser.enter(items, ["rules"])  # each rule is then placed in one step
        for i, item in enumerate(items):
            path: list[str | int] = ["rules", i]
            where = parser.where(path)
            rule_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(rule_id, str) and rule_id in first:
                self.out.append(
                    self.doc.problem([*path, "id"], "E111", _dup(rule_id, first[rule_id], where))
                )
            elif isinstance(rule_id, str):
                first[rule_id] = where
            if isinstance(item, dict) and isinstance(item.get("set"), dict):
                self._set_refs(item["set"], [*path, "set"], refs)
            model = self._validate(RuleModel, item, path)
            has_when = isinstance(item, dict) and item.get("when") is not None
            when = parser.parse(item["when"], [*path, "when"]) if has_when else None
            if model is None or (has_when and when is None):
                continue
            if model.continue_ and model.stop:
                msg = "continue and stop contradict each other"
                self.out.append(self.doc.problem([*path, "stop"], "E109", msg, at="key"))
            rules.append(self._rule(model, when, where))
        return rules

    def _set_refs(self, raw: dict[str, Any], path: list[str | int], refs: _Refs) -> None:
        """Check the names a ``set`` refers to (on the raw data: also for invalid rules)."""
        if isinstance(raw.get("team"), str):
            refs.team(self, [*path, "team"], raw["team"])
        notify = raw.get("notify")
        for i, name in enumerate(notify if isinstance(notify, list) else ()):
            if isinstance(name, str):
                refs.team(self, [*path, "notify", i], name)
        if isinstance(raw.get("category"), str):
            refs.category(self, [*path, "category"], raw["category"])

    def _rule(self, model: RuleModel, when: Any, where: Where) -> Rule:
        s = model.set
        action = Action(s.team, s.category, s.priority, _dedup(s.tags), _dedup(s.notify), s.sla)
        return Rule(
            model.id,
            where,
            when,
            action,
            model.enabled,
            model.continue_,
            model.stop,
            model.description,
        )

    def _defaults(self, raw: dict[str, Any], refs: _Refs) -> Defaults | None:
        if "defaults" not in raw:
            return None
        model = self._validate(DefaultsModel, raw["defaults"], ["defaults"])
        if model is None:
            return None
        refs.team(self, ["defaults", "team"], model.team)
        refs.category(self, ["defaults", "category"], model.category)
        return Defaults(model.team, model.category, model.priority)

    def _sla(self, raw: dict[str, Any], calendars: set[str]) -> dict[str, SlaPolicy]:
        out = {}
        for name, model in self._entries(raw, "sla", SlaModel).items():
            if name not in PRIORITIES_DESC:
                hint = suggest(name, PRIORITIES_DESC)
                msg = f'unknown priority "{name}" in sla{hint}; use {", ".join(PRIORITIES_DESC)}'
                self.out.append(self.doc.problem(["sla", name], "E109", msg, at="key"))
            if model.calendar not in calendars:
                hint = suggest(model.calendar, sorted(calendars))
                path: list[str | int] = ["sla", name, "calendar"]
                self.out.append(
                    self.doc.problem(path, "E105", f'unknown calendar "{model.calendar}"{hint}')
                )
            out[name] = SlaPolicy(model.first_response, model.resolve, model.calendar)
        return out


class _Refs:
    """Reference checks against the declared teams and categories."""

    def __init__(self, teams: set[str], categories: list[str] | None) -> None:
        self.teams, self.categories = teams, categories

    def team(self, loader: _Loader, path: list[str | int], name: str) -> None:
        if name not in self.teams:
            hint = suggest(name, sorted(self.teams))
            loader.out.append(loader.doc.problem(path, "E104", f'unknown team "{name}"{hint}'))

    def category(self, loader: _Loader, path: list[str | int], name: str) -> None:
        if self.categories is not None and name not in self.categories:
            hint = suggest(name, self.categories)
            loader.out.append(loader.doc.problem(path, "E106", f'unknown category "{name}"{hint}'))


def _dup(rule_id: str, first: Where, here: Where) -> str:
    """E111's message: the first position as a line, or file:line:col in another file."""
    if first.file == here.file:
        return f'duplicate rule id "{rule_id}" (first at line {first.line})'
    return f'duplicate rule id "{rule_id}" (first at {first.file}:{first.line}:{first.col})'


def _dedup(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    if tp not in _ADAPTERS:
        _ADAPTERS[tp] = TypeAdapter(tp, config=_STRICT)
    return _ADAPTERS[tp]
