"""Workers: take a batch of leases → decide with the rules → deliver to every inbox target → settle.

A worker takes up to ``dispatcher.batch`` messages at once (``Queue.take_batch``), so the
queue and store round trips — claim, decision records with the delivery-log lookup
(``Store.begin_batch``), delivery-log writes (``Store.record_deliveries``), ack
(``Queue.ack_batch``) — are paid once per batch, not once per message. Every delivery of
every message of the batch runs concurrently; each message is then settled by its own outcome.

Each successful delivery is recorded in the store's delivery log before its message is settled,
so a message retried after a crash or a partial failure reaches only the targets it has not
reached yet (a crash between a delivery and its record is covered by the senders' idempotency:
Maildir looks for the file on a retry, webhooks carry an ``Idempotency-Key``). Settling (ack,
nack, dead letter, delivery-log writes) runs under ``asyncio.shield``: a stop that cancels a
worker never leaves a delivery done but unrecorded when it can be avoided.

Outcomes: every target reached → ack; a temporary failure → nack with backoff (the queue
dead-letters once attempts run out); a permanent failure → dead letter with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from router import metrics
from router.config import DispatcherConfig
from router.errors import PermanentFailure, QueueUnavailable, TemporaryFailure
from router.interfaces import Delivery, Sender
from router.logs import message_context
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


@dataclass
class _Job:
    """One message of a worker's batch, on its way from lease to settle."""

    lease: Lease
    decision: Decision | None = None
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (team, target)
    done: set[str] = field(default_factory=set)  # targets reached by an earlier attempt
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None  # an internal failure: retry

    def bound(self) -> message_context:
        """The log context of this message (with its routing once decided)."""
        message = self.lease.message
        fields: dict[str, object] = {
            "message_id": message.id,
            "source": message.source,
            "channel": message.channel,
        }
        if self.decision is not None:
            fields["team"] = self.decision.team
            fields["rules"] = list(self.decision.rules)
        return message_context(fields)


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
                leases = await self._queue.take_batch(self._config.batch)
            except QueueUnavailable as exc:
                failures += 1
                log.warning("queue.unavailable", error=str(exc), retry_in_s=min(30, failures))
                await asyncio.sleep(min(30, failures))
                continue
            failures = 0
            self._busy.add(me)
            try:
                await self.handle_batch(leases)
            finally:
                self._busy.discard(me)
                self.last_progress = time.monotonic()

    async def handle(self, lease: Lease) -> None:
        """Route one leased message and settle it; never raises except on cancellation."""
        await self.handle_batch([lease])

    async def handle_batch(self, leases: list[Lease]) -> None:
        """Route leased messages and settle each; never raises except on cancellation."""
        started = time.monotonic()
        jobs = [_Job(lease) for lease in leases]
        self._decide(jobs)
        await self._begin(jobs)
        sent: list[tuple[str, str]] = []  # (message id, target) delivered, not yet recorded
        try:
            await asyncio.gather(*(self._deliver_all(job, sent) for job in jobs if job.pairs))
        except asyncio.CancelledError:
            if sent:  # a stop cancelled us: still record what was delivered
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(self._store.record_deliveries(sent))
            raise
        if sent:
            try:
                await asyncio.shield(self._store.record_deliveries(sent))
            except Exception as exc:  # retried: the senders' idempotency stops a duplicate
                reached = {message_id for message_id, _ in sent}
                for job in jobs:
                    if job.lease.message.id in reached and job.error is None:
                        self._failed(job, exc)
        await self._settle(jobs, started)

    def _decide(self, jobs: list[_Job]) -> None:
        try:
            ruleset = self._rules()
        except Exception as exc:  # a bug: retry, never lose them
            for job in jobs:
                self._failed(job, exc)
            return
        for job in jobs:
            try:
                job.decision = evaluate(ruleset, facts_of(job.lease.message))
                job.pairs = targets_of(ruleset, job.decision)
            except Exception as exc:  # a bug in a rule or the engine: retry, never lose it
                self._failed(job, exc)
                continue
            if job.decision.fallback and job.lease.attempt == 1:
                metrics.fallback.inc()

    async def _begin(self, jobs: list[_Job]) -> None:
        """Record the decisions and learn which targets earlier attempts already reached."""
        decided = [job for job in jobs if job.error is None and job.decision is not None]
        if not decided:
            return
        decided_at = datetime.now(UTC).isoformat()
        records = [
            (job.lease.message, {**job.decision.as_record(), "decided_at": decided_at})
            for job in decided
            if job.decision is not None
        ]
        try:
            done = await asyncio.shield(self._store.begin_batch(records))
        except Exception as exc:
            for job in decided:
                self._failed(job, exc)
            return
        for job in decided:
            job.done = done.get(job.lease.message.id, set())

    def _failed(self, job: _Job, exc: Exception) -> None:
        """An unexpected failure for this message: log it; it is retried."""
        with job.bound():
            log.error("message.failed", attempt=job.lease.attempt, exc_info=exc)
        job.error = f"internal error: {exc!r}"
        job.pairs = []

    async def _deliver_all(self, job: _Job, sent: list[tuple[str, str]]) -> None:
        if job.error is not None or job.decision is None:
            return
        with job.bound():
            if len(job.pairs) == 1:
                job.outcomes = [await self._deliver(job, *job.pairs[0], sent)]
            else:
                job.outcomes = list(
                    await asyncio.gather(
                        *(self._deliver(job, team, target, sent) for team, target in job.pairs)
                    )
                )

    async def _deliver(
        self, job: _Job, team: str, target: str, sent: list[tuple[str, str]]
    ) -> Outcome:
        message, decision = job.lease.message, job.decision
        assert decision is not None
        if target in job.done:
            metrics.labelled(metrics.deliveries, target, "skipped_done").inc()
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
                    attempt=job.lease.attempt,
                )
            )
        except TemporaryFailure as exc:
            metrics.labelled(metrics.deliveries, target, "temporary").inc()
            log.info("delivery.failed", target=target, temporary=True, error=str(exc))
            return Outcome(target, "temporary", str(exc), exc.retry_after_s)
        except PermanentFailure as exc:
            metrics.labelled(metrics.deliveries, target, "permanent").inc()
            log.warning("delivery.failed", target=target, temporary=False, error=str(exc))
            return Outcome(target, "permanent", str(exc))
        except Exception as exc:  # a sender's bug: retry, never lose the message
            log.error("delivery.failed", target=target, temporary=True, exc_info=exc)
            return Outcome(target, "temporary", f"internal error: {exc!r}")
        sent.append((message.id, target))
        metrics.labelled(metrics.deliveries, target, "sent").inc()
        log.debug("delivery.sent", target=target)
        return Outcome(target, "sent")

    async def _settle(self, jobs: list[_Job], started: float) -> None:
        """Ack every fully delivered message at once; nack or dead-letter the others one each."""
        done: list[_Job] = []
        others = []
        for job in jobs:
            permanent = [o for o in job.outcomes if o.status == "permanent"]
            temporary = [o for o in job.outcomes if o.status == "temporary"]
            if job.error is not None:
                others.append(self._settle_retry(job, job.error, None))
            elif permanent:
                reason = "; ".join(f"{o.target}: {o.reason}" for o in permanent)
                others.append(self._settle_dead(job, reason))
            elif temporary:
                reason = "; ".join(f"{o.target}: {o.reason}" for o in temporary)
                hint = max((o.retry_after_s or 0 for o in temporary), default=0) or None
                others.append(self._settle_retry(job, reason, hint))
            else:
                done.append(job)
        await asyncio.gather(self._settle_acks(done, started), *others)

    async def _settle_acks(self, jobs: list[_Job], started: float) -> None:
        if not jobs:
            return
        try:
            await asyncio.shield(self._queue.ack_batch([job.lease for job in jobs]))
        except QueueUnavailable as exc:  # the leases expire; the delivery log skips the targets
            log.warning("queue.ack_failed", error=str(exc), messages=len(jobs))
            return
        for job in jobs:
            with job.bound():
                self._count_routed(job, started)

    async def _settle_dead(self, job: _Job, reason: str) -> None:
        with job.bound():
            try:
                await asyncio.shield(self._queue.dead_letter(job.lease, reason=reason))
            except QueueUnavailable as exc:  # the lease expires and the message comes back
                log.warning("queue.settle_failed", error=str(exc))
                return
            self._count_dead(reason)

    async def _settle_retry(self, job: _Job, reason: str, hint_s: float | None) -> None:
        lease = job.lease
        with job.bound():
            try:
                if lease.attempt >= self._max_attempts:
                    reason = f"gave up after {lease.attempt} attempts: {reason}"
                    await asyncio.shield(self._queue.dead_letter(lease, reason=reason))
                    self._count_dead(reason)
                    return
                retry_in_s = backoff_s(lease.attempt, self._config.retry, hint_s)
                await asyncio.shield(self._queue.nack(lease, retry_in_s=retry_in_s, reason=reason))
            except QueueUnavailable as exc:  # the lease expires and the message comes back
                log.warning("queue.settle_failed", error=str(exc))
                return
            self.settled["retried"] += 1
            log.info(
                "delivery.retry",
                attempt=lease.attempt,
                retry_in_s=round(retry_in_s, 2),
                reason=reason,
            )

    def _count_dead(self, reason: str) -> None:
        self.settled["dead"] += 1
        metrics.dead_lettered.inc()
        log.error("message.dead_lettered", reason=reason)

    def _count_routed(self, job: _Job, started: float) -> None:
        message, decision, lease = job.lease.message, job.decision, job.lease
        assert decision is not None
        self.settled["routed"] += 1
        metrics.labelled(metrics.routed, decision.team, decision.category, decision.priority).inc()
        latency = (datetime.now(UTC) - message.received_at).total_seconds()
        metrics.ingest_to_delivery.observe(max(0.0, latency))
        log.info(
            "message.routed",
            category=decision.category,
            priority=decision.priority,
            tags=list(decision.tags),
            targets=[o.target for o in job.outcomes],
            attempt=lease.attempt,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
