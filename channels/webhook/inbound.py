"""Inbound webhooks: :class:`WebhookChannel`, the ``type: webhook`` input (package docstring)."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import hmac
import json
import re
from typing import Any, Final, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from channels.webhook.signing import SIGNATURE_HEADER, secret_bytes
from router import metrics
from router.config import parse_listen
from router.errors import QueueUnavailable
from router.interfaces import Sink
from router.logs import message_context
from router.message import Message, Sender, Thread
from router.secrets import SecretRef

log = structlog.get_logger()

CHANNEL: Final = "webhook"
RETRY_AFTER_S = 5  # what 503 answers tell clients; the queue is usually back within seconds
_SHUTDOWN_TIMEOUT_S = 3.0  # in-flight puts are awaited before this; only slow uploads remain
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PATHS = frozenset({"/v1/messages", "/healthz"})
_SOURCE_PATH = re.compile(r"/v1/messages/[^/]+")
_NO_THREAD = Thread()
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class WebhookSourceConfig(BaseModel):
    """One sender of webhooks (a shop, a form backend): HMAC signature or bearer token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: SecretRef | None = Field(
        default=None, description="HMAC-SHA256 key; requests carry sha256=<hex> of the raw body."
    )
    token: SecretRef | None = Field(
        default=None, description="Bearer token; requests carry 'Authorization: Bearer <token>'."
    )
    signature_header: str = Field(
        default=SIGNATURE_HEADER, description="Header with the signature."
    )

    @model_validator(mode="after")
    def _one_method(self) -> WebhookSourceConfig:
        if (self.secret is None) == (self.token is None):
            raise ValueError("give exactly one of 'secret' (HMAC signature) or 'token' (bearer)")
        return self


class WebhookConfig(BaseModel):
    """An HTTP listener taking customer messages as JSON (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook"] = Field(description="Selects this channel.")
    listen: str = Field(
        default="127.0.0.1:8080", description="host:port to bind; [::1]:8080 for IPv6."
    )
    max_body_bytes: int = Field(default=1_048_576, gt=0, description="Larger bodies get 413.")
    anonymous: bool = Field(
        default=False,
        description="Accept unsigned POST /v1/messages (loopback and quick start only).",
    )
    sources: dict[str, WebhookSourceConfig] = Field(
        default_factory=dict, description="Named senders, each POSTing to /v1/messages/<name>."
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("sources")
    @classmethod
    def _check_names(cls, value: dict[str, WebhookSourceConfig]) -> dict[str, WebhookSourceConfig]:
        for name in value:
            if not _SOURCE_NAME.fullmatch(name):
                raise ValueError(f"source name {name!r} must be letters, digits, '.', '_', '-'")
        return value

    @model_validator(mode="after")
    def _something_accepted(self) -> WebhookConfig:
        if not self.sources and not self.anonymous:
            raise ValueError("give at least one entry under 'sources' or set 'anonymous: true'")
        return self


class _Body(BaseModel):
    """The JSON a client POSTs; strict: no silent coercion of numbers into strings."""

    model_config = ConfigDict(extra="allow", strict=True)

    from_: str = Field(alias="from", pattern=r"\S")
    text: str = Field(pattern=r"\S")
    name: str | None = None
    subject: str | None = None
    conversation_id: str | None = None
    recipients: list[str] = Field(default_factory=list)
    fields: dict[str, Any] = Field(default_factory=dict)


_PROBLEMS = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_pattern_mismatch": "must not be empty or blank",
    "list_type": "must be an array",
    "dict_type": "must be an object",
}


def _explain(exc: ValidationError, body: bytes) -> tuple[str, str | None]:
    """The first problem of a rejected body, as (error, field)."""
    error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    if error["type"] == "json_invalid":
        try:
            body.decode()
        except UnicodeDecodeError as bad:
            return f"body is not valid UTF-8 (byte {bad.start})", None
        return error["msg"], None  # "Invalid JSON: expected value at line 1 column 1"
    if not error["loc"]:
        return "body must be a JSON object", None
    field = ".".join(str(part) for part in error["loc"])
    return f"'{field}' {_PROBLEMS.get(error['type'], error['msg'])}", field


# Declared charsets read as their supersets: a form page labelled GB2312 or Big5 often sends
# characters only GBK/GB18030 or Big5-HKSCS have (as mail readers do).
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs"}


def _as_utf8(body: bytes, charset: str) -> bytes:
    """``body``, declared to be in ``charset``, as UTF-8 (JSON's own encoding, RFC 8259):
    older Chinese web forms send GBK or Big5 and say so. Raises ``_Rejected``."""
    try:
        codec = codecs.lookup(charset).name  # the codec's own name: aliases (EUC-CN) too
        codec = _SUPERSETS.get(codec, codec)
        if codec == "utf-8":
            return body
        return body.decode(codec).encode()
    except UnicodeDecodeError as bad:
        error = f"body is not valid {charset} (byte {bad.start})"
        raise _Rejected(400, "bad_request", error) from None
    except LookupError:  # no such codec, or not a text encoding (base64, rot13)
        raise _Rejected(415, "unsupported_type", f"unknown charset {charset!r}") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _with_lone_surrogates(raw: bytes, exc: ValidationError) -> _Body | None:
    """The body, when its JSON was refused only for a lone surrogate escape (``"\\ud83d"``,
    half an emoji: a form that cut a string by UTF-16 units sends it, and JSON allows it),
    each such half replaced by U+FFFD, which UTF-8 (the queue, Maildir) can hold; else None.
    """
    first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    if first["type"] != "json_invalid" or b"\\u" not in raw:  # (JSON's escape is lowercase)
        return None
    try:  # (UTF-8 only, no NaN: as strict as the first parser but for the surrogates)
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except ValueError:
        return None
    try:
        return _Body.model_validate(_replace_surrogates(data))
    except ValidationError:
        return None  # another problem too: reported as the JSON parser saw it


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _replace_surrogates(node: Any) -> Any:
    if isinstance(node, str):
        return _SURROGATE.sub("\ufffd", node)
    if isinstance(node, list):
        return [_replace_surrogates(item) for item in node]
    if isinstance(node, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in node.items()}
    return node


class _Rejected(Exception):
    """Why a request is refused; turned into the JSON error answer."""

    def __init__(
        self, status: int, reason: str, error: str, field: str | None = None, detail: str = ""
    ) -> None:
        super().__init__(error)
        self.status, self.reason, self.error, self.field = status, reason, error, field
        self.detail = detail  # for the log only: internals never reach the client


_STOPPING = "this input is stopping; retry later"
_UNAVAILABLE = "the queue is unavailable; retry later"


class _Source:
    """A configured source with resolved credentials; checks are constant time."""

    __slots__ = ("_secret", "_token", "header", "name", "received")

    def __init__(self, name: str, secret: bytes | None, token: bytes | None, header: str) -> None:
        self.name, self._secret, self._token, self.header = name, secret, token, header
        self.received = metrics.received.labels(source=name, channel=CHANNEL)

    def token_ok(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._token) and scheme.lower() == "bearer"

    def signature_ok(self, request: web.Request, body: bytes) -> bool:
        if self._secret is None:
            return True
        given = request.headers.get(self.header, "").strip().lower()
        given = given.removeprefix("sha256=")
        expected = hmac.new(self._secret, body, hashlib.sha256).hexdigest().encode()
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


class WebhookChannel:
    """Inbound HTTP webhook listener (aiohttp); see the module docstring for the protocol."""

    def __init__(self, name: str, config: WebhookConfig) -> None:
        self.name = name
        self.config = config
        self._host, self._port = parse_listen(config.listen)
        self._max_body = config.max_body_bytes
        self._sources: dict[str, _Source] = {}
        self._anonymous = _Source(name, None, None, SIGNATURE_HEADER) if config.anonymous else None
        self._sink: Sink | None = None
        self._runner: web.AppRunner | None = None
        self._accepting = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop_lock = asyncio.Lock()

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``listen: 127.0.0.1:0``)."""
        return self._port

    async def start(self, sink: Sink, tg: asyncio.TaskGroup) -> None:
        """Resolve secrets, bind ``listen`` and return once accepting (aiohttp owns its tasks).

        Raises ``LookupError`` naming the input, source and variable when a secret is missing,
        ``OSError`` when the address cannot be bound (e.g. the port is taken).
        """
        if self._runner is not None:
            raise RuntimeError(f"webhook input {self.name!r} is already started")
        self._sources = {
            name: _Source(
                name,
                secret_bytes(f"webhook input {self.name!r}, source {name!r}", "secret", c.secret),
                secret_bytes(f"webhook input {self.name!r}, source {name!r}", "token", c.token),
                c.signature_header,
            )
            for name, c in self.config.sources.items()
        }
        self._sink = sink
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._port = runner, int(runner.addresses[0][1])
        self._accepting = True
        log.info("channel.started", source=self.name, channel=CHANNEL, port=self._port)
        if self._anonymous is not None and self._host not in _LOOPBACK:
            log.warning("channel.anonymous_exposed", source=self.name, listen=self.config.listen)

    async def stop(self) -> None:
        """Answer 503 to new requests, await in-flight puts, then close the listener.

        Waits as long as the sink's puts take: the daemon bounds shutdown with its stop timeout.
        """
        self._accepting = False
        async with self._stop_lock:
            if self._runner is None:
                return
            await self._idle.wait()
            runner, self._runner = self._runner, None
            await runner.cleanup()
            log.info("channel.stopped", source=self.name, channel=CHANNEL)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/v1/messages/{source}", self._post_source)
        app.router.add_post("/v1/messages", self._post_anonymous)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", self._no_route)  # JSON 404/405, not text
        return app

    async def _post_source(self, request: web.Request) -> web.Response:
        source = self._sources.get(request.match_info["source"])
        if source is None:
            name = request.match_info["source"][:64]
            return self._reject(
                request, self.name, _Rejected(404, "not_found", f"unknown source {name!r}")
            )
        return await self._ingest(request, source)

    async def _post_anonymous(self, request: web.Request) -> web.Response:
        if self._anonymous is None:
            error = "unsigned requests are not accepted: POST /v1/messages/<source>, signed"
            return self._reject(request, self.name, _Rejected(401, "unauthorized", error))
        return await self._ingest(request, self._anonymous)

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._accepting:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "stopping"}, status=503)

    async def _no_route(self, request: web.Request) -> web.Response:
        path = request.path
        if path in _PATHS or _SOURCE_PATH.fullmatch(path):
            return web.json_response({"error": "method not allowed", "field": None}, status=405)
        return web.json_response({"error": "not found", "field": None}, status=404)

    async def _ingest(self, request: web.Request, source: _Source) -> web.Response:
        try:
            message = await self._receive(request, source)
        except _Rejected as rejected:
            return self._reject(request, source.name, rejected)
        return await self._put(request, source, message)

    async def _receive(self, request: web.Request, source: _Source) -> Message:
        """Check and read the request into a Message; raise ``_Rejected`` on any problem."""
        if not self._accepting:
            raise _Rejected(503, "unavailable", _STOPPING)
        if request.content_type != "application/json":
            raise _Rejected(415, "unsupported_type", "Content-Type must be application/json")
        if request.content_length is not None and request.content_length > self._max_body:
            raise self._too_large()
        if not source.token_ok(request):
            raise _Rejected(401, "unauthorized", "missing or wrong bearer token")
        try:
            body = await request.read()  # enforces client_max_size on chunked bodies too
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        if not source.signature_ok(request, body):
            raise _Rejected(401, "unauthorized", f"missing or wrong signature in {source.header}")
        if request.charset is not None:  # (the signature covers the bytes as sent)
            body = _as_utf8(body, request.charset)
        return self._parse(source, body, request.headers.get("Idempotency-Key"))

    def _too_large(self) -> _Rejected:
        return _Rejected(413, "too_large", f"body is larger than {self._max_body} bytes")

    def _parse(self, source: _Source, raw: bytes, idempotency_key: str | None) -> Message:
        try:
            body = _Body.model_validate_json(raw)
        except ValidationError as exc:
            body = _with_lone_surrogates(raw, exc)
            if body is None:
                raise _Rejected(400, "bad_request", *_explain(exc, raw)) from None
        fields = body.fields
        if body.model_extra:
            for key in body.model_extra.keys() & fields.keys():
                error = f"'{key}' is given both at top level and in 'fields'"
                raise _Rejected(400, "bad_request", error, key)
            fields = {**fields, **body.model_extra}
        key = idempotency_key.strip() if idempotency_key else ""
        conversation_id = body.conversation_id
        return Message(
            channel=CHANNEL,
            source=source.name,
            sender=Sender(address=body.from_, name=body.name or ""),
            recipients=tuple(body.recipients),
            subject=body.subject or "",
            text=body.text,
            thread=Thread(conversation_id=conversation_id) if conversation_id else _NO_THREAD,
            fields=fields,
            dedupe_key=f"{source.name}:{key}" if key else None,
        )

    async def _put(self, request: web.Request, source: _Source, message: Message) -> web.Response:
        """Queue the message; answer 202 only once ``put`` returned, 503 if it raised."""
        assert self._sink is not None
        if not self._accepting:  # stop() began while the body was read: nothing half-accepted
            return self._reject(request, source.name, _Rejected(503, "unavailable", _STOPPING))
        self._inflight += 1
        self._idle.clear()
        with message_context({"source": source.name, "channel": CHANNEL, "message_id": message.id}):
            try:
                message_id = await self._sink.put(message)
            except QueueUnavailable as exc:
                rejected = _Rejected(503, "unavailable", _UNAVAILABLE, detail=str(exc))
                return self._reject(request, source.name, rejected)
            except Exception:  # the client must hear 503, never a half-accepted 500
                log.exception("message.put_failed")
                rejected = _Rejected(503, "unavailable", _UNAVAILABLE)
                return self._reject(request, source.name, rejected)
            finally:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.set()
            duplicate_of = None if message_id == message.id else message_id
            log.info("message.queued", duplicate_of=duplicate_of)
        if message_id == message.id:
            source.received.inc()
        return web.json_response({"id": message_id}, status=202)

    def _reject(self, request: web.Request, source: str, rejected: _Rejected) -> web.Response:
        metrics.rejected.labels(source=source, channel=CHANNEL, reason=rejected.reason).inc()
        emit = log.warning if rejected.status in (401, 503) else log.info
        emit(
            "message.rejected",
            source=source,
            channel=CHANNEL,
            status=rejected.status,
            reason=rejected.reason,
            error=rejected.error,
            detail=rejected.detail or None,
            peer=request.remote,
        )
        headers = {"Retry-After": str(RETRY_AFTER_S)} if rejected.status == 503 else None
        body = {"error": rejected.error, "field": rejected.field}
        return web.json_response(body, status=rejected.status, headers=headers)
