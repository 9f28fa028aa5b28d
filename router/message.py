"""The one message model every inbound channel produces and the queue carries.

Flow: an adapter builds a :class:`Message` → ``Sink.put`` makes it durable → the dispatcher
takes it, the rule engine decides on its :meth:`Message.facts`, senders deliver it.

Serialized as JSON with a schema version (``v``); :func:`Message.from_json` refuses versions
it does not know rather than guessing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field
from ulid import ULID

SCHEMA_VERSION = 1

Channel = Literal["email", "telegram", "webhook"]


def new_id() -> str:
    """A sortable unique id (ULID: millisecond time prefix + randomness), assigned at ingest."""
    return str(ULID())


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sender(_Model):
    """Who wrote: an email address, a chat id or a webhook customer id, and a display name."""

    address: str
    name: str = ""


class Attachment(_Model):
    """An attachment's metadata; ``data`` is kept only within the channel's size limit."""

    name: str
    type: str = "application/octet-stream"
    size: int = 0
    sha256: str = ""
    data: Base64Bytes | None = None


class Thread(_Model):
    """What ties a message to earlier ones: email ids, a chat id or a conversation id."""

    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    chat_id: str | None = None
    conversation_id: str | None = None


class Message(_Model):
    """A customer message, normalized. Immutable; build a new one with ``model_copy``."""

    v: int = SCHEMA_VERSION
    id: str = Field(default_factory=new_id)
    channel: Channel
    source: str
    received_at: datetime = Field(default_factory=utcnow)
    sender: Sender
    recipients: tuple[str, ...] = ()
    subject: str = ""
    text: str = ""
    quoted: str = ""
    attachments: tuple[Attachment, ...] = ()
    thread: Thread = Thread()
    headers: tuple[tuple[str, str], ...] = ()
    fields: dict[str, Any] = Field(default_factory=dict)
    dedupe_key: str | None = None

    def to_json(self) -> bytes:
        """Serialize to UTF-8 JSON bytes (the queue's payload)."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Message:
        """Parse a payload of :meth:`to_json`; raise ``ValueError`` on a foreign version."""
        message = cls.model_validate_json(data)
        if message.v != SCHEMA_VERSION:
            raise ValueError(f"message schema version {message.v} is not {SCHEMA_VERSION}")
        return message

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]
