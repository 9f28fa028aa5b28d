"""The Redis queue backend: one Stream, one consumer group, shared by every daemon.

Place in the flow: inbound channels ``put`` here (via the ``Sink``), the dispatcher ``take``s
and settles; several daemons on several machines share the stream (that is how triaged
scales out). Contract: ``router/queue/__init__.py``; key names: ``router/keys.py``.

- ``put``: one flush (``router/batching.py``) sends every waiting put at once: the plain
  ones in ONE Lua call (one XADD each), those with a ``dedupe_key`` in one pipeline of Lua
  GET/SET-PX/XADD; each caller awaits its own future.
- ``take``: (1) once after open, this consumer's own pending entries (XREADGROUP id "0": a
  restart under the same name gets its unsettled leases back at once); (2) due retries are
  moved from the delayed ZSET to the stream (Lua, so two daemons never double-move) and
  entries idle longer than ``lease_s`` are taken over with XAUTOCLAIM; (3) XREADGROUP ">"
  with a short BLOCK on a client whose ``socket_timeout`` exceeds it. ``take_batch(n)`` does
  the same with COUNT ``n`` at each step.
- ``attempt`` = attempts before the entry was (re)added (field ``a``) + ``times_delivered``.
  A lease's token is "<entry id> <times_delivered>": nack and dead_letter act only while the
  entry is still pending with that count, so a stale holder cannot settle a retaken lease.
- Settling deletes the entry (XACK + XDEL; ``ack_batch``: one of each for all its entries);
  nothing is ever trimmed with MAXLEN.
- No caller's cancellation ever reaches redis-py (see ``router.redis.Detached``). The Lua
  scripts are in ``router/queue/redis_scripts.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router.batching import GroupCommit
from router.errors import QueueUnavailable
from router.keys import DEFAULT_PREFIX, GROUP, Keys
from router.message import Message
from router.queue import DeadLetter, Lease, QueueStats
from router.queue.redis_scripts import (
    DEAD,
    MOVE_DUE,
    PUT_DEDUPE,
    PUT_MANY,
    REPLAY,
    REQUEUE,
    RETRY,
)
from router.redis import Detached, connect, create_group, detached, unavailable

_BATCH = 1000  # puts per flush (one Lua call, one pipeline of the deduplicated ones)
_POLL_S = 0.5  # longest XREADGROUP block: how often expired leases and due retries are checked


class RedisQueue:
    """The ``Queue`` on a Redis Stream (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        reader: Redis,
        keys: Keys,
        *,
        consumer: str,
        lease_s: float,
        max_attempts: int,
        dedupe_window_s: float,
    ) -> None:
        self._client = client  # every command except the blocking read
        self._reader = reader  # XREADGROUP BLOCK only: its socket_timeout exceeds the block
        self._keys = keys
        self._consumer = consumer
        self._lease_ms = max(1, math.ceil(lease_s * 1000))
        self._poll_ms = max(1, int(min(lease_s, _POLL_S) * 1000))
        self._wait_ms = self._poll_ms  # the next block: shorter when a retry is due sooner
        self._max_attempts = max_attempts
        self._dedupe_ms = max(1, int(dedupe_window_s * 1000))
        self._scripts = {
            name: client.register_script(lua)
            for name, lua in (("retry", RETRY), ("dead", DEAD), ("requeue", REQUEUE))
        }
        self._replay_script = client.register_script(REPLAY)
        self._put_many = client.register_script(PUT_MANY)
        self._recovered = False  # own pending entries left by a previous run handed out
        self._recover_cursor: bytes | str = "0"
        self._recover_lock = asyncio.Lock()
        self._claim_cursor: bytes | str = "0-0"
        self._puts: GroupCommit[Message, str] = GroupCommit(
            self._commit,
            error=lambda cause: QueueUnavailable(f"redis put failed: {cause}"),
            name=f"redis-puts:{consumer}",
            max_batch=_BATCH,
        )
        self._ops = Detached()
        self._closing = False
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        consumer: str,
        lease_s: float,
        max_attempts: int,
        prefix: str = DEFAULT_PREFIX,
        dedupe_window_s: float = 86400.0,
    ) -> RedisQueue:
        """Connect and create the stream and group if missing; ``QueueUnavailable`` if down."""
        keys = Keys(prefix)
        client = connect(url, socket_timeout_s=10)
        reader = connect(url, socket_timeout_s=_POLL_S + 10)
        try:
            with unavailable("open"):
                await create_group(client, keys)
        except BaseException:
            await client.aclose()
            await reader.aclose()
            raise
        return cls(
            client,
            reader,
            keys,
            consumer=consumer,
            lease_s=lease_s,
            max_attempts=max_attempts,
            dedupe_window_s=dedupe_window_s,
        )

    async def put(self, message: Message) -> str:
        """Park the message for the next flush; return its id once Redis has it."""
        if self._closing:
            raise QueueUnavailable("redis queue is closed")
        return await self._puts.submit(message)

    async def take(self) -> Lease:
        """Lease the next message; what a read got for a cancelled caller is handed back."""
        return (await self.take_batch(1))[0]

    async def take_batch(self, max_n: int) -> list[Lease]:
        """Lease 1 to ``max_n`` messages (one XREADGROUP COUNT ``max_n``), waiting as ``take``."""
        while True:
            job = self._ops.spawn(self._take_once(max(1, max_n)))
            try:
                leases = await asyncio.shield(job)
            except asyncio.CancelledError:
                undo = self._ops.spawn(self._give_back(job))
                with contextlib.suppress(asyncio.CancelledError):  # cancelled again: still runs
                    await asyncio.shield(undo)
                raise
            if leases:
                return leases

    def on_put(self, callback: Callable[[], None]) -> None:
        """Never called: takers wait in ``XREADGROUP BLOCK``, which a put in any process ends."""

    def wake(self) -> None:
        """Nothing to do: see :meth:`on_put`."""

    async def ack(self, lease: Lease) -> None:
        """Acknowledge and delete the entry."""
        await self.ack_batch([lease])

    @detached
    async def ack_batch(self, leases: Sequence[Lease]) -> None:
        """Acknowledge and delete every entry of ``leases``: one XACK and one XDEL."""
        if not leases:
            return
        entry_ids = [lease.token.split()[0] for lease in leases]
        with unavailable("ack"):
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(self._keys.stream, GROUP, *entry_ids)
            pipe.xdel(self._keys.stream, *entry_ids)
            await pipe.execute()

    async def nack(self, lease: Lease, *, retry_in_s: float, reason: str) -> None:
        """Into the delayed set for ``retry_in_s``; dead-letter at ``max_attempts``."""
        if lease.attempt >= self._max_attempts:
            await self.dead_letter(lease, reason=reason)
            return
        retry_ms = max(0, int(retry_in_s * 1000))
        args: list[str | int] = [lease.attempt, retry_ms]
        await self._ops.run(self._settle("retry", [self._keys.delayed], lease, args))

    async def dead_letter(self, lease: Lease, *, reason: str) -> None:
        """Move the entry to dead letters now (only if the lease is still current)."""
        info = {"reason": reason, "attempts": lease.attempt, "failed_at": time.time()}
        k = self._keys
        args: list[str | int] = [lease.message.id, json.dumps(info, ensure_ascii=False)]
        await self._ops.run(self._settle("dead", [k.dead, k.dead_info, k.dead_order], lease, args))

    @detached
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        k = self._keys
        with unavailable("dead_letters"):
            ids = cast(list[bytes], await self._client.zrange(k.dead_order, 0, limit - 1))
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(k.dead, ids)
            pipe.hmget(k.dead_info, ids)
            payloads, infos = await pipe.execute() if ids else ([], [])
        return [
            _dead_letter(message_id, payload, json.loads(info))
            for message_id, payload, info in zip(ids, payloads, infos, strict=True)
            if payload is not None and info is not None
        ]

    @detached
    async def replay(self, ids: list[str] | None = None) -> int:
        """Back onto the stream with attempts reset; unknown ids are ignored."""
        k = self._keys
        keys = [k.dead, k.dead_info, k.dead_order, k.stream]
        total = 0
        with unavailable("replay"):
            if ids is None:
                while batch := cast(list[bytes], await self._client.zrange(k.dead_order, 0, 499)):
                    total += int(await self._replay_script(keys, batch))
            else:
                for start in range(0, len(ids), 500):
                    total += int(await self._replay_script(keys, ids[start : start + 500]))
        return total

    @detached
    async def stats(self) -> QueueStats:
        """Counts; expired but not yet retaken leases count as leased."""
        k = self._keys
        with unavailable("stats"):
            pipe = self._client.pipeline(transaction=True)
            pipe.xlen(k.stream)
            pipe.xpending(k.stream, GROUP)
            pipe.zcard(k.delayed)
            pipe.hlen(k.dead)
            length, pending, delayed, dead = await pipe.execute()
        leased = int(pending["pending"])
        return QueueStats(ready=max(0, length - leased), leased=leased, delayed=delayed, dead=dead)

    async def close(self) -> None:
        """Flush parked puts, finish in-flight reads and settles, disconnect. Idempotent."""
        if self._closed:
            return
        self._closing = True
        await self._puts.drain()
        await self._ops.drain()
        self._closed = True
        await self._client.aclose()
        await self._reader.aclose()

    async def _settle(
        self, script: str, keys: list[str], lease: Lease, args: list[str | int]
    ) -> None:
        """Run a settle script (``SETTLE_HEAD``): only if ``lease`` is still current."""
        entry_id, delivered = lease.token.split()
        with unavailable(script):
            await self._scripts[script](
                [self._keys.stream, *keys], [GROUP, entry_id, delivered, *args]
            )

    async def _give_back(self, job: asyncio.Future[list[Lease]]) -> None:
        """Undo deliveries nobody will process: new entries with the attempts they had."""
        with contextlib.suppress(QueueUnavailable):  # if this fails, the leases just expire
            for lease in await job:
                await self._settle("requeue", [], lease, [lease.attempt - 1])

    async def _take_once(self, count: int) -> list[Lease]:
        if self._closing:
            raise QueueUnavailable("redis queue is closed")
        with unavailable("take"):
            try:
                if not self._recovered:
                    return await self._recover(count)
                leases = await self._claim_expired(count)
                return leases or await self._read_new(count)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await create_group(self._client, self._keys)  # the stream was deleted under us
                return []

    async def _recover(self, count: int) -> list[Lease]:
        """The next of our own pending entries left by a previous process with our name."""
        async with self._recover_lock:
            if self._recovered:
                return []
            stream = self._keys.stream
            reply = await self._client.xreadgroup(
                GROUP, self._consumer, {stream: self._recover_cursor}, count=count
            )
            entries = _entries(reply)
            if not entries:
                self._recovered = True
                return []
            self._recover_cursor = entries[-1][0]
            return await self._leases(entries, delivered=None)

    async def _claim_expired(self, count: int) -> list[Lease]:
        """Move due retries to the stream, then take over up to ``count`` expired leases."""
        k = self._keys
        pipe = self._client.pipeline(transaction=False)
        pipe.eval(MOVE_DUE, 2, k.delayed, k.stream, 100)
        pipe.xautoclaim(
            k.stream,
            GROUP,
            self._consumer,
            self._lease_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        (_, next_due_ms), claim = await pipe.execute()
        self._wait_ms = self._poll_ms if next_due_ms < 0 else min(next_due_ms, self._poll_ms)
        # Redis >= 7 replies [cursor, entries, deleted ids] and drops deleted ids from the PEL
        # itself; 6.2 replies [cursor, entries] with a deleted entry as nil (no id to ack).
        self._claim_cursor = claim[0]
        entries = [
            (entry_id, fields or {})
            for entry_id, fields in cast(
                list[tuple[bytes | None, dict[bytes, bytes] | None]], claim[1]
            )
            if entry_id is not None
        ]
        return await self._leases(entries, delivered=None) if entries else []

    async def _read_new(self, count: int) -> list[Lease]:
        reply = await self._reader.xreadgroup(
            GROUP,
            self._consumer,
            {self._keys.stream: ">"},
            count=count,
            block=max(1, self._wait_ms),
        )
        return await self._leases(_entries(reply), delivered=1)

    async def _leases(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], delivered: int | None
    ) -> list[Lease]:
        leases = []
        for entry_id, fields in entries:
            lease = await self._lease(entry_id, fields, delivered)
            if lease is not None:
                leases.append(lease)
        return leases

    async def _lease(
        self, entry_id: bytes, fields: dict[bytes, bytes], delivered: int | None
    ) -> Lease | None:
        if not fields.get(b"m"):  # deleted while pending: nothing to deliver
            await self._client.xack(self._keys.stream, GROUP, entry_id)
            return None
        if delivered is None:  # recovered or claimed: XPENDING knows the delivery count
            rows = await self._client.xpending_range(
                self._keys.stream, GROUP, entry_id, entry_id, 1
            )
            if not rows:
                return None  # settled by its previous holder meanwhile
            delivered = int(rows[0]["times_delivered"])
        return Lease(
            message=Message.from_json(fields[b"m"]),
            token=f"{entry_id.decode()} {delivered}",
            attempt=int(fields.get(b"a", b"0")) + delivered,
        )

    async def _commit(self, batch: list[Message]) -> list[str | BaseException]:
        """Every waiting put; per put its id (dedupe: the first one's) or the error."""
        results: list[str | BaseException] = [m.id for m in batch]
        plain = [i for i, m in enumerate(batch) if m.dedupe_key is None]
        keyed = [(i, m, key) for i, m in enumerate(batch) if (key := m.dedupe_key) is not None]
        if plain:  # one command: if it fails, every plain put of the batch failed
            try:
                args = [batch[i].to_json() for i in plain]
                await self._put_many(keys=[self._keys.stream], args=args)
            except Exception as exc:  # handed to each plain put's caller by GroupCommit
                for i in plain:
                    results[i] = exc
        if keyed:  # EVAL, not a Script: in a pipeline that costs a SCRIPT EXISTS round trip
            pipe = self._client.pipeline(transaction=False)
            for _, message, key in keyed:
                dedupe, payload, ttl = self._keys.dedupe(key), message.to_json(), self._dedupe_ms
                pipe.eval(PUT_DEDUPE, 2, self._keys.stream, dedupe, payload, message.id, ttl)
            replies = await pipe.execute(raise_on_error=False)
            for (i, _, _), reply in zip(keyed, replies, strict=True):
                results[i] = reply if isinstance(reply, BaseException) else reply.decode()
        return results


def _dead_letter(message_id: bytes, payload: bytes, info: dict[str, object]) -> DeadLetter:
    return DeadLetter(
        id=message_id.decode(),
        message=Message.from_json(payload),
        reason=str(info["reason"]),
        attempts=int(info["attempts"]),  # type: ignore[call-overload]
        failed_at=datetime.fromtimestamp(float(info["failed_at"]), UTC),  # type: ignore[arg-type]
    )


def _entries(reply: object) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREADGROUP reply (RESP2: ``[[stream, entries]]`` or empty)."""
    streams = cast(list[list[Any]], reply or [])
    return [(entry_id, fields or {}) for entry_id, fields in streams[0][1]] if streams else []
