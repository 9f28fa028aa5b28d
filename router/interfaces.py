"""What channels implement and what they receive from the core.

An inbound channel gets a :class:`Sink` (never the queue or the daemon) and acknowledges its
sender only after ``put`` returns. An outbound sender gets one :class:`Delivery` at a time and
reports failures as ``TemporaryFailure`` or ``PermanentFailure`` (``router.errors``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from router.message import Message


class Sink(Protocol):
    """Where inbound channels put messages."""

    async def put(self, message: Message) -> str:
        """Return the message id only once the message is durable.

        If a message with the same ``dedupe_key`` was queued within the dedupe window, nothing is
        added and the earlier message's id is returned. Raise ``QueueUnavailable`` otherwise.
        """


class Inbound(Protocol):
    """An inbound channel adapter (smtp, imap, telegram, webhook)."""

    name: str

    async def start(self, sink: Sink, tg: asyncio.TaskGroup) -> None:
        """Bind or connect, spawn any long-running loop into ``tg``, return once accepting.

        Raises ``OSError`` (e.g. address in use) when it cannot start; the daemon then exits.
        """

    async def stop(self) -> None:
        """Stop accepting (SMTP 421, HTTP 503, stop polling); await in-flight puts. Idempotent."""


@dataclass(frozen=True)
class Delivery:
    """One message to one inbox target of one team, with the routing decision.

    ``key`` is stable across retries (``<message id>:<target>``): senders use it to deliver at
    most once (Maildir file name, ``Idempotency-Key`` header).
    """

    message: Message
    team: str
    target: str
    category: str
    priority: str
    tags: tuple[str, ...]
    rules: tuple[str, ...]
    attempt: int

    @property
    def key(self) -> str:
        """The idempotency key of this delivery."""
        return f"{self.message.id}:{self.target}"


class Sender(Protocol):
    """An outbound sender (maildir, webhook, email_out, telegram, chat_out)."""

    name: str
    # Set by the daemon before ``start``: True in a worker process (``dispatcher.processes``),
    # where no input shares the event loop, so a sender may let a slow disk hold the loop
    # instead of handing work to threads to keep it free for ingest.
    owns_loop: bool

    async def start(self) -> None:
        """Open what the sender needs (directories, HTTP session). Raise on a bad setup."""

    async def send(self, delivery: Delivery) -> None:
        """Deliver once per ``delivery.key``.

        ``attempt == 1`` means no earlier attempt ran for this key, so a sender may skip an
        expensive already-delivered check then (the dispatcher's delivery log covers replays).

        Raise ``TemporaryFailure(reason, retry_after_s)`` when worth retrying, or
        ``PermanentFailure(reason)`` when not.
        """

    async def close(self) -> None:
        """Release what ``start`` opened. Idempotent."""
