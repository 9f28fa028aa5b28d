"""systemd integration as systemd sees it: datagrams on $NOTIFY_SOCKET, and the JSON log lines."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from router import config as config_mod
from router.daemon import running_daemon
from tests.daemon_helpers import README_MESSAGE, wait_for_mail, write_config
from tests.servers import free_port

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def next(self) -> dict[str, str]:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        return dict(line.split("=", 1) for line in data.decode().splitlines())


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sock = NotifySocket(path)
    yield sock
    sock.sock.close()


async def test_ready_watchdog_reload_and_stopping(tmp_path: Path, notify: NotifySocket) -> None:
    cfg = config_mod.load(write_config(tmp_path))
    async with running_daemon(cfg) as daemon:
        async with asyncio.timeout(10):
            ready = await notify.next()
            assert ready["READY"] == "1"
            assert ready["STATUS"].startswith("routing with 7 rules")
            while "WATCHDOG" not in await notify.next():
                pass
            assert await daemon.reload("signal") == []
            reloading = await notify.next()
            while "WATCHDOG" in reloading:
                reloading = await notify.next()
            assert reloading["RELOADING"] == "1"
            assert int(reloading["MONOTONIC_USEC"]) > 0
    async with asyncio.timeout(10):
        while "STOPPING" not in (message := await notify.next()):
            pass
    assert message["STOPPING"] == "1"


def test_log_lines_carry_message_id_source_and_decision(tmp_path: Path) -> None:
    """Steps: run the daemon (JSON logs, as under journald), send one message, SIGTERM; every
    line about the message names it and its source, and the routed line has the decision."""
    web_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, webhook_port=web_port, admin_port=admin_port)
    config.write_text(config.read_text().replace("level: warning", "level: info"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1000):  # bounded readiness poll
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz")
                break
            except OSError:
                asyncio.run(asyncio.sleep(0.02))
        request = urllib.request.Request(
            f"http://127.0.0.1:{web_port}/v1/messages",
            data=json.dumps(README_MESSAGE).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as resp:
            message_id = json.load(resp)["id"]
        asyncio.run(
            asyncio.wait_for(wait_for_mail(tmp_path / "state" / "maildir", "aftersales"), 30)
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in out.splitlines()]
    about = [line for line in lines if line.get("message_id") == message_id]
    assert {line["event"] for line in about} >= {"message.queued", "message.routed"}
    assert all(line["source"] == "web" for line in about)
    [routed] = [line for line in about if line["event"] == "message.routed"]
    assert routed["team"] == "aftersales"
    assert routed["rules"] == ["after-sales"]
    assert (routed["category"], routed["priority"], routed["tags"]) == (
        "after-sales",
        "medium",
        ["refund"],
    )
    assert "zhang.wei@example.cn" not in out  # addresses stay out of info lines
    assert lines[-1]["event"] == "daemon.stopped"
