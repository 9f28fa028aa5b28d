"""Text normalisation, applied alike to message text (per message) and to literals (at load).

NFKC turns full-width ``ＲＥＦＵＮＤ`` into ``REFUND`` and ``：`` into ``:``; ``casefold`` removes
case; optional OpenCC ``t2s`` maps Traditional to Simplified Chinese (申請退款 → 申请退款).
Each ruleset has two *views*: ``fold`` (the full pipeline) and ``case`` (the same without
casefold, for ``case_sensitive: true``). Also here: the word-boundary test behind
``ascii_word`` and the canonical string form of a literal or field value.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

View = Literal["fold", "case"]
Chinese = Literal["none", "t2s"]


class NormalizerUnavailable(Exception):
    """The requested normalisation needs a package that is not installed."""


def _t2s() -> Callable[[str], str]:
    try:
        import opencc
    except ImportError as exc:
        raise NormalizerUnavailable(
            'chinese: t2s needs the "opencc" package (pip install opencc), which is not installed'
        ) from exc
    converter = opencc.OpenCC("t2s")
    return converter.convert


@dataclass(frozen=True)
class Normalizer:
    """The two views of one ruleset's normalisation settings."""

    nfkc: bool = True
    casefold: bool = True
    chinese: Chinese = "none"

    def build(self) -> dict[View, Callable[[str], str]]:
        """Functions for each view; raises ``NormalizerUnavailable`` (t2s without opencc)."""
        t2s = _t2s() if self.chinese == "t2s" else None
        nfkc = self.nfkc

        def case(text: str) -> str:
            if nfkc and not text.isascii():
                text = unicodedata.normalize("NFKC", text)
            if t2s is not None and not text.isascii():
                text = t2s(text)
            return _utf8_safe(text)

        if not self.casefold:
            return {"fold": case, "case": case}

        def fold(text: str) -> str:
            return case(text).casefold()

        return {"fold": fold, "case": case}


def _utf8_safe(text: str) -> str:
    """Replace lone surrogates, which RE2 and the automaton cannot encode."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def is_cjk(ch: str) -> bool:
    """Han, kana, Hangul and CJK symbols: scripts written without spaces between words."""
    code = ord(ch)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, CJK symbols, kana, Han
        or 0xAC00 <= code <= 0xD7AF  # Hangul syllables
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0x20000 <= code <= 0x3FFFF  # Han extensions B+
    )


def is_word_char(ch: str) -> bool:
    """A character that continues a Latin-script word (letters, digits, ``_``; not CJK)."""
    return (ch.isalnum() or ch == "_") and not is_cjk(ch)


def boundary_ok(hay: str, start: int, end: int) -> bool:
    """For ``ascii_word``: a hit whose edge is a word character must not touch another one.

    Only edges that are word characters are checked, so 退款 matches inside 我要退款了 and
    "refund" matches in 我要refund了, while "down" does not match inside "download".
    """
    if start > 0 and is_word_char(hay[start]) and is_word_char(hay[start - 1]):
        return False
    return not (end < len(hay) and is_word_char(hay[end - 1]) and is_word_char(hay[end]))


def is_short_keyword(keyword: str) -> bool:
    """One CJK character, or at most two Latin letters/digits: likely false positives."""
    text = keyword.strip()
    if len(text) == 1 and is_cjk(text):
        return True
    return 0 < len(text) <= 2 and all(is_word_char(ch) for ch in text)


def canonical(value: object) -> str | None:
    """The string a scalar compares as: ``10000`` and ``10000.0`` and ``"10000"`` are equal.

    ``None`` for values that have no string form (mappings, lists, None).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return None


def as_number(value: object) -> float | None:
    """The number a value compares as for ``gt``/``lt``, or None (strings are parsed)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return None if number != number else number  # NaN compares with nothing
