"""Redis plumbing shared by the Redis queue and store: connections, error mapping, and
:class:`Detached`, which keeps every caller's cancellation away from redis-py.

redis-py 8.1 swallows some cancellations that land mid-command (a cancelled consumer then
loops forever), so each command runs in a task of its own that a cancelled caller only stops
waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from router.errors import QueueUnavailable
from router.keys import GROUP, Keys

T = TypeVar("T")
P = ParamSpec("P")


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn Redis and socket errors into ``QueueUnavailable`` with the cause chained."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"redis {what} failed: {exc}") from exc


def connect(url: str, *, socket_timeout_s: float) -> Redis:
    """A client that fails fast enough for callers to hear of an outage."""
    return Redis.from_url(
        url,
        protocol=2,  # RESP2: the reply shapes parsed here (redis-py 8 may default to RESP3)
        socket_connect_timeout=5,
        socket_timeout=socket_timeout_s,
        # a few quick retries, not redis-py's default 10: callers must hear of an outage
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries=3),
    )


async def create_group(client: Redis, keys: Keys) -> None:
    """Create the queue's consumer group (and stream) unless it exists."""
    try:
        await client.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Detached:
    """Runs each Redis operation in its own task, awaited through ``asyncio.shield``.

    Why: redis-py 8.1 asyncio sometimes swallows a cancellation that lands mid-command (the
    redis/redis-py#2028 family; measured here on ~10 % of cancels): the command returns
    normally and the cancelled task carries on, e.g. a dispatcher worker that never stops.
    Here a caller's cancellation only ever hits the shield, so it always raises; the operation
    itself completes (an ack is never half-sent), and ``drain`` awaits what is still running.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[object]] = set()

    def spawn(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Start ``work`` in its own task, tracked until done."""
        task = asyncio.ensure_future(work)
        self._tasks.add(cast("asyncio.Future[object]", task))
        task.add_done_callback(self._done)
        return task

    async def run(self, work: Awaitable[T]) -> T:
        """Run ``work`` detached from the caller's cancellation and return its result."""
        return await asyncio.shield(self.spawn(work))

    async def drain(self) -> None:
        """Wait for every spawned task, including those started meanwhile."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Future[T]) -> None:
        self._tasks.discard(cast("asyncio.Future[object]", task))
        if not task.cancelled():
            task.exception()  # mark retrieved: a cancelled caller no longer awaits it


class _HasOps(Protocol):
    _ops: Detached


S = TypeVar("S", bound=_HasOps)


def detached(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """Decorate an async method to run through ``self._ops`` (:class:`Detached`)."""

    @functools.wraps(method)
    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._ops.run(method(self, *args, **kwargs))

    return wrapper
