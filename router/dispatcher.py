"""Workers: take a lease → decide with the rules → deliver to every inbox target → settle.

Each delivery is recorded in the store's delivery log as soon as it succeeds, so a message
retried after a crash or a partial failure reaches only the targets it has not reached yet.
Settling (ack, nack, dead letter, delivery-log writes) runs under ``asyncio.shield``: a stop
that cancels a worker never leaves a delivery done but unrecorded when it can be avoided.

Outcomes: every target reached → ack; a temporary failure → nack with backoff (the queue
dead-letters once attempts run out); a permanent failure → dead letter with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from router import metrics
from router.config import DispatcherConfig
from router.errors import PermanentFailure, QueueUnavailable, TemporaryFailure
from router.interfaces import Delivery, Sender
from router.message import Message
from router.queue import Lease, Queue
from router.retry import backoff_s
from router.store import Store
from rules.engine import Decision, Facts, evaluate
from rules.loader import RuleSet

log = structlog.get_logger()


def facts_of(message: Message) -> Facts:
    """What the rule engine sees of a message."""
    return Facts(
        channel=message.channel,
        source=message.source,
        subject=message.subject,
        body=message.text,
        sender=message.sender.address,
        sender_name=message.sender.name,
        recipients=message.recipients,
        headers=message.headers,
        fields=message.fields,
        attachments=len(message.attachments),
        received_at=message.received_at,
    )


@dataclass(frozen=True)
class Outcome:
    """What happened to one target: sent, already done, or the failure."""

    target: str
    status: str  # "sent" | "skipped_done" | "temporary" | "permanent"
    reason: str = ""
    retry_after_s: float | None = None


def targets_of(ruleset: RuleSet, decision: Decision) -> list[tuple[str, str]]:
    """(team, target) for the routed team and every notified team, each target once."""
    seen: dict[str, str] = {}
    for team in (decision.team, *decision.notify):
        for target in ruleset.teams[team].inbox if team in ruleset.teams else ():
            seen.setdefault(target, team)
    return [(team, target) for target, team in seen.items()]


class Dispatcher:
    """N workers sharing one queue; ``rules()`` returns the ruleset in force right now."""

    def __init__(
        self,
        queue: Queue,
        store: Store,
        senders: Mapping[str, Sender],
        rules: Callable[[], RuleSet],
        config: DispatcherConfig,
        *,
        max_attempts: int,
    ) -> None:
        self._queue, self._store, self._senders = queue, store, senders
        self._rules, self._config, self._max_attempts = rules, config, max_attempts
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.last_progress = time.monotonic()
        self.settled = {"routed": 0, "retried": 0, "dead": 0}

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Spawn the workers into ``tg``."""
        for n in range(self._config.workers):
            self._tasks.append(tg.create_task(self._work(), name=f"worker-{n}"))

    async def stop(self) -> None:
        """Stop taking; let busy workers finish within ``stop_timeout``; cancel the rest."""
        self._stopping = True
        # (1) idle workers wait in take(), which holds nothing: cancel them now.
        for task in self._tasks:
            if task not in self._busy:
                task.cancel()
        # (2) busy workers finish the message they hold, within the stop timeout.
        busy = [t for t in self._tasks if t in self._busy]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self._config.stop_timeout)
            # (3) stragglers are cancelled; their leases expire and are redelivered.
            for task in pending:
                log.warning("worker.cancelled_busy", worker=task.get_name())
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        failures = 0
        while not self._stopping:
            try:
                lease = await self._queue.take()
            except QueueUnavailable as exc:
                failures += 1
                log.warning("queue.unavailable", error=str(exc), retry_in_s=min(30, failures))
                await asyncio.sleep(min(30, failures))
                continue
            failures = 0
            self._busy.add(me)
            try:
                await self.handle(lease)
            finally:
                self._busy.discard(me)
                self.last_progress = time.monotonic()

    async def handle(self, lease: Lease) -> None:
        """Route one leased message and settle it; never raises except on cancellation."""
        message = lease.message
        with structlog.contextvars.bound_contextvars(
            message_id=message.id, source=message.source, channel=message.channel
        ):
            try:
                await self._route(lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an unexpected failure: retry, never lose it
                log.exception("message.failed", attempt=lease.attempt)
                await self._settle_retry(lease, f"internal error: {exc!r}", None)

    async def _route(self, lease: Lease) -> None:
        started = time.monotonic()
        message = lease.message
        ruleset = self._rules()
        decision = evaluate(ruleset, facts_of(message))
        structlog.contextvars.bind_contextvars(team=decision.team, rules=list(decision.rules))
        if decision.fallback and lease.attempt == 1:
            metrics.fallback.inc()
        record = {**decision.as_record(), "decided_at": datetime.now(UTC).isoformat()}
        await asyncio.shield(self._store.record_decision(message, record))
        pairs = targets_of(ruleset, decision)
        outcomes = await asyncio.gather(
            *(self._deliver(lease, decision, team, target) for team, target in pairs)
        )
        permanent = [o for o in outcomes if o.status == "permanent"]
        temporary = [o for o in outcomes if o.status == "temporary"]
        if permanent:
            reason = "; ".join(f"{o.target}: {o.reason}" for o in permanent)
            await asyncio.shield(self._queue.dead_letter(lease, reason=reason))
            self._count_dead(reason)
        elif temporary:
            reason = "; ".join(f"{o.target}: {o.reason}" for o in temporary)
            hint = max((o.retry_after_s or 0 for o in temporary), default=0) or None
            await self._settle_retry(lease, reason, hint)
        else:
            await asyncio.shield(self._queue.ack(lease))
            self._count_routed(message, decision, [o.target for o in outcomes], started, lease)

    async def _deliver(self, lease: Lease, decision: Decision, team: str, target: str) -> Outcome:
        message = lease.message
        if await self._store.delivered(message.id, target):
            metrics.deliveries.labels(target, "skipped_done").inc()
            return Outcome(target, "skipped_done")
        sender = self._senders.get(target)
        try:
            if sender is None:
                raise PermanentFailure(f"no output named {target!r} is configured")
            await sender.send(
                Delivery(
                    message=message,
                    team=team,
                    target=target,
                    category=decision.category,
                    priority=decision.priority,
                    tags=decision.tags,
                    rules=decision.rules,
                    attempt=lease.attempt,
                )
            )
        except TemporaryFailure as exc:
            metrics.deliveries.labels(target, "temporary").inc()
            log.info("delivery.failed", target=target, temporary=True, error=str(exc))
            return Outcome(target, "temporary", str(exc), exc.retry_after_s)
        except PermanentFailure as exc:
            metrics.deliveries.labels(target, "permanent").inc()
            log.warning("delivery.failed", target=target, temporary=False, error=str(exc))
            return Outcome(target, "permanent", str(exc))
        await asyncio.shield(self._store.record_delivery(message.id, target))
        metrics.deliveries.labels(target, "sent").inc()
        log.debug("delivery.sent", target=target)
        return Outcome(target, "sent")

    async def _settle_retry(self, lease: Lease, reason: str, hint_s: float | None) -> None:
        if lease.attempt >= self._max_attempts:
            reason = f"gave up after {lease.attempt} attempts: {reason}"
            await asyncio.shield(self._queue.dead_letter(lease, reason=reason))
            self._count_dead(reason)
            return
        retry_in_s = backoff_s(lease.attempt, self._config.retry, hint_s)
        await asyncio.shield(self._queue.nack(lease, retry_in_s=retry_in_s, reason=reason))
        self.settled["retried"] += 1
        log.info(
            "delivery.retry", attempt=lease.attempt, retry_in_s=round(retry_in_s, 2), reason=reason
        )

    def _count_dead(self, reason: str) -> None:
        self.settled["dead"] += 1
        metrics.dead_lettered.inc()
        log.error("message.dead_lettered", reason=reason)

    def _count_routed(
        self, message: Message, decision: Decision, targets: list[str], started: float, lease: Lease
    ) -> None:
        self.settled["routed"] += 1
        metrics.routed.labels(decision.team, decision.category, decision.priority).inc()
        latency = (datetime.now(UTC) - message.received_at).total_seconds()
        metrics.ingest_to_delivery.observe(max(0.0, latency))
        log.info(
            "message.routed",
            category=decision.category,
            priority=decision.priority,
            tags=list(decision.tags),
            targets=targets,
            attempt=lease.attempt,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
