"""WebhookChannel over real HTTP: a real aiohttp client against the listener on port 0.

The only double is ``RecordingSink``, our own test implementation of the ``Sink`` interface.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from structlog.testing import capture_logs

from channels.webhook import WebhookChannel, WebhookConfig, parse_listen
from router.errors import QueueUnavailable
from router.logs import merge_message_context
from router.message import Message

SECRET = "s3cret-hmac-key"
TOKEN = "t0ken-for-forms"
LIMIT = 1000


class RecordingSink:
    """Records what is put; can be told to fail or to hold puts until released."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self._by_key: dict[str, str] = {}

    async def put(self, message: Message) -> str:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if message.dedupe_key is not None and message.dedupe_key in self._by_key:
            return self._by_key[message.dedupe_key]
        self.messages.append(message)
        if message.dedupe_key is not None:
            self._by_key[message.dedupe_key] = message.id
        return message.id


def make_config(**overrides: Any) -> WebhookConfig:
    data: dict[str, Any] = {
        "type": "webhook",
        "listen": "127.0.0.1:0",
        "max_body_bytes": LIMIT,
        "anonymous": True,
        "sources": {
            "shop": {"secret": {"env": "TEST_WEBHOOK_SECRET"}},
            "form": {"token": {"env": "TEST_WEBHOOK_TOKEN"}},
        },
    }
    return WebhookConfig.model_validate(data | overrides)


def signature(body: bytes, key: str = SECRET) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TEST_WEBHOOK_TOKEN", TOKEN)


async def started(channel: WebhookChannel, sink: RecordingSink) -> WebhookChannel:
    # The webhook spawns no task of its own (aiohttp runs the server), so the group is unused.
    await channel.start(sink, asyncio.TaskGroup())
    return channel


@pytest.fixture
async def channel(secrets_env: None, sink: RecordingSink) -> AsyncIterator[WebhookChannel]:
    channel = await started(WebhookChannel("web", make_config()), sink)
    yield channel
    await channel.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """Sends requests to the channel under test."""

    def __init__(self, channel: WebhookChannel, client: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{channel.port}"
        self.client = client

    async def post(
        self,
        path: str,
        body: bytes | Any,
        headers: dict[str, str] | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
        all_headers = {"Content-Type": content_type} if content_type else {}
        all_headers |= headers or {}
        async with self.client.post(self.base + path, data=body, headers=all_headers) as resp:
            return resp.status, await resp.json(), resp.headers

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.client.get(self.base + path) as resp:
            return resp.status, await resp.json()


@pytest.fixture
def api(channel: WebhookChannel, client: aiohttp.ClientSession) -> Api:
    return Api(channel, client)


GOOD = {"from": "cust-42", "text": "我的订单还没有发货"}


async def test_accepts_a_message_and_answers_its_id(api: Api, sink: RecordingSink) -> None:
    payload = {
        "from": "wang@example.com",
        "name": "王小明",
        "subject": "订单 A-1001 未发货",
        "text": "你好，\n我的订单还没有发货。",
        "conversation_id": "chat-77",
        "recipients": ["support@shop.example"],
        "fields": {"order_id": "A-1001"},
        "tier": "gold",
        "items": [{"sku": "书", "qty": 2}],
    }
    status, body, _ = await api.post("/v1/messages", encode(payload))

    assert status == 202
    [message] = sink.messages
    assert body == {"id": message.id}
    assert message.channel == "webhook"
    assert message.source == "web"
    assert (message.sender.address, message.sender.name) == ("wang@example.com", "王小明")
    assert message.subject == "订单 A-1001 未发货"
    assert message.text == "你好，\n我的订单还没有发货。"
    assert message.thread.conversation_id == "chat-77"
    assert message.recipients == ("support@shop.example",)
    assert message.fields == {
        "order_id": "A-1001",
        "tier": "gold",
        "items": [{"sku": "书", "qty": 2}],
    }
    assert message.dedupe_key is None


@pytest.mark.parametrize("prefix", ["sha256=", ""])
async def test_signed_source_accepted(api: Api, sink: RecordingSink, prefix: str) -> None:
    raw = encode(GOOD)
    digest = signature(raw).removeprefix("sha256=")
    headers = {"X-Triaged-Signature": prefix + digest}
    status, body, _ = await api.post("/v1/messages/shop", raw, headers)
    assert status == 202
    assert [m.source for m in sink.messages] == ["shop"]
    assert body == {"id": sink.messages[0].id}


async def test_token_source_accepted(api: Api, sink: RecordingSink) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    status, _, _ = await api.post("/v1/messages/form", encode(GOOD), headers)
    assert status == 202
    assert [m.source for m in sink.messages] == ["form"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/messages/shop", {}),
        ("/v1/messages/shop", {"X-Triaged-Signature": "sha256=" + "0" * 64}),
        ("/v1/messages/shop", {"X-Triaged-Signature": signature(encode(GOOD), "other-key")}),
        ("/v1/messages/shop", {"X-Triaged-Signature": "sha256=日本"}),
        ("/v1/messages/shop", {"Authorization": f"Bearer {SECRET}"}),
        ("/v1/messages/form", {}),
        ("/v1/messages/form", {"Authorization": "Bearer wrong"}),
        ("/v1/messages/form", {"Authorization": f"Basic {TOKEN}"}),
        ("/v1/messages/form", {"X-Triaged-Signature": signature(encode(GOOD), TOKEN)}),
    ],
)
async def test_unauthorized_puts_nothing(
    api: Api, sink: RecordingSink, path: str, headers: dict[str, str]
) -> None:
    status, body, _ = await api.post(path, encode(GOOD), headers)
    assert status == 401
    assert body["field"] is None
    assert body["error"]
    assert sink.messages == []


async def test_signature_is_checked_before_the_json(api: Api, sink: RecordingSink) -> None:
    status, _, _ = await api.post("/v1/messages/shop", b"{not json")
    assert status == 401


async def test_unsigned_endpoint_refused_unless_anonymous(
    secrets_env: None, sink: RecordingSink, client: aiohttp.ClientSession
) -> None:
    channel = await started(WebhookChannel("web", make_config(anonymous=False)), sink)
    try:
        status, body, _ = await Api(channel, client).post("/v1/messages", encode(GOOD))
    finally:
        await channel.stop()
    assert status == 401
    assert "POST /v1/messages/<source>" in body["error"]
    assert sink.messages == []


@pytest.mark.parametrize(
    ("raw", "field", "error"),
    [
        (encode({"text": "hi"}), "from", "'from' is required"),
        (encode({"from": "c1"}), "text", "'text' is required"),
        (encode({"from": 42, "text": "hi"}), "from", "'from' must be a string"),
        (encode({"from": "", "text": "hi"}), "from", "'from' must not be empty"),
        (encode({"from": "c1", "text": " \n "}), "text", "'text' must not be empty"),
        (encode({**GOOD, "name": 7}), "name", "'name' must be a string"),
        (encode({**GOOD, "subject": ["a"]}), "subject", "'subject' must be a string"),
        (encode({**GOOD, "conversation_id": 77}), "conversation_id", "must be a string"),
        (encode({**GOOD, "recipients": "a@b.c"}), "recipients", "must be an array"),
        (encode({**GOOD, "recipients": ["a@b.c", 2]}), "recipients.1", "must be a string"),
        (encode({**GOOD, "fields": [1]}), "fields", "'fields' must be an object"),
        (encode({**GOOD, "tier": "a", "fields": {"tier": "b"}}), "tier", "both at top level"),
        (b'{"from": "c1", "text": "hi"', None, "Invalid JSON: EOF while parsing an object"),
        (b'{"from": "c1", text: "hi"}', None, "line 1 column 16"),
        (b"", None, "Invalid JSON"),
        (b"[1, 2]", None, "body must be a JSON object"),
        (b'"just text"', None, "body must be a JSON object"),
        ('{"from": "c1", "text": "你好"}'.encode("gb18030"), None, "not valid UTF-8 (byte 24)"),
    ],
)
async def test_bad_body_names_the_field(
    api: Api, sink: RecordingSink, raw: bytes, field: str | None, error: str
) -> None:
    status, body, _ = await api.post("/v1/messages", raw)
    assert status == 400
    assert body["field"] == field
    assert error in body["error"]
    assert sink.messages == []


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'{"from": "c1", "text": "cut \\ud83d"}', "cut \ufffd"),
        (b'{"from": "c1", "text": "\\uDE00 low half first"}', "\ufffd low half first"),
        (b'{"from": "c1", "text": "whole \\ud83d\\ude00", "x": "\\ud800"}', "whole \U0001f600"),
    ],
)
async def test_lone_surrogate_escapes_become_replacement_characters(
    api: Api, sink: RecordingSink, raw: bytes, text: str
) -> None:
    status, _, _ = await api.post("/v1/messages", raw)
    assert status == 202
    [message] = sink.messages
    assert message.text == text
    assert message.fields.get("x", "\ufffd") == "\ufffd"
    message.to_json()  # serialisable: no surrogate left


@pytest.mark.parametrize(
    "raw",
    [
        b'{"from": "c1", "text": "\\ud83d", "fields": [1]}',  # a bad field as well
        b'{"from": "c1", "text": "\\ud83d", "n": NaN}',  # not JSON as well
        b'{"from": "c1", "text": "\\ud83d"',  # truncated as well
    ],
)
async def test_lone_surrogate_with_another_problem_is_still_refused(
    api: Api, sink: RecordingSink, raw: bytes
) -> None:
    status, body, _ = await api.post("/v1/messages", raw)
    assert status == 400
    assert body["error"].startswith("Invalid JSON")
    assert sink.messages == []


@pytest.mark.parametrize(
    ("charset", "encoding"),
    [
        ("GBK", "gbk"),
        ("gb2312", "gb18030"),
        ("EUC-CN", "gb18030"),
        ("Big5", "big5hkscs"),
        ("utf-8", "utf-8"),
    ],
)
async def test_declared_charset_is_read(
    api: Api, sink: RecordingSink, charset: str, encoding: str
) -> None:
    text = "我的订单还没有发货，镕" if encoding != "big5hkscs" else "我的訂單還沒有發貨，嘅"
    raw = json.dumps({"from": "cust-42", "text": text}, ensure_ascii=False).encode(encoding)
    status, _, _ = await api.post(
        "/v1/messages", raw, content_type=f"application/json; charset={charset}"
    )
    assert status == 202
    assert [m.text for m in sink.messages] == [text]


@pytest.mark.parametrize(
    ("charset", "raw", "status", "error"),
    [
        ("gbk", b'{"from": "c1", "text": "\x81"}', 400, "body is not valid gbk (byte 24)"),
        ("klingon", b'{"from": "c1", "text": "hi"}', 415, "unknown charset 'klingon'"),
        ("base64", b'{"from": "c1", "text": "hi"}', 415, "unknown charset 'base64'"),
    ],
)
async def test_bad_or_unknown_charset_is_refused(
    api: Api, sink: RecordingSink, charset: str, raw: bytes, status: int, error: str
) -> None:
    got, body, _ = await api.post(
        "/v1/messages", raw, content_type=f"application/json; charset={charset}"
    )
    assert (got, body["error"]) == (status, error)
    assert sink.messages == []


async def test_unknown_source_is_404(api: Api, sink: RecordingSink) -> None:
    status, body, _ = await api.post("/v1/messages/nope", encode(GOOD))
    assert status == 404
    assert body == {"error": "unknown source 'nope'", "field": None}
    assert sink.messages == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/messages", 405),
        ("PUT", "/v1/messages/shop", 405),
        ("POST", "/healthz", 405),
        ("POST", "/v1/messages/shop/extra", 404),
        ("GET", "/other", 404),
    ],
)
async def test_other_routes_answer_json(
    channel: WebhookChannel, client: aiohttp.ClientSession, method: str, path: str, status: int
) -> None:
    async with client.request(method, f"http://127.0.0.1:{channel.port}{path}") as resp:
        assert resp.status == status
        assert (await resp.json())["field"] is None


async def test_body_of_exactly_the_limit_is_accepted(api: Api, sink: RecordingSink) -> None:
    raw = encode(GOOD)
    raw = raw[:-1] + b" " * (LIMIT - len(raw)) + b"}"
    assert len(raw) == LIMIT
    status, _, _ = await api.post("/v1/messages", raw)
    assert status == 202


async def test_too_large_with_content_length(api: Api, sink: RecordingSink) -> None:
    raw = encode({**GOOD, "text": "x" * (LIMIT + 1)})
    status, body, _ = await api.post("/v1/messages", raw)
    assert status == 413
    assert body == {"error": f"body is larger than {LIMIT} bytes", "field": None}
    assert sink.messages == []


async def test_too_large_chunked(api: Api, sink: RecordingSink) -> None:
    """A chunked body has no Content-Length: the limit is enforced while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"from": "c1", "text": "'
        for _ in range(5):
            yield b"x" * 300
        yield b'"}'

    status, body, _ = await api.post("/v1/messages", chunks())
    assert status == 413
    assert body["field"] is None
    assert sink.messages == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_415(
    api: Api, sink: RecordingSink, content_type: str | None
) -> None:
    status, body, _ = await api.post("/v1/messages", encode(GOOD), content_type=content_type)
    assert status == 415
    assert body == {"error": "Content-Type must be application/json", "field": None}
    assert sink.messages == []


async def test_charset_parameter_is_fine(api: Api, sink: RecordingSink) -> None:
    ctype = "application/json; charset=utf-8"
    status, _, _ = await api.post("/v1/messages", encode(GOOD), content_type=ctype)
    assert status == 202


@pytest.mark.parametrize("failure", [QueueUnavailable("redis is down"), RuntimeError("bug")])
async def test_put_failure_is_503_and_nothing_recorded(
    api: Api, sink: RecordingSink, failure: Exception
) -> None:
    sink.fail = failure
    with capture_logs() as logs:
        status, body, headers = await api.post("/v1/messages", encode(GOOD))
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body == {"error": "the queue is unavailable; retry later", "field": None}
    assert sink.messages == []
    events = [entry["event"] for entry in logs]
    assert "message.queued" not in events
    [rejected] = [entry for entry in logs if entry["event"] == "message.rejected"]
    assert rejected["reason"] == "unavailable"
    if isinstance(failure, QueueUnavailable):
        assert rejected["detail"] == "redis is down"  # in the log, never in the answer
    else:
        assert "message.put_failed" in events


async def test_idempotency_key_passes_the_first_id_through(api: Api, sink: RecordingSink) -> None:
    headers = {"Idempotency-Key": "order-1001-note"}
    first = await api.post("/v1/messages", encode(GOOD), headers)
    again = await api.post("/v1/messages", encode({**GOOD, "text": "retry"}), headers)
    assert first[0] == again[0] == 202
    [message] = sink.messages
    assert first[1] == again[1] == {"id": message.id}
    assert message.dedupe_key == "web:order-1001-note"


async def test_healthz(api: Api) -> None:
    assert await api.get("/healthz") == (200, {"status": "ok"})


async def test_queued_log_line_is_bound_and_has_no_body(api: Api) -> None:
    payload = {"from": "secret-customer@example.com", "text": "private words"}
    with capture_logs(processors=[merge_message_context]) as logs:
        status, body, _ = await api.post("/v1/messages", encode(payload))
    assert status == 202
    [queued] = [entry for entry in logs if entry["event"] == "message.queued"]
    assert queued["log_level"] == "info"
    assert (queued["source"], queued["channel"]) == ("web", "webhook")
    assert queued["message_id"] == body["id"]
    assert "secret-customer" not in repr(logs)
    assert "private words" not in repr(logs)


async def test_stop_refuses_new_requests_and_waits_for_puts(
    api: Api, channel: WebhookChannel, sink: RecordingSink
) -> None:
    """Steps: a put is held → stop() begins → a new request and /healthz get 503 → stop() is
    still waiting → the held put is released → its request gets 202 → stop() returns."""
    sink.gate = asyncio.Event()
    first = asyncio.create_task(api.post("/v1/messages", encode(GOOD)))
    await sink.entered.wait()
    stopping = asyncio.create_task(channel.stop())
    await asyncio.sleep(0)  # let stop() run up to its wait for the in-flight put

    status, body, headers = await api.post("/v1/messages", encode({**GOOD, "text": "late"}))
    assert (status, headers["Retry-After"]) == (503, "5")
    assert await api.get("/healthz") == (503, {"status": "stopping"})
    assert not stopping.done()

    sink.gate.set()
    status, body, _ = await first
    assert status == 202
    assert [m.id for m in sink.messages] == [body["id"]]
    await stopping
    await channel.stop()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.get("/healthz")


async def test_port_in_use_raises_oserror(
    channel: WebhookChannel, sink: RecordingSink, secrets_env: None
) -> None:
    other = WebhookChannel("web2", make_config(listen=f"127.0.0.1:{channel.port}"))
    with pytest.raises(OSError):  # noqa: PT011 - the errno depends on the platform
        await other.start(sink, asyncio.TaskGroup())
    await other.stop()


async def test_missing_secret_names_input_source_and_variable(
    monkeypatch: pytest.MonkeyPatch, sink: RecordingSink
) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_TOKEN", TOKEN)
    monkeypatch.delenv("TEST_WEBHOOK_SECRET", raising=False)
    channel = WebhookChannel("web", make_config())
    with pytest.raises(LookupError) as caught:
        await channel.start(sink, asyncio.TaskGroup())
    message = str(caught.value)
    assert "'web'" in message
    assert "'shop'" in message
    assert "TEST_WEBHOOK_SECRET" in message


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":9000", (None, 9000)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["8080", "host:", "host:http", "::1:80", "h:70000"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        parse_listen(listen)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "webhook"},
        {"type": "webhook", "anonymous": True, "extra": 1},
        {"type": "webhook", "sources": {"a": {}}},
        {"type": "webhook", "sources": {"a": {"secret": {"env": "A"}, "token": {"env": "B"}}}},
        {"type": "webhook", "sources": {"a": {"secret": "inline-secret"}}},
        {"type": "webhook", "sources": {"a/b": {"token": {"env": "B"}}}},
        {"type": "webhook", "anonymous": True, "max_body_bytes": 0},
    ],
)
def test_config_refuses(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError
        WebhookConfig.model_validate(data)
