"""Outbound webhooks: :class:`WebhookSender`, the ``type: webhook`` output (package docstring)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final, Literal

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from channels.webhook.signing import SIGNATURE_HEADER, secret_bytes, sign
from router.errors import DeliveryError, PermanentFailure, TemporaryFailure
from router.interfaces import Delivery
from router.secrets import SecretRef

log = structlog.get_logger()

CHANNEL: Final = "webhook"
MAX_TEXT_BYTES = 65_536  # text cap in outbound notifications
CHAT_TEXT_CHARS = 1_000  # customer text quoted in a chat post (the ticket has the rest)
_CHAT_SUBJECT_CHARS = 200


def _check_url(value: str) -> str:
    """Refuse anything but an absolute http(s) URL; the message never quotes the value."""
    try:
        url = URL(value)
    except (ValueError, TypeError):
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("url must be an absolute http:// or https:// URL")
    return value


class WebhookOutConfig(BaseModel):
    """An HTTP endpoint that receives one JSON notification per routed ticket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook"] = Field(description="Selects this sender.")
    url: str | SecretRef = Field(
        description="http(s) URL to POST to; {env: VAR} or {credential: NAME} when the URL "
        "is itself a secret (Slack-style incoming webhooks)."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Whole-request timeout in seconds.")
    secret: SecretRef | None = Field(
        default=None, description="HMAC-SHA256 key; the body is signed as sha256=<hex>."
    )
    signature_header: str = Field(
        default=SIGNATURE_HEADER, description="Header with the signature."
    )
    headers: dict[str, str | SecretRef] = Field(
        default_factory=dict, description="Extra request headers; values may be secrets."
    )
    format: Literal["triaged", "slack"] = Field(
        default="triaged",
        description="Body shape: 'triaged', the JSON ticket notification; 'slack', a chat "
        'post {"text": ...} for Slack-compatible incoming webhooks (Slack, Mattermost, '
        "Rocket.Chat, Discord's /slack endpoint).",
    )

    @field_validator("url")
    @classmethod
    def _literal_url(cls, value: str | SecretRef) -> str | SecretRef:
        return _check_url(value) if isinstance(value, str) else value


def notification(delivery: Delivery) -> bytes:
    """The JSON body POSTed for one delivery (``v`` versions this shape).

    Keys: ``v``, ``delivery_key``, ``attempt``, ``message_id``, ``team``, ``category``,
    ``priority``, ``tags``, ``rules``, ``source``, ``channel``, ``received_at`` (ISO 8601, UTC),
    ``sender`` (``address``, ``name``), ``recipients``, ``subject``, ``text`` (capped at
    ``MAX_TEXT_BYTES`` of UTF-8, then ``text_truncated`` is true), ``fields``,
    ``conversation_id``.
    """
    message = delivery.message
    raw = message.text.encode("utf-8", "replace")
    truncated = len(raw) > MAX_TEXT_BYTES
    payload = {
        "v": 1,
        "delivery_key": delivery.key,
        "attempt": delivery.attempt,
        "message_id": message.id,
        "team": delivery.team,
        "category": delivery.category,
        "priority": delivery.priority,
        "tags": list(delivery.tags),
        "rules": list(delivery.rules),
        "source": message.source,
        "channel": message.channel,
        "received_at": message.received_at.isoformat(),
        "sender": {"address": message.sender.address, "name": message.sender.name},
        "recipients": list(message.recipients),
        "subject": message.subject,
        "text": raw[:MAX_TEXT_BYTES].decode("utf-8", "ignore") if truncated else message.text,
        "text_truncated": truncated,
        "fields": message.fields,
        "conversation_id": message.thread.conversation_id,
    }
    return json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8", "replace")


def _chat_escape(value: str) -> str:
    """Customer text as literal chat text: ``&``, ``<`` and ``>`` escaped as Slack asks, so
    ``<!channel>``, ``<@U123>`` or ``<https://evil|bank>`` in a message stays text and can
    neither notify a whole channel nor disguise a link."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(value: str, chars: int) -> str:
    """``value`` in at most ``chars`` characters, an ellipsis where it was cut."""
    return value if len(value) <= chars else value[: chars - 1] + "…"


def _cut(value: str, chars: int) -> str:
    """``value`` on one line, clipped (``_clip``)."""
    return _clip(" ".join(value.split()) if "\n" in value or "\r" in value else value, chars)


def chat_post(delivery: Delivery) -> bytes:
    """The JSON body of a Slack-compatible chat post for one delivery: ``{"text": ...}`` in
    Slack's mrkdwn, which Mattermost, Rocket.Chat and Discord's ``/slack`` endpoint read too.

    A headline (priority, category, team, message id), who wrote in and through which
    source, the subject, and the first ``CHAT_TEXT_CHARS`` characters of the text as a
    quote. Everything the customer wrote is escaped (``_chat_escape``).
    """
    message = delivery.message
    sender = message.sender
    who = _chat_escape(_cut(sender.name, 80)) if sender.name else ""
    address = _chat_escape(_cut(sender.address, 200))
    who = f"{who} &lt;{address}&gt;" if who else address
    headline = f"*[{delivery.priority}] {delivery.category} → {delivery.team}*"
    lines = [
        f"{headline} · ticket `{message.id}`",
        f"*From:* {who} via {message.channel}/{_chat_escape(message.source)}",
    ]
    if message.subject:
        lines.append(f"*Subject:* {_chat_escape(_cut(message.subject, _CHAT_SUBJECT_CHARS))}")
    text = message.text.strip()
    if text:
        quoted = _clip(text, CHAT_TEXT_CHARS)
        lines += ["> " + _chat_escape(line) for line in quoted.splitlines() if line.strip()]
    if delivery.tags:
        lines.append("*Tags:* " + ", ".join(_chat_escape(tag) for tag in delivery.tags))
    if delivery.rules:
        lines.append("*Rules:* " + ", ".join(delivery.rules))
    body = {"text": "\n".join(lines)}
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "replace")


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def status_failure(status: int, detail: str, retry_after: str | None) -> DeliveryError:
    """Map a non-2xx answer (Alertmanager ``Retrier``): 408, 429 and 5xx are temporary."""
    reason = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in (408, 429) or status >= 500:
        return TemporaryFailure(reason, retry_after_s(retry_after))
    if 300 <= status < 400:
        reason += " (redirects are not followed: configure the final URL)"
    return PermanentFailure(reason)


class WebhookSender:
    """POSTs one JSON body per delivery: the ticket notification (:func:`notification`), or
    with ``format: slack`` a chat post (:func:`chat_post`)."""

    owns_loop = False  # nothing here blocks the loop either way

    def __init__(self, name: str, config: WebhookOutConfig) -> None:
        self.name = name
        self.config = config
        self._url = ""
        self._url_is_secret = not isinstance(config.url, str)
        self._secret: bytes | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Resolve the URL and secrets and open the HTTP session.

        Raises ``LookupError`` naming the output and the variable when a secret is missing,
        ``ValueError`` when a secret URL is not an http(s) URL.
        """
        if self._session is not None:
            return
        owner = f"webhook output {self.name!r}"
        ref = self.config.url
        if isinstance(ref, SecretRef):
            try:
                self._url = _check_url(ref.resolve().get_secret_value())
            except (LookupError, ValueError) as exc:
                raise type(exc)(f"{owner}: url ({ref.describe()}): {exc}") from None
        else:
            self._url = ref
        self._secret = secret_bytes(owner, "secret", self.config.secret)
        headers = {"Content-Type": "application/json", "User-Agent": "triaged"}
        for key, value in self.config.headers.items():
            if isinstance(value, SecretRef):
                value = (secret_bytes(owner, f"headers.{key}", value) or b"").decode()
            headers[key] = value
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)

    async def send(self, delivery: Delivery) -> None:
        """POST the notification (or the chat post, ``format: slack``); any 2xx is success.

        Raises ``TemporaryFailure`` on 408, 429 and 5xx (with ``retry_after_s`` from
        ``Retry-After``), timeouts and connection errors; ``PermanentFailure`` on any other
        status. Reasons never contain the URL when it is a secret.
        """
        if self._session is None:
            raise RuntimeError(f"webhook output {self.name!r}: send() before start()")
        body = chat_post(delivery) if self.config.format == "slack" else notification(delivery)
        headers = {"Idempotency-Key": delivery.key}
        if self._secret is not None:
            headers[self.config.signature_header] = sign(self._secret, body)
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    log.debug("delivery.posted", target=self.name, status=response.status)
                    return
                detail = (await response.content.read(200)).decode("utf-8", "replace")
                status, retry_after = response.status, response.headers.get("Retry-After")
        except TimeoutError as exc:
            reason = f"no answer within {self.config.timeout_s:g}s"
            raise TemporaryFailure(reason) from self._cause(exc)
        except aiohttp.ClientError as exc:
            raise TemporaryFailure(f"request failed: {self._describe(exc)}") from self._cause(exc)
        raise status_failure(status, " ".join(detail.split()), retry_after)

    async def close(self) -> None:
        """Close the HTTP session. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _describe(self, exc: aiohttp.ClientError) -> str:
        # aiohttp puts the URL into some messages; a secret URL must not reach logs
        if not self._url_is_secret:
            return f"{type(exc).__name__}: {exc}"
        strerror = getattr(exc, "strerror", None)
        return type(exc).__name__ + (f": {strerror}" if strerror else "")

    def _cause(self, exc: BaseException) -> BaseException | None:
        return None if self._url_is_secret else exc
