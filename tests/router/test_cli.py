"""The ``triaged`` command as a user runs it: subprocesses, real signals, ``kill -9``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.daemon_helpers import (
    EXAMPLE_RULES,
    README_MESSAGE,
    maildir_messages,
    wait_for_mail,
    write_config,
)
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
RELOAD_OK = "triaged_rules_last_reload_successful"


def triaged(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def _wait_healthy(proc: subprocess.Popen[bytes], admin_port: int) -> None:
    for _ in range(1000):  # bounded readiness poll (about 20 s)
        if proc.poll() is not None:
            raise RuntimeError(f"triaged exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz") as resp:
                if json.load(resp)["status"] == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("triaged did not become healthy")


@asynccontextmanager
async def daemon_process(config: Path, admin_port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Start ``triaged run`` and wait (off the loop) until /healthz answers ok."""
    proc = subprocess.Popen([sys.executable, "-m", "router", "run", "-c", str(config)])  # noqa: ASYNC220
    try:
        await asyncio.to_thread(_wait_healthy, proc, admin_port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait)


def metric(admin_port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def post(port: int, message: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/messages",
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as resp:
        return resp.status, json.load(resp)


def test_check_accepts_the_example_config() -> None:
    result = triaged("check", "-c", "config/triaged.yaml", cwd=EXAMPLE_RULES.parents[1])
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (
            "    when: {text: {containz: [退款]}}",  # unknown operator
            'rules.yaml:8:19: E107 unknown operator "containz" (did you mean "contains"?)',
        ),
        (
            "     when: {text: {contains: [退款]}}",  # bad indentation
            "rules.yaml:8:6: E001 invalid YAML",
        ),
    ],
)
def test_check_reports_rule_typos_with_file_line_col(
    tmp_path: Path, broken: str, expected: str
) -> None:
    rules = tmp_path / "bad-rules.yaml"
    rules.write_text(
        "version: 1\n"
        "teams:\n"
        "  triage: {inbox: [maildir]}\n"
        "defaults: {team: triage, category: general, priority: low}\n"
        "rules:\n"
        "  - id: refund\n"
        "    set: {team: triage}\n"
        f"{broken}\n"
    )
    config = write_config(tmp_path / "cfg", rules=rules)
    result = triaged("check", "-c", str(config))
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_config_errors_with_position(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace("workers: 2", "wrokers: 2")
    config.write_text(text)
    result = triaged("check", "-c", str(config))
    assert result.returncode == 1
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "wrokers" in t)
    assert f"triaged.yaml:{line}:" in result.stderr
    assert "wrokers" in result.stderr


class HeldWebhook:
    """A webhook target that records each call and answers only once released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[str] = []
        self._called = asyncio.Condition()

    async def hook(self, request: web.Request) -> web.Response:
        async with self._called:
            self.seen.append(request.headers["Idempotency-Key"])
            self._called.notify_all()
        await self.release.wait()
        return web.Response(status=200)

    async def calls(self, count: int) -> None:
        async with self._called:
            await self._called.wait_for(lambda: len(self.seen) >= count)


async def _serve(target: HeldWebhook) -> web.AppRunner:

    app = web.Application()
    app.router.add_post("/hook", target.hook)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    return runner


async def config_with_hook(
    tmp_path: Path, runner: web.AppRunner, **config: Any
) -> tuple[Path, int, int]:
    """Serve ``runner`` (a held webhook) on a free port and write a daemon config whose
    aftersales team has two targets, the Maildir and that webhook: (config, web, admin port)."""
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    rules = tmp_path / "two-targets.yaml"
    team = "  aftersales:\n    description: Returns, refunds, repairs\n"
    rules.write_text(
        EXAMPLE_RULES.read_text().replace(
            team + "    inbox: [maildir]", team + "    inbox: [maildir, hook]"
        )
    )
    web_port, admin_port = free_port(), free_port()
    outputs = {
        "maildir": {"type": "maildir", "path": "maildir"},
        "hook": {"type": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook", "timeout_s": 60},
    }
    path = write_config(
        tmp_path, webhook_port=web_port, admin_port=admin_port, outputs=outputs, rules=rules,
        **config,
    )  # fmt: skip
    return path, web_port, admin_port


async def test_kill_9_after_202_delivers_exactly_once_after_restart(tmp_path: Path) -> None:
    """Steps:
    1. The team has two targets: the Maildir and a webhook that holds every request.
    2. POST a message → 202; wait until the Maildir file exists and the webhook is called.
    3. kill -9 the daemon while the webhook delivery is still in flight.
    4. Release the webhook and restart the daemon on the same state.
    5. The message is redelivered: the webhook gets it again (same Idempotency-Key), the
       Maildir still holds exactly one file.
    """
    target = HeldWebhook()
    runner = await _serve(target)
    config, web_port, admin_port = await config_with_hook(tmp_path, runner)
    root = tmp_path / "state" / "maildir"
    try:
        async with daemon_process(config, admin_port) as proc:
            status, body = await asyncio.to_thread(post, web_port, README_MESSAGE)
            assert status == 202
            async with asyncio.timeout(30):
                await wait_for_mail(root, "aftersales")
                await target.calls(1)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
        target.release.set()
        async with daemon_process(config, admin_port) as proc:
            async with asyncio.timeout(30):
                await target.calls(2)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        await runner.cleanup()
    assert target.seen == [f"{body['id']}:hook"] * 2
    assert len(maildir_messages(root, "aftersales")) == 1


async def sighup_until(proc: subprocess.Popen[bytes], admin_port: int, *, ok: int) -> None:
    """SIGHUP the daemon, then wait (bounded) until its last reload's success metric is ``ok``."""
    proc.send_signal(signal.SIGHUP)
    async with asyncio.timeout(30):
        while await asyncio.to_thread(metric, admin_port, RELOAD_OK) != ok:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_sigterm_stops_cleanly_and_sighup_keeps_rules_on_error(tmp_path: Path) -> None:
    """SIGHUP with a broken file keeps the old rules; then with a good one, which takes
    effect; SIGTERM exits 0."""
    web_port, admin_port = free_port(), free_port()
    config = write_config(tmp_path, webhook_port=web_port, admin_port=admin_port)
    rules, root = tmp_path / "rules.yaml", tmp_path / "state" / "maildir"
    good = rules.read_text()
    async with daemon_process(config, admin_port) as proc:
        assert await asyncio.to_thread(metric, admin_port, RELOAD_OK) == 1
        rules.write_text("version: 1\nrules: [\n")
        await sighup_until(proc, admin_port, ok=0)
        status, _ = await asyncio.to_thread(post, web_port, README_MESSAGE)
        assert status == 202
        async with asyncio.timeout(30):
            await wait_for_mail(root, "aftersales")
        # a good edit: after-sales messages go to the complaints desk now
        edited = good.replace("set: {team: aftersales,", "set: {team: complaints,")
        assert edited != good
        rules.write_text(edited)
        await sighup_until(proc, admin_port, ok=1)
        status, _ = await asyncio.to_thread(post, web_port, README_MESSAGE)
        assert status == 202
        async with asyncio.timeout(30):
            await wait_for_mail(root, "complaints")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert len(maildir_messages(root, "aftersales")) == 1
    assert len(maildir_messages(root, "complaints")) == 1


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = write_config(tmp_path, webhook_port=port)
        result = triaged("run", "-c", str(config))
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.fspath(tmp_path) not in result.stdout
