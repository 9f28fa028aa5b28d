"""Text normalisation, applied alike to message text (per message) and to literals (at load).

NFKC turns full-width ``ＲＥＦＵＮＤ`` into ``REFUND`` and ``：`` into ``:``; ``casefold`` removes
case; optional OpenCC ``t2s`` maps Traditional to Simplified Chinese (申請退款 → 申请退款).
Each ruleset has two *views*: ``fold`` (the full pipeline) and ``case`` (the same without
casefold, for ``case_sensitive: true``), each a ``Pipeline``. Also here: the word-boundary
test behind ``ascii_word`` (on text, and on the UTF-8 the automata scan) and the canonical
string form of a literal or field value.

Per message this is the costliest step after the scans, so it has exact fast paths (checked
against the plain definitions by tests/rules/test_properties.py): ``fast_nfkc`` replaces the
full-width punctuation of Chinese text instead of running NFKC over every character, and
``Pipeline.encode`` casefolds on the UTF-8 bytes when no character needs more than A–Z → a–z;
for Chinese and English text it checks both at once on the UTF-8 (``plain_utf8``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

View = Literal["fold", "case", "raw"]  # raw: the text as received (``raw: true``)
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


class Pipeline:
    """One view's normalisation: ``pipeline(text)`` is the normalised string and
    ``pipeline.encode(text)`` its UTF-8, which the automata and regex sets scan.

    ``encode`` casefolds on the bytes when it may: ``bytes.lower()`` maps only A–Z, which is
    exactly casefolding for a text without any of the ~1,500 non-ASCII characters casefold
    changes (``needs_casefold``) — Chinese and English text — and 2–3x faster.
    """

    __slots__ = ("casefold", "nfkc", "t2s")

    def __init__(self, nfkc: bool, casefold: bool, t2s: Callable[[str], str] | None) -> None:
        self.nfkc, self.casefold, self.t2s = nfkc, casefold, t2s

    def _case(self, text: str) -> str:
        """NFKC and t2s, surrogates not yet replaced."""
        if self.nfkc and not text.isascii():
            text = fast_nfkc(text)
        if self.t2s is not None and not text.isascii():
            text = self.t2s(text)
        return text

    def __call__(self, text: str) -> str:
        if not text.isascii():
            text = _utf8_safe(self._case(text))
        return text.casefold() if self.casefold else text

    def encode(self, text: str) -> bytes:
        """UTF-8 of ``self(text)``."""
        if text.isascii():  # English: NFKC and t2s change nothing, casefold is A–Z → a–z
            return text.encode().lower() if self.casefold else text.encode()
        if self.nfkc and self.t2s is None:  # Chinese and English text: see ``plain_utf8``
            text = common_forms(text)  # (its NFKC is the text's: fast_nfkc)
            plain = plain_utf8(text)
            if plain is not None:
                return plain.lower() if self.casefold else plain
        text = self._case(text)
        try:
            data = text.encode()
        except UnicodeEncodeError:  # lone surrogates, as _utf8_safe replaces them
            data = text.encode("utf-8", "replace")
        if not self.casefold:
            return data
        return data.decode().casefold().encode() if needs_casefold(data) else data.lower()


# UTF-8 bytes of ASCII, of continuation bytes and the leads E4–E9 of U+4000–U+9FFF (CJK
# Extension A and Unified Ideographs): none of those characters is changed by NFKD or by
# casefold, has a combining class or composes with the character before it, so a text of
# them (and of ``_MARKS``) is NFKC-normalised and casefolds as ``bytes.lower()`` folds its
# UTF-8. Checked against the Unicode data by tests/rules/test_properties.py.
_PLAIN_BYTES = bytes([*range(0xC0), *range(0xE4, 0xEA)])
# Characters outside those ranges that are as plain, common in Chinese and English text:
# 。、 (lead E3) and ’ ‘ “ ” — – (lead E2), each with its lead byte.
_MARKS = tuple((mark, mark.encode()[0]) for mark in "。、’‘“”—–")


def plain_utf8(text: str) -> bytes | None:
    """The UTF-8 of ``text`` when NFKC leaves ``text`` alone and casefold changes nothing in
    it but A–Z (ASCII, CJK ideographs, ``_MARKS``); None when that is not sure.

    Per message this replaces NFKC's quick check (a Unicode-data lookup per character) and
    ``needs_casefold`` with one ``bytes.translate`` that keeps the lead bytes of the other
    characters, and a count of the marks among them when there are some.
    """
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates: the general path replaces them
        return None
    others = data.translate(None, _PLAIN_BYTES)  # one lead byte per character not plain
    left = len(others)
    for mark, lead in _MARKS:
        if not left:
            break
        if lead in others:
            left -= text.count(mark)
    return None if left else data


# UTF-8 lead bytes of the non-ASCII characters that casefold changes (Latin letters with
# accents, Greek, Cyrillic, Armenian, Georgian, Cherokee, full-width Latin, …); for the lead
# bytes C2, E2 and EF (°·¥, “”—…, full-width punctuation) only these two-byte prefixes count.
# Checked against every code point by tests/rules/test_properties.py.
_FOLD_LEADS = bytes([*range(0xC2, 0xCA), *range(0xCD, 0xD7), 0xE1, 0xE2, 0xEA, 0xEF, 0xF0])
_NOT_FOLD_LEADS = bytes(b for b in range(256) if b not in _FOLD_LEADS)
_FOLD_PAIRS = (
    b"\xc2\xb5",
    *(bytes([0xE2, b]) for b in (0x84, 0x85, 0x86, 0x92, 0x93, 0xB0, 0xB1, 0xB2, 0xB3)),
    b"\xef\xac",
    b"\xef\xbc",
)


def needs_casefold(data: bytes) -> bool:
    """Whether the UTF-8 text ``data`` may hold a non-ASCII character that casefold changes;
    when not, ``data.lower()`` is its casefolded form."""
    leads = data.translate(None, _NOT_FOLD_LEADS)
    if not leads:
        return False
    return bool(leads.strip(b"\xc2\xe2\xef")) or any(p in data for p in _FOLD_PAIRS)


@dataclass(frozen=True)
class Normalizer:
    """The views of one ruleset's normalisation settings (``raw`` normalises nothing)."""

    nfkc: bool = True
    casefold: bool = True
    chinese: Chinese = "none"

    def build(self) -> dict[View, Pipeline]:
        """The pipeline of each view; raises ``NormalizerUnavailable`` (t2s without opencc)."""
        t2s = _t2s() if self.chinese == "t2s" else None
        case = Pipeline(self.nfkc, False, t2s)
        fold = Pipeline(self.nfkc, self.casefold, t2s)
        return {"fold": fold, "case": case, "raw": Pipeline(False, False, None)}


def _ascii_decompositions() -> dict[str, str]:
    """Characters whose compatibility decomposition is plain ASCII: full-width forms
    (，！？：（）Ａ０…), the ideographic space, no-break and typographic spaces, ellipsis."""
    out = {}
    for low, high in ((0xA0, 0xA0), (0x2000, 0x200A), (0x2024, 0x2026), (0x3000, 0x3000)):
        out.update({chr(c): unicodedata.normalize("NFKD", chr(c)) for c in range(low, high + 1)})
    out.update({chr(c): unicodedata.normalize("NFKD", chr(c)) for c in range(0xFF01, 0xFF5F)})
    return {ch: plain for ch, plain in out.items() if plain != ch and plain.isascii()}


_ASCII_FORMS = _ascii_decompositions()
_ASCII_FORMS_RE = re.compile("[" + "".join(re.escape(ch) for ch in _ASCII_FORMS) + "]")
_COMMON_FORMS = tuple((ch, _ASCII_FORMS[ch]) for ch in "，：！？（）；　")  # Chinese punctuation


def common_forms(text: str) -> str:
    """``text`` with the full-width punctuation of Chinese text replaced by its ASCII
    decomposition (which changes nothing in its NFKC form)."""
    for ch, plain in _COMMON_FORMS:  # no ``ch in text`` first: that would scan twice
        text = text.replace(ch, plain)  # (a replace that finds nothing returns ``text``)
    return text


def fast_nfkc(text: str) -> str:
    """Exactly ``unicodedata.normalize("NFKC", text)``, several times faster on Chinese text.

    Replacing a character by its full compatibility decomposition never changes the NFKC form
    of a string (NFKC is the composition of the full decomposition). So full-width forms are
    replaced by their ASCII decomposition with ``str.replace`` — the common punctuation first,
    then any other present — and the whole string is normalised only when the quick check
    still finds it unnormalised (combining marks, ligatures, circled digits, …).
    """
    if unicodedata.is_normalized("NFKC", text):
        return text
    text = common_forms(text)
    if unicodedata.is_normalized("NFKC", text):
        return text
    for ch in set(_ASCII_FORMS_RE.findall(text)):
        text = text.replace(ch, _ASCII_FORMS[ch])
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


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


def _char_at(hay: bytes, index: int) -> str:
    """The character whose UTF-8 encoding starts at byte ``index``."""
    lead = hay[index]
    size = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return hay[index : index + size].decode("utf-8", "replace")


def _char_before(hay: bytes, index: int) -> str:
    """The character whose UTF-8 encoding ends just before byte ``index``."""
    start = index - 1
    while start > 0 and 0x80 <= hay[start] < 0xC0:
        start -= 1
    return hay[start:index].decode("utf-8", "replace")


_NOT_CONTINUATION = bytes(b for b in range(256) if not 0x80 <= b < 0xC0)


def char_offset(hay: bytes, index: int, start: int = 0) -> int:
    """Characters of the UTF-8 text ``hay`` from byte ``start`` to byte ``index`` (both
    character starts): the bytes less the continuation bytes among them."""
    return index - start - len(hay[start:index].translate(None, _NOT_CONTINUATION))


# byte → whether it is an ASCII word character (letter, digit, ``_``); bytes ≥ 0x80 are not
_ASCII_WORD = bytes(int(chr(b).isalnum() or chr(b) == "_") if b < 0x80 else 0 for b in range(256))
# Lead bytes E3–E9: the characters U+3000–U+9FFF (CJK symbols, kana, ideographs), all CJK
# (``is_cjk``), so none is a word character; the common neighbours of a hit in Chinese text.
_CJK_LEADS = range(0xE3, 0xEA)


def _word_at(hay: bytes, index: int) -> bool:
    """Whether the character starting at byte ``index`` is a word character."""
    lead = hay[index]
    if lead < 0x80:
        return bool(_ASCII_WORD[lead])
    if lead in _CJK_LEADS:
        return False
    return is_word_char(_char_at(hay, index))


def _word_before(hay: bytes, index: int) -> bool:
    """Whether the character ending just before byte ``index`` is a word character.

    A continuation byte there whose character starts three bytes back with a lead E3–E9 ends
    a CJK character (in UTF-8 a three-byte lead is followed by exactly two continuations).
    """
    last = hay[index - 1]
    if last < 0x80:
        return bool(_ASCII_WORD[last])
    if index >= 3 and hay[index - 3] in _CJK_LEADS:
        return False
    return is_word_char(_char_before(hay, index))


def boundary_ok_bytes(hay: bytes, start: int, end: int) -> bool:
    """``boundary_ok`` for a hit at byte offsets of UTF-8 text (the automata scan bytes).

    Where both bytes at an edge are ASCII (English text), they are looked up in a table;
    elsewhere each character is classified by its lead byte when that is enough (ASCII, CJK:
    ``_word_at``, ``_word_before``), else decoded.
    """
    if start > 0:
        inside, outside = hay[start], hay[start - 1]
        if inside < 0x80 and outside < 0x80:
            if _ASCII_WORD[inside] and _ASCII_WORD[outside]:
                return False
        elif _word_at(hay, start) and _word_before(hay, start):
            return False
    if end < len(hay):
        inside, outside = hay[end - 1], hay[end]
        if inside < 0x80 and outside < 0x80:
            return not (_ASCII_WORD[inside] and _ASCII_WORD[outside])
        return not (_word_before(hay, end) and _word_at(hay, end))
    return True


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
    if type(value) is int:  # the common case (amounts, attachments), before the bool test
        return float(value)
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
