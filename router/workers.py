"""Worker processes: delivery on more than one core (``dispatcher.processes: N``).

One Python process runs one core's worth of Python, and ingest and delivery then share it.
With ``processes: N`` the daemon process only receives (inputs, ``/healthz``, ``/metrics``,
systemd notification, rule reloads) and N ``triaged worker`` processes, started and watched by
:class:`WorkerPool`, each open the same queue and store (SQLite files ``shared``, or the same
Redis stream under their own consumer names), the outputs and the rules, and run the
dispatcher.

- **Wake-up and readiness.** The daemon holds one end of a socket pair per worker and writes a
  byte to each after every committed batch of puts (``Queue.on_put``); it never blocks on it:
  a full buffer already says "look". A worker reads its end on its loop and wakes its takers
  (``Queue.wake``). End of file there means the daemon is gone, even by ``kill -9``: the
  worker then stops as on SIGTERM, finishing what it holds. The other way, a worker writes
  ``R`` once it has its rules, state and outputs open: ``/healthz`` counts it ready.
- **One owner of the state.** The daemon holds ``<state_dir>/daemon.lock`` and every worker
  inherits that descriptor, so the lock stays until the last of them has exited. A daemon
  restarted after ``kill -9`` waits for the old workers to finish (:func:`take_state_lock`)
  before it releases their leases.
- **Supervision.** A worker that exits while the daemon runs is logged and started again,
  after a backoff that grows while it keeps failing. The leases it held are redelivered when
  they expire (``queue.lease``); the delivery log stops a delivery from being repeated.
- **Signals.** SIGHUP and ``POST /-/reload`` load the rules in the daemon first; only a good
  file is passed on (SIGHUP to each worker, which loads it itself). On stop the daemon closes
  its inputs, then sends SIGTERM to the workers and waits for them (their ``stop_timeout`` plus
  a margin) before SIGKILL.
- **Metrics.** ``prometheus_client``'s multiprocess mode: ``triaged run`` points
  ``PROMETHEUS_MULTIPROC_DIR`` at ``<state_dir>/metrics`` (emptied) before any metric exists;
  the daemon's ``/metrics`` adds up every process's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from router.config import Config
from router.errors import StateLocked
from router.sqlite import lock_file

log = structlog.get_logger()

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_STABLE_S = 60.0  # a worker that ran this long before exiting is started again at once
_BACKOFF_MAX_S = 30.0
_STOP_MARGIN_S = 5.0  # beyond the workers' stop_timeout, before SIGKILL
# systemd's notification socket and watchdog belong to the daemon process alone
_PARENT_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")


@dataclass(frozen=True)
class Seat:
    """What a worker process was given by the daemon: its number and its two descriptors."""

    index: int
    wake_fd: int  # its end of the socket pair; end of file: the daemon is gone
    lock_fd: int  # the daemon's state lock, held while this process lives

    @property
    def name(self) -> str:
        return f"worker-{self.index}"


def prepare_metrics(state_dir: Path) -> None:
    """Before any metric counts: ``prometheus_client``'s multiprocess mode, every process
    (this one and the workers, who inherit the variable) writing its own files in an emptied
    ``<state_dir>/metrics`` (a previous run's files would add its counts to ours).

    The library picks its value class when it is imported, and ``router.metrics`` makes its
    metrics when it is imported, which loading the config already did (the channels' modules
    use them): both are done again here, while nothing has been counted yet.
    """
    from prometheus_client import values

    from router import metrics

    directory = state_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[METRICS_ENV] = str(directory)
    values.ValueClass = values.get_value_class()
    importlib.reload(metrics)


async def take_state_lock(state_dir: Path, wait_s: float) -> int:
    """``<state_dir>/daemon.lock``, waiting up to ``wait_s`` for the worker processes of a
    daemon that was killed to finish; ``StateLocked`` after that."""
    path = state_dir / "daemon.lock"
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            return lock_file(path)
        except StateLocked:
            if time.monotonic() >= deadline:
                raise StateLocked(
                    f"{path} is held by another triaged or its worker processes"
                ) from None
            if not told:
                log.warning("daemon.waiting_for_lock", lock=str(path), wait_s=wait_s)
                told = True
            await asyncio.sleep(0.1)


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: socket.socket | None = None  # our end of its socket pair
    ready: bool = False  # it said so on the channel
    started: float = 0.0
    failures: int = 0  # exits in a row soon after starting
    restarts: int = 0

    @property
    def name(self) -> str:
        return f"worker-{self.index}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class WorkerPool:
    """Starts, wakes, reloads, restarts and stops the worker processes of one daemon."""

    def __init__(self, config: Config, lock_fd: int) -> None:
        self._config = config
        self._lock_fd = lock_fd
        self._slots = [_Slot(i) for i in range(config.dispatcher.processes)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Start every worker (``OSError`` if one cannot be), then watch them from ``tg``."""
        for slot in self._slots:
            await self._spawn(slot)
        for slot in self._slots:
            self._tasks.append(tg.create_task(self._watch(slot), name=f"watch-{slot.name}"))

    def wake(self) -> None:
        """Tell every worker that messages were put (never blocks)."""
        for slot in self._slots:
            if slot.channel is not None:
                with contextlib.suppress(OSError):  # full: already told; broken: it exited
                    slot.channel.send(b"\x01")

    def reload(self) -> None:
        """Ask every running worker to load the rules again (the daemon has checked them)."""
        for slot in self._slots:
            if slot.running and slot.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGHUP)

    def status(self) -> dict[str, Any]:
        """For /healthz: how many run of how many, restarts so far, their pids."""
        return {
            "processes": len(self._slots),
            "running": sum(slot.running for slot in self._slots),
            "ready": sum(slot.running and slot.ready for slot in self._slots),
            "restarts": sum(slot.restarts for slot in self._slots),
            "pids": [slot.proc.pid for slot in self._slots if slot.running and slot.proc],
        }

    async def stop(self) -> None:
        """SIGTERM to every worker; wait for them to finish what they hold; SIGKILL after
        ``stop_timeout`` plus a margin. Idempotent."""
        self._stopping = True
        live = [slot.proc for slot in self._slots if slot.running and slot.proc is not None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if live:
            waits = [asyncio.ensure_future(proc.wait()) for proc in live]
            timeout = self._config.dispatcher.stop_timeout + _STOP_MARGIN_S
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for proc in live:
                if proc.returncode is None:
                    log.warning("worker.killed", pid=proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending)
        for task in self._tasks:
            task.cancel()
        for slot in self._slots:
            self._close_channel(slot)

    async def _watch(self, slot: _Slot) -> None:
        """Wait for the worker to exit; unless the daemon is stopping, start it again."""
        while not self._stopping:
            if slot.proc is None:
                try:
                    await self._spawn(slot)
                except OSError as exc:
                    slot.failures += 1
                    log.error("worker.start_failed", worker=slot.name, error=str(exc))
                    await asyncio.sleep(self._backoff(slot))
                    continue
            proc = slot.proc
            assert proc is not None
            code = await proc.wait()
            self._close_channel(slot)
            slot.proc = None
            if self._stopping:
                return
            ran = time.monotonic() - slot.started
            slot.failures = 0 if ran >= _STABLE_S else slot.failures + 1
            slot.restarts += 1
            delay = self._backoff(slot)
            log.error(
                "worker.exited",
                worker=slot.name,
                pid=proc.pid,
                code=code,
                ran_s=round(ran, 1),
                restart_in_s=delay,
            )
            await asyncio.sleep(delay)

    @staticmethod
    def _backoff(slot: _Slot) -> float:
        return 0.0 if slot.failures == 0 else min(_BACKOFF_MAX_S, 0.5 * 2**slot.failures)

    async def _spawn(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        read_fd = theirs.fileno()
        command = [
            sys.executable, "-m", "router", "worker",
            "--config", str(self._config.file),
            "--index", str(slot.index),
            "--wake-fd", str(read_fd),
            "--lock-fd", str(self._lock_fd),
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=subprocess.DEVNULL,
                pass_fds=(read_fd, self._lock_fd),
                env=self._env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.proc, slot.channel, slot.ready = proc, ours, False
        slot.started = time.monotonic()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._heard, slot, ours)
        log.info("worker.started", worker=slot.name, pid=proc.pid)

    @staticmethod
    def _heard(slot: _Slot, channel: socket.socket) -> None:
        """The worker wrote (``R``: ready) or closed its end (it is exiting)."""
        try:
            data = channel.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            return
        if b"R" in data and slot.channel is channel:
            slot.ready = True
            log.info("worker.ready", worker=slot.name)

    @staticmethod
    def _close_channel(slot: _Slot) -> None:
        if slot.channel is not None:
            channel, slot.channel, slot.ready = slot.channel, None, False
            with contextlib.suppress(OSError, ValueError):
                asyncio.get_running_loop().remove_reader(channel.fileno())
            channel.close()


def watch_daemon(seat: Seat, wake: Callable[[], None], gone: Callable[[], None]) -> None:
    """In a worker, once ready: tell the daemon so; then call ``wake()`` whenever it writes,
    and ``gone()`` (once) at end of file (the daemon exited)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(seat.wake_fd, False)
    with contextlib.suppress(OSError):  # the daemon is gone: the read below says so
        os.write(seat.wake_fd, b"R")

    def readable() -> None:
        try:
            data = os.read(seat.wake_fd, 4096)
        except BlockingIOError:
            return
        if data:
            wake()
            return
        loop.remove_reader(seat.wake_fd)
        gone()

    loop.add_reader(seat.wake_fd, readable)
