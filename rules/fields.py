"""What a rule can look at: the ``Facts`` of one message and the field names that read them.

The daemon builds ``Facts`` from its ``Message``; ``FieldReader`` turns them into the values a
condition tests, normalised per view and cached for one evaluation. Both the compiled engine
and the naive reference evaluator read fields through here, so they see identical values.
An empty string or an empty list counts as a missing field.
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


def _scalars(node: object) -> tuple[object, ...] | None:
    if node is None or node == "":
        return None
    if isinstance(node, list | tuple):
        items = tuple(v for v in node if v is not None and v != "")
        return items or None
    return (node,)


def _dotted(root: Mapping[str, object], path: str) -> tuple[object, ...] | None:
    node: object = root
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return _scalars(node)


def raw_values(facts: Facts, name: str) -> tuple[object, ...] | None:
    """The un-normalised values of field ``name`` (a canonical field name); None if missing."""
    if name == "text":
        if not facts.subject and not facts.body:
            return None
        return (facts.subject + "\n" + facts.body,)
    simple = {
        "subject": facts.subject,
        "body": facts.body,
        "from": facts.sender,
        "name": facts.sender_name,
        "channel": facts.channel,
        "source": facts.source,
    }
    if name in simple:
        return _scalars(simple[name])
    if name == "sender_domain":
        domain = facts.sender.rpartition("@")[2] if "@" in facts.sender else ""
        return _scalars(domain.strip().rstrip(">"))
    if name == "to":
        return _scalars(facts.recipients)
    if name == "attachments":
        return (facts.attachments,)
    if name == "received_at":
        return (facts.received_at,)
    if name.startswith("header."):
        wanted = name[len("header.") :]
        return _scalars([v for k, v in facts.headers if k.casefold() == wanted])
    if name.startswith("fields."):
        return _dotted(facts.fields, name[len("fields.") :])
    return None


class FieldReader:
    """Field values of one message, normalised per view and cached for one evaluation."""

    __slots__ = ("_raw", "_strings", "facts", "scan_limit", "views")

    def __init__(
        self, facts: Facts, views: Mapping[View, Callable[[str], str]], scan_limit: int
    ) -> None:
        self.facts, self.views, self.scan_limit = facts, views, scan_limit
        self._raw: dict[str, tuple[object, ...] | None] = {}
        self._strings: dict[tuple[str, View], tuple[str, ...] | None] = {}

    def raw(self, name: str) -> tuple[object, ...] | None:
        """Un-normalised values (for exists, numbers and time)."""
        try:
            return self._raw[name]
        except KeyError:
            value = self._raw[name] = raw_values(self.facts, name)
            return value

    def strings(self, name: str, view: View) -> tuple[str, ...] | None:
        """Normalised string values; ``text`` is normalised subject + "\\n" + normalised body."""
        key = (name, view)
        try:
            return self._strings[key]
        except KeyError:
            pass
        value: tuple[str, ...] | None
        if name == "text":
            parts = (self.strings("subject", view), self.strings("body", view))
            if parts == (None, None):
                value = None
            else:
                value = ((parts[0] or ("",))[0] + "\n" + (parts[1] or ("",))[0],)
        else:
            value = self._normalised(name, view)
        self._strings[key] = value
        return value

    def _normalised(self, name: str, view: View) -> tuple[str, ...] | None:
        raw = self.raw(name)
        if raw is None:
            return None
        norm = self.views[view]
        out = []
        for item in raw:
            text = canonical(item)
            if text is not None:
                out.append(norm(text[: self.scan_limit]))
        return tuple(out) or None
