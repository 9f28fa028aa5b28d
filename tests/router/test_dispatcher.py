"""The dispatcher on a real SQLite queue and store, with fake senders: batches, outcomes, stop.

Waits are bounded by ``asyncio.timeout`` hang-guards only; nothing asserts that anything was fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.config import DispatcherConfig, RetryConfig
from router.dispatcher import Dispatcher
from router.errors import PermanentFailure, TemporaryFailure
from router.interfaces import Delivery
from router.message import Message, Sender
from router.queue import Lease, QueueStats
from router.queue.sqlite import SqliteQueue
from router.store.sqlite import SqliteStore
from rules.loader import RuleSet, load_text

GUARD_S = 15.0  # hang-guard only

RULES = """
version: 1
categories: [after-sales, consultation, general]
teams:
  aftersales: {inbox: [mail, hook]}
  sales: {inbox: [mail]}
  triage: {inbox: [mail]}
defaults: {team: triage, category: general, priority: low}
rules:
  - id: refund
    when: {text: {contains_any: [退款]}}
    set: {team: aftersales, category: after-sales, priority: medium}
  - id: price
    when: {text: {contains_any: [价格]}}
    set: {team: sales, category: consultation}
"""


class FakeSender:
    """Records deliveries; fails or blocks for the subjects it is told to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[str, int]] = []  # (message id, attempt)
        self.fail: dict[str, Exception] = {}  # subject → what send raises
        self.block: set[str] = set()  # subjects whose send never returns
        self.blocked = asyncio.Event()
        self.progress = asyncio.Event()  # set after each delivery

    async def start(self) -> None:
        pass

    async def send(self, delivery: Delivery) -> None:
        subject = delivery.message.subject
        if subject in self.block:
            self.blocked.set()
            await asyncio.Future()
        if subject in self.fail:
            raise self.fail[subject]
        self.sent.append((delivery.message.id, delivery.attempt))
        self.progress.set()

    async def close(self) -> None:
        pass


@dataclass
class Setup:
    queue: SqliteQueue
    store: SqliteStore
    mail: FakeSender
    hook: FakeSender
    dispatcher: Dispatcher


@pytest.fixture
async def setup(state_dir: Path) -> AsyncIterator[Setup]:
    queue = await SqliteQueue.open(state_dir / "queue.sqlite3", lease_s=30, max_attempts=3)
    store = await SqliteStore.open(state_dir / "state.sqlite3", retention_s=3600, max_recent=1000)
    mail, hook = FakeSender("mail"), FakeSender("hook")
    ruleset: RuleSet = load_text(RULES, "rules.yaml", outputs=["mail", "hook"])
    config = DispatcherConfig(
        workers=3, retry=RetryConfig(initial=0.01, max=0.02), stop_timeout=0.2
    )
    dispatcher = Dispatcher(
        queue, store, {"mail": mail, "hook": hook}, lambda: ruleset, config, max_attempts=3
    )
    yield Setup(queue, store, mail, hook, dispatcher)
    await queue.close()
    await store.close()


def message(subject: str, text: str = "我要退款") -> Message:
    return Message(
        channel="webhook", source="shop", sender=Sender(address="c-1"), subject=subject, text=text
    )


async def take_all(queue: SqliteQueue, n: int) -> list[Lease]:
    leases: list[Lease] = []
    async with asyncio.timeout(GUARD_S):
        while len(leases) < n:
            leases.extend(await queue.take_batch(n - len(leases)))
    return leases


async def test_a_batch_is_delivered_recorded_and_acked(setup: Setup) -> None:
    sent = [message(f"退款 {i}") for i in range(5)] + [message("报价", "价格多少")]
    for item in sent:
        await setup.queue.put(item)
    await setup.dispatcher.handle_batch(await take_all(setup.queue, len(sent)))
    assert sorted(setup.mail.sent) == sorted((m.id, 1) for m in sent)
    assert sorted(setup.hook.sent) == sorted((m.id, 1) for m in sent[:5])  # sales: mail only
    assert setup.dispatcher.settled == {"routed": 6, "retried": 0, "dead": 0}
    assert await setup.queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)
    for item in sent:
        assert await setup.store.delivered(item.id, "mail")
        recorded = await setup.store.decision(item.id)
        assert recorded is not None
        assert recorded[0] == item
    assert (await setup.store.decision(sent[-1].id) or (None, {}))[1]["team"] == "sales"


async def test_each_message_settles_by_its_own_outcome(setup: Setup) -> None:
    ok, temporary, permanent = message("好"), message("稍后"), message("永久")
    setup.hook.fail = {"稍后": TemporaryFailure("503"), "永久": PermanentFailure("410")}
    for item in (ok, temporary, permanent):
        await setup.queue.put(item)
    await setup.dispatcher.handle_batch(await take_all(setup.queue, 3))
    assert setup.dispatcher.settled == {"routed": 1, "retried": 1, "dead": 1}
    assert [d.message.id for d in await setup.queue.dead_letters()] == [permanent.id]
    # the retry reaches only the target it missed: mail is in the delivery log
    assert await setup.store.delivered(temporary.id, "mail")
    assert not await setup.store.delivered(temporary.id, "hook")
    setup.hook.fail = {}
    (lease,) = await take_all(setup.queue, 1)
    assert (lease.message.id, lease.attempt) == (temporary.id, 2)
    await setup.dispatcher.handle_batch([lease])
    assert setup.mail.sent.count((temporary.id, 1)) == 1
    assert (temporary.id, 2) not in setup.mail.sent
    assert (temporary.id, 2) in setup.hook.sent
    assert setup.dispatcher.settled == {"routed": 2, "retried": 1, "dead": 1}
    assert await setup.queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=1)


async def test_a_sender_bug_is_retried_not_lost(setup: Setup) -> None:
    setup.hook.fail = {"坏": RuntimeError("bug")}
    await setup.queue.put(message("坏"))
    await setup.dispatcher.handle_batch(await take_all(setup.queue, 1))
    assert setup.dispatcher.settled == {"routed": 0, "retried": 1, "dead": 0}
    assert (await setup.queue.stats()).delayed == 1


async def test_cancelled_batch_records_the_deliveries_already_done(setup: Setup) -> None:
    fast, slow = message("快"), message("慢")
    setup.hook.block = {"慢"}
    setup.hook.progress = setup.mail.progress  # one event for either sender's progress
    for item in (fast, slow):
        await setup.queue.put(item)
    task = asyncio.create_task(setup.dispatcher.handle_batch(await take_all(setup.queue, 2)))
    async with asyncio.timeout(GUARD_S):
        await setup.hook.blocked.wait()
        while len(setup.mail.sent) + len(setup.hook.sent) < 3:
            setup.mail.progress.clear()
            await setup.mail.progress.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await setup.store.delivered(fast.id, "mail")
    assert await setup.store.delivered(fast.id, "hook")
    assert await setup.store.delivered(slow.id, "mail")
    assert not await setup.store.delivered(slow.id, "hook")
    assert (await setup.queue.stats()).leased == 2  # not settled: the leases expire


async def test_workers_route_everything_then_stop(setup: Setup) -> None:
    sent = [message(f"退款 {i}") for i in range(40)]
    for item in sent:
        await setup.queue.put(item)
    async with asyncio.TaskGroup() as tg:
        setup.dispatcher.start(tg)
        async with asyncio.timeout(GUARD_S):
            while setup.dispatcher.settled["routed"] < len(sent):  # noqa: ASYNC110 (no event)
                await asyncio.sleep(0.01)
        await setup.dispatcher.stop()
    assert sorted(setup.hook.sent) == sorted((m.id, 1) for m in sent)
    assert await setup.queue.stats() == QueueStats(ready=0, leased=0, delayed=0, dead=0)


async def test_stop_cancels_a_batch_stuck_past_the_stop_timeout(setup: Setup) -> None:
    setup.hook.block = {"卡住"}
    await setup.queue.put(message("卡住"))
    async with asyncio.TaskGroup() as tg:
        setup.dispatcher.start(tg)
        async with asyncio.timeout(GUARD_S):
            await setup.hook.blocked.wait()
            await setup.dispatcher.stop()
    assert setup.dispatcher.settled == {"routed": 0, "retried": 0, "dead": 0}
    assert (await setup.queue.stats()).leased == 1
