"""The checked rule file as plain immutable data: conditions as a tree, rules, teams, SLAs.

``loader`` builds these from YAML after every check passed; ``compiler`` turns the condition
trees into the fast matcher, and ``naive`` interprets them directly (the reference the
property tests compare against). Literals in leaves are already normalised for their view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rules.normalize import View

PRIORITIES = ("low", "medium", "high", "urgent")  # ascending; priority is only ever raised
PRIORITIES_DESC = tuple(reversed(PRIORITIES))  # as admins list them: urgent first
PRIORITY_RANK = {name: rank for rank, name in enumerate(PRIORITIES)}
Priority = Literal["low", "medium", "high", "urgent"]

KEYWORD_OPS = ("contains", "contains_any", "contains_all")
VALUE_OPS = ("equals", "not_equals", "in", "not_in")
AFFIX_OPS = ("starts_with", "ends_with")
PATTERN_OPS = ("regex", "glob")
NUMBER_OPS = ("gt", "gte", "lt", "lte", "between")  # between: [low, high], inclusive
OPERATORS = (
    *KEYWORD_OPS,
    *VALUE_OPS,
    *AFFIX_OPS,
    *PATTERN_OPS,
    *NUMBER_OPS,
    "exists",
    "time_in",
    "keywords",  # alias of contains_any (the first spec's name)
)
OPTIONS = ("ascii_word", "case_sensitive", "raw")


@dataclass(frozen=True)
class Where:
    """Where a node was written: dotted path (``rules[3].when.all[1].text``) and position."""

    path: str
    line: int
    col: int
    file: str = ""  # the file it was written in ("" in hand-built trees)


@dataclass(frozen=True)
class Leaf:
    """One operator on one field.

    ``value`` by operator: keyword/value/affix ops → tuple of normalised strings; regex/glob →
    the RE2 pattern (glob already translated, anchored); number ops → float, ``between`` →
    (low, high); exists → bool; time_in → calendar name. ``view`` "raw" (``raw: true``)
    matches the text as received.
    """

    field: str
    op: str
    value: object
    where: Where
    view: View = "fold"
    ascii_word: bool = False


@dataclass(frozen=True)
class All:
    """True when every child is (an empty ``all`` is true)."""

    children: tuple[Node, ...]
    where: Where


@dataclass(frozen=True)
class AnyOf:
    """True when some child is (an empty ``any`` is false)."""

    children: tuple[Node, ...]
    where: Where


@dataclass(frozen=True)
class Not:
    """True when the child is false."""

    child: Node
    where: Where


@dataclass(frozen=True)
class Use:
    """A reference to a named condition (kept in the tree so ``explain`` can name it)."""

    name: str
    child: Node
    where: Where


Node = Leaf | All | AnyOf | Not | Use


@dataclass(frozen=True)
class Action:
    """What a firing rule sets; ``None``/empty means "leaves it alone"."""

    team: str | None = None
    category: str | None = None
    priority: Priority | None = None
    tags: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    sla_s: float | None = None


@dataclass(frozen=True)
class Rule:
    """One rule of the ordered list; ``when`` None means "every message"."""

    id: str
    where: Where
    when: Node | None
    action: Action
    enabled: bool = True
    cont: bool = False
    stop: bool = False
    description: str = ""

    @property
    def delivering(self) -> bool:
        """Sets a team, so it stops evaluation unless ``continue: true``."""
        return self.action.team is not None

    @property
    def stops(self) -> bool:
        """Whether firing ends evaluation."""
        return self.stop or (self.delivering and not self.cont)


@dataclass(frozen=True)
class Team:
    """A place a message can land: its inbox outputs and an optional escalation contact."""

    id: str
    inbox: tuple[str, ...]
    escalation: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Defaults:
    """The fallback route: a message no rule routes lands here."""

    team: str
    category: str
    priority: Priority


@dataclass(frozen=True)
class SlaPolicy:
    """Response targets for one priority; ``calendar`` names the clock (``always`` = 24/7)."""

    first_response_s: float
    resolve_s: float | None = None
    calendar: str = "always"
