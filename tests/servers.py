"""Private test servers on free ports in temp dirs; never the machine's own services.
And ``Openers``, which the backend contract suites use to open and close what they test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """Start a private redis-server (no persistence) and yield its URL; shut it down after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run `bash tests/run` to install it")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(500):  # readiness poll, bounded: about 5 s at most
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: see {directory}/redis.log") from None
                time.sleep(0.01)
        else:
            raise RuntimeError("redis-server did not answer PING")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class Openers(Generic[C]):
    """Opens backends (queues, stores) of one kind — ``sqlite`` on ``state_dir`` or ``redis``
    at ``redis_url`` — for a contract suite parametrized over both; closes them at teardown."""

    def __init__(self, kind: str, state_dir: Path, redis_url: str) -> None:
        self.kind = kind
        self.state_dir = state_dir
        self.redis_url = redis_url
        self.opened: list[C] = []

    def track(self, opened: C) -> C:
        """Remember ``opened`` for ``close_all``; return it."""
        self.opened.append(opened)
        return opened

    async def close_all(self) -> None:
        for opened in self.opened:
            await opened.close()
