"""RE2 patterns: admin regexes and globs are compiled with RE2 only (linear time, no ReDoS).

Regexes search unanchored; globs (``*`` any run, ``?`` one character) must match the whole
value. On the ``fold`` view the text is casefolded, so regexes get ``(?i)`` to match the
pattern's capitals too; globs are normalised like keywords instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import re2

from rules.normalize import View


def options() -> re2.Options:
    """RE2 options used everywhere: UTF-8, no logging of syntax errors to stderr."""
    opts = re2.Options()
    opts.log_errors = False
    return opts


def with_view(pattern: str, view: View) -> str:
    """The pattern as compiled for ``view`` (case-insensitive on the casefolded view)."""
    return "(?i)" + pattern if view == "fold" else pattern


@lru_cache(maxsize=4096)
def compile_regex(pattern: str) -> re2._Regexp:
    """Compile with RE2 (once per pattern: the checker, the compiler and reloads share it);
    raises ``re2.error``."""
    return re2.compile(pattern, options())


def regex_error(pattern: str) -> str | None:
    """RE2's reason ``pattern`` does not compile, or None when it does."""
    try:
        compile_regex(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if "invalid perl operator" in reason or "invalid escape sequence: \\1" in reason:
            reason += " (RE2 supports no look-around or back-references)"
        return str(reason)
    return None


def glob_to_regex(globs: Sequence[str]) -> str:
    """One anchored RE2 pattern matching any of ``globs`` against a whole value."""
    parts = []
    for glob in globs:
        out = []
        for ch in glob:
            out.append(".*" if ch == "*" else "." if ch == "?" else re2.escape(ch))
        parts.append("".join(out))
    return "(?s)^(?:" + "|".join(parts) + ")$"
