"""Warnings about a rule file that loads but is probably not what its author meant.

W401/W402: a list or named condition nobody uses (Falco's unused list/macro warnings).
W301: a rule after an enabled rule that matches every message and stops, so it can never fire.
W302: a rule that sets team/category but only fires after an earlier rule that already set
them and went on (first-writer-wins); heuristic: "only after" means its condition contains,
written the same way, the earlier rule's whole condition (or the earlier one has none).
W210 (``variant_gap``, called by the condition parser): a keyword whose normalised form holds
a character variant that mainland writers rarely use, while its common form is absent.
W303 (in the condition parser): all/any/not nested deeper than 4.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from rules.model import KEYWORD_OPS, NUMBER_OPS, All, AnyOf, Leaf, Node, Not, Rule, Use
from rules.source import Document, Problem


def unused(
    doc: Document, defined: Mapping[str, Any], used: Collection[str], kind: str, code: str
) -> list[Problem]:
    """A warning at each name in ``defined`` that is not in ``used``."""
    section = "lists" if kind == "list" else "conditions"
    return [
        doc.problem(
            [section, name], code, f'{kind} "{name}" is never used', severity="warning", at="key"
        )
        for name in defined
        if name not in used
    ]


def _matches_everything(rule: Rule) -> bool:
    return rule.when is None or (isinstance(rule.when, All) and not rule.when.children)


def unreachable_rules(doc: Document, rules: Iterable[Rule]) -> list[Problem]:
    """W301 for each enabled rule after one that matches every message and stops."""
    out: list[Problem] = []
    blocker: Rule | None = None
    for rule in rules:
        if not rule.enabled:
            continue
        if blocker is not None:
            msg = (
                f'rule "{rule.id}" can never fire: rule "{blocker.id}" (line {blocker.where.line})'
                " matches every message and stops"
            )
            line, col = rule.where.line, rule.where.col
            src = doc.by_file(rule.where.file)
            out.append(Problem(src.file, line, col, "W301", msg, "warning", src.line_text(line)))
        elif _matches_everything(rule) and rule.stops:
            blocker = rule
    return out


# What OpenCC's t2s writes → what mainland text writes. OpenCC maps 帳 to 帐 (帳號 → 帐号),
# but mainland usage is 账 in these words (账号, 账户, 账单, 账目), so a t2s-normalised
# traditional keyword misses simplified text. Kept small on purpose: only pairs where t2s
# output and common mainland spelling differ; 裏/裡 → 里, 週 → 周, 瞭解 → 了解 are already
# mapped to the mainland form by t2s and need no entry.
VARIANTS = {"帐号": "账号", "帐户": "账户", "帐单": "账单", "帐目": "账目"}


def variant_gap(keyword: str, keywords: Collection[str]) -> tuple[str, str] | None:
    """(variant, common form) when normalised ``keyword`` holds a ``VARIANTS`` key and its
    spelling with the common form is not among ``keywords``; else None."""
    for variant, common in VARIANTS.items():
        if variant in keyword and keyword.replace(variant, common) not in keywords:
            return variant, common
    return None


MAX_DEPTH = 4  # all/any/not levels before W303


def too_deep(path: Sequence[str | int]) -> str | None:
    """W303's message where all/any/not nesting first exceeds ``MAX_DEPTH``, else None.

    Depth counts the all/any/not keys on the written path below the rule or named condition
    (``rules, i`` / ``conditions, name``); a ``use`` starts over in the named condition.
    """
    depth = sum(1 for step in path[2:] if step in ("all", "any", "not"))
    if depth != MAX_DEPTH + 1:
        return None
    return (
        f"condition nested deeper than {MAX_DEPTH} (all/any/not); "
        "move a part into a named condition and use it"
    )


def variant_warning(
    original: str, text: str, keywords: Collection[str], listed: str | None
) -> str | None:
    """W210's message for keyword ``original`` (normalised: ``text``), or None.

    ``keywords``: all normalised keywords of the operator; ``listed``: the list it came from.
    """
    gap = variant_gap(text, keywords)
    if gap is None:
        return None
    variant, common = gap
    where = f'list "{listed}" has' if listed is not None else "the keywords have"
    how = f'normalises to "{text}"' if text != original else f'holds the variant "{variant}"'
    return (
        f'keyword "{original}" {how}; {where} no "{text.replace(variant, common)}" '
        "(common mainland form: text written with it will not match)"
    )


def useless_options(key: str, ops: list[str], opts: dict[str, bool]) -> list[tuple[str, str]]:
    """(option, W203 message) for each option of field ``key`` that changes nothing."""
    out = []
    if opts["ascii_word"] and not any(op in (*KEYWORD_OPS, "keywords") for op in ops):
        msg = "ascii_word only affects contains, contains_any, contains_all and keywords"
        out.append(("ascii_word", msg))
    if opts["raw"] and all(op in (*NUMBER_OPS, "exists") for op in ops):
        out.append(("raw", f'raw only affects text operators, not those on "{key}"'))
    if opts["raw"] and opts["case_sensitive"]:
        msg = "case_sensitive has no effect with raw: true (raw text is never casefolded)"
        out.append(("case_sensitive", msg))
    return out


def _shape(node: Node) -> object:
    """The node without positions, for comparing conditions as written."""
    if isinstance(node, Leaf):
        return (node.field, node.op, node.value, node.view, node.ascii_word)
    if isinstance(node, Use):
        return _shape(node.child)
    if isinstance(node, Not):
        return ("not", _shape(node.child))
    kind = "all" if isinstance(node, All) else "any"
    return (kind, tuple(_shape(c) for c in node.children))


def _parts(node: Node | None) -> set[object]:
    """The conjuncts of a condition (itself when not an ``all``)."""
    if node is None:
        return set()
    if isinstance(node, Use):
        return _parts(node.child) | {_shape(node)}
    if isinstance(node, All):
        return {_shape(c) for c in node.children} | {_shape(node)}
    return {_shape(node)}


def _implies(later: set[object], earlier: Node | None) -> bool:
    """Whether a condition with conjuncts ``later`` contains all of ``earlier``'s."""
    if earlier is None or (isinstance(earlier, All) and not earlier.children):
        return True
    if isinstance(earlier, AnyOf | Leaf | Not | Use):
        return _shape(earlier) in later
    return _parts(earlier) - {_shape(earlier)} <= later


def _fields(rule: Rule) -> tuple[str, ...]:
    return tuple(name for name in ("team", "category") if getattr(rule.action, name) is not None)


def shadowed_settings(doc: Document, rules: Iterable[Rule]) -> list[Problem]:
    """W302 for each rule whose team/category an earlier continuing rule always set first.

    Only earlier rules that set team or category and go on are candidates (few: delivering
    rules normally stop), so this stays linear in practice.
    """
    out: list[Problem] = []
    earlier: list[tuple[Rule, tuple[str, ...]]] = []
    for rule in rules:
        if not rule.enabled:
            continue
        fields = _fields(rule)
        if fields and earlier:
            parts = _parts(rule.when)
            first = next(
                (p for p, pf in earlier if set(fields) & set(pf) and _implies(parts, p.when)),
                None,
            )
            if first is not None:
                out.append(_w302(doc, rule, first, fields))
        if rule.stops and _implies(set(), rule.when):
            break
        if fields and not rule.stops:
            earlier.append((rule, fields))
    return out


def _w302(doc: Document, rule: Rule, first: Rule, fields: tuple[str, ...]) -> Problem:
    shared = [f for f in fields if f in _fields(first)]
    it = "them" if len(shared) > 1 else "it"
    msg = (
        f'rule "{rule.id}" sets {" and ".join(shared)} but fires only after rule "{first.id}" '
        f"(line {first.where.line}) set {it} and continued: first writer wins, so this "
        f"has no effect on {it} (heuristic)"
    )
    src = doc.by_file(rule.where.file)
    line, col = rule.where.line, rule.where.col
    return Problem(src.file, line, col, "W302", msg, "warning", src.line_text(line))
