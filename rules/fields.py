"""What a rule can look at: the ``Facts`` of one message and the field names that read them.

The daemon builds ``Facts`` from its ``Message``; ``FieldReader`` turns them into the values a
condition tests, normalised per view and cached for one evaluation — as strings (``strings``,
which the naive reference evaluator and the value operators read) and as their UTF-8
(``encoded``, which the automata and regex sets scan: the UTF-8 of the same strings, made
without building them — ``Pipeline.encode``; each is computed only when asked for). Both
evaluators read fields through here, so they see identical values. An empty string or an
empty list counts as a missing field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from rules.normalize import View, canonical

Kind = Literal["text", "string", "number", "time"]

# field name → kind; ``header.NAME`` and ``fields.PATH`` are added by ``field_kind``.
FIELDS: dict[str, Kind] = {
    "subject": "text",
    "body": "text",
    "text": "text",
    "from": "string",
    "sender_domain": "string",
    "name": "string",
    "to": "string",
    "channel": "string",
    "source": "string",
    "attachments": "number",
    "received_at": "time",
}
PREFIXES = ("header.", "fields.")
TEXT_GROUP = ("subject", "body", "text")  # scanned together in one pass over ``text``


def operator_applies(op: str, kind: Kind, field: str) -> bool:
    """Whether operator ``op`` may be used on ``field`` of ``kind`` (numbers also on headers
    and webhook fields, which may hold numeric strings)."""
    if op == "time_in":
        return kind == "time"
    if op == "exists":
        return True
    if kind == "time":
        return False
    if op in ("gt", "gte", "lt", "lte", "between"):
        return kind == "number" or field.startswith(("header.", "fields."))
    if kind == "number":
        return op in ("equals", "not_equals", "in", "not_in")
    return True


def field_kind(name: str) -> Kind | None:
    """The kind of a field name, or None when it names no field."""
    if name in FIELDS:
        return FIELDS[name]
    for prefix in PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix) and ".." not in name:
            return "string"
    return None


def canonical_field(name: str) -> str:
    """Header names are case-insensitive: ``header.X-Priority`` reads ``header.x-priority``."""
    if name.startswith("header."):
        return "header." + name[len("header.") :].casefold()
    return name


@dataclass(frozen=True)
class Facts:
    """Everything the rules may look at in one message (built by the daemon)."""

    channel: str
    source: str
    subject: str
    body: str
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    fields: Mapping[str, object]
    attachments: int
    received_at: datetime


_SEQUENCES = (list, tuple)


def _scalars(node: object) -> tuple[object, ...] | None:
    if type(node) is str:  # the common case
        return (node,) if node else None
    if node is None or node == "":
        return None
    if isinstance(node, _SEQUENCES):
        items = tuple(v for v in node if v is not None and v != "")
        return items or None
    return (node,)


def _dotted(root: Mapping[str, object], path: str) -> tuple[object, ...] | None:
    node: object = root
    for part in path.split("."):
        if (type(node) is dict or isinstance(node, Mapping)) and part in node:
            node = node[part]  # type: ignore[index]
        elif isinstance(node, _SEQUENCES) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return _scalars(node)


_DIRECT: dict[str, Callable[[Facts], object]] = {
    "subject": lambda f: f.subject,
    "body": lambda f: f.body,
    "from": lambda f: f.sender,
    "name": lambda f: f.sender_name,
    "channel": lambda f: f.channel,
    "source": lambda f: f.source,
    "to": lambda f: f.recipients,
}
_ALWAYS: dict[str, Callable[[Facts], tuple[object, ...]]] = {
    "attachments": lambda f: (f.attachments,),
    "received_at": lambda f: (f.received_at,),
}


def raw_values(facts: Facts, name: str) -> tuple[object, ...] | None:
    """The un-normalised values of field ``name`` (a canonical field name); None if missing."""
    get = _ACCESSORS.get(name)
    if get is None:
        if len(_ACCESSORS) > 4096:  # names come from rule files: a few dozen, but be safe
            _ACCESSORS.clear()
        get = _ACCESSORS[name] = _accessor(name)
    return get(facts)


def _accessor(name: str) -> Callable[[Facts], tuple[object, ...] | None]:
    """The function reading field ``name`` from ``Facts`` (resolved once per name)."""
    if name in _DIRECT:
        direct = _DIRECT[name]
        return lambda facts: _scalars(direct(facts))
    if name in _ALWAYS:
        return _ALWAYS[name]
    if name == "text":
        return _text
    if name == "sender_domain":
        return _sender_domain
    if name.startswith("header."):
        wanted = name[len("header.") :]
        return lambda facts: _scalars([v for k, v in facts.headers if k.casefold() == wanted])
    if name.startswith("fields."):
        path = name[len("fields.") :]
        return lambda facts: _dotted(facts.fields, path)
    return lambda facts: None


def _text(facts: Facts) -> tuple[object, ...] | None:
    if not facts.subject and not facts.body:
        return None
    return (facts.subject + "\n" + facts.body,)


def _sender_domain(facts: Facts) -> tuple[object, ...] | None:
    domain = facts.sender.rpartition("@")[2] if "@" in facts.sender else ""
    return _scalars(domain.strip().rstrip(">"))


_ACCESSORS: dict[str, Callable[[Facts], tuple[object, ...] | None]] = {}


_UNSET = object()  # not read yet (None means the field is missing)


class FieldReader:
    """Field values of one message, normalised per view and cached for one evaluation."""

    __slots__ = ("_bytes", "_raw", "_strings", "facts", "scan_limit", "views")

    def __init__(
        self, facts: Facts, views: Mapping[View, Callable[[str], str]], scan_limit: int
    ) -> None:
        self.facts, self.views, self.scan_limit = facts, views, scan_limit
        self._raw: dict[str, tuple[object, ...] | None] = {}
        self._strings: dict[tuple[str, View], tuple[str, ...] | None] = {}
        self._bytes: dict[tuple[str, View], tuple[bytes, ...] | None] = {}

    def raw(self, name: str) -> tuple[object, ...] | None:
        """Un-normalised values (for exists, numbers and time)."""
        value = self._raw.get(name, _UNSET)
        if value is _UNSET:
            value = self._raw[name] = raw_values(self.facts, name)
        return value  # type: ignore[return-value]

    def strings(self, name: str, view: View) -> tuple[str, ...] | None:
        """Normalised string values; ``text`` is normalised subject + "\\n" + normalised body."""
        key = (name, view)
        cached = self._strings.get(key, _UNSET)
        if cached is not _UNSET:
            return cached  # type: ignore[return-value]
        value: tuple[str, ...] | None
        if name == "text":
            parts = (self.strings("subject", view), self.strings("body", view))
            if parts == (None, None):
                value = None
            else:
                value = ((parts[0] or ("",))[0] + "\n" + (parts[1] or ("",))[0],)
        else:
            raw = self.raw(name)
            one = raw[0] if raw is not None and len(raw) == 1 else None
            if type(one) is str and len(one) <= self.scan_limit:  # the common case, inlined
                value = (self.views[view](one),)
            else:
                value = self._normalised(name, view)  # type: ignore[assignment]
        self._strings[key] = value
        return value

    def encoded(self, name: str, view: View) -> tuple[bytes, ...] | None:
        """UTF-8 of ``strings(name, view)``: what the automata and regex sets scan.

        ``text`` is joined from the encoded subject and body, without building its string.
        """
        key = (name, view)
        cached = self._bytes.get(key, _UNSET)
        if cached is not _UNSET:
            return cached  # type: ignore[return-value]
        value: tuple[bytes, ...] | None
        if name == "text":
            subject, body = self.encoded("subject", view), self.encoded("body", view)
            if subject is None and body is None:
                value = None
            else:
                value = ((subject or (b"",))[0] + b"\n" + (body or (b"",))[0],)
        else:
            raw = self.raw(name)
            one = raw[0] if raw is not None and len(raw) == 1 else None
            encode = getattr(self.views[view], "encode", None)  # a rules.normalize.Pipeline
            if type(one) is str and len(one) <= self.scan_limit and encode is not None:
                value = (encode(one),)  # the common case, inlined
            else:
                value = self._normalised(name, view, encode=True)  # type: ignore[assignment]
        self._bytes[key] = value
        return value

    def _normalised(
        self, name: str, view: View, *, encode: bool = False
    ) -> tuple[str, ...] | tuple[bytes, ...] | None:
        raw = self.raw(name)
        if raw is None:
            return None
        norm = self.views[view]
        if encode:  # a rules.normalize.Pipeline encodes itself (casefolding on the bytes)
            norm = getattr(norm, "encode", None) or (lambda text, n=norm: n(text).encode())
        limit = self.scan_limit
        out = []
        for item in raw:
            text = item if type(item) is str else canonical(item)
            if text is not None:
                out.append(norm(text if len(text) <= limit else text[:limit]))
        return tuple(out) or None
