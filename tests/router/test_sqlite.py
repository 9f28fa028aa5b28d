"""``router.sqlite.SqliteFile``: which side of the thread line a batch runs on, and that the
loop side never waits (the queue and store contract suites cover what the batches do)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from router.sqlite import _THREAD_EVERY, SqliteFile

SCHEMA = ("CREATE TABLE t (x INTEGER)",)


def _where(conn: sqlite3.Connection) -> tuple[str, int, int]:
    """(thread name, busy timeout in ms, automatic checkpoint pages) where a job runs."""
    busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    checkpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return threading.current_thread().name, busy, checkpoint


async def test_statements_run_on_the_loop_and_only_an_fsyncing_commit_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await SqliteFile.open(tmp_path / "f.sqlite3", SCHEMA, 1)
    hops: list[str] = []
    submit = db._executor.submit

    def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "func", fn).__name__)
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(db._executor, "submit", counted)
    try:
        loop_thread = threading.current_thread().name
        # no fsync asked: all on the loop, with no busy wait and no automatic checkpoint
        assert await db.write(_where) == (loop_thread, 0, 0)
        assert hops == []
        # durable: the statements on the loop too, the COMMIT (the fsync) on the thread
        assert await db.write(_where, durable=True) == (loop_thread, 0, 0)
        assert hops == ["_commit"]
        # reads on the thread, which may wait for another process's lock
        thread, busy, checkpoint = await db.run(_where)
        assert thread != loop_thread
        assert busy > 0
        assert checkpoint > 0
        assert await db.write(_where) == (loop_thread, 0, 0)
    finally:
        await db.close()


async def test_every_so_many_loop_batches_one_runs_on_the_thread(tmp_path: Path) -> None:
    """Its COMMIT checkpoints the WAL, which the loop side never does."""
    db = await SqliteFile.open(tmp_path / "f.sqlite3", SCHEMA, 1)
    commits: list[str] = []
    commit = db._commit

    def where(*, on_loop: bool) -> None:
        commits.append(threading.current_thread().name)
        commit(on_loop=on_loop)

    db._commit = where  # type: ignore[method-assign]
    try:
        for _ in range(200):
            await db.write(_where)
        on_thread = [name for name in commits if name != threading.current_thread().name]
        assert len(commits) == 200
        assert len(on_thread) == 200 // (_THREAD_EVERY + 1)
    finally:
        await db.close()
