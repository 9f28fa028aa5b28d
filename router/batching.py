"""Group commit: many concurrent callers, one round trip.

Callers park an item and await their own result; a task started on demand flushes every item
waiting at that moment with one call (one SQLite transaction, one Redis pipeline), then
resolves each caller's future. While a flush runs, the next batch gathers. Used by the SQLite
file's writes (``router/sqlite.py``) and by both queues' puts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 (an item)
R = TypeVar("R")

Flush = Callable[[list[I]], Awaitable[Sequence[R | BaseException]]]


class GroupCommit(Generic[I, R]):
    """Batches ``submit`` calls into ``flush`` calls.

    ``flush(items)`` returns one result per item, or an exception for an item that failed; if it
    raises, every item of the batch failed. Each failure reaches its caller as a new
    ``error(cause)`` (one instance per caller: no shared traceback) chained to the cause.
    """

    def __init__(
        self,
        flush: Flush[I, R],
        *,
        error: Callable[[BaseException], Exception],
        name: str,
        max_batch: int = 0,
    ) -> None:
        self._flush, self._error, self._name, self._max = flush, error, name, max_batch
        self._items: list[tuple[I, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """Park ``item`` for the next flush and return its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)
        # shielded: a caller cancelled after parking its item still gets it flushed (an ack)
        return await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait until every parked item has been flushed."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    async def _run(self) -> None:
        while self._items:
            size = self._max or len(self._items)
            batch, self._items = self._items[:size], self._items[size:]
            try:
                results: Sequence[R | BaseException] = await self._flush([i for i, _ in batch])
            except Exception as exc:  # the whole batch failed: the error goes to its callers
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    error = self._error(result)
                    error.__cause__ = result
                    future.set_exception(error)
                else:
                    future.set_result(result)
