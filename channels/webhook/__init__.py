"""HTTP webhooks: web forms and shop backends POST messages in; tickets are POSTed out.

Inbound, :class:`WebhookChannel` (``type: webhook`` input). One request::

    POST → stopping? 503 → Content-Type 415 → size 413 → token/signature 401 (constant time,
    before any parsing) → JSON 400 → Message → await sink.put() → 202 {"id": ...}

Endpoints:

- ``POST /v1/messages/{source}``: ``source`` is a name under ``sources:``. The request carries
  ``X-Triaged-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` (bare hex accepted; header
  name per source) or ``Authorization: Bearer <token>``, as that source is configured.
- ``POST /v1/messages``: unsigned; only with ``anonymous: true`` (loopback, quick start), else
  401. The message's source is the input's name.
- ``GET /healthz``: 200 ``{"status": "ok"}`` while accepting, 503 ``{"status": "stopping"}``.

Body: ``Content-Type: application/json``, UTF-8 (or the charset the header declares, as older
Chinese web forms send ``charset=GBK``; GB2312/GBK read as GB18030, Big5 as Big5-HKSCS), at
most ``max_body_bytes``::

    {
      "from": "cust-42",                   required, non-blank string: customer id or address
      "text": "我的订单还没发货",            required, non-blank string
      "name": "王小明",                     optional display name
      "subject": "订单 A-1001",             optional
      "conversation_id": "chat-77",        optional: follow-ups join the same ticket
      "recipients": ["support@shop.example"],  optional array of strings
      "fields": {"order_id": "A-1001", "tier": "gold"}   optional object, for rules
    }

A lone surrogate escape (``"\\ud83d"``, half an emoji) becomes U+FFFD instead of a 400 (what
the queue and a Maildir hold is UTF-8). Any other top-level key is kept in ``fields`` (the
same key at top level and in ``fields`` is a 400 rather than silently dropping one). Optional
header ``Idempotency-Key``: a retry with the same key gets the first message's id and queues
nothing new.

Answers: 202 ``{"id": "<message id>"}`` only once the message is durable. Every error is
``{"error": "<what is wrong>", "field": "<body field>" | null}``: 400 invalid JSON, text not
in its charset or a bad field; 401 missing or wrong signature/token; 404 unknown source; 413
body over ``max_body_bytes``; 415 not ``application/json`` or an unknown charset; 503 with
``Retry-After`` while the queue is unavailable or the input is stopping. Nothing is
half-accepted: any error means nothing queued.

Outbound, :class:`WebhookSender` (``type: webhook`` output): one JSON ticket notification per
delivery (see :func:`notification`), or with ``format: slack`` a Slack-compatible chat post
(:func:`chat_post`), with ``Idempotency-Key`` and the same HMAC signature.
"""

from channels.webhook.inbound import WebhookChannel, WebhookConfig, WebhookSourceConfig
from channels.webhook.outbound import (
    CHAT_TEXT_CHARS,
    MAX_TEXT_BYTES,
    WebhookOutConfig,
    WebhookSender,
    chat_post,
    notification,
    retry_after_s,
    status_failure,
)
from channels.webhook.signing import SIGNATURE_HEADER, sign
from router.config import parse_listen

__all__ = [
    "CHAT_TEXT_CHARS",
    "MAX_TEXT_BYTES",
    "SIGNATURE_HEADER",
    "WebhookChannel",
    "WebhookConfig",
    "WebhookOutConfig",
    "WebhookSender",
    "WebhookSourceConfig",
    "chat_post",
    "notification",
    "parse_listen",
    "retry_after_s",
    "sign",
    "status_failure",
]
