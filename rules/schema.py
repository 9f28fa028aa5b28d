"""Pydantic models of the rule file (``extra="forbid"``, strict types) and their error mapping.

The loader validates each top-level section, and each rule, on its own, so one bad rule does
not hide the problems of the others; ``problems_of`` turns a pydantic ``ValidationError`` into
positioned ``Problem``s (unknown key → E100 at the key with a suggestion, missing key → E101,
wrong type or value → E109). Conditions (``when`` and ``conditions``) are checked by
``rules.conditions``, not here. ``json_schema()`` is the schema editors can use.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from datetime import time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from rules.source import Document, Problem

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: object) -> float:
    """``"30m"``, ``"4h"``, ``"1h30m"``, ``"1d"`` → seconds; anything else is a ValueError."""
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return float(sum(float(n) * _UNITS[u] for n, u in parts))
    raise ValueError(f"invalid duration {value!r}: write a number and a unit, like 30m, 4h, 1d")


def _timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, or ValueError for malformed keys
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name like Asia/Shanghai"
        ) from None
    return name


def _hhmm(value: str) -> str:
    if value == "24:00":
        return value
    try:
        time.fromisoformat(value)
        if not re.fullmatch(r"\d\d:\d\d", value):
            raise ValueError
    except ValueError:
        raise ValueError(f'invalid time {value!r}: write "HH:MM", like "09:00"') from None
    return value


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


_CONDITION_REF = {"$ref": "#/$defs/Condition"}
_CONDITION_MARK = {"x-triaged": "condition"}  # pydantic resolves $refs itself: swapped in later
_DURATION_SCHEMA = {"type": "string", "pattern": r"^(\d+(\.\d+)?[smhdw])+$"}
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
Timezone = Annotated[str, AfterValidator(_timezone)]
HHMM = Annotated[str, AfterValidator(_hhmm)]
PriorityName = Literal["urgent", "high", "medium", "low"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NormalizeModel(_Strict):
    """``settings.normalize``: the pipeline applied to text and literals alike."""

    nfkc: bool = True
    casefold: bool = True
    chinese: Literal["none", "t2s"] = "none"


class SettingsModel(_Strict):
    """``settings``."""

    timezone: Timezone = "UTC"
    normalize: NormalizeModel = NormalizeModel()
    scan_limit_chars: int = Field(default=65536, ge=1)


class TeamModel(_Strict):
    """One entry of ``teams``."""

    inbox: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(min_length=1)
    escalation: str | None = None
    description: str = ""


class TimeRangeModel(_Strict):
    """``{start: "09:00", end: "18:00"}``; the end is exclusive; ``"24:00"`` is the day's end."""

    start: HHMM
    end: HHMM


class CalendarModel(_Strict):
    """One entry of ``calendars`` (Alertmanager time interval + public holidays)."""

    weekdays: list[str] | None = None
    times: list[TimeRangeModel] | None = None
    days_of_month: list[str | int] | None = None
    months: list[str | int] | None = None
    location: Timezone | None = None
    holidays: str | None = None


class SlaModel(_Strict):
    """One entry of ``sla``, keyed by priority."""

    first_response: Duration
    resolve: Duration | None = None
    calendar: str = "always"


class DefaultsModel(_Strict):
    """``defaults``: the fallback route."""

    team: str
    category: str
    priority: PriorityName


class SetModel(_Strict):
    """A rule's ``set``."""

    team: str | None = None
    category: str | None = None
    priority: PriorityName | None = None
    tags: list[str] = []
    notify: list[str] = []
    sla: Duration | None = None


class RuleModel(_Strict):
    """One entry of ``rules``; ``when`` is checked by ``rules.conditions``."""

    id: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    when: Annotated[Any, WithJsonSchema(_CONDITION_MARK)] = None
    set: SetModel = SetModel()
    continue_: bool = Field(False, alias="continue")
    stop: bool = False


class RuleFileModel(_Strict):
    """The whole rule file (for the JSON Schema; the loader validates section by section)."""

    version: Literal[1]
    include: list[str] | None = None
    settings: SettingsModel = SettingsModel()
    teams: dict[str, TeamModel]
    categories: list[str] | None = None
    calendars: dict[str, CalendarModel] = {}
    sla: dict[str, SlaModel] = {}
    lists: dict[str, list[Any]] = {}
    conditions: dict[str, Annotated[Any, WithJsonSchema(_CONDITION_MARK)]] = {}
    defaults: DefaultsModel
    rules: list[RuleModel] = []


TOP_LEVEL = tuple(f.alias or n for n, f in RuleFileModel.model_fields.items())
REQUIRED = ("version", "teams", "defaults")


def _condition_schemas() -> dict[str, Any]:
    from rules.fields import FIELDS
    from rules.model import OPERATORS, OPTIONS

    names = "|".join([*FIELDS, "all", "any", "not", "use", "time_in"])
    field_test = {
        "type": "object",
        "minProperties": 1,
        "properties": {
            **{op: {} for op in OPERATORS},
            **{opt: {"type": "boolean"} for opt in OPTIONS},
        },
        "additionalProperties": False,
    }
    condition = {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": rf"^({names}|header\..+|fields\..+)$"},
        "properties": {
            "all": {"type": "array", "items": _CONDITION_REF},
            "any": {"type": "array", "items": _CONDITION_REF},
            "not": _CONDITION_REF,
            "use": {"type": "string"},
            "time_in": {"type": "string"},
        },
        "additionalProperties": {"$ref": "#/$defs/FieldTest"},
    }
    return {"Condition": condition, "FieldTest": field_test}


def _swap_marks(node: Any) -> Any:
    if isinstance(node, dict) and node.get("x-triaged") == "condition":
        return dict(_CONDITION_REF)
    if isinstance(node, dict):
        return {k: _swap_marks(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_swap_marks(v) for v in node]
    return node


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a rule file, for editors (yaml-language-server) and CI."""
    schema: dict[str, Any] = _swap_marks(RuleFileModel.model_json_schema(by_alias=True))
    schema.setdefault("$defs", {}).update(_condition_schemas())
    schema["title"] = "triaged rule file"
    return schema


def suggest(word: object, candidates: Sequence[str]) -> str:
    """`` (did you mean "x"?)`` for the closest candidate, or ''."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def dotted(path: Sequence[str | int]) -> str:
    """``("rules", 2, "set")`` → ``rules[2].set``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def describe(value: object) -> str:
    """How a wrong value is named in a message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def allowed_keys(tp: Any, loc: Sequence[str | int]) -> list[str]:
    """The keys the model reached by ``loc`` from type ``tp`` accepts (for suggestions)."""
    for step in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or n: f for n, f in tp.model_fields.items()}
            if step not in fields:
                return []
            tp = fields[str(step)].annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def problems_of(
    doc: Document, prefix: Sequence[str | int], tp: Any, exc: ValidationError
) -> list[Problem]:
    """Positioned problems for a pydantic error raised validating the node at ``prefix``."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [s for s in err["loc"] if s != "[key]"]
        path = [*prefix, *loc]
        kind = err["type"]
        if kind == "extra_forbidden":
            key = loc[-1] if loc else ""
            hint = suggest(key, allowed_keys(tp, loc[:-1]))
            msg = f'unknown key "{key}" in {dotted(path[:-1]) or "the file"}{hint}'
            out.append(doc.problem(path, "E100", msg, at="key"))
        elif kind == "missing":
            msg = f'missing required key "{loc[-1]}" in {dotted(path[:-1])}'
            out.append(doc.problem(path[:-1], "E101", msg))
        else:
            at: Literal["key", "value"] = "key" if "[key]" in err["loc"] else "value"
            out.append(doc.problem(path, "E109", _message(err, path), at=at))
    return out


def _message(err: Any, path: Sequence[str | int]) -> str:
    kind, value = err["type"], err.get("input")
    where = dotted(path)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'|(\d+)", err["ctx"]["expected"])
        names = [a or b for a, b in choices]
        hint = suggest(value, names)
        return f"invalid {where}: {describe(value)}, expected one of {', '.join(names)}{hint}"
    if kind == "value_error":
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    if kind in _EXPECTED:
        return f"{where} must be {_EXPECTED[kind]}, got {describe(value)}"
    return f"{where}: {err['msg']}"


if __name__ == "__main__":  # python -m rules.schema > rules/rule-file.schema.json
    import json

    print(json.dumps(json_schema(), indent=2, ensure_ascii=False, sort_keys=True))
