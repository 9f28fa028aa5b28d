"""``router.sqlite.SqliteFile``: which side of the thread line a batch runs on, and that the
loop side never waits (the queue and store contract suites cover what the batches do)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from router.sqlite import _THREAD_EVERY, SqliteFile

SCHEMA = ("CREATE TABLE t (x INTEGER)",)


def _where(conn: sqlite3.Connection) -> tuple[str, int, int]:
    """(thread name, busy timeout in ms, automatic checkpoint pages) where a job runs."""
    busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    checkpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return threading.current_thread().name, busy, checkpoint


async def test_batches_without_fsync_run_on_the_loop_and_never_wait(tmp_path: Path) -> None:
    db = await SqliteFile.open(tmp_path / "f.sqlite3", SCHEMA, 1)
    try:
        loop_thread = threading.current_thread().name
        # no fsync asked: on the loop, with no busy wait and no automatic checkpoint
        assert await db.write(_where) == (loop_thread, 0, 0)
        # durable: on the connection thread, which may wait for a lock and checkpoints
        thread, busy, checkpoint = await db.write(_where, durable=True)
        assert thread != loop_thread
        assert busy > 0
        assert checkpoint > 0
        # reads too
        thread, busy, _ = await db.run(_where)
        assert thread != loop_thread
        assert busy > 0
        # and the settings follow the side again
        assert await db.write(_where) == (loop_thread, 0, 0)
    finally:
        await db.close()


async def test_every_so_many_loop_batches_one_runs_on_the_thread(tmp_path: Path) -> None:
    """That one checkpoints the WAL, which the loop side never does."""
    db = await SqliteFile.open(tmp_path / "f.sqlite3", SCHEMA, 1)
    try:
        loop_thread = threading.current_thread().name
        threads = [(await db.write(_where))[0] for _ in range(200)]
        on_thread = [name for name in threads if name != loop_thread]
        assert len(on_thread) == 200 // (_THREAD_EVERY + 1)
    finally:
        await db.close()
