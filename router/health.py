"""The operator's HTTP listener: ``GET /healthz``, ``GET /metrics`` and ``POST /-/reload``.

Kept apart from the webhook listener so it can stay on loopback while webhooks face the world.
``POST /-/reload`` needs ``Authorization: Bearer <admin.token>`` (compared in constant time)
and is off when no token is configured; it answers 200 with the ruleset in force, or 422 with
every error (``file``, ``line``, ``col``, ``code``, ``message``) while the old rules stay.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from router import metrics
from router.config import parse_listen
from router.queue import Queue
from rules.source import Problem

log = structlog.get_logger()


class AdminServer:
    """Serves health and metrics; ``status()`` supplies the health document."""

    def __init__(
        self,
        listen: str,
        queue: Queue,
        status: Callable[[], Awaitable[dict[str, Any]]],
        *,
        reload: Callable[[str], Awaitable[list[Problem]]] | None = None,
        token: SecretStr | None = None,
    ) -> None:
        self._listen, self._queue, self._status = listen, queue, status
        self._reload, self._token = reload, token
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind; raises ``OSError`` if the address is taken."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/-/reload", self._reload_rules)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        host, port = parse_listen(self._listen)
        site = web.TCPSite(self._runner, host or "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("admin.listening", listen=f"{host}:{self.port}")

    async def stop(self) -> None:
        """Close the listener. Idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        document = await self._status()
        code = 200 if document.get("status") == "ok" else 503
        return web.json_response(document, status=code)

    async def _metrics(self, _request: web.Request) -> web.Response:
        try:
            stats = await self._queue.stats()
        except Exception as exc:  # metrics must render even when the queue is down
            log.warning("metrics.queue_stats_failed", error=str(exc))
        else:
            for state in ("ready", "leased", "delayed", "dead"):
                metrics.queue_messages.labels(state).set(getattr(stats, state))
        body = generate_latest(metrics.collected())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return False
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        return hmac.compare_digest(given, self._token.get_secret_value().encode())

    async def _reload_rules(self, request: web.Request) -> web.Response:
        if self._reload is None or self._token is None:
            error = "reload over HTTP is off: set admin.token (or send SIGHUP)"
            return web.json_response({"error": error}, status=403)
        if not self._authorized(request):
            return web.json_response({"error": "bad or missing bearer token"}, status=401)
        errors = await self._reload("http")
        if errors:
            problems = [p.as_dict() for p in errors]
            body = {"error": "rules not reloaded", "problems": problems}
            return web.json_response(body, status=422)
        document = await self._status()
        return web.json_response({"status": "reloaded", "rules": document["rules"]})
