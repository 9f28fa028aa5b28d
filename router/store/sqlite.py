"""The embedded ticket-state store: ``state.sqlite3`` beside the queue's file.

Place in the flow: the dispatcher records each routing decision and each delivery here (see
``router/store/__init__.py``). Same machinery as the SQLite queue (``router/sqlite.py``): the
file is locked to this process, WAL, and every write waiting at one moment shares one group
commit (which, as it waits for no fsync, runs on the event loop). Writes commit with
``synchronous=NORMAL``: they survive a crash or ``kill -9`` of the process (WAL), which is what
stops a second delivery after a crash. A power cut may undo the last ones; then the senders'
own idempotency stops the duplicate (Maildir looks for the file on a retry, webhooks carry an
``Idempotency-Key``), so no fsync per delivery is paid. Pruning runs on open and every
``_PRUNE_EVERY`` writes, on the connection thread (a prune can take milliseconds).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.message import Message
from router.sqlite import SqliteFile, execute_many, transaction

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE deliveries (
        message_id TEXT NOT NULL,
        target TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (message_id, target)
    ) WITHOUT ROWID""",
    "CREATE INDEX deliveries_at ON deliveries (at)",
    # seq orders "recent": a new decision for the same message replaces the row (new seq)
    """CREATE TABLE decisions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL UNIQUE,
        message TEXT NOT NULL,
        decision TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX decisions_at ON decisions (at)",
)
_PRUNE_EVERY = 1000

_Record = tuple[str, str]  # message payload, decision JSON


class SqliteStore:
    """The ``Store`` on one SQLite file."""

    def __init__(self, db: SqliteFile, *, retention_s: float, max_recent: int) -> None:
        self._db = db
        self._retention_s = retention_s
        self._max_recent = max_recent
        self._writes = 0

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        retention_s: float,
        max_recent: int,
        admin: bool = False,
        shared: bool = False,
    ) -> SqliteStore:
        """Open (creating) the file; ``StateLocked`` if another process holds it.

        ``admin``: beside a running daemon, for operator commands that read decisions
        (``rules explain``, ``rules diff``): no lock taken, nothing pruned. ``shared``: in a
        worker process of the daemon (``dispatcher.processes``): no lock taken (SQLite's own
        locking orders the workers' writes).
        """
        db = await SqliteFile.open(Path(path), _SCHEMA, _SCHEMA_VERSION, lock=not (admin or shared))
        store = cls(db, retention_s=retention_s, max_recent=max_recent)
        if admin:
            return store
        try:
            await store.prune()
        except BaseException:
            await db.close()
            raise
        return store

    async def delivered(self, message_id: str, target: str) -> bool:
        """Whether ``message_id`` was already delivered to ``target``."""
        return await self._db.run(_delivered, message_id, target)

    async def record_delivery(self, message_id: str, target: str) -> None:
        """Remember that ``message_id`` reached ``target`` (``record_deliveries``)."""
        await self.record_deliveries([(message_id, target)])

    async def begin_batch(
        self, decided: Sequence[tuple[Message, dict[str, Any]]]
    ) -> dict[str, set[str]]:
        """Record every decision and return each message's delivered targets: one write job."""
        if not decided:
            return {}
        now = time.time()
        rows = [
            (message.id, message.to_json().decode(), json.dumps(record, ensure_ascii=False), now)
            for message, record in decided
        ]  # TypeError here, before anything is written
        done = await self._db.write(_begin_batch, rows)
        await self._wrote(len(rows))
        return done

    async def record_deliveries(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Remember every ``(message_id, target)`` (survives a process crash): one write job."""
        if not deliveries:
            return
        now = time.time()
        rows = [(message_id, target, now) for message_id, target in deliveries]
        await self._db.write(
            execute_many, "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?)", rows
        )
        await self._wrote(len(rows))

    async def record_decision(self, message: Message, decision: dict[str, Any]) -> None:
        """Store the message and its decision, replacing an earlier one (``begin_batch``)."""
        await self.begin_batch([(message, decision)])

    async def decision(self, message_id: str) -> tuple[Message, dict[str, Any]] | None:
        """The message and its latest decision, or ``None``."""
        rows = await self._db.run(
            _select, "SELECT message, decision FROM decisions WHERE message_id = ?", (message_id,)
        )
        return _parse(rows[0]) if rows else None

    async def recent(self, limit: int = 1000) -> list[tuple[Message, dict[str, Any]]]:
        """Up to ``limit`` decided messages, newest first."""
        rows = await self._db.run(
            _select, "SELECT message, decision FROM decisions ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [_parse(row) for row in rows]

    async def prune(self) -> None:
        """Drop rows older than the retention, and decisions beyond ``max_recent``.

        On the connection thread, in a transaction of its own: a prune deletes up to a
        thousand rows, milliseconds the event loop would otherwise stand still for."""
        await self._db.run(_prune, time.time() - self._retention_s, self._max_recent)

    async def close(self) -> None:
        """Close the file. Idempotent."""
        await self._db.close()

    async def _wrote(self, n: int = 1) -> None:
        before, self._writes = self._writes, self._writes + n
        if before // _PRUNE_EVERY != self._writes // _PRUNE_EVERY:
            await self.prune()


def _parse(row: _Record) -> tuple[Message, dict[str, Any]]:
    return Message.from_json(row[0]), json.loads(row[1])


def _delivered(conn: sqlite3.Connection, message_id: str, target: str) -> bool:
    sql = "SELECT 1 FROM deliveries WHERE message_id = ? AND target = ?"
    return conn.execute(sql, (message_id, target)).fetchone() is not None


def _begin_batch(
    conn: sqlite3.Connection, rows: list[tuple[str, str, str, float]]
) -> dict[str, set[str]]:
    conn.executemany(
        "INSERT OR REPLACE INTO decisions (message_id, message, decision, at) VALUES (?,?,?,?)",
        rows,
    )
    done: dict[str, set[str]] = {row[0]: set() for row in rows}
    for start in range(0, len(rows), 500):  # SQLite's limit on host parameters
        ids = [row[0] for row in rows[start : start + 500]]
        marks = ",".join("?" * len(ids))
        sql = f"SELECT message_id, target FROM deliveries WHERE message_id IN ({marks})"
        for message_id, target in conn.execute(sql, ids):
            done[message_id].add(target)
    return done


def _select(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[_Record]:
    return conn.execute(sql, params).fetchall()


def _prune(conn: sqlite3.Connection, cutoff: float, max_recent: int) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM deliveries WHERE at < ?", (cutoff,))
        conn.execute("DELETE FROM decisions WHERE at < ?", (cutoff,))
        conn.execute(
            "DELETE FROM decisions WHERE seq <= "
            "(SELECT seq FROM decisions ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (max_recent,),
        )
