"""Calendars: weekdays, times, time zones, China's public holidays and make-up working days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rules.loader import RuleFileError, load_text
from tests.rules.helpers import SHANGHAI, decide, load, message

BUSINESS = """
settings: {timezone: Asia/Shanghai}
calendars:
  cn_business:
    weekdays: ["monday:friday"]
    times: [{start: "09:00", end: "18:00"}]
    holidays: CN
  weekend:
    weekdays: [sat, "Sunday"]
  london_morning:
    location: Europe/London
    times: [{start: "08:00", end: "12:00"}]
"""

RULES = """
- id: off-hours
  when: {not: {time_in: cn_business}}
  set: {tags: [off-hours]}
- id: weekend
  when: {received_at: {time_in: weekend}}
  set: {tags: [weekend]}
- id: london
  when: {time_in: london_morning}
  set: {tags: [london-morning]}
- id: always
  when: {time_in: always}
  set: {tags: [always]}
"""


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("when", "tags"),
    [
        pytest.param(at(2026, 3, 4, 10, 0), ("always",), id="wednesday-10am"),
        pytest.param(
            at(2026, 3, 4, 18, 0), ("off-hours", "london-morning", "always"), id="end-exclusive"
        ),
        pytest.param(at(2026, 3, 4, 8, 59), ("off-hours", "always"), id="before-opening"),
        pytest.param(at(2026, 3, 7, 11, 0), ("off-hours", "weekend", "always"), id="saturday"),
        pytest.param(at(2026, 2, 17, 10, 0), ("off-hours", "always"), id="spring-festival"),
        pytest.param(at(2026, 1, 4, 10, 0), ("weekend", "always"), id="make-up-working-sunday"),
        pytest.param(
            datetime(2026, 3, 4, 1, 30, tzinfo=UTC), ("always",), id="utc-converted-to-shanghai"
        ),
    ],
)
def test_time_in(when: datetime, tags: tuple[str, ...]) -> None:
    pytest.importorskip("holidays")
    ruleset = load(RULES, BUSINESS)
    assert decide(ruleset, message(received_at=when)).tags == tags


def test_naive_datetime_is_utc() -> None:
    ruleset = load(RULES.split("- id: weekend")[0], BUSINESS.replace("    holidays: CN\n", ""))
    assert decide(ruleset, message(received_at=datetime(2026, 3, 4, 2, 0))).tags == ()


@pytest.mark.parametrize(
    ("calendar", "expected"),
    [
        pytest.param(
            'weekdays: ["monday:fryday"]',
            'rules.yaml:9:16: E109 unknown weekday "fryday" (did you mean "friday"?)',
            id="weekday",
        ),
        pytest.param(
            'times: [{start: "18:00", end: "09:00"}]',
            "rules.yaml:9:13: E109 times[0]: start 18:00 is not before end 09:00",
            id="times-order",
        ),
        pytest.param(
            'times: [{start: "9am", end: "18:00"}]',
            "rules.yaml:9:21: E109 calendars.c.times[0].start: invalid time '9am': "
            'write "HH:MM", like "09:00"',
            id="times-format",
        ),
        pytest.param(
            "location: Asia/Shangai",
            "rules.yaml:9:15: E109 calendars.c.location: unknown time zone 'Asia/Shangai': "
            "use an IANA name like Asia/Shanghai",
            id="zone",
        ),
        pytest.param(
            'days_of_month: ["1:7", "0"]',
            'rules.yaml:9:28: E109 invalid day of month "0"',
            id="day-zero",
        ),
        pytest.param(
            'days_of_month: ["7:1"]',
            'rules.yaml:9:21: E109 day of month range "7:1" runs backwards (ranges do not wrap)',
            id="days-backwards",
        ),
        pytest.param(
            'months: ["january:marhc"]',
            'rules.yaml:9:14: E109 invalid month "january:marhc"',
            id="month-name",
        ),
        pytest.param(
            "months: [13]",
            'rules.yaml:9:14: E109 invalid month "13"',
            id="month-number",
        ),
        pytest.param(
            "holidays: XX",
            'rules.yaml:9:15: E109 unknown holidays country "XX"',
            id="country",
        ),
    ],
)
def test_calendar_errors(calendar: str, expected: str) -> None:
    pytest.importorskip("holidays")
    text = (
        "version: 1\nteams: {t: {inbox: [x]}}\n"
        "defaults: {team: t, category: c, priority: low}\n"
        "rules:\n  - id: r\n    when: {time_in: c}\n"
        "calendars:\n  c:\n    " + calendar + "\n"
    )
    with pytest.raises(RuleFileError) as info:
        load_text(text, "rules.yaml")
    assert [str(p) for p in info.value.errors] == [expected]


def test_sla_calendar_must_exist() -> None:
    with pytest.raises(RuleFileError) as info:
        load(RULES, BUSINESS + "sla:\n  urgnt: {first_response: 30m, calendar: cn_busines}\n")
    assert [str(p) for p in info.value.errors] == [
        'rules.yaml:21:3: E109 unknown priority "urgnt" in sla (did you mean "urgent"?); '
        "use urgent, high, medium, low",
        'rules.yaml:21:42: E105 unknown calendar "cn_busines" (did you mean "cn_business"?)',
    ]


def test_calendar_contains_is_exposed_for_sla_clocks() -> None:
    pytest.importorskip("holidays")
    ruleset = load(RULES, BUSINESS)
    business = ruleset.calendars["cn_business"]
    assert business.contains(at(2026, 1, 4, 9, 30))  # 调休: Sunday is a working day
    assert not business.contains(at(2026, 10, 1, 10, 0))  # National Day
    assert ruleset.calendars["always"].contains(at(2026, 10, 1, 3, 0))


MONTHLY = """
calendars:
  first_week: {days_of_month: ["1:7"]}
  month_end: {days_of_month: ["-3:-1"], location: Asia/Shanghai}
  q1_and_december: {months: ["january:mar", 12]}
  first_to_last: {days_of_month: ["2:-2"], months: [feb]}
"""

MONTHLY_RULES = """
- id: first-week
  when: {time_in: first_week}
  set: {tags: [first-week]}
- id: month-end
  when: {time_in: month_end}
  set: {tags: [month-end]}
- id: q1-dec
  when: {time_in: q1_and_december}
  set: {tags: [q1-dec]}
- id: mixed
  when: {time_in: first_to_last}
  set: {tags: [mixed]}
"""


@pytest.mark.parametrize(
    ("when", "tags"),
    [
        pytest.param(at(2026, 3, 4, 10, 0), ("first-week", "q1-dec"), id="march-4"),
        pytest.param(at(2026, 4, 8, 10, 0), (), id="april-8"),
        pytest.param(at(2026, 2, 26, 10, 0), ("month-end", "q1-dec", "mixed"), id="feb-26"),
        pytest.param(at(2026, 2, 28, 10, 0), ("month-end", "q1-dec"), id="feb-28-last"),
        pytest.param(at(2028, 2, 29, 10, 0), ("month-end", "q1-dec"), id="leap-feb-29"),
        pytest.param(at(2028, 2, 27, 10, 0), ("month-end", "q1-dec", "mixed"), id="leap-feb-27"),
        pytest.param(at(2026, 12, 29, 10, 0), ("month-end", "q1-dec"), id="dec-29"),
        pytest.param(at(2026, 12, 28, 10, 0), ("q1-dec",), id="dec-28"),
        pytest.param(at(2026, 2, 1, 10, 0), ("first-week", "q1-dec"), id="feb-1"),
    ],
)
def test_days_of_month_and_months(when: datetime, tags: tuple[str, ...]) -> None:
    ruleset = load(MONTHLY_RULES, MONTHLY)
    assert decide(ruleset, message(received_at=when)).tags == tags
