"""What a rule can look at: the ``Facts`` of one message and the field names that read them.

The daemon builds ``Facts`` from its ``Message``; ``FieldReader`` turns them into the values a
condition tests, normalised per view and cached for one evaluation — as strings (``strings``,
which the naive reference evaluator and the value operators read) and as their UTF-8
(``encoded``, which the automata and regex sets scan: the UTF-8 of the same strings, made
without building them — ``Pipeline.encode``, the text's in one piece; each is computed only
when asked for). Both
evaluators read fields through here, so they see identical values. An empty string or an
empty list counts as a missing field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Literal

from rules.model import NUMBER_OPS
from rules.normalize import Pipeline, View, canonical

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
    if op in NUMBER_OPS:
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
        items = [v for v in node if v is not None and v != ""]
        return tuple(items) if items else None
    return (node,)


def _dotted(root: Mapping[str, object], parts: tuple[str, ...]) -> tuple[object, ...] | None:
    node: object = root
    for part in parts:
        if (type(node) is dict or isinstance(node, Mapping)) and part in node:
            node = node[part]  # type: ignore[index]
        elif isinstance(node, _SEQUENCES) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return _scalars(node)


_DIRECT = {  # field → the Facts attribute it reads
    "subject": "subject",
    "body": "body",
    "from": "sender",
    "name": "sender_name",
    "channel": "channel",
    "source": "source",
    "to": "recipients",
}
_ALWAYS: dict[str, Callable[[Facts], tuple[object, ...]]] = {
    "attachments": lambda f: (f.attachments,),
    "received_at": lambda f: (f.received_at,),
}

Accessor = Callable[[Facts], tuple[object, ...] | None]
_ACCESSORS: dict[str, Accessor] = {}  # field name → its accessor, resolved once per name


def accessor(name: str) -> Accessor:
    """The function reading field ``name`` from ``Facts`` (resolved once per name)."""
    get = _ACCESSORS.get(name)
    if get is None:
        if len(_ACCESSORS) > 4096:  # names come from rule files: a few dozen, but be safe
            _ACCESSORS.clear()
        get = _ACCESSORS[name] = _accessor(name)
    return get


def _accessor(name: str) -> Accessor:
    if name in _DIRECT:
        return _direct(attrgetter(_DIRECT[name]))
    if name in _ALWAYS:
        return _ALWAYS[name]
    if name == "text":
        return _text
    if name == "sender_domain":
        return _sender_domain
    if name.startswith("header."):
        return _header(name[len("header.") :])
    if name.startswith("fields."):
        parts = tuple(name[len("fields.") :].split("."))
        if len(parts) == 1:  # the common case: a top-level webhook field
            return _top_level(parts[0])
        return lambda facts: _dotted(facts.fields, parts)
    return lambda facts: None


def _header(wanted: str) -> Accessor:
    def read(facts: Facts) -> tuple[object, ...] | None:
        # _scalars of the list of values, inlined (a loop: a comprehension is one more call)
        items = []
        for key, value in facts.headers:
            if key.casefold() == wanted and value is not None and value != "":
                items.append(value)
        return tuple(items) if items else None

    return read


def _direct(get: Callable[[Facts], object]) -> Accessor:
    def read(facts: Facts) -> tuple[object, ...] | None:
        value = get(facts)
        if type(value) is str:  # the common case, inlined
            return (value,) if value else None
        return _scalars(value)

    return read


def _top_level(key: str) -> Accessor:
    def read(facts: Facts) -> tuple[object, ...] | None:
        fields = facts.fields
        if type(fields) is dict or isinstance(fields, Mapping):
            value = fields.get(key)
            if type(value) is str:  # the common cases, inlined
                return (value,) if value else None
            if type(value) is int:
                return (value,)
            return None if value is None else _scalars(value)
        return _dotted(fields, (key,))  # not a mapping: as the general path decides

    return read


def _text(facts: Facts) -> tuple[object, ...] | None:
    if not facts.subject and not facts.body:
        return None
    return (facts.subject + "\n" + facts.body,)


def _sender_domain(facts: Facts) -> tuple[object, ...] | None:
    sender = facts.sender
    if "@" not in sender:
        return None
    domain = sender.rpartition("@")[2].strip().rstrip(">")
    return (domain,) if domain else None


_UNSET = object()  # not read yet (None means the field is missing)


class FieldReader:
    """Field values of one message, normalised per view and cached for one evaluation."""

    __slots__ = ("_bytes", "_cuts", "_raw", "_strings", "facts", "scan_limit", "views")

    def __init__(self, facts: Facts, views: Mapping[View, Pipeline], scan_limit: int) -> None:
        self.facts, self.views, self.scan_limit = facts, views, scan_limit
        self._raw: dict[str, tuple[object, ...] | None] = {}
        self._strings: dict[tuple[str, View], tuple[str, ...] | None] = {}
        self._bytes: dict[tuple[str, View], tuple[bytes, ...] | None] = {}
        self._cuts: dict[View, int] | None = None  # view → the subject's length in the text

    def raw(self, name: str) -> tuple[object, ...] | None:
        """Un-normalised values (for exists, numbers and time)."""
        cache = self._raw
        if name in cache:
            return cache[name]
        get = _ACCESSORS[name] if name in _ACCESSORS else accessor(name)
        value = cache[name] = get(self.facts)
        return value

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

        ``text`` is normalised in one piece when it may be (``_joined``), the subject's and
        the body's UTF-8 then cut from it; else joined from theirs.
        """
        key = (name, view)
        cached = self._bytes.get(key, _UNSET)
        if cached is not _UNSET:
            return cached  # type: ignore[return-value]
        value: tuple[bytes, ...] | None
        if name == "text":
            value = self._joined(view)  # type: ignore[assignment]
            if value is _UNSET:
                subject, body = self.encoded("subject", view), self.encoded("body", view)
                if subject is None and body is None:
                    value = None
                else:
                    value = ((subject or (b"",))[0] + b"\n" + (body or (b"",))[0],)
        elif name == "body" and self._cuts is not None and view in self._cuts:
            text = self._bytes[("text", view)]
            value = (text[0][self._cuts[view] + 1 :],) if self._raw["body"] else None  # type: ignore[index]
        else:
            raw = self.raw(name)
            one = raw[0] if raw is not None and len(raw) == 1 else None
            if type(one) is str and len(one) <= self.scan_limit:
                value = (self.views[view].encode(one),)  # the common case, inlined
            else:
                value = self._normalised(name, view, encode=True)  # type: ignore[assignment]
        self._bytes[key] = value
        return value

    def _joined(self, view: View) -> tuple[bytes, ...] | object | None:
        """``encoded("text", view)`` normalised in one piece, the subject's UTF-8 cut from it;
        ``_UNSET`` when that may differ from normalising subject and body apart.

        One normalisation instead of two (a short subject costs nearly as much as a long body:
        a dozen calls) and no join of the bytes. NFKC and casefold map no character but a
        newline itself to one (tests/rules/test_properties.py), nor compose anything across
        it, so the text's first newline ends the subject when the subject holds none; OpenCC's
        t2s converts phrases, which a newline may not end: not with t2s.
        """
        norm = self.views[view]
        if norm.t2s is not None:
            return _UNSET
        first, rest = self.facts.subject, self.facts.body
        if type(first) is not str or type(rest) is not str or "\n" in first:
            return _UNSET
        limit = self.scan_limit
        if len(first) > limit or len(rest) > limit:
            return _UNSET
        raw = self._raw  # raw("subject"), raw("body"): strings, None when empty
        raw["subject"], raw["body"] = (first,) if first else None, (rest,) if rest else None
        if not first and not rest:
            return None
        data = norm.encode("\n".join((first, rest)))
        cut = data.index(b"\n")
        self._bytes[("subject", view)] = (data[:cut],) if first else None
        if self._cuts is None:
            self._cuts = {}
        self._cuts[view] = cut  # the body's UTF-8 is cut when asked for (seldom)
        return (data,)

    def _normalised(
        self, name: str, view: View, *, encode: bool = False
    ) -> tuple[str, ...] | tuple[bytes, ...] | None:
        raw = self.raw(name)
        if raw is None:
            return None
        pipeline = self.views[view]
        norm: Callable[[str], str | bytes] = pipeline.encode if encode else pipeline
        limit = self.scan_limit
        out = []
        for item in raw:
            text = item if type(item) is str else canonical(item)
            if text is not None:
                out.append(norm(text if len(text) <= limit else text[:limit]))
        return tuple(out) or None
