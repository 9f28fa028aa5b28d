"""The daemon: open the state, start channels and workers, wait, shut down in phases.

``serve()`` = startup → wait for ``stop()`` → shutdown (uvicorn ``Server.serve``). Signals are
installed by :meth:`Daemon.install_signal_handlers` at the edge so tests can embed the daemon
and call ``stop()``/``reload()`` directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog

from router import metrics, registry, systemd
from router.config import Config
from router.dispatcher import Dispatcher
from router.health import AdminServer
from router.interfaces import Inbound, Sender
from router.queue import Queue, open_queue
from router.secrets import SecretRef
from router.store import Store, open_store
from router.workers import METRICS_ENV, Seat, WorkerPool, take_state_lock, watch_daemon
from rules.loader import RuleFileError, RuleSet, digest_files, load_file
from rules.source import Problem

log = structlog.get_logger()


def redis_url(config: Config) -> str | None:
    """The queue's Redis URL, read from the environment or a credential when it is a secret."""
    url = config.queue.url
    return url.resolve().get_secret_value() if isinstance(url, SecretRef) else url


def load_rules(config: Config) -> RuleSet:
    """Load the rules file the config names, checking team inboxes against its outputs."""
    return load_file(config.rules, outputs=set(config.outputs))


class Daemon:
    """One triaged process. Build with a config and its already-validated ruleset.

    Three roles: the whole pipeline in one process (``dispatcher.processes: 0``); with
    ``processes: N``, the daemon process that receives and starts N workers
    (``router/workers.py``); and, given a ``seat``, one of those workers: no inputs, no admin
    listener, no systemd notification; it takes, decides and delivers.
    """

    def __init__(self, config: Config, ruleset: RuleSet, *, seat: Seat | None = None) -> None:
        self.config = config
        self.ruleset = ruleset
        self.seat = seat
        self.pool: WorkerPool | None = None
        self.started = asyncio.Event()
        self.inputs: dict[str, Inbound] = {}
        self.admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._dispatcher: Dispatcher | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def rules(self) -> RuleSet:
        """The ruleset in force now (replaced whole on reload)."""
        return self.ruleset

    def stop(self) -> None:
        """Ask for a graceful shutdown. Safe from a signal handler; idempotent."""
        self._stop.set()

    async def reload(self, trigger: str = "signal") -> list[Problem]:
        """Reload the rules off the loop and swap them in whole; keep the old ones on error.

        Returns the errors (empty on success). Messages being evaluated finish on the ruleset
        they started with: the dispatcher reads ``self.ruleset`` once per message.
        """
        async with self._reload_lock:
            owner = self.seat is None  # a worker leaves the notices and metrics to the daemon
            if owner:
                systemd.reloading()
            try:
                new = await asyncio.to_thread(load_rules, self.config)
            except RuleFileError as exc:
                errors = [p for p in exc.problems if p.severity == "error"]
                for problem in errors:
                    log.error("rules.reload_failed", trigger=trigger, problem=str(problem))
                if owner:
                    metrics.rules_last_reload_successful.set(0)
                    metrics.rules_reloads.labels(trigger, "failed").inc()
                    systemd.ready(self._status_line())
                return errors
            old, self.ruleset = self.ruleset, new
            if self.pool is not None:
                self.pool.reload()
            if owner:
                self._rules_loaded()
                metrics.rules_reloads.labels(trigger, "ok").inc()
            log.info(
                "rules.reloaded",
                trigger=trigger,
                old_hash=old.hash[:12],
                new_hash=new.hash[:12],
                rules=len(new.rule_ids),
                warnings=len(new.warnings),
            )
            if owner:
                systemd.ready(self._status_line())
            return []

    async def _watch_rules(self, interval_s: float) -> None:
        """Reload when any rules file read (the main one and its includes) changes content.

        Content, not mtime and size: an edit of the same length within one timestamp tick
        would go unseen. The baseline is the hash of the rules in force, so an edit made while
        the daemon was starting is not missed; a broken version is tried once, not on every
        poll. Included directories are listed on each poll too, so a rule file added to or
        removed from one is a change like an edit.
        """
        last = self.ruleset.hash
        while True:
            await asyncio.sleep(interval_s)
            rules = self.ruleset
            current = await asyncio.to_thread(digest_files, rules.files, rules.dirs)
            if current is not None and current != last:
                failed = await self.reload("watch")
                # the digest orders a new file last, the ruleset in include order: after a
                # reload the baseline is the ruleset's own hash, or one poll reloads it twice
                last = current if failed else self.ruleset.hash

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT → stop (a second SIGINT forces exit), SIGHUP → reload."""
        loop = asyncio.get_running_loop()

        def on_int() -> None:
            if self._stop.is_set():
                raise SystemExit(130)
            self.stop()

        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, on_int)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("signal")))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def serve(self) -> None:
        """Run until ``stop()``; raises ``OSError`` and friends when start-up fails."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        processes = self.config.dispatcher.processes if self.seat is None else 0
        async with AsyncExitStack() as stack:
            lock_fd = None
            if processes:
                wait_s = self.config.dispatcher.stop_timeout + 10
                lock_fd = await take_state_lock(self.config.state_dir, wait_s)
                stack.callback(os.close, lock_fd)
            queue, store = await self._open_state(stack, deliver=not processes)
            senders = {} if processes else await self._open_senders(stack)
            async with asyncio.TaskGroup() as tg:
                if lock_fd is not None:
                    self.pool = WorkerPool(self.config, lock_fd)
                await self._startup(tg, queue, store, senders)
                await self._stop.wait()
                await self._shutdown()

    async def _open_state(
        self, stack: AsyncExitStack, *, deliver: bool
    ) -> tuple[Queue, Store | None]:
        """The queue, and the store when this process delivers (only the dispatcher uses it)."""
        q = self.config.queue
        url = redis_url(self.config)
        shared = self.seat is not None
        consumer = self.config.instance
        if self.seat is not None:  # each worker process reads as a consumer of its own
            consumer = f"{consumer}.{self.seat.name}"
        queue = await open_queue(
            q.type,
            state_dir=self.config.state_dir,
            redis_url=url,
            consumer=consumer,
            lease_s=q.lease,
            max_attempts=q.max_attempts,
            prefix=q.prefix,
            dedupe_window_s=q.dedupe_window,
            shared=shared,
        )
        stack.push_async_callback(queue.close)
        if not deliver:
            return queue, None
        store = await open_store(
            q.type, state_dir=self.config.state_dir, redis_url=url, prefix=q.prefix, shared=shared
        )
        stack.push_async_callback(store.close)
        return queue, store

    async def _open_senders(self, stack: AsyncExitStack) -> dict[str, Sender]:
        senders: dict[str, Sender] = {}
        for name, cfg in self.config.outputs.items():
            cls = registry.import_string(registry.OUTPUTS[cfg.type].component)
            sender: Sender = cls(name, cfg)
            sender.owns_loop = self.seat is not None
            await sender.start()
            stack.push_async_callback(sender.close)
            senders[name] = sender
        return senders

    async def _startup(
        self, tg: asyncio.TaskGroup, queue: Queue, store: Store | None, senders: dict[str, Sender]
    ) -> None:
        self._queue = queue
        if self.seat is None:
            self._rules_loaded()
        if self.config.admin.listen and self.seat is None:
            token = self.config.admin.token
            self.admin = AdminServer(
                self.config.admin.listen,
                queue,
                self.health,
                reload=self.reload,
                token=token.resolve() if token else None,
            )
            await self.admin.start()
        if store is not None:
            self._dispatcher = Dispatcher(
                queue,
                store,
                senders,
                self.rules,
                self.config.dispatcher,
                max_attempts=self.config.queue.max_attempts,
            )
            self._dispatcher.start(tg)
        if self.seat is not None:
            watch_daemon(self.seat, queue.wake, self._daemon_gone)
            log.info("worker.serving", rules=len(self.ruleset.rule_ids))
            self.started.set()
            return
        if self.pool is not None:
            if METRICS_ENV not in os.environ:
                log.warning("metrics.workers_not_collected", reason=f"{METRICS_ENV} is not set")
            await self.pool.start(tg)
            queue.on_put(self.pool.wake)
        for name, cfg in self.config.inputs.items():
            cls = registry.import_string(registry.INPUTS[cfg.type].component)
            channel: Inbound = cls(name, cfg)
            await channel.start(queue, tg)
            self.inputs[name] = channel
        self._watchdog = tg.create_task(systemd.watchdog(self._healthy), name="watchdog")
        if self.config.rules_watch > 0:
            self._spawn(self._watch_rules(self.config.rules_watch))
        log.info(
            "daemon.started",
            inputs={n: c.type for n, c in self.config.inputs.items()},
            outputs={n: c.type for n, c in self.config.outputs.items()},
            queue=self.config.queue.type,
            workers=self.config.dispatcher.workers,
            processes=self.config.dispatcher.processes,
            rules=len(self.ruleset.rule_ids),
        )
        systemd.ready(self._status_line())
        self.started.set()

    def _daemon_gone(self) -> None:
        log.warning("worker.daemon_gone")
        self.stop()

    async def _shutdown(self) -> None:
        self._stopping = True
        if self.seat is not None:
            if self._dispatcher is not None:
                await self._dispatcher.stop()
            log.info("worker.stopped", **self._dispatcher.settled if self._dispatcher else {})
            return
        systemd.stopping("stopping: draining in-flight messages")
        # (1) stop accepting: inputs answer 503/421 and finish their in-flight puts.
        await asyncio.gather(*(ch.stop() for ch in self.inputs.values()), return_exceptions=True)
        # (2) workers stop taking and finish what they hold, within the stop timeout.
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self.pool is not None:
            await self.pool.stop()
        # (3) the operator's listener and our own loops go last.
        if self.admin is not None:
            await self.admin.stop()
        self._watchdog.cancel()
        for task in list(self._background):
            task.cancel()
        counts = self._dispatcher.settled if self._dispatcher else {}
        log.info("daemon.stopped", **counts)

    def _healthy(self) -> bool:
        return not self._stopping

    async def health(self) -> dict[str, Any]:
        """The /healthz document: overall status, queue reachability, rules in force."""
        try:
            stats = await self._queue.stats()
            queue: dict[str, Any] = {"status": "ok", "ready": stats.ready, "dead": stats.dead}
        except Exception as exc:
            queue = {"status": "unavailable", "error": str(exc)}
        ok = queue["status"] == "ok" and not self._stopping and self.started.is_set()
        document = {
            "status": "ok",
            "queue": queue,
            "inputs": sorted(self.inputs),
            "rules": {"hash": self.ruleset.hash, "rules": len(self.ruleset.rule_ids)},
        }
        if self.pool is not None:  # none ready to deliver is unavailable; some: in the detail
            document["workers"] = workers = self.pool.status()
            ok = ok and workers["ready"] > 0
        document["status"] = "ok" if ok else "unavailable"
        return document

    def _rules_loaded(self) -> None:
        metrics.rules_last_reload_successful.set(1)
        metrics.rules_last_reload_timestamp.set(time.time())

    def _status_line(self) -> str:
        return (
            f"routing with {len(self.ruleset.rule_ids)} rules "
            f"({self.ruleset.hash[:12]}), queue {self.config.queue.type}"
        )


@asynccontextmanager
async def running_daemon(config: Config, ruleset: RuleSet | None = None) -> AsyncIterator[Daemon]:
    """Run a daemon in this loop until the block ends (tests, benchmarks; uvicorn run_server)."""
    daemon = Daemon(config, ruleset or load_rules(config))
    task = asyncio.create_task(daemon.serve())
    started = asyncio.create_task(daemon.started.wait())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()  # start-up failed: raise its error
    try:
        yield daemon
    finally:
        daemon.stop()
        await task


async def open_admin_queue(config: Config) -> Queue:
    """Open the queue for operator commands (dead letters) beside a running daemon."""
    q = config.queue
    return await open_queue(
        q.type,
        state_dir=config.state_dir,
        redis_url=redis_url(config),
        consumer=f"{config.instance}-admin",
        lease_s=q.lease,
        max_attempts=q.max_attempts,
        prefix=q.prefix,
        admin=True,
    )
