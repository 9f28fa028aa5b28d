"""The durable queue between inbound channels and the dispatcher.

Two backends pass one contract suite (``tests/router/test_queue.py``):

- ``sqlite`` (embedded default): one WAL database file under the state directory; puts waiting
  at the same moment are committed together in one fsync'd transaction (group commit).
- ``redis``: one Stream with a consumer group; expired leases are taken over with XAUTOCLAIM;
  retries wait in a sorted set; unacknowledged entries are never trimmed.

Semantics shared by both:

- ``put`` returns only when the message is durable; ``QueueUnavailable`` otherwise.
- ``take`` blocks until a message is ready and leases it: hidden from every other taker until
  ``ack``, ``nack``, ``dead_letter`` or lease expiry (``lease_s``), after which it is taken again
  with ``attempt`` incremented. A process restarting with the same consumer identity gets its
  own unsettled leases back at once.
- ``take_batch(max_n)`` is ``take`` for up to ``max_n`` messages at once (at least one; each
  lease settles on its own); ``ack_batch`` acks several leases in one round trip. Workers use
  them so that the per-message cost of a queue round trip is shared by a batch.
- ``nack(retry_in_s=...)`` makes it ready again after the delay; when ``attempt`` has reached
  ``max_attempts`` it goes to dead letters instead, with the reason.
- dead letters are kept until replayed (``replay``) — never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from router.message import Message


@dataclass(frozen=True)
class Lease:
    """A message taken from the queue. ``token`` is backend-private; ``attempt`` starts at 1."""

    message: Message
    token: str
    attempt: int


@dataclass(frozen=True)
class DeadLetter:
    """A message that will not be retried until an operator replays it."""

    id: str
    message: Message
    reason: str
    attempts: int
    failed_at: datetime


@dataclass(frozen=True)
class QueueStats:
    """Counts for /metrics and the CLI."""

    ready: int
    leased: int
    delayed: int
    dead: int


class Queue(Protocol):
    """A durable at-least-once queue of messages (see the module docstring)."""

    async def put(self, message: Message) -> str:
        """Return the id once durable; the earlier id for a repeated ``dedupe_key`` (no new entry).

        Raise ``QueueUnavailable`` when the backend cannot take it.
        """

    async def take(self) -> Lease:
        """Wait for a ready message and lease it. Cancellation while waiting holds nothing."""

    async def take_batch(self, max_n: int) -> list[Lease]:
        """Wait until a message is ready, then lease 1 to ``max_n`` ready ones at once.

        Each lease is independent (settled with ``ack``, ``nack`` or ``dead_letter`` on its own,
        or together with ``ack_batch``). Cancellation while waiting holds nothing.
        """

    async def ack(self, lease: Lease) -> None:
        """The message is done: remove it for good."""

    async def ack_batch(self, leases: Sequence[Lease]) -> None:
        """``ack`` every lease of ``leases`` in one round trip (nothing for an empty list)."""

    async def nack(self, lease: Lease, *, retry_in_s: float, reason: str) -> None:
        """Retry after ``retry_in_s``; dead-letter with ``reason`` once attempts are exhausted."""

    async def dead_letter(self, lease: Lease, *, reason: str) -> None:
        """Move the message to dead letters now (permanent failure)."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""

    async def replay(self, ids: list[str] | None = None) -> int:
        """Make dead letters (all, or ``ids``) ready again with fresh attempts; count them."""

    async def stats(self) -> QueueStats:
        """Current counts."""

    def on_put(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each batch of puts is committed, so that worker processes
        can be told (their :meth:`wake`). A backend whose takers wait on the server itself
        (Redis: ``XREADGROUP BLOCK``) need not call it."""

    def wake(self) -> None:
        """Another process put messages: waiting takers look again now (or a no-op)."""

    async def close(self) -> None:
        """Flush pending puts, release resources. Idempotent."""


QueueType = Literal["sqlite", "redis"]


async def open_queue(
    kind: QueueType,
    *,
    state_dir: Path,
    redis_url: str | None = None,
    consumer: str = "triaged",
    lease_s: float = 60.0,
    max_attempts: int = 8,
    prefix: str = "triaged:",
    dedupe_window_s: float = 86400.0,
    admin: bool = False,
    shared: bool = False,
) -> Queue:
    """Open the configured backend (imported lazily so sqlite users need no Redis server).

    ``admin``: for operator commands (dead letters, stats) beside a running daemon, never
    ``take``. SQLite then takes no lock and releases no lease; Redis needs nothing special
    (``consumer`` names the admin, who never reads). ``shared``: in a worker process of the
    daemon (``dispatcher.processes``); SQLite then takes no lock and releases no lease.
    """
    if kind == "sqlite":
        from router.queue.sqlite import SqliteQueue

        return await SqliteQueue.open(
            state_dir / "queue.sqlite3",
            lease_s=lease_s,
            max_attempts=max_attempts,
            dedupe_window_s=dedupe_window_s,
            admin=admin,
            shared=shared,
        )
    if redis_url is None:
        raise ValueError("the redis queue needs a redis url")
    from router.queue.redis import RedisQueue

    return await RedisQueue.open(
        redis_url,
        consumer=consumer,
        lease_s=lease_s,
        max_attempts=max_attempts,
        prefix=prefix,
        dedupe_window_s=dedupe_window_s,
    )
