"""The queue contract suite, run against both backends (uvicorn ``http_protocol_cls`` style).

Every test runs on a real SQLite file in a temp state dir and on the private redis-server of
``tests/conftest.py``. Waits are bounded by ``asyncio.timeout`` hang-guards only; nothing
asserts that anything was fast.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.errors import QueueUnavailable, StateLocked
from router.message import Attachment, Message, Sender, Thread
from router.queue import Lease, Queue, QueueStats, open_queue
from router.queue.redis import RedisQueue
from router.queue.sqlite import SqliteQueue
from tests.servers import Openers, free_port, redis_server

PREFIX = "test:"
GUARD_S = 15.0  # hang-guard only: far above any expected wait


def message(text: str = "你好，我的订单还没到", **changes: object) -> Message:
    """A message with every field set, in Chinese where text is free."""
    base = Message(
        channel="email",
        source="support-mail",
        received_at=datetime(2026, 11, 22, 8, 30, 1, 123456, tzinfo=UTC),
        sender=Sender(address="张三@例え.test", name="张三"),
        recipients=("support@example.test", "售后@example.test"),
        subject="订单 #1234 未送达",
        text=text,
        quoted="在 2026-11-20，客服 写道：\n> 已发货",
        attachments=(
            Attachment(
                name="发票.pdf",
                type="application/pdf",
                size=4,
                sha256="ab" * 32,
                data=base64.b64encode(b"%PDF"),
            ),
        ),
        thread=Thread(
            message_id="<a@x>", in_reply_to="<b@x>", references=("<b@x>", "<c@x>"), chat_id="42"
        ),
        headers=(("X-Priority", "1"), ("Subject", "订单")),
        fields={"order": {"id": 1234, "items": ["书", "笔"]}, "vip": True, "score": 0.5},
    )
    return base.model_copy(update=changes)


class Backend(Openers[Queue]):
    """Opens queues of one kind on one state dir / Redis; closes them all at teardown."""

    async def open(
        self,
        *,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        consumer: str = "worker-1",
        dedupe_window_s: float = 86400.0,
        admin: bool = False,
    ) -> Queue:
        queue = await open_queue(
            self.kind,  # type: ignore[arg-type]
            state_dir=self.state_dir,
            redis_url=self.redis_url,
            consumer=consumer,
            lease_s=lease_s,
            max_attempts=max_attempts,
            prefix=PREFIX,
            dedupe_window_s=dedupe_window_s,
            admin=admin,
        )
        return self.track(queue)


@pytest.fixture(params=["sqlite", "redis"])
async def backend(
    request: pytest.FixtureRequest, state_dir: Path, redis_url: str
) -> AsyncIterator[Backend]:
    """The contract suite's parameter: each test runs once per backend."""
    opener = Backend(request.param, state_dir, redis_url)
    yield opener
    await opener.close_all()


@pytest.fixture
async def queue(backend: Backend) -> Queue:
    """A queue with a long lease (expiry never explains a result)."""
    return await backend.open()


async def take(queue: Queue) -> Lease:
    async with asyncio.timeout(GUARD_S):
        return await queue.take()


async def test_put_take_ack_round_trip(queue: Queue) -> None:
    sent = message()
    assert await queue.put(sent) == sent.id
    lease = await take(queue)
    assert lease.message == sent
    assert lease.message.text == "你好，我的订单还没到"
    assert lease.attempt == 1
    await queue.ack(lease)
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)


async def test_put_is_durable_across_reopen(backend: Backend) -> None:
    """put → close → a new queue object (sqlite: same file; redis: a new client) → take."""
    first = await backend.open()
    sent = message()
    await first.put(sent)
    await first.close()
    second = await backend.open(consumer="worker-2")
    lease = await take(second)
    assert (lease.message, lease.attempt) == (sent, 1)


async def test_lease_hides_message_from_other_takers(queue: Queue) -> None:
    a, b = message("A"), message("B")
    await queue.put(a)
    first = await take(queue)
    await queue.put(b)
    second = await take(queue)  # A is leased, so B comes next although A is older
    assert (first.message.id, second.message.id) == (a.id, b.id)
    assert (await queue.stats()).leased == 2


async def test_expired_lease_is_taken_again_with_next_attempt(backend: Backend) -> None:
    """take (attempt 1) → lease expires → take (attempt 2); the stale lease can't settle it."""
    queue = await backend.open(lease_s=0.2)
    sent = message()
    await queue.put(sent)
    stale = await take(queue)
    again = await take(queue)
    assert (again.message, again.attempt) == (sent, 2)
    await queue.nack(stale, retry_in_s=0, reason="stale holder")  # ignored: not current
    await queue.dead_letter(stale, reason="stale holder")  # ignored too
    assert await queue.stats() == QueueStats(ready=0, leased=1, delayed=0, dead=0)
    await queue.ack(again)
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)


async def test_restart_gets_unsettled_lease_back_at_once(backend: Backend) -> None:
    """take → close without settling (a crash) → reopen (same consumer) → taken again at once.

    The lease is an hour long: only the restart rule can explain the redelivery.
    """
    queue = await backend.open(lease_s=3600)
    sent = message()
    await queue.put(sent)
    await take(queue)
    await queue.close()
    reopened = await backend.open(lease_s=3600)
    lease = await take(reopened)
    assert (lease.message, lease.attempt) == (sent, 2)


async def test_nack_delays_the_message(queue: Queue) -> None:
    await queue.put(message())
    await queue.nack(await take(queue), retry_in_s=3600, reason="target down")
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=1, dead=0)


async def test_nack_then_ready_again(queue: Queue) -> None:
    sent = message()
    await queue.put(sent)
    await queue.nack(await take(queue), retry_in_s=0.1, reason="target down")
    lease = await take(queue)
    assert (lease.message, lease.attempt) == (sent, 2)


async def test_nack_at_max_attempts_dead_letters(backend: Backend) -> None:
    queue = await backend.open(max_attempts=2)
    sent = message()
    await queue.put(sent)
    await queue.nack(await take(queue), retry_in_s=0, reason="timeout")
    await queue.nack(await take(queue), retry_in_s=0, reason="timeout again")
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=1)
    [dead] = await queue.dead_letters()
    assert (dead.id, dead.message, dead.reason, dead.attempts) == (
        sent.id,
        sent,
        "timeout again",
        2,
    )
    assert dead.failed_at.tzinfo is not None


async def test_dead_letter_list_and_replay(queue: Queue) -> None:
    a, b, c = message("A"), message("B"), message("C")
    for sent in (a, b, c):
        await queue.put(sent)
    await queue.dead_letter(await take(queue), reason="bad A")
    await queue.dead_letter(await take(queue), reason="bad B")
    assert [(d.id, d.reason, d.attempts) for d in await queue.dead_letters()] == [
        (a.id, "bad A", 1),
        (b.id, "bad B", 1),
    ]
    assert [d.id for d in await queue.dead_letters(limit=1)] == [a.id]
    assert await queue.replay(["no-such-id", b.id]) == 1
    taken = [await take(queue), await take(queue)]
    assert {lease.message.id for lease in taken} == {b.id, c.id}
    assert [lease.attempt for lease in taken] == [1, 1]
    assert await queue.replay() == 1
    lease = await take(queue)
    assert (lease.message, lease.attempt) == (a, 1)
    assert await queue.dead_letters() == []
    assert await queue.replay() == 0


async def test_dedupe_key_returns_first_id_and_adds_nothing(queue: Queue) -> None:
    first = message(dedupe_key="imap:support:<a@x>")
    again = message(dedupe_key="imap:support:<a@x>")
    assert first.id != again.id
    assert await queue.put(first) == first.id
    assert await queue.put(again) == first.id
    burst = [message(dedupe_key="telegram:update:7") for _ in range(5)]
    ids = await asyncio.gather(*(queue.put(m) for m in burst))
    assert len(set(ids)) == 1  # whichever of the burst the writer committed first
    assert (await queue.stats()).ready == 2


async def test_one_flush_mixing_plain_and_deduplicated_puts(queue: Queue) -> None:
    """Puts parked at one moment share one flush: plain ones (one Lua call on Redis) and keyed
    ones (the dedupe path) each get the right id, and every payload comes back intact."""
    plain = [message(f"退款 {i} 🎉") for i in range(30)]
    keyed = [message(f"重复 {i}", dedupe_key="webhook:shop:order-9") for i in range(4)]
    other = [message(f"独立 {i}", dedupe_key=f"webhook:shop:k{i}") for i in range(3)]
    batch = [*plain[:10], *keyed, *plain[10:20], *other, *plain[20:]]
    ids = await asyncio.gather(*(queue.put(m) for m in batch))
    by_id = dict(zip((m.id for m in batch), ids, strict=True))
    assert all(by_id[m.id] == m.id for m in plain + other)
    assert len({by_id[m.id] for m in keyed}) == 1
    expected = {m.id: m.text for m in plain + other} | {
        by_id[keyed[0].id]: next(m.text for m in keyed if m.id == by_id[keyed[0].id])
    }
    leases = await take_batch(queue, 100)
    assert {lease.message.id: lease.message.text for lease in leases} == expected
    await queue.ack_batch(leases)


async def test_concurrent_puts_are_durable_and_taken_exactly_once(queue: Queue) -> None:
    sent = [message(f"消息 {i}") for i in range(200)]
    ids = await asyncio.gather(*(queue.put(m) for m in sent))
    assert ids == [m.id for m in sent]
    seen: Counter[str] = Counter()
    all_acked = asyncio.Event()

    async def worker() -> None:
        while True:
            lease = await queue.take()
            seen[lease.message.id] += 1
            await queue.ack(lease)
            if seen.total() >= len(sent):
                all_acked.set()

    async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
        workers = [tg.create_task(worker()) for _ in range(8)]
        await all_acked.wait()
        for task in workers:  # idle in take(): cancelling them must hold nothing
            task.cancel()
    assert seen == Counter(ids)
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)


async def test_cancelled_take_holds_nothing(queue: Queue) -> None:
    """Cancel takers while, or just after, a message arrives: nothing is lost or leased.

    The lease is 30 s and the guard 15 s: a message stuck under a cancelled taker would hang.
    """
    sent = [message(f"消息 {i}") for i in range(20)]
    taken: list[Lease] = []
    for i, item in enumerate(sent):
        waiter = asyncio.create_task(queue.take())
        await asyncio.sleep(0.005 * (i % 4))
        await queue.put(item)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            taken.append(await waiter)
    while len(taken) < len(sent):
        taken.append(await take(queue))
    assert sorted(lease.message.id for lease in taken) == sorted(m.id for m in sent)
    assert {lease.attempt for lease in taken} == {1}
    assert (await queue.stats()).leased == len(sent)


async def test_stats_counts_each_state(queue: Queue) -> None:
    for text in "ABCD":
        await queue.put(message(text))
    await take(queue)
    await queue.nack(await take(queue), retry_in_s=3600, reason="later")
    await queue.dead_letter(await take(queue), reason="never")
    assert await queue.stats() == QueueStats(ready=1, leased=1, delayed=1, dead=1)


async def test_close_flushes_parked_puts_and_is_idempotent(backend: Backend) -> None:
    queue = await backend.open()
    sent = [message(str(i)) for i in range(10)]
    puts = [asyncio.create_task(queue.put(m)) for m in sent]
    await asyncio.sleep(0)  # every put is parked, waiting for the writer
    await queue.close()
    await queue.close()
    assert await asyncio.gather(*puts) == [m.id for m in sent]
    with pytest.raises(QueueUnavailable):
        await queue.put(message())
    assert (await (await backend.open()).stats()).ready == 10


async def test_admin_queue_beside_a_running_one_lists_and_replays(backend: Backend) -> None:
    """The CLI's dead-letter commands open an admin queue while the daemon runs:
    daemon dead-letters → admin lists it → admin replays → the daemon's waiting take gets it.
    """
    daemon = await backend.open()
    sent = message()
    await daemon.put(sent)
    await daemon.dead_letter(await take(daemon), reason="bad address")
    admin = await backend.open(consumer="worker-1-admin", admin=True)
    assert [(d.id, d.reason) for d in await admin.dead_letters()] == [(sent.id, "bad address")]
    waiting = asyncio.create_task(take(daemon))
    assert await admin.replay() == 1
    lease = await waiting
    assert (lease.message, lease.attempt) == (sent, 1)


# --- backend-specific ------------------------------------------------------------------------


async def test_sqlite_second_opener_gets_state_locked(state_dir: Path) -> None:
    path = state_dir / "queue.sqlite3"
    first = await SqliteQueue.open(path, lease_s=30, max_attempts=3)
    try:
        with pytest.raises(StateLocked, match=r"queue\.sqlite3\.lock"):
            await SqliteQueue.open(path, lease_s=30, max_attempts=3)
    finally:
        await first.close()
    second = await SqliteQueue.open(path, lease_s=30, max_attempts=3)
    await second.close()


async def test_sqlite_settle_waits_for_another_writer_off_the_loop(state_dir: Path) -> None:
    """Settles run on the event loop, which must never wait for a write lock another process
    holds (``triaged dead-letters replay`` beside the daemon): the batch goes to the thread,
    waits there, and lands once the lock is free."""
    path = state_dir / "queue.sqlite3"
    queue = await SqliteQueue.open(path, lease_s=30, max_attempts=3)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await queue.put(message())
        lease = await take(queue)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process takes it
        ack = asyncio.create_task(queue.ack(lease))
        for _ in range(5):  # the loop runs on (on the loop, a busy wait would block these)
            await asyncio.sleep(0.01)
        assert not ack.done()
        other.execute("COMMIT")
        async with asyncio.timeout(GUARD_S):
            await ack
        assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)
    finally:
        other.close()
        await queue.close()


async def test_sqlite_expired_dedupe_keys_are_pruned(state_dir: Path) -> None:
    """Every ``_PRUNE_EVERY``-th put batch forgets the dedupe keys whose window has passed
    (on the connection thread, in a transaction of its own)."""
    from router.queue import sqlite as sqlite_queue

    path = state_dir / "queue.sqlite3"
    queue = await SqliteQueue.open(path, lease_s=30, max_attempts=3, dedupe_window_s=0.0)
    try:
        await queue.put(message(dedupe_key="telegram:update:1"))
        queue._batches = sqlite_queue._PRUNE_EVERY - 1  # the next batch prunes
        await queue.put(message(dedupe_key="telegram:update:2"))
        with sqlite3.connect(path) as conn:
            keys = [row[0] for row in conn.execute("SELECT key FROM dedupe")]
        assert keys == ["telegram:update:2"]  # the first one's window (0 s) had passed
    finally:
        await queue.close()


_CHILD = """
import asyncio, sys
from router.message import Message, Sender
from router.queue.sqlite import SqliteQueue

async def main():
    queue = await SqliteQueue.open(sys.argv[1], lease_s=3600, max_attempts=5)
    await queue.put(Message(channel="email", source="s", sender=Sender(address="a@b"), text="崩溃"))
    lease = await queue.take()
    print(lease.message.id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_sqlite_kill_9_releases_lock_and_lease(state_dir: Path) -> None:
    """A child takes a message and is SIGKILLed; reopening gets it back at once (1 h lease)."""
    path = state_dir / "queue.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(path), stdout=asyncio.subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    async with asyncio.timeout(GUARD_S):
        taken_id = (await child.stdout.readline()).decode().strip()
    child.kill()
    await child.communicate()
    queue = await SqliteQueue.open(path, lease_s=3600, max_attempts=5)
    try:
        lease = await take(queue)
        assert (lease.message.id, lease.message.text, lease.attempt) == (taken_id, "崩溃", 2)
    finally:
        await queue.close()


async def test_redis_other_consumer_takes_over_expired_lease(redis_url: str) -> None:
    """Worker A takes and stalls; after lease_s worker B claims it (XAUTOCLAIM), attempt 2."""
    a = await RedisQueue.open(redis_url, consumer="a", lease_s=0.2, max_attempts=3, prefix=PREFIX)
    b = await RedisQueue.open(redis_url, consumer="b", lease_s=0.2, max_attempts=3, prefix=PREFIX)
    try:
        sent = message()
        await a.put(sent)
        stalled = await take(a)
        claimed = await take(b)
        assert (stalled.attempt, claimed.message, claimed.attempt) == (1, sent, 2)
        await b.ack(claimed)
        await a.ack(stalled)  # late ack of a taken-over lease: harmless
        assert await b.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)
    finally:
        await a.close()
        await b.close()


async def test_redis_keys_all_under_prefix(redis_url: str) -> None:
    queue = await RedisQueue.open(
        redis_url, consumer="c", lease_s=30, max_attempts=1, prefix=PREFIX
    )
    try:
        await queue.put(message(dedupe_key="k"))
        await queue.put(message())
        await queue.nack(await take(queue), retry_in_s=0, reason="dead at once")
        await queue.nack(await take(queue), retry_in_s=0, reason="dead at once")
    finally:
        await queue.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in await client.keys("*"))
    finally:
        await client.aclose()
    assert keys
    assert [key for key in keys if not key.startswith(PREFIX)] == []


async def test_redis_unreachable_raises_queue_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with asyncio.timeout(GUARD_S):
        with pytest.raises(QueueUnavailable) as caught:
            await RedisQueue.open(url, consumer="c", lease_s=30, max_attempts=3)
    assert isinstance(caught.value.__cause__, RedisError | OSError)


async def test_redis_going_down_fails_put_and_take(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        queue = await RedisQueue.open(url, consumer="c", lease_s=30, max_attempts=3)
    try:
        async with asyncio.timeout(GUARD_S):
            with pytest.raises(QueueUnavailable) as caught:
                await queue.put(message())
            assert isinstance(caught.value.__cause__, RedisError | OSError)
            with pytest.raises(QueueUnavailable):
                await queue.take()
    finally:
        await queue.close()


async def take_batch(queue: Queue, max_n: int) -> list[Lease]:
    async with asyncio.timeout(GUARD_S):
        return await queue.take_batch(max_n)


async def put_and_lease(queue: Queue, n: int) -> list[Lease]:
    """Put ``n`` messages and lease them all (a batch may come back short)."""
    for i in range(n):
        await queue.put(message(f"消息 {i}"))
    leases: list[Lease] = []
    while len(leases) < n:
        leases.extend(await take_batch(queue, n))
    return leases


async def test_take_batch_leases_up_to_max_n_each_once(queue: Queue) -> None:
    sent = [message(f"退款 {i}") for i in range(7)]
    for item in sent:
        await queue.put(item)
    first = await take_batch(queue, 5)
    assert 1 <= len(first) <= 5
    taken = list(first)
    while len(taken) < len(sent):
        taken.extend(await take_batch(queue, 5))
    assert sorted(lease.message.id for lease in taken) == sorted(m.id for m in sent)
    assert {lease.attempt for lease in taken} == {1}
    assert {lease.message.id: lease.message for lease in taken} == {m.id: m for m in sent}
    assert (await queue.stats()).leased == len(sent)


async def test_take_batch_waits_for_a_put(queue: Queue) -> None:
    waiter = asyncio.create_task(take_batch(queue, 10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    sent = message()
    await queue.put(sent)
    leases = await waiter
    assert [lease.message for lease in leases] == [sent]


async def test_ack_batch_removes_only_the_given_leases(queue: Queue) -> None:
    leases = await put_and_lease(queue, 4)
    await queue.ack_batch(leases[:3])
    await queue.ack_batch([])
    assert await queue.stats() == QueueStats(ready=0, leased=1, delayed=0, dead=0)
    await queue.ack_batch(leases[3:])
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)


async def test_leases_of_one_batch_settle_independently(queue: Queue) -> None:
    leases = await put_and_lease(queue, 3)
    done, retried, dead = leases
    await queue.nack(retried, retry_in_s=0, reason="稍后")
    await queue.dead_letter(dead, reason="永久失败")
    await queue.ack(done)
    again = await take_batch(queue, 3)
    assert [(lease.message.id, lease.attempt) for lease in again] == [(retried.message.id, 2)]
    await queue.ack_batch(again)
    assert [d.message.id for d in await queue.dead_letters()] == [dead.message.id]
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=1)


async def test_expired_batch_leases_are_taken_again(backend: Backend) -> None:
    queue = await backend.open(lease_s=0.2)
    for i in range(3):
        await queue.put(message(f"消息 {i}"))
    first: list[Lease] = []
    while len(first) < 3:
        first.extend(await take_batch(queue, 3))
    again: list[Lease] = []
    while len(again) < 3:  # nothing settled: every lease expires and comes back
        again.extend(await take_batch(queue, 3))
    assert sorted(lease.message.id for lease in again) == sorted(f.message.id for f in first)
    assert {lease.attempt for lease in again} == {2}
    await queue.ack_batch(again)
    assert await queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)


async def test_cancelled_take_batch_holds_nothing(queue: Queue) -> None:
    """Like ``test_cancelled_take_holds_nothing``, with batches: every message comes back."""
    sent = [message(f"消息 {i}") for i in range(20)]
    taken: list[Lease] = []
    for i in range(0, len(sent), 2):
        waiter = asyncio.create_task(queue.take_batch(5))
        await asyncio.sleep(0.005 * (i % 4))
        await queue.put(sent[i])
        await queue.put(sent[i + 1])
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            taken.extend(await waiter)
    while len(taken) < len(sent):
        taken.extend(await take_batch(queue, 5))
    assert sorted(lease.message.id for lease in taken) == sorted(m.id for m in sent)
    assert {lease.attempt for lease in taken} == {1}
    assert (await queue.stats()).leased == len(sent)
