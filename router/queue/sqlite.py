"""The embedded queue backend: one SQLite file under the state directory (the default).

Place in the flow: inbound channels ``put`` here (via the ``Sink``), the dispatcher ``take``s
and settles. See ``router/queue/__init__.py`` for the contract.

- One daemon owns the file: an exclusive ``flock`` on ``<file>.lock``; a second opener gets
  ``StateLocked``. Hence every lease found on open belongs to a dead process and is released
  at once (after ``kill -9`` + restart the message is redelivered immediately). An ``admin``
  opener (the CLI's dead-letter commands beside a running daemon) takes no lock, releases
  nothing and must not ``take``; SQLite's own locking orders its writes with the daemon's.
  The daemon's worker processes (``dispatcher.processes``, ``router/workers.py``) open it
  ``shared``: no lock, no lease released, ``take`` as usual; the daemon opens it (releasing
  leases) before it starts them, and its ``on_put`` callbacks wake them.
- :class:`SqliteFile` owns the one connection: the statements of a group write (puts, claims,
  settles) run on the event loop; a durable batch's COMMIT (the fsync), replays, prunes and
  reads run on its thread (``router/sqlite.py``).
- Group commit (``router/batching.py``): ``put`` parks its message; one flush commits every put
  waiting at that moment in ONE transaction (WAL, ``synchronous=FULL``: really on disk), then
  resolves all their futures. While that fsync runs, the next batch gathers.
- Only what was promised is fsync'd (``write(durable=True)``, ``transaction(durable=True)``):
  puts and replays. Claims
  and settles commit with ``synchronous=NORMAL``: safe against a crash of the process (the
  WAL is written), and made durable by the next FULL commit; a power cut may undo a few, which
  means redelivery (at-least-once; the senders' own idempotency skips targets already
  reached). This doubles the settle rate under ingest load.
- ``take_batch(n)`` claims up to ``n`` due rows in one write job (one token for the batch;
  settling matches id and token); ``ack_batch`` deletes several rows in one write job.
- Waiting in ``take`` is event-driven: woken by puts, nacks and replays, or by a timer for the
  next delayed or expiring row, at the latest after ``_RECHECK_S`` (an admin process may have
  replayed dead letters); never a tight poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from router.batching import GroupCommit
from router.errors import QueueUnavailable
from router.message import Message
from router.queue import DeadLetter, Lease, QueueStats
from router.sqlite import SqliteFile, execute, execute_many, transaction

T = TypeVar("T")

_SCHEMA_VERSION = 1
_SCHEMA = (
    # due: when a row is ready (epoch s); while leased, when the lease expires.
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        payload TEXT NOT NULL,
        dead INTEGER NOT NULL DEFAULT 0,
        leased INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        token TEXT,
        reason TEXT,
        failed_at REAL
    )""",
    "CREATE INDEX messages_due ON messages (dead, due)",
    "CREATE TABLE dedupe (key TEXT PRIMARY KEY, message_id TEXT NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX dedupe_expires ON dedupe (expires)",
)
_PRUNE_EVERY = 256  # batches between dedupe-table prunes
_RECHECK_S = 1.0  # an idle taker looks again at least this often (admin replays)


# --- statements, run by SqliteFile (on the loop or on its thread) -----------------------------

_Put = tuple[str, str, str | None]  # message id, payload, dedupe key


def _insert(conn: sqlite3.Connection, puts: list[_Put], now: float, window_s: float) -> list[str]:
    """The puts, inside a durable group transaction of ``SqliteFile.write``; the ids to
    report (for a dedupe key seen in the window, the first message's)."""
    ids = []
    for message_id, payload, key in puts:
        if key is not None:
            row = conn.execute(
                "SELECT message_id FROM dedupe WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            if row is not None:
                ids.append(row[0])
                continue
            expires = now + window_s
            conn.execute(
                "INSERT OR REPLACE INTO dedupe VALUES (?, ?, ?)", (key, message_id, expires)
            )
        conn.execute(
            "INSERT INTO messages (id, payload, due) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (message_id, payload, now),
        )
        ids.append(message_id)
    return ids


_Claimed = tuple[str, str, int]  # id, payload, attempt
_ClaimResult = tuple[list[_Claimed], float | None]  # the claimed rows, or when the next is due


def _claim(
    conn: sqlite3.Connection, now: float, lease_s: float, token: str, limit: int
) -> _ClaimResult:
    """Lease up to ``limit`` due rows (expired leases included), all with ``token``; else say
    when the next one is due."""
    rows = conn.execute(
        "SELECT id, payload, attempts FROM messages WHERE dead = 0 AND due <= ? "
        "ORDER BY due LIMIT ?",
        (now, limit),
    ).fetchall()
    if not rows:
        return [], conn.execute("SELECT MIN(due) FROM messages WHERE dead = 0").fetchone()[0]
    conn.executemany(
        "UPDATE messages SET leased = 1, due = ?, attempts = attempts + 1, token = ? WHERE id = ?",
        [(now + lease_s, token, row[0]) for row in rows],
    )
    return [(message_id, payload, attempts + 1) for message_id, payload, attempts in rows], None


def _prune_dedupe(conn: sqlite3.Connection, now: float) -> None:
    """Forget dedupe keys whose window has passed (a transaction of its own)."""
    with transaction(conn):
        conn.execute("DELETE FROM dedupe WHERE expires <= ?", (now,))


def _dead_letters(conn: sqlite3.Connection, limit: int) -> list[tuple[str, str, str, int, float]]:
    return conn.execute(
        "SELECT id, payload, reason, attempts, failed_at FROM messages WHERE dead = 1 "
        "ORDER BY failed_at, rowid LIMIT ?",
        (limit,),
    ).fetchall()


def _replay(conn: sqlite3.Connection, ids: list[str] | None, now: float) -> int:
    sql = "UPDATE messages SET dead = 0, due = ?, attempts = 0, reason = NULL, failed_at = NULL "
    with transaction(conn, durable=True):
        if ids is None:
            return conn.execute(sql + "WHERE dead = 1", (now,)).rowcount
        cursor = conn.executemany(sql + "WHERE dead = 1 AND id = ?", [(now, i) for i in ids])
        return cursor.rowcount


def _stats(conn: sqlite3.Connection, now: float) -> tuple[int, int, int, int]:
    row = conn.execute(
        "SELECT TOTAL(dead = 0 AND leased = 0 AND due <= :now), TOTAL(leased = 1), "
        "TOTAL(dead = 0 AND leased = 0 AND due > :now), TOTAL(dead = 1) FROM messages",
        {"now": now},
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


# --- the queue --------------------------------------------------------------------------------


class SqliteQueue:
    """The ``Queue`` on one SQLite file (see the module docstring)."""

    def __init__(
        self, db: SqliteFile, *, lease_s: float, max_attempts: int, dedupe_window_s: float
    ) -> None:
        self._db = db
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._dedupe_window_s = dedupe_window_s
        self._puts: GroupCommit[_Put, str] = GroupCommit(
            self._commit,
            error=lambda cause: QueueUnavailable(f"{db.path}: put failed: {cause}"),
            name=f"sqlite-puts:{db.path}",
        )
        self._changed = asyncio.Event()  # replaced on every change: a waiter keeps its own
        self._undo: set[asyncio.Task[None]] = set()
        self._put_listeners: list[Callable[[], None]] = []
        self._batches = 0
        self._closing = False

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        lease_s: float,
        max_attempts: int,
        dedupe_window_s: float = 86400.0,
        admin: bool = False,
        shared: bool = False,
    ) -> SqliteQueue:
        """Open (creating) the queue file; release every lease a previous process left.

        ``admin``: beside a running daemon, for dead-letter commands and stats: no lock, no
        lease released, no ``take``. ``shared``: in a worker process of the daemon that owns
        the file (``dispatcher.processes``): no lock and no lease released (the other workers
        hold theirs), but ``take`` as usual; puts of the daemon process come to its notice
        by :meth:`wake`.
        """
        db = await SqliteFile.open(Path(path), _SCHEMA, _SCHEMA_VERSION, lock=not (admin or shared))
        if not (admin or shared):
            try:
                await db.write(
                    execute,
                    "UPDATE messages SET leased = 0, due = ?, token = NULL WHERE leased = 1",
                    (time.time(),),
                )
            except BaseException:
                await db.close()
                raise
        return cls(db, lease_s=lease_s, max_attempts=max_attempts, dedupe_window_s=dedupe_window_s)

    async def put(self, message: Message) -> str:
        """Park the message for the next group commit; return its id once committed."""
        if self._closing:
            raise QueueUnavailable(f"{self._db.path} is closed")
        return await self._puts.submit((message.id, message.to_json().decode(), message.dedupe_key))

    async def take(self) -> Lease:
        """Lease the next due message, waiting for a put or the next due time."""
        return (await self.take_batch(1))[0]

    async def take_batch(self, max_n: int) -> list[Lease]:
        """Lease 1 to ``max_n`` due messages in one transaction, waiting as ``take`` does."""
        while True:
            changed = self._changed
            leases, next_due = await self._claim(max(1, max_n))
            if leases:
                return leases
            due_in = _RECHECK_S if next_due is None else max(next_due - time.time(), 0.0) + 0.001
            timeout = min(due_in, _RECHECK_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await changed.wait()

    async def ack(self, lease: Lease) -> None:
        """Delete the message for good."""
        await self.ack_batch([lease])

    async def ack_batch(self, leases: Sequence[Lease]) -> None:
        """Delete every message of ``leases`` for good, in one statement batch."""
        if leases:
            sql = "DELETE FROM messages WHERE id = ? AND dead = 0"
            await self._db.write(execute_many, sql, [(lease.message.id,) for lease in leases])

    async def nack(self, lease: Lease, *, retry_in_s: float, reason: str) -> None:
        """Ready again in ``retry_in_s``; dead-letter once ``max_attempts`` is reached."""
        if lease.attempt >= self._max_attempts:
            await self.dead_letter(lease, reason=reason)
            return
        await self._db.write(
            execute,
            "UPDATE messages SET leased = 0, due = ?, token = NULL, reason = ? "
            "WHERE id = ? AND token = ?",
            (time.time() + retry_in_s, reason, lease.message.id, lease.token),
        )
        self._notify()

    async def dead_letter(self, lease: Lease, *, reason: str) -> None:
        """Move the message to dead letters now (only if the lease is still current)."""
        await self._db.write(
            execute,
            "UPDATE messages SET dead = 1, leased = 0, token = NULL, reason = ?, failed_at = ? "
            "WHERE id = ? AND token = ?",
            (reason, time.time(), lease.message.id, lease.token),
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        rows = await self._db.run(_dead_letters, limit)
        return [
            DeadLetter(
                id=message_id,
                message=Message.from_json(payload),
                reason=reason or "",
                attempts=attempts,
                failed_at=datetime.fromtimestamp(failed_at, UTC),
            )
            for message_id, payload, reason, attempts, failed_at in rows
        ]

    async def replay(self, ids: list[str] | None = None) -> int:
        """Make dead letters ready again with attempts reset; unknown ids are ignored."""
        count = await self._db.run(_replay, ids, time.time())
        self._notify()
        return count

    def on_put(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each batch of puts is committed (to wake worker processes)."""
        self._put_listeners.append(callback)

    def wake(self) -> None:
        """Another process put messages: waiting takers look again now."""
        self._notify()

    async def stats(self) -> QueueStats:
        """Counts; expired but not yet retaken leases count as leased."""
        ready, leased, delayed, dead = await self._db.run(_stats, time.time())
        return QueueStats(ready=ready, leased=leased, delayed=delayed, dead=dead)

    async def close(self) -> None:
        """Commit parked puts, wake waiting takers, close the file. Idempotent."""
        self._closing = True
        await self._puts.drain()
        if self._undo:
            await asyncio.gather(*self._undo)
        await self._db.close()
        self._notify()  # waiting takers retry and get QueueUnavailable

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _claim(self, limit: int) -> tuple[list[Lease], float | None]:
        """Claim in the next group write; if our caller is cancelled meanwhile, give the rows
        back first."""
        token = secrets.token_hex(8)
        job = asyncio.ensure_future(
            self._db.write(_claim, time.time(), self._lease_s, token, limit)
        )
        try:
            claimed, next_due = await asyncio.shield(job)
        except asyncio.CancelledError:
            undo = asyncio.ensure_future(self._give_back(job, token))
            self._undo.add(undo)
            undo.add_done_callback(self._undo.discard)
            with contextlib.suppress(asyncio.CancelledError):  # cancelled again: still runs
                await asyncio.shield(undo)
            raise
        leases = [
            Lease(message=Message.from_json(payload), token=token, attempt=attempt)
            for _, payload, attempt in claimed
        ]
        return leases, next_due

    async def _give_back(self, job: asyncio.Future[_ClaimResult], token: str) -> None:
        with contextlib.suppress(QueueUnavailable):
            claimed, _ = await job
            if claimed:
                await self._undo_claim(token)

    async def _undo_claim(self, token: str) -> None:
        await self._db.write(
            execute,
            "UPDATE messages SET leased = 0, due = ?, attempts = attempts - 1, token = NULL "
            "WHERE token = ? AND leased = 1",
            (time.time(), token),
        )
        self._notify()

    async def _commit(self, batch: list[_Put]) -> list[str]:
        """One fsync'd transaction for every waiting put; the ids to report (dedupe: the first)."""
        self._batches += 1
        now = time.time()
        if self._batches % _PRUNE_EVERY == 0:  # on the thread: it may delete many rows
            await self._db.run(_prune_dedupe, now)
        ids = await self._db.write(_insert, batch, now, self._dedupe_window_s, durable=True)
        self._notify()
        for callback in self._put_listeners:
            callback()
        return ids
