"""Ticket state that is not the queue: the delivery log and the routing decisions.

Place in the flow: the dispatcher takes a message from the queue, the rules decide, and it
``record_decision``s the message with its decision (so "why did ticket X go to team Y" can be
answered later, and recent messages replayed through new rules). Before each delivery it asks
``delivered(message_id, target)`` and after a successful one it calls ``record_delivery``: a
message retried after a crash is not delivered twice to a target it already reached.
Workers handling a batch of messages use the batched forms: ``begin_batch`` records every
decision and returns the targets each message already reached, in one round trip;
``record_deliveries`` records several deliveries at once.

Backends: ``sqlite`` (``state_dir/state.sqlite3``, WAL, next to the queue's file) and
``redis`` (keys in ``router/keys.py``, same prefix as the queue). Both keep decisions and the
delivery log for ``retention_s`` (30 days) and at most ``max_recent`` decisions (100 000),
pruning as they write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from router.keys import DEFAULT_PREFIX
from router.message import Message

RETENTION_S = 30 * 86400.0
MAX_RECENT = 100_000

StoreType = Literal["sqlite", "redis"]


class Store(Protocol):
    """Delivery log and decision records. Backend failures raise ``QueueUnavailable``."""

    async def delivered(self, message_id: str, target: str) -> bool:
        """Whether ``message_id`` was already delivered to ``target`` (within retention)."""

    async def record_delivery(self, message_id: str, target: str) -> None:
        """Remember that ``message_id`` reached ``target``; survives a crash of the process."""

    async def begin_batch(
        self, decided: Sequence[tuple[Message, dict[str, Any]]]
    ) -> dict[str, set[str]]:
        """``record_decision`` for every pair, then the targets each message already reached.

        One round trip. Returns ``{message id: delivered targets}`` for every message id given
        (an empty set when none). ``TypeError`` if a decision is not JSON-able (nothing written).
        """

    async def record_deliveries(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """``record_delivery`` for every ``(message_id, target)``, in one round trip."""

    async def record_decision(self, message: Message, decision: dict[str, Any]) -> None:
        """Store the message with its routing decision (a JSON-able dict); replaces an earlier one.

        ``TypeError`` if the decision is not JSON-able: it must round-trip exactly.
        """

    async def decision(self, message_id: str) -> tuple[Message, dict[str, Any]] | None:
        """The message and its latest decision, or ``None`` if unknown or pruned."""

    async def recent(self, limit: int = 1000) -> list[tuple[Message, dict[str, Any]]]:
        """Up to ``limit`` decided messages, the most recently decided first."""

    async def prune(self) -> None:
        """Drop what is older than the retention or beyond ``max_recent`` (also done on write)."""

    async def close(self) -> None:
        """Release the backend. Idempotent."""


async def open_store(
    kind: StoreType,
    *,
    state_dir: Path,
    redis_url: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    retention_s: float = RETENTION_S,
    max_recent: int = MAX_RECENT,
    admin: bool = False,
    shared: bool = False,
) -> Store:
    """Open the configured backend (imported lazily so sqlite users need no Redis server).

    ``admin``: for operator commands beside a running daemon (SQLite: no lock, no pruning).
    ``shared``: in a worker process of the daemon (SQLite: no lock).
    """
    if kind == "sqlite":
        from router.store.sqlite import SqliteStore

        return await SqliteStore.open(
            state_dir / "state.sqlite3",
            retention_s=retention_s,
            max_recent=max_recent,
            admin=admin,
            shared=shared,
        )
    if redis_url is None:
        raise ValueError("the redis store needs a redis url")
    from router.store.redis import RedisStore

    return await RedisStore.open(
        redis_url, prefix=prefix, retention_s=retention_s, max_recent=max_recent
    )
