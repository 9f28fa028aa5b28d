"""The exception tree of triaged (rules/ has its own ``RuleFileError``).

::

    TriagedError
    ├── ConfigError(problems)        the daemon config is invalid; every problem has a position
    ├── QueueUnavailable             the queue cannot take or give messages right now (retry later)
    ├── StateLocked                  another process owns the state directory
    └── DeliveryError
        ├── TemporaryFailure(retry_after_s)   retry with backoff (5xx, timeouts, connection errors)
        └── PermanentFailure                  retrying will not help (4xx, bad address): dead-letter

Catch bare ``Exception`` only at the dispatcher's settle point and in ``cli.main``.
"""

from __future__ import annotations

from rules.source import ProblemsError


class TriagedError(Exception):
    """Base of every error triaged raises on purpose."""


class ConfigError(ProblemsError, TriagedError):
    """The daemon config is invalid; ``problems`` lists every error found, with positions."""


class QueueUnavailable(TriagedError):
    """The queue cannot take the message now; the sender should retry (SMTP 451, HTTP 503)."""


class StateLocked(TriagedError):
    """Another triaged process holds the lock on the state directory."""


class DeliveryError(TriagedError):
    """A delivery to an inbox target failed."""


class TemporaryFailure(DeliveryError):
    """Worth retrying; ``retry_after_s`` is the target's own hint (Retry-After), if any."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(reason)


class PermanentFailure(DeliveryError):
    """Retrying will not help: the message goes to dead letters with this reason."""
