"""sd_notify(3) without systemd-python: READY, STATUS, RELOADING, STOPPING and watchdog pings.

One datagram per call to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace);
a no-op when the variable is unset, so the daemon runs the same outside systemd. The sdnotify
package is avoided on purpose: it drops non-Latin-1 STATUS text silently (libraries.md §7).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger()


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields in one datagram; False when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), target)
    except OSError as exc:
        log.warning("systemd.notify_failed", error=str(exc))
        return False
    return True


def ready(status: str) -> bool:
    """Tell systemd start-up (or a reload) is complete."""
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    """Tell systemd a reload started (needs MONOTONIC_USEC, or systemd may ignore it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping(status: str) -> bool:
    """Tell systemd shutdown started."""
    return notify("STOPPING=1", f"STATUS={status}")


def watchdog_interval_s() -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is meant for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog(healthy: Callable[[], bool]) -> None:
    """Ping the watchdog at half its period while ``healthy()``; a stuck loop stops the pings."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
