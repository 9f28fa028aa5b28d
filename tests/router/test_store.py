"""The store contract suite (delivery log, decision records), run against both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from router.errors import QueueUnavailable, StateLocked
from router.message import Message, Sender
from router.store import Store, open_store
from router.store.sqlite import SqliteStore
from tests.servers import Openers, free_port

PREFIX = "test:"


def message(text: str = "发票开错了，请重开") -> Message:
    return Message(
        channel="webhook",
        source="web-form",
        sender=Sender(address="customer-42", name="李四"),
        subject="发票问题",
        text=text,
        fields={"order_id": "A-1", "tier": "gold"},
    )


def decision(team: str = "billing") -> dict[str, Any]:
    return {
        "team": team,
        "category": "发票",
        "priority": "high",
        "tags": ["invoice", "vip"],
        "rules": ["invoice-keywords", "vip-senders"],
        "ruleset_hash": "sha256:0f1e",
        "decided_at": "2026-11-22T08:30:01.123456+00:00",
        "sla": {"due_s": 3600, "business_hours": True},
        "fallback": False,
        "score": 0.75,
        "note": None,
    }


class Stores(Openers[Store]):
    """Opens stores of one kind; closes them all at teardown."""

    async def open(self, *, retention_s: float = 86400.0, max_recent: int = 1000) -> Store:
        store = await open_store(
            self.kind,  # type: ignore[arg-type]
            state_dir=self.state_dir,
            redis_url=self.redis_url,
            prefix=PREFIX,
            retention_s=retention_s,
            max_recent=max_recent,
        )
        return self.track(store)


@pytest.fixture(params=["sqlite", "redis"])
async def stores(
    request: pytest.FixtureRequest, state_dir: Path, redis_url: str
) -> AsyncIterator[Stores]:
    """The suite's parameter: each test runs once per backend."""
    opener = Stores(request.param, state_dir, redis_url)
    yield opener
    await opener.close_all()


@pytest.fixture
async def store(stores: Stores) -> Store:
    return await stores.open()


async def test_delivery_log(store: Store) -> None:
    assert not await store.delivered("m1", "billing-mail")
    await store.record_delivery("m1", "billing-mail")
    await store.record_delivery("m1", "billing-mail")  # idempotent
    assert await store.delivered("m1", "billing-mail")
    assert not await store.delivered("m1", "billing-chat")
    assert not await store.delivered("m2", "billing-mail")


async def test_delivery_log_survives_reopen(stores: Stores) -> None:
    first = await stores.open()
    await first.record_delivery("m1", "飞书群")
    await first.close()
    second = await stores.open()
    assert await second.delivered("m1", "飞书群")


async def test_decision_round_trip(store: Store) -> None:
    sent = message()
    await store.record_decision(sent, decision())
    assert await store.decision(sent.id) == (sent, decision())
    assert await store.decision("unknown") is None
    await store.record_decision(sent, decision("sales"))  # re-decided: the latest wins
    assert await store.decision(sent.id) == (sent, decision("sales"))


async def test_decision_must_be_json(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.record_decision(message(), {"decided_at": datetime(2026, 1, 1)})


async def test_recent_is_newest_first(store: Store) -> None:
    first, second, third = message("一"), message("二"), message("三")
    for item in (first, second, third):
        await store.record_decision(item, decision())
    assert [m.id for m, _ in await store.recent()] == [third.id, second.id, first.id]
    assert [m.id for m, _ in await store.recent(limit=2)] == [third.id, second.id]
    await store.record_decision(first, decision("sales"))
    newest, record = (await store.recent(limit=1))[0]
    assert (newest.id, record["team"]) == (first.id, "sales")


async def test_prune_keeps_at_most_max_recent(stores: Stores) -> None:
    store = await stores.open(max_recent=3)
    sent = [message(str(i)) for i in range(5)]
    for item in sent:
        await store.record_decision(item, decision())
    await store.prune()
    assert [m.id for m, _ in await store.recent()] == [m.id for m in reversed(sent[2:])]
    assert await store.decision(sent[0].id) is None


async def test_prune_drops_what_is_older_than_retention(stores: Stores) -> None:
    store = await stores.open(retention_s=0.05)
    await store.record_decision(message(), decision())
    await store.record_delivery("m1", "billing-mail")
    await asyncio.sleep(0.2)  # not a speed assertion: only lets the retention pass
    await store.prune()
    assert await store.recent() == []
    assert not await store.delivered("m1", "billing-mail")


async def test_sqlite_store_second_opener_gets_state_locked(state_dir: Path) -> None:
    path = state_dir / "state.sqlite3"
    first = await SqliteStore.open(path, retention_s=60, max_recent=10)
    try:
        with pytest.raises(StateLocked, match=r"state\.sqlite3\.lock"):
            await SqliteStore.open(path, retention_s=60, max_recent=10)
    finally:
        await first.close()


async def test_redis_store_unreachable_raises_queue_unavailable(state_dir: Path) -> None:
    async with asyncio.timeout(15):
        with pytest.raises(QueueUnavailable):
            await open_store(
                "redis", state_dir=state_dir, redis_url=f"redis://127.0.0.1:{free_port()}/0"
            )


async def test_begin_batch_records_decisions_and_returns_delivered_targets(store: Store) -> None:
    first, second, third = message("退款 1"), message("退款 2"), message("退款 3")
    await store.record_delivery(first.id, "售后邮箱")
    await store.record_deliveries([(second.id, "售后邮箱"), (second.id, "飞书群")])
    done = await store.begin_batch(
        [(first, decision()), (second, decision("sales")), (third, decision())]
    )
    assert done == {first.id: {"售后邮箱"}, second.id: {"售后邮箱", "飞书群"}, third.id: set()}
    assert await store.decision(second.id) == (second, decision("sales"))
    assert {m.id for m, _ in await store.recent(10)} == {first.id, second.id, third.id}
    assert await store.begin_batch([]) == {}


async def test_begin_batch_refuses_what_does_not_round_trip(store: Store) -> None:
    good, bad = message("好"), message("坏")
    with pytest.raises(TypeError):
        await store.begin_batch([(good, decision()), (bad, {"at": datetime(2026, 1, 1)})])
    assert await store.decision(good.id) is None  # nothing written


async def test_record_deliveries_is_idempotent_and_survives_reopen(stores: Stores) -> None:
    first = await stores.open()
    await first.record_deliveries([("m1", "售后邮箱"), ("m1", "售后邮箱"), ("m2", "飞书群")])
    await first.record_deliveries([])
    await first.close()
    second = await stores.open()
    assert await second.delivered("m1", "售后邮箱")
    assert await second.delivered("m2", "飞书群")
    assert not await second.delivered("m2", "售后邮箱")


async def test_redis_keys_of_a_batch_expire_after_the_retention(redis_url: str) -> None:
    """A batch's decision hashes and delivery sets (written by one script each) carry the
    retention as their TTL, so Redis forgets them as the SQLite store prunes them."""
    import redis.asyncio as aioredis

    from router.keys import Keys
    from router.store.redis import RedisStore

    store = await RedisStore.open(redis_url, prefix=PREFIX, retention_s=60, max_recent=10)
    client = aioredis.from_url(redis_url)
    try:
        first, second = message("退款 1"), message("退款 2")
        await store.begin_batch([(first, decision()), (second, decision())])
        await store.record_deliveries([(first.id, "售后邮箱"), (second.id, "飞书群")])
        keys = Keys(PREFIX)
        for message_id in (first.id, second.id):
            assert 0 < await client.pttl(keys.decision(message_id)) <= 60_000
            assert 0 < await client.pttl(keys.delivered(message_id)) <= 60_000
    finally:
        await client.aclose()
        await store.close()
