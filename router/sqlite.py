"""SQLite files owned by this process: one lock, one connection, group commit.

Place in the flow: the embedded queue (``router/queue/sqlite.py``) and the ticket-state store
(``router/store/sqlite.py``) each own one :class:`SqliteFile`. Writes go through
:meth:`SqliteFile.write`: every write waiting at one moment runs in one transaction — one
``COMMIT`` (and one fsync when any of them asks for durability) for all workers instead of one
each, which is what lets settle throughput grow with the number of workers. Each write has its
own savepoint, so one failing statement fails only its caller.

Where SQLite runs: a batch that asks for no fsync (claims, acks, the delivery log) runs on the
event loop — its statements touch only the page cache, some tens of microseconds, and a thread
hop per batch cost more than that: the thread's every ``sqlite3_step`` gave the GIL up and took
it back against the loop (futex calls, a third of the daemon's CPU at load). A durable batch
runs its statements there too and only its ``COMMIT`` (the fsync) on the connection thread.
The loop does not wait for another process: a write lock held by one (a ``triaged
dead-letters`` command) sends the whole batch to the thread, which waits. Nor for
checkpoints: ``wal_autocheckpoint`` is off on the loop, and every ``_THREAD_EVERY``-th batch
commits on the thread, which checkpoints (SQLite still syncs the WAL's header on the loop
once per checkpoint cycle, when it starts reusing the file). Reads (:meth:`SqliteFile.run`)
run on the thread. A lock keeps the two sides off the connection at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from router.batching import GroupCommit
from router.errors import QueueUnavailable, StateLocked, TriagedError

T = TypeVar("T")
_Job = tuple[Callable[..., Any], tuple[object, ...], bool]  # fn, args, durable
_BUSY_MS = 10_000  # on the thread: how long to wait for another process's write lock
_CHECKPOINT_PAGES = 1000  # on the thread: SQLite's automatic checkpoint (its default)
_THREAD_EVERY = 64  # batches on the loop between two on the thread (which checkpoints)


class _Busy(Exception):
    """On the loop, another process holds the write lock: run the batch on the thread."""


class SqliteFile:
    """A SQLite database owned by this process: a held lock file plus one connection thread."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._on_loop: bool | None = None  # the connection's settings: for the loop, the thread
        self._loop_batches = 0  # batches run on the loop since the last one on the thread
        self._busy = asyncio.Lock()  # held while the connection runs a job, on either side
        self._writes: GroupCommit[_Job, Any] = GroupCommit(
            self._flush,
            error=lambda cause: QueueUnavailable(f"{path}: {cause}"),
            name=f"sqlite-writes:{path}",
        )

    @classmethod
    async def open(
        cls, path: Path, schema: Sequence[str], version: int, *, lock: bool = True
    ) -> SqliteFile:
        """Lock ``path`` (``StateLocked`` if held), connect in WAL + FULL, create the schema."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = cls(path, lock_file(path.with_name(path.name + ".lock")) if lock else None)
        try:
            await db.run(db._connect, schema, version)
        except BaseException:
            await db.close()
            raise
        return db

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(connection, *args)`` on the database thread; ``QueueUnavailable`` on failure."""
        if self._closed:
            raise QueueUnavailable(f"{self.path} is closed")
        try:
            # shielded: cancelling the caller must not drop a job already asked for (an ack
            # would be lost); once asked for, a statement runs
            return await asyncio.shield(self._run_on_thread(fn, args))
        except (sqlite3.Error, OSError) as exc:
            raise QueueUnavailable(f"{self.path}: {exc}") from exc

    async def _run_on_thread(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        async with self._busy:
            call = functools.partial(self._call, fn, args)
            return await self._on_thread(call)

    async def write(self, fn: Callable[..., T], *args: object, durable: bool = False) -> T:
        """Run ``fn(connection, *args)`` in the next group transaction; return its result.

        ``fn`` must not open a transaction itself. ``durable``: the commit is fsync'd before this
        returns (``synchronous=FULL``); otherwise it survives a crash of the process but maybe
        not of the machine. ``QueueUnavailable`` when ``fn`` or the commit fails.
        """
        if self._closed:
            raise QueueUnavailable(f"{self.path} is closed")
        return cast(T, await self._writes.submit((fn, args, durable)))

    async def _flush(self, jobs: list[_Job]) -> list[Any]:
        """The jobs' statements on the loop; the ``COMMIT`` there too unless it fsyncs or is
        due to checkpoint, then on the thread (one hop); the whole batch on the thread when
        another process holds the write lock."""
        durable = any(durable for _, _, durable in jobs)
        async with self._busy:
            try:
                out = self._run_jobs(jobs, durable=durable)
            except _Busy:  # wait for the other process's lock on the thread
                self._loop_batches = 0
                run = functools.partial(self._run_batch, jobs, durable)
                return await self._on_thread(run)
            if durable or self._loop_batches >= _THREAD_EVERY:
                self._loop_batches = 0
                await self._on_thread(functools.partial(self._commit, on_loop=False))
            else:
                self._loop_batches += 1
                self._commit(on_loop=True)
            return out

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the connection thread; if cancelled meanwhile, still wait for it to end
        (the caller holds ``_busy``: the connection is the thread's until then)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await future
            raise

    def _settings(self, conn: sqlite3.Connection, *, on_loop: bool) -> None:
        """The busy wait and automatic checkpoint for the side about to use ``conn``: neither
        on the loop, where nothing may wait for the disk or another process."""
        if self._on_loop is not on_loop:
            conn.execute(f"PRAGMA busy_timeout={0 if on_loop else _BUSY_MS}")
            conn.execute(f"PRAGMA wal_autocheckpoint={0 if on_loop else _CHECKPOINT_PAGES}")
            self._on_loop = on_loop

    def _run_batch(self, jobs: list[_Job], durable: bool) -> list[Any]:
        """On the thread: every job in one transaction, committed."""
        out = self._run_jobs(jobs, durable=durable, on_loop=False)
        self._commit(on_loop=False)
        return out

    def _run_jobs(self, jobs: list[_Job], *, durable: bool, on_loop: bool = True) -> list[Any]:
        """Begin a transaction and run every job in it, each in its own savepoint; one result
        or exception per job. On the loop, raises ``_Busy`` (nothing done) when another process
        holds the write lock; on any other error the transaction is rolled back."""
        conn = self._conn
        assert conn is not None
        self._settings(conn, on_loop=on_loop)
        out: list[Any] = []
        try:
            begin(conn, durable=durable)
        except sqlite3.OperationalError as exc:
            if on_loop and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise _Busy from exc
            raise
        try:
            for fn, args, _ in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    value = fn(conn, *args)
                except (sqlite3.Error, ValueError, TypeError) as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    out.append(exc)
                    continue
                conn.execute("RELEASE job")
                out.append(value)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    def _commit(self, *, on_loop: bool) -> None:
        """``COMMIT`` the open transaction (on the thread: with the automatic checkpoint of
        the thread side); roll it back if that fails."""
        conn = self._conn
        assert conn is not None
        try:
            self._settings(conn, on_loop=on_loop)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Finish queued writes, close the connection, stop the thread, release the lock.

        Idempotent.
        """
        if self._closed:
            return
        await self._writes.drain()
        if self._conn is not None:
            with contextlib.suppress(QueueUnavailable):
                await self.run(lambda conn: conn.close())
        self._closed = True
        self._executor.shutdown(wait=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock

    def _call(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        if self._conn is None:  # only _connect runs before the connection exists
            return fn(*args)
        self._settings(self._conn, on_loop=False)
        return fn(self._conn, *args)

    def _connect(self, schema: Sequence[str], version: int) -> None:
        # used on the loop and on the thread, never on both at once (``_busy``)
        conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=_BUSY_MS / 1000, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > version:
            conn.close()
            raise TriagedError(f"{self.path} has schema {current}, newer than this triaged's")
        if current == 0:
            with transaction(conn, durable=True):
                # read again under the write lock: a worker process may have just made it
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    for statement in schema:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={int(version)}")
        self._conn = conn


def lock_file(lock_path: Path) -> int:
    """Take an exclusive ``flock`` on ``lock_path`` (created) and write our pid in it; the
    descriptor holds it (closing every copy releases it). ``StateLocked`` if held."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateLocked(f"{lock_path} is held by another process (pid {owner})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def execute(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> None:
    """One statement: a job for :meth:`SqliteFile.write` (inside its group transaction)."""
    conn.execute(sql, params)


def execute_many(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]) -> None:
    """One statement per row of parameters: a job for :meth:`SqliteFile.write`."""
    conn.executemany(sql, rows)


def begin(conn: sqlite3.Connection, *, durable: bool) -> None:
    """Start a write transaction (``BEGIN IMMEDIATE``: the write lock now, not at the first
    write); a ``durable`` one is fsync'd when it commits."""
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("BEGIN IMMEDIATE")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, durable: bool = False) -> Iterator[None]:
    """One write transaction; ``durable`` ones are fsync'd before COMMIT returns.

    A FULL commit also makes every earlier NORMAL commit of the file durable (one WAL).
    """
    begin(conn, durable=durable)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
