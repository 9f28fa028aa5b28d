"""Every Redis key triaged uses, under one prefix (``triaged:`` unless configured).

Several daemons sharing one Redis must agree on these names, so they are built here and
nowhere else (like arq's ``constants.py``). ``router/queue/redis.py`` uses the queue keys,
``router/store/redis.py`` the ticket-state keys; pollers that must run once take a ``lock``.

::

    {prefix}queue                 Stream of ready and leased messages (fields m=payload, a=attempts)
    {prefix}queue:delayed         ZSET "<attempts>|<payload>" scored by due time in ms (nack)
    {prefix}queue:dead            HASH message id -> payload
    {prefix}queue:dead:info       HASH message id -> JSON {reason, attempts, failed_at}
    {prefix}queue:dead:order      ZSET message id scored by failed_at in ms (oldest first)
    {prefix}dedupe:<key>          STRING message id, EX dedupe window
    {prefix}delivered:<id>        SET of targets a message was delivered to, EX retention
    {prefix}decision:<id>         HASH m=message payload, d=decision JSON, EX retention
    {prefix}decisions             ZSET message id scored by decided time in µs (recent first)
    {prefix}lock:<name>           STRING owner, PX ttl (single-instance pollers)
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "triaged:"

# The consumer group every daemon joins; its consumers are named per daemon (config).
GROUP = "dispatch"


@dataclass(frozen=True)
class Keys:
    """Key names under one ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    @property
    def stream(self) -> str:
        """The queue stream."""
        return f"{self.prefix}queue"

    @property
    def delayed(self) -> str:
        """Messages waiting for a retry, scored by due time (ms)."""
        return f"{self.prefix}queue:delayed"

    @property
    def dead(self) -> str:
        """Dead-letter payloads by message id."""
        return f"{self.prefix}queue:dead"

    @property
    def dead_info(self) -> str:
        """Dead-letter reason, attempts and time by message id."""
        return f"{self.prefix}queue:dead:info"

    @property
    def dead_order(self) -> str:
        """Dead-letter message ids by failure time (ms)."""
        return f"{self.prefix}queue:dead:order"

    def dedupe(self, key: str) -> str:
        """Holds the id of the first message seen with dedupe ``key``."""
        return f"{self.prefix}dedupe:{key}"

    def delivered(self, message_id: str) -> str:
        """The set of targets ``message_id`` was delivered to."""
        return f"{self.prefix}delivered:{message_id}"

    def decision(self, message_id: str) -> str:
        """The message and routing decision of ``message_id``."""
        return f"{self.prefix}decision:{message_id}"

    @property
    def decisions(self) -> str:
        """Message ids with a decision, by time (µs)."""
        return f"{self.prefix}decisions"

    def lock(self, name: str) -> str:
        """A single-instance lock (e.g. one IMAP poller across daemons)."""
        return f"{self.prefix}lock:{name}"
