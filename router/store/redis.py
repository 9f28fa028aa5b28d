"""The Redis ticket-state store, shared by every daemon on one Redis (keys: ``router/keys.py``).

Place in the flow: the dispatcher records each routing decision and each delivery here (see
``router/store/__init__.py``).

- delivery log: one SET of targets per message, expiring after the retention.
- decisions: one HASH per message (``m`` the message JSON, ``d`` the decision JSON) expiring
  after the retention, indexed by a ZSET scored by decision time (µs); each write trims the index
  by age, and every ``_PRUNE_EVERY`` writes ``prune`` also deletes the hashes beyond
  ``max_recent``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis

from router.keys import DEFAULT_PREFIX, Keys
from router.message import Message
from router.redis import Detached, connect, detached, unavailable

_PRUNE_EVERY = 100
_CHUNK = 1000

# A batch of decisions in one command (redis-py packs and parses each pipelined command in
# Python: three per message cost more than the rest of a Redis delivery's bookkeeping).
# KEYS[1] the decisions index; then per message its decision HASH and its delivered SET.
# ARGV[1] retention ms, ARGV[2] now µs, ARGV[3] index cutoff µs; then per message its id,
# message JSON and decision JSON. Returns per message the targets it was delivered to.
_BEGIN_MANY = """
local out = {}
for i = 1, (#KEYS - 1) / 2 do
  local hash, a = KEYS[2 * i], 3 * i + 1
  redis.call('HSET', hash, 'm', ARGV[a + 1], 'd', ARGV[a + 2])
  redis.call('PEXPIRE', hash, ARGV[1])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[a])
  out[i] = redis.call('SMEMBERS', KEYS[2 * i + 1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return out
"""
# KEYS: delivered SETs; ARGV[1] retention ms, then the target to add to each.
_RECORD_MANY = """
for i = 1, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""


class RedisStore:
    """The ``Store`` on Redis."""

    def __init__(self, client: Redis, keys: Keys, *, retention_s: float, max_recent: int) -> None:
        self._client = client
        self._keys = keys
        self._retention_ms = max(1, math.ceil(retention_s * 1000))
        self._retention_us = self._retention_ms * 1000
        self._max_recent = max_recent
        self._writes = 0
        self._ops = Detached()  # no caller's cancellation reaches redis-py (see Detached)
        self._closed = False
        self._begin_many = client.register_script(_BEGIN_MANY)
        self._record_many = client.register_script(_RECORD_MANY)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention_s: float,
        max_recent: int,
    ) -> RedisStore:
        """Connect (``QueueUnavailable`` if Redis is down) and prune once."""
        client = connect(url, socket_timeout_s=10)
        store = cls(client, Keys(prefix), retention_s=retention_s, max_recent=max_recent)
        try:
            await store.prune()
        except BaseException:
            await client.aclose()
            raise
        return store

    @detached
    async def delivered(self, message_id: str, target: str) -> bool:
        """Whether ``message_id`` was already delivered to ``target``."""
        with unavailable("delivered"):
            return bool(await self._client.sismember(self._keys.delivered(message_id), target))

    async def record_delivery(self, message_id: str, target: str) -> None:
        """Remember that ``message_id`` reached ``target`` (``record_deliveries``)."""
        await self.record_deliveries([(message_id, target)])

    async def begin_batch(
        self, decided: Sequence[tuple[Message, dict[str, Any]]]
    ) -> dict[str, set[str]]:
        """Record every decision and read each message's delivered targets: one script call."""
        if not decided:
            return {}
        records = [
            (message, json.dumps(decision, ensure_ascii=False)) for message, decision in decided
        ]  # TypeError here, in the caller, before anything is written
        done = await self._ops.run(self._begin_batch(records))
        before, self._writes = self._writes, self._writes + len(records)
        if before // _PRUNE_EVERY != self._writes // _PRUNE_EVERY:
            await self.prune()
        return done

    async def _begin_batch(self, records: list[tuple[Message, str]]) -> dict[str, set[str]]:
        now_us = time.time_ns() // 1000
        keys = [self._keys.decisions]
        args: list[str | int] = [self._retention_ms, now_us, now_us - self._retention_us]
        for message, record in records:
            keys += (self._keys.decision(message.id), self._keys.delivered(message.id))
            args += (message.id, message.to_json(), record)
        with unavailable("begin_batch"):
            members = cast(list[list[bytes]], await self._begin_many(keys=keys, args=args))
        return {
            message.id: {target.decode() for target in targets}
            for (message, _), targets in zip(records, members, strict=True)
        }

    @detached
    async def record_deliveries(self, deliveries: Sequence[tuple[str, str]]) -> None:
        """Remember every ``(message_id, target)``: one command."""
        if not deliveries:
            return
        keys = [self._keys.delivered(message_id) for message_id, _ in deliveries]
        args: list[str | int] = [self._retention_ms, *(target for _, target in deliveries)]
        with unavailable("record_deliveries"):
            await self._record_many(keys=keys, args=args)

    async def record_decision(self, message: Message, decision: dict[str, Any]) -> None:
        """Store the message and its decision, replacing an earlier one (``begin_batch``)."""
        await self.begin_batch([(message, decision)])

    @detached
    async def decision(self, message_id: str) -> tuple[Message, dict[str, Any]] | None:
        """The message and its latest decision, or ``None``."""
        with unavailable("decision"):
            payload, record = await self._client.hmget(self._keys.decision(message_id), "m", "d")
        if payload is None or record is None:
            return None
        return Message.from_json(payload), json.loads(record)

    @detached
    async def recent(self, limit: int = 1000) -> list[tuple[Message, dict[str, Any]]]:
        """Up to ``limit`` decided messages, newest first (expired ones are skipped)."""
        with unavailable("recent"):
            ids = cast(
                list[bytes], await self._client.zrevrange(self._keys.decisions, 0, limit - 1)
            )
            pipe = self._client.pipeline(transaction=False)
            for message_id in ids:
                pipe.hmget(self._keys.decision(message_id.decode()), "m", "d")
            rows = await pipe.execute() if ids else []
        return [
            (Message.from_json(payload), json.loads(record))
            for payload, record in rows
            if payload is not None and record is not None
        ]

    @detached
    async def prune(self) -> None:
        """Trim the index by age, and delete decisions beyond ``max_recent``."""
        index = self._keys.decisions
        cutoff_us = time.time_ns() // 1000 - self._retention_us
        with unavailable("prune"):
            await self._client.zremrangebyscore(index, "-inf", cutoff_us)
            while (over := await self._client.zcard(index) - self._max_recent) > 0:
                excess = cast(
                    list[bytes], await self._client.zrange(index, 0, min(over, _CHUNK) - 1)
                )
                pipe = self._client.pipeline(transaction=True)
                pipe.delete(*(self._keys.decision(i.decode()) for i in excess))
                pipe.zrem(index, *excess)
                await pipe.execute()

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._ops.drain()
            await self._client.aclose()
