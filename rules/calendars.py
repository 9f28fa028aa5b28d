"""Calendars for ``time_in`` and SLA clocks: weekdays, times of day, days of the month,
months, a time zone, holidays.

Modelled on Alertmanager's ``time_intervals`` (``days_of_month: ["1:7", "-1"]`` counts
negative days from the month's end, -1 being its last day; ``months: ["january:march", 12]``
takes names, three-letter abbreviations or numbers; ranges are inclusive and do not wrap)
plus public holidays from the ``holidays``
package, which knows China's make-up working days (调休): with ``holidays: CN`` a public
holiday is never inside the calendar and a make-up working day always is (when it matches
``times``). The built-in calendar ``always`` contains every instant.
"""

from __future__ import annotations

import calendar as _stdcal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from rules.schema import CalendarModel, suggest
from rules.source import Document, Problem

ALWAYS = "always"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip


@dataclass(frozen=True, eq=False)  # holds a holidays object, which is not hashable
class Calendar:
    """A set of instants; ``contains`` is the whole interface."""

    name: str
    tz: ZoneInfo | None = None
    weekdays: frozenset[int] | None = None  # 0 = Monday
    times: tuple[tuple[int, int], ...] | None = None  # minutes of the day, end exclusive
    holidays: Any = None  # holidays.HolidayBase, or None
    days_of_month: tuple[tuple[int, int], ...] | None = None  # inclusive; negative from the end
    months: frozenset[int] | None = None  # 1 = January

    def contains(self, when: datetime) -> bool:
        """Whether ``when`` (naive means UTC) falls inside this calendar."""
        if self.tz is None:
            return True
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        local = when.astimezone(self.tz)
        if not self._day_ok(local.date()):
            return False
        if self.times is None:
            return True
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.times)

    def _day_ok(self, day: date) -> bool:
        if self.months is not None and day.month not in self.months:
            return False
        if self.days_of_month is not None and not self._in_month_days(day):
            return False
        if self.holidays is not None:
            is_holiday = day in self.holidays  # populates the year, then workdays are known
            if day in getattr(self.holidays, "weekend_workdays", ()):
                return True
            if is_holiday:
                return False
        return self.weekdays is None or day.weekday() in self.weekdays

    def _in_month_days(self, day: date) -> bool:
        length = _stdcal.monthrange(day.year, day.month)[1]
        for start, end in self.days_of_month or ():
            first = start if start > 0 else length + 1 + start
            last = end if end > 0 else length + 1 + end
            if first <= day.day <= last:
                return True
        return False


def _ranges(
    doc: Document,
    path: list[str | int],
    items: list[str | int],
    parse: Callable[[str], int | None],
    what: str,
    out: list[Problem],
) -> list[tuple[int, int]]:
    """Inclusive ``start:end`` ranges (or single values) parsed by ``parse``; E109 when bad."""
    ranges = []
    for i, item in enumerate(items):
        first, _, last = str(item).partition(":")
        start, end = parse(first), parse(last) if last else parse(first)
        if start is None or end is None:
            out.append(doc.problem([*path, i], "E109", f'invalid {what} "{item}"'))
        elif (start > 0) == (end > 0) and start > end:
            msg = f'{what} range "{item}" runs backwards (ranges do not wrap)'
            out.append(doc.problem([*path, i], "E109", msg))
        else:
            ranges.append((start, end))
    return ranges


def _day_of_month(text: str) -> int | None:
    try:
        day = int(text.strip())
    except ValueError:
        return None
    return day if day != 0 and -31 <= day <= 31 else None


def _month(text: str) -> int | None:
    word = text.strip().lower()
    if word.isdigit():
        return int(word) if 1 <= int(word) <= 12 else None
    return next((i for i, m in enumerate(MONTHS, 1) if word in (m, m[:3])), None)


def _weekday(doc: Document, path: list[str | int], name: str, out: list[Problem]) -> int | None:
    text = name.strip().lower()
    for i, day in enumerate(WEEKDAYS):
        if text in (day, day[:3]):
            return i
    hint = suggest(text, WEEKDAYS)
    out.append(doc.problem(path, "E109", f'unknown weekday "{name}"{hint}'))
    return None


def _weekdays(
    doc: Document, path: list[str | int], items: list[str], out: list[Problem]
) -> frozenset[int]:
    days: set[int] = set()
    for i, item in enumerate(items):
        first, _, last = item.partition(":")
        start = _weekday(doc, [*path, i], first, out)
        end = _weekday(doc, [*path, i], last, out) if last else start
        if start is None or end is None:
            continue
        span = (end - start) % 7  # "saturday:monday" wraps over the week end
        days.update((start + k) % 7 for k in range(span + 1))
    return frozenset(days)


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _holidays(doc: Document, path: list[str | int], code: str, out: list[Problem]) -> Any:
    try:
        import holidays
    except ImportError:
        msg = 'holidays: needs the "holidays" package (pip install holidays), not installed'
        out.append(doc.problem(path, "E140", msg))
        return None
    try:
        return holidays.country_holidays(code.upper())
    except NotImplementedError:
        hint = suggest(code.upper(), list(holidays.list_supported_countries()))
        out.append(doc.problem(path, "E109", f'unknown holidays country "{code}"{hint}'))
        return None


def build_calendar(
    doc: Document, name: str, model: CalendarModel, default_tz: str, out: list[Problem]
) -> Calendar:
    """One calendar from its checked model; problems (weekdays, times, country) go to ``out``."""
    base: list[str | int] = ["calendars", name]
    weekdays = None
    if model.weekdays is not None:
        weekdays = _weekdays(doc, [*base, "weekdays"], model.weekdays, out)
    times = None
    if model.times is not None:
        times = tuple((_minutes(t.start), _minutes(t.end)) for t in model.times)
        for i, (start, end) in enumerate(times):
            if start >= end:
                span = model.times[i]
                msg = f"times[{i}]: start {span.start} is not before end {span.end}"
                out.append(doc.problem([*base, "times", i], "E109", msg))
    hol = None
    if model.holidays is not None:
        hol = _holidays(doc, [*base, "holidays"], model.holidays, out)
    days = months = None
    if model.days_of_month is not None:
        path = [*base, "days_of_month"]
        days = tuple(_ranges(doc, path, model.days_of_month, _day_of_month, "day of month", out))
    if model.months is not None:
        spans = _ranges(doc, [*base, "months"], model.months, _month, "month", out)
        months = frozenset(m for start, end in spans for m in range(start, end + 1))
    tz = ZoneInfo(model.location or default_tz)
    return Calendar(name, tz, weekdays, times, hol, days, months)


def build_calendars(
    doc: Document, models: Mapping[str, CalendarModel], default_tz: str, out: list[Problem]
) -> dict[str, Calendar]:
    """All calendars of the file plus the built-in ``always``."""
    calendars = {ALWAYS: Calendar(ALWAYS)}
    for name, model in models.items():
        if name == ALWAYS:
            msg = f'calendar "{ALWAYS}" is built in and cannot be redefined'
            out.append(doc.problem(["calendars", name], "E109", msg, at="key"))
            continue
        calendars[name] = build_calendar(doc, name, model, default_tz, out)
    return calendars
