"""WebhookSender against a real local aiohttp server that records requests and answers as told."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web

from channels.webhook import (
    CHAT_TEXT_CHARS,
    MAX_TEXT_BYTES,
    WebhookOutConfig,
    WebhookSender,
    retry_after_s,
    sign,
)
from router.errors import PermanentFailure, TemporaryFailure
from router.interfaces import Delivery
from router.message import Message, Sender, Thread
from router.secrets import SecretRef
from tests.servers import free_port

SECRET = "out-signing-key"


@dataclass
class Seen:
    body: bytes
    headers: dict[str, str]
    path: str


@dataclass
class Target:
    """A receiving endpoint: records each request, answers ``status`` with ``headers``."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # when set, requests wait on it (a hanging server)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(await request.read(), dict(request.headers), request.path))
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(
            status=self.status, headers=self.headers, text="rate limited, slow down"
        )


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    target = Target()
    app = web.Application()
    app.router.add_post("/hooks/{token}", target.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    target.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/T0SECRETPATH"
    yield target
    if target.hold is not None:
        target.hold.set()
    await runner.cleanup()


def delivery(text: str = "我的订单还没有发货", **message: Any) -> Delivery:
    return Delivery(
        message=Message(
            channel="webhook",
            source="shop",
            sender=Sender(address="wang@example.com", name="王小明"),
            subject="订单 A-1001",
            text=text,
            fields={"order_id": "A-1001"},
            thread=Thread(conversation_id="chat-77"),
            **message,
        ),
        team="after-sales",
        target="ops-hook",
        category="shipping",
        priority="high",
        tags=("vip", "物流"),
        rules=("late-shipping",),
        attempt=2,
    )


async def make_sender(url: Any, **config: Any) -> WebhookSender:
    sender = WebhookSender(
        "ops-hook", WebhookOutConfig.model_validate({"type": "webhook", "url": url} | config)
    )
    await sender.start()
    return sender


async def send(
    target: Target | str | dict[str, str], item: Delivery | None = None, **config: Any
) -> None:
    url = target.url if isinstance(target, Target) else target
    sender = await make_sender(url, **config)
    try:
        await sender.send(item or delivery())
    finally:
        await sender.close()


async def test_posts_signed_notification(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OUT_SECRET", SECRET)
    monkeypatch.setenv("TEST_OUT_AUTH", "Bearer abc")
    item = delivery()
    headers = {"X-Team": "售后", "Authorization": {"env": "TEST_OUT_AUTH"}}
    await send(target, item, secret={"env": "TEST_OUT_SECRET"}, headers=headers)

    [seen] = target.seen
    assert seen.headers["Idempotency-Key"] == item.key
    assert seen.headers["X-Triaged-Signature"] == sign(SECRET.encode(), seen.body)
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == "Bearer abc"
    payload = json.loads(seen.body)
    message = item.message
    assert payload == {
        "v": 1,
        "delivery_key": item.key,
        "attempt": 2,
        "message_id": message.id,
        "team": "after-sales",
        "category": "shipping",
        "priority": "high",
        "tags": ["vip", "物流"],
        "rules": ["late-shipping"],
        "source": "shop",
        "channel": "webhook",
        "received_at": message.received_at.isoformat(),
        "sender": {"address": "wang@example.com", "name": "王小明"},
        "recipients": [],
        "subject": "订单 A-1001",
        "text": "我的订单还没有发货",
        "text_truncated": False,
        "fields": {"order_id": "A-1001"},
        "conversation_id": "chat-77",
    }


async def test_long_text_is_capped(target: Target) -> None:
    await send(target, delivery(text="长" * MAX_TEXT_BYTES))
    payload = json.loads(target.seen[0].body)
    assert payload["text_truncated"] is True
    assert len(payload["text"].encode()) <= MAX_TEXT_BYTES
    assert set(payload["text"]) == {"长"}


async def test_slack_format_posts_a_chat_text(target: Target) -> None:
    item = delivery(text="耳机有杂音\n\n想申请退款")
    await send(target, item, format="slack")
    [seen] = target.seen
    assert seen.headers["Idempotency-Key"] == item.key
    assert json.loads(seen.body) == {
        "text": "\n".join(
            [
                f"*[high] shipping → after-sales* · ticket `{item.message.id}`",
                "*From:* 王小明 &lt;wang@example.com&gt; via webhook/shop",
                "*Subject:* 订单 A-1001",
                "> 耳机有杂音",
                "> 想申请退款",
                "*Tags:* vip, 物流",
                "*Rules:* late-shipping",
            ]
        )
    }


async def test_slack_format_keeps_customer_markup_as_text(target: Target) -> None:
    """A customer cannot notify a channel, mention someone or disguise a link in the post."""
    item = delivery(text="<!channel> look at <https://evil.example|your bank> & <@U024BE7LH>")
    sender = Sender(address="x@example.com", name="<!here> boss")
    changes = {"sender": sender, "subject": "<!everyone>\nurgent"}
    item = dataclasses.replace(item, message=item.message.model_copy(update=changes))
    await send(target, item, format="slack")
    text = json.loads(target.seen[0].body)["text"]
    assert "<" not in text
    assert "&lt;!channel&gt; look at &lt;https://evil.example|your bank&gt; &amp; " in text
    assert "*Subject:* &lt;!everyone&gt; urgent" in text
    assert "*From:* &lt;!here&gt; boss &lt;x@example.com&gt;" in text


async def test_slack_format_quotes_the_start_of_a_long_text(target: Target) -> None:
    await send(target, delivery(text="长" * 5000), format="slack")
    text = json.loads(target.seen[0].body)["text"]
    [quote] = [line for line in text.splitlines() if line.startswith("> ")]
    assert quote == "> " + "长" * (CHAT_TEXT_CHARS - 1) + "…"


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (500, {}, None),
        (502, {}, None),
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "30"}, 30.0),
        (408, {}, None),
    ],
)
async def test_temporary_statuses(
    target: Target, status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    target.status, target.headers = status, headers
    with pytest.raises(TemporaryFailure) as caught:
        await send(target)
    assert caught.value.retry_after_s == retry_after
    assert str(caught.value).startswith(f"HTTP {status}: rate limited")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 301])
async def test_permanent_statuses(target: Target, status: int) -> None:
    target.status = status
    target.headers = {"Location": "http://elsewhere.invalid/"} if status == 301 else {}
    with pytest.raises(PermanentFailure, match=f"HTTP {status}"):
        await send(target)
    assert len(target.seen) == 1


async def test_connection_refused_is_temporary() -> None:
    with pytest.raises(TemporaryFailure, match="request failed"):
        await send(f"http://127.0.0.1:{free_port()}/hook")


async def test_timeout_is_temporary(target: Target) -> None:
    target.hold = asyncio.Event()
    with pytest.raises(TemporaryFailure, match=r"no answer within 0\.2s"):
        await send(target, timeout_s=0.2)


async def test_secret_url_never_appears_in_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/T0SECRETPATH"
    monkeypatch.setenv("TEST_OUT_URL", url)
    with pytest.raises(TemporaryFailure) as caught:
        await send({"env": "TEST_OUT_URL"})
    assert "T0SECRETPATH" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


async def test_secret_url_is_used(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OUT_URL", target.url)
    await send({"env": "TEST_OUT_URL"})
    assert [seen.path for seen in target.seen] == ["/hooks/T0SECRETPATH"]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"url": {"env": "TEST_OUT_MISSING"}}, ["'ops-hook'", "url", "TEST_OUT_MISSING"]),
        ({"url": "http://x.invalid/", "secret": {"env": "TEST_OUT_MISSING"}}, ["secret"]),
    ],
)
async def test_missing_secret_names_output_and_variable(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], names: list[str]
) -> None:
    monkeypatch.delenv("TEST_OUT_MISSING", raising=False)
    sender = WebhookSender(
        "ops-hook", WebhookOutConfig.model_validate({"type": "webhook"} | config)
    )
    with pytest.raises(LookupError) as caught:
        await sender.start()
    for name in [*names, "TEST_OUT_MISSING"]:
        assert name in str(caught.value)


async def test_secret_url_must_be_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OUT_URL", "ftp://files.invalid/T0SECRETPATH")
    sender = WebhookSender(
        "ops-hook", WebhookOutConfig(type="webhook", url=SecretRef(env="TEST_OUT_URL"))
    )
    with pytest.raises(ValueError, match="http") as caught:
        await sender.start()
    assert "T0SECRETPATH" not in str(caught.value)


async def test_send_before_start_and_double_close() -> None:
    sender = WebhookSender("ops-hook", WebhookOutConfig(type="webhook", url="http://x.invalid/"))
    with pytest.raises(RuntimeError, match="before start"):
        await sender.send(delivery())
    await sender.start()
    await sender.close()
    await sender.close()


@pytest.mark.parametrize("url", ["ftp://x.invalid/", "/relative", "not a url", "http://"])
def test_config_refuses_bad_literal_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookOutConfig(type="webhook", url=url)


def test_retry_after_forms() -> None:
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert retry_after_s(None) is None
    assert retry_after_s("") is None
    assert retry_after_s("120") == 120.0
    assert retry_after_s("-3") == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert 3000 < (retry_after_s(in_an_hour) or 0) <= 3600
