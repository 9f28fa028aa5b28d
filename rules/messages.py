"""Turn a message written by hand or saved from a mailbox into the ``Facts`` the engine sees.

Used by ``triaged rules explain`` and ``rules diff`` (message files) and by ``rules.testing``
(the ``message:`` of a test case). Pure: data in, ``Facts`` out; nothing from ``router``.

A message mapping (a JSON file, or YAML in a test file) is the webhook body — ``from``,
``name``, ``subject``, ``text``, ``fields``, ``conversation_id``, ``recipients`` — plus
``channel`` (default ``webhook``), ``source``, ``headers`` (``{name: value | [values]}``),
``received_at`` (ISO 8601; without an offset it is read in the rule file's time zone),
``to`` (more recipients), ``attachments`` (a count) and ``body`` (another name for
``text``). Unknown keys go to ``fields`` as the webhook does (``extra="fields"``) or are
problems (``extra="error"``, test files: a typo must not pass silently).

An ``.eml`` file is parsed with the stdlib ``email`` package (``policy.default``); headers
are decoded by hand so a broken header cannot stop the parse, and text declared as GB2312 or
GBK is decoded as GB18030 (its superset: mailers label GBK text "gb2312" all the time).
"""

from __future__ import annotations

import codecs
import contextlib
import email
import email.header
import email.utils
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, tzinfo
from email import policy
from email.message import Message as EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

from rules.fields import Facts
from rules.schema import describe, suggest
from rules.source import Problem, YamlFileError, load_yaml, position

__all__ = [
    "MESSAGE_KEYS",
    "MessageError",
    "MessageFileError",
    "decode_bytes",
    "facts_from_eml",
    "facts_from_mapping",
    "load_message",
    "message_files",
    "parse_time",
]

Path_ = tuple[str | int, ...]
WEBHOOK_KEYS = ("from", "name", "subject", "text", "fields", "conversation_id", "recipients")
MESSAGE_KEYS = (
    *WEBHOOK_KEYS,
    "channel",
    "source",
    "headers",
    "received_at",
    "to",
    "attachments",
    "body",
)
_STRINGS = ("from", "name", "subject", "text", "body", "conversation_id", "channel", "source")
_GB_CODECS = {"gb2312", "gbk"}  # read as their superset gb18030 (hz is 7-bit: not here)


class MessageError(ValueError):
    """A message that cannot be turned into ``Facts``; ``issues`` are (key path, message)."""

    def __init__(self, issues: Sequence[tuple[Path_, str]]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(msg for _, msg in self.issues))


def message_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Each path, a directory replaced by its ``.eml`` and ``.json`` files (recursively, sorted)."""
    for path in paths:
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() in (".eml", ".json"))
            yield from sorted(p for p in found if p.is_file())
        else:
            yield path


class MessageFileError(Exception):
    """A message file that cannot be read; ``problems`` are positioned like the checker's."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


# -- mappings (JSON files, test cases) ------------------------------------------------------


def parse_time(value: object, tz: tzinfo) -> datetime:
    """An ISO 8601 string or a datetime; a time without offset is in ``tz``. ``ValueError``."""
    if isinstance(value, datetime):
        when = datetime.fromisoformat(value.isoformat())  # plain datetime, not a YAML subclass
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            msg = f'invalid time "{value}": write ISO 8601, like "2026-03-04T10:00:00+08:00"'
            raise ValueError(msg) from None
    else:
        raise ValueError(f"a time must be an ISO 8601 string, got {describe(value)}")
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def _strings(value: object, key: str, out: list[tuple[Path_, str]]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        out.append(((key,), f"{key} must be a string or a list of strings, got {describe(value)}"))
        return ()
    return tuple(items)


def _headers(value: object, out: list[tuple[Path_, str]]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        out.append((("headers",), f"headers must be a mapping of names, got {describe(value)}"))
        return ()
    pairs: list[tuple[str, str]] = []
    for name, given in value.items():
        values = [given] if not isinstance(given, list) else given
        for i, item in enumerate(values):
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                where: Path_ = ("headers", name) if given is item else ("headers", name, i)
                out.append((where, f"header {name} must be a string, got {describe(item)}"))
            else:
                pairs.append((str(name), str(item)))
    return tuple(pairs)


def _scalars(data: Mapping[str, object], out: list[tuple[Path_, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in _STRINGS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            out.append(((key,), f"{key} must be a string, got {describe(value)}"))
        else:
            found[key] = value
    if "text" in found and "body" in found:
        out.append((("body",), "give text or body, not both (they are the same field)"))
    return found


def _attachments(value: object, out: list[tuple[Path_, str]]) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    out.append((("attachments",), f"attachments must be a count, got {describe(value)}"))
    return 0


def _extra_fields(
    data: Mapping[str, object], extra: str, out: list[tuple[Path_, str]]
) -> dict[str, object]:
    fields = data.get("fields", {})
    if not isinstance(fields, dict):
        out.append((("fields",), f"fields must be a mapping, got {describe(fields)}"))
        fields = {}
    unknown = [k for k in data if k not in MESSAGE_KEYS]
    if extra == "error":
        for key in unknown:
            hint = suggest(key, MESSAGE_KEYS) or " (rules read extra data as fields.NAME)"
            out.append(((key,), f'unknown message key "{key}"{hint}'))
        return dict(fields)
    for key in unknown:
        if key in fields:
            out.append(((key,), f'"{key}" is given both at top level and in fields'))
    return {**fields, **{k: data[k] for k in unknown}}


def facts_from_mapping(
    data: object,
    *,
    received_at: datetime,
    tz: tzinfo,
    extra: Literal["fields", "error"] = "fields",
) -> Facts:
    """``Facts`` of a message mapping; ``received_at`` when it gives none. ``MessageError``."""
    if not isinstance(data, dict):
        raise MessageError([((), f"a message is a mapping of keys, got {describe(data)}")])
    out: list[tuple[Path_, str]] = []
    text = _scalars(data, out)
    fields = _extra_fields(data, extra, out)
    recipients = _strings(data.get("recipients", []), "recipients", out)
    recipients += _strings(data.get("to", []), "to", out)
    headers = _headers(data["headers"], out) if "headers" in data else ()
    count = _attachments(data["attachments"], out) if "attachments" in data else 0
    when = received_at
    if data.get("received_at") is not None:
        try:
            when = parse_time(data["received_at"], tz)
        except ValueError as exc:
            out.append((("received_at",), str(exc)))
    if out:
        raise MessageError(out)
    return Facts(
        channel=text.get("channel", "webhook"),
        source=text.get("source", ""),
        subject=text.get("subject", ""),
        body=text.get("text", text.get("body", "")),
        sender=text.get("from", ""),
        sender_name=text.get("name", ""),
        recipients=recipients,
        headers=headers,
        fields=fields,
        attachments=count,
        received_at=when,
    )


# -- e-mail -----------------------------------------------------------------------------------


def decode_bytes(raw: bytes, charset: str | None) -> str:
    """Text of ``raw`` in its declared ``charset``, falling back to UTF-8 and GB18030."""
    candidates: list[str] = []
    try:
        name = codecs.lookup(charset.strip()).name if charset else ""
    except LookupError:
        name = ""
    if name:
        candidates.append("gb18030" if name in _GB_CODECS else name)
    candidates += ["utf-8", "gb18030"]
    for codec in candidates:
        try:
            return raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode(candidates[0], errors="replace")


def _header_text(raw: str) -> str:
    """A raw header value unfolded, with 8-bit bytes and RFC 2047 encoded words decoded."""
    value = re.sub(r"\r?\n(?=[ \t])", "", raw).strip()
    # a message parsed from bytes carries 8-bit header bytes as surrogate escapes
    with contextlib.suppress(UnicodeEncodeError):
        value = decode_bytes(value.encode("ascii", "surrogateescape"), None)
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, AssertionError, IndexError):
        return value
    chunks = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            chunks.append(chunk)
        elif charset is None:
            chunks.append(chunk.decode("raw-unicode-escape", errors="replace"))
        else:
            chunks.append(decode_bytes(chunk, charset))
    return "".join(chunks)


def _raw_headers(msg: EmailMessage) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, raw in msg.raw_items():
        try:
            pairs.append((str(name), _header_text(str(raw))))
        except Exception:  # a header the parser mangled: keep its raw text, never fail
            pairs.append((str(name), str(raw)))
    return tuple(pairs)


class _HtmlText(HTMLParser):
    """The visible text of an HTML body (scripts and styles left out)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        if tag in ("br", "p", "div", "li", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip > 0:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _part_text(part: EmailMessage) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except Exception:  # a malformed Content-Type parameter
        charset = None
    text = decode_bytes(payload, charset)
    if part.get_content_type() == "text/html":
        parser = _HtmlText()
        parser.feed(text)
        parser.close()
        text = re.sub(r"\n\s*\n+", "\n", "".join(parser.parts)).strip()
    return text


def _body_and_attachments(msg: EmailMessage) -> tuple[str, int]:
    plain: str | None = None
    html: str | None = None
    count = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        disposition = (part.get_content_disposition() or "").lower()
        kind = part.get_content_type()
        if disposition == "attachment" or not kind.startswith("text/"):
            count += 1
        elif kind == "text/plain" and plain is None:
            plain = _part_text(part)
        elif kind == "text/html" and html is None:
            html = _part_text(part)
    return (plain if plain is not None else html or ""), count


def _first(headers: Sequence[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


def facts_from_eml(data: bytes, *, received_at: datetime, tz: tzinfo) -> Facts:
    """``Facts`` of an RFC 5322 message; ``Date:`` is the time, else ``received_at``."""
    msg = email.message_from_bytes(data, policy=policy.default)
    headers = _raw_headers(msg)
    name, sender = email.utils.parseaddr(_first(headers, "from"))
    recipients = [v for k, v in headers if k.lower() in ("to", "cc")]
    addresses = tuple(a for _, a in email.utils.getaddresses(recipients) if a)
    try:
        when = email.utils.parsedate_to_datetime(_first(headers, "date"))
        when = when if when.tzinfo is not None else when.replace(tzinfo=tz)
    except (TypeError, ValueError, IndexError):
        when = received_at
    body, count = _body_and_attachments(msg)
    return Facts(
        channel="email",
        source="",
        subject=_first(headers, "subject"),
        body=body,
        sender=sender,
        sender_name=name,
        recipients=addresses,
        headers=headers,
        fields={},
        attachments=count,
        received_at=when,
    )


# -- files ------------------------------------------------------------------------------------


def _json_problems(text: str, file: str, exc: MessageError) -> list[Problem]:
    try:
        data = load_yaml(text, file).data  # JSON is YAML: ruamel gives every key a position
    except YamlFileError:
        data = None
    found = []
    for path, msg in exc.issues:
        code = "E100" if msg.startswith("unknown") else "E109"
        at: Literal["key", "value"] = "key" if code == "E100" else "value"
        line, col, _ = position(data, path, at=at) if data is not None else (1, 1, 1)
        found.append(Problem(file, line, col, code, msg))
    return found


def load_message(path: Path, *, received_at: datetime, tz: tzinfo) -> Facts:
    """Read an ``.eml`` or JSON message file; ``MessageFileError`` says what is wrong where.

    A file ending in ``.json``, or whose first non-blank byte is ``{``, is JSON; else e-mail.
    """
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        problem = Problem(file, 1, 1, "E000", f"cannot read: {exc.strerror}")
        raise MessageFileError([problem]) from None
    if path.suffix.lower() != ".json" and not data.lstrip().startswith(b"{"):
        return facts_from_eml(data, received_at=received_at, tz=tz)
    try:
        text = data.decode("utf-8-sig")
        parsed = json.loads(text)
    except UnicodeDecodeError:
        raise MessageFileError([Problem(file, 1, 1, "E000", "not valid UTF-8")]) from None
    except json.JSONDecodeError as exc:
        problem = Problem(file, exc.lineno, exc.colno, "E001", f"invalid JSON: {exc.msg}")
        raise MessageFileError([problem]) from None
    try:
        return facts_from_mapping(parsed, received_at=received_at, tz=tz)
    except MessageError as exc:
        raise MessageFileError(_json_problems(text, file, exc)) from None
