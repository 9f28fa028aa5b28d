"""structlog setup, configured once at startup: readable on a terminal, JSON otherwise.

Under systemd (``JOURNAL_STREAM`` matches stdout) lines are JSON prefixed with ``<N>`` so
journald records the priority (``journalctl -p warning`` works) and the timestamp is left to
journald. Third-party stdlib logging goes through the same renderer. Secrets never reach a
line: values under secret-looking keys are masked by :func:`redact`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"password", "secret", "token", "authorization", "api_key"})
_SYSLOG_LEVEL = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
# Chatty or leaky third-party loggers: httpx logs URLs with bot tokens at INFO, mail.log every
# SMTP command (research/libraries.md).
_QUIET = ("httpx", "httpcore", "mail.log", "aioimaplib.aioimaplib", "aiohttp.access")


_MESSAGE: ContextVar[Mapping[str, Any] | None] = ContextVar("triaged_message", default=None)


class message_context:
    """``with message_context(fields):`` every log line in the block carries ``fields``.

    The dispatcher's per-message context (message_id, source, channel, team, rules). One
    ``ContextVar.set`` instead of structlog's ``bound_contextvars``, which sets one context
    variable per key through a generator: that cost a tenth of the dispatcher's CPU.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields
        self._token: Token[Mapping[str, Any] | None]

    def __enter__(self) -> None:
        self._token = _MESSAGE.set(self._fields)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _MESSAGE.reset(self._token)


def merge_message_context(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add the current ``message_context`` fields (a line's own keys win)."""
    fields = _MESSAGE.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    return event


def redact(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values whose key names a secret."""
    for key in event:
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def _labelled(process: str) -> structlog.types.Processor:
    def label(_logger: object, _name: str, event: MutableMapping[str, Any]) -> Any:
        event.setdefault("process", process)
        return event

    return label


def _syslog_prefix(
    _logger: object, name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["_prefix"] = f"<{_SYSLOG_LEVEL.get(name, 6)}>"
    return event


def _render_prefixed(renderer: structlog.types.Processor) -> structlog.types.Processor:
    def render(logger: object, name: str, event: MutableMapping[str, Any]) -> str:
        prefix = event.pop("_prefix", "")
        return f"{prefix}{renderer(logger, name, event)}"

    return render


def under_journald() -> bool:
    """True when stdout is the journal stream systemd gave us."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{stat.st_dev}:{stat.st_ino}"


def setup(level: str = "info", *, fmt: str = "auto", process: str | None = None) -> None:
    """Configure structlog and stdlib logging. ``fmt``: auto, console or json. ``process``:
    a worker process's name (``worker-1``), put on each of its lines as ``process``."""
    journald = under_journald()
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty() and not journald)
    shared: list[structlog.types.Processor] = [
        merge_message_context,
        structlog.processors.add_log_level,
        redact,
    ]
    if process is not None:
        shared.insert(0, _labelled(process))
    if not journald:
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: structlog.types.Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer()
        tail: list[structlog.types.Processor] = []
    else:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        tail = [structlog.processors.dict_tracebacks]
    if journald:
        tail.append(_syslog_prefix)
        renderer = _render_prefixed(renderer)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
