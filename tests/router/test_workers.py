"""``dispatcher.processes``: delivery in worker processes, as a user runs it (subprocesses,
real signals, ``kill -9``), on both queue backends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_helpers import README_MESSAGE, maildir_messages, write_config
from tests.router.test_cli import (
    HeldWebhook,
    _serve,
    config_with_hook,
    daemon_process,
    metric,
    post,
)
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
DISPATCHER = {"workers": 2, "processes": 2, "retry": {"initial": "50ms", "max": "1s"}}


def health(admin_port: int) -> dict[str, Any]:
    """The /healthz document, 200 or 503 (no worker running)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz") as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until_gone(pids: list[int]) -> None:
    """Wait (the caller bounds it) until none of ``pids`` runs (they are not our children)."""
    while any(alive(pid) for pid in pids):  # noqa: ASYNC110 (other processes: nothing to await)
        await asyncio.sleep(0.05)


async def wait_for_count(root: Path, team: str, count: int) -> None:
    while len(maildir_messages(root, team)) < count:  # noqa: ASYNC110 (files: poll)
        await asyncio.sleep(0.05)


def numbered(n: int) -> dict[str, object]:
    return {**README_MESSAGE, "subject": f"{README_MESSAGE['subject']} #{n}"}


async def post_many(port: int, count: int) -> list[str]:
    ids = []
    for n in range(count):
        status, body = await asyncio.to_thread(post, port, numbered(n))
        assert status == 202
        ids.append(str(body["id"]))
    return ids


@pytest.mark.parametrize("queue", ["sqlite", "redis"])
async def test_worker_processes_deliver_each_message_once(
    tmp_path: Path, queue: str, request: pytest.FixtureRequest
) -> None:
    """Two worker processes share the queue; every message lands once; /metrics adds up the
    processes' counts; /healthz lists the workers; SIGTERM stops them all, exit 0."""
    url = request.getfixturevalue("redis_url") if queue == "redis" else None
    web_port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        queue=queue,
        redis_url=url,
        webhook_port=web_port,
        admin_port=admin_port,
        dispatcher=DISPATCHER,
    )
    root = tmp_path / "state" / "maildir"
    async with daemon_process(config, admin_port) as proc:
        workers = health(admin_port)["workers"]
        assert (workers["processes"], workers["running"], len(workers["pids"])) == (2, 2, 2)
        assert proc.pid not in workers["pids"]
        await post_many(web_port, 30)
        async with asyncio.timeout(60):
            await wait_for_count(root, "aftersales", 30)
        routed = (
            'triaged_messages_routed_total{category="after-sales",priority="medium",'
            'team="aftersales"}'
        )
        async with asyncio.timeout(30):  # a message is counted once acked, just after its file
            while await asyncio.to_thread(metric, admin_port, routed) != 30:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        sent = 'triaged_deliveries_total{outcome="sent",target="maildir"}'
        assert await asyncio.to_thread(metric, admin_port, sent) == 30
        received = 'triaged_messages_received_total{channel="webhook",source="web"}'
        assert await asyncio.to_thread(metric, admin_port, received) == 30
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert not any(alive(pid) for pid in workers["pids"])
    subjects = sorted(str(m["Subject"]) for m in maildir_messages(root, "aftersales"))
    assert subjects == sorted(str(numbered(n)["subject"]) for n in range(30))


async def test_a_killed_worker_is_restarted_and_its_message_delivered_once(
    tmp_path: Path,
) -> None:
    """kill -9 of both workers while a delivery is in flight (the team's webhook holds it):
    the daemon starts them again; when the lease expires the message is taken again; the
    webhook gets it a second time with the same Idempotency-Key, the Maildir keeps one file."""
    target = HeldWebhook()
    runner = await _serve(target)
    config, web_port, admin_port = await config_with_hook(
        tmp_path, runner, dispatcher=DISPATCHER, lease="2s"
    )
    root = tmp_path / "state" / "maildir"
    try:
        async with daemon_process(config, admin_port) as proc:
            first = health(admin_port)["workers"]["pids"]
            status, body = await asyncio.to_thread(post, web_port, README_MESSAGE)
            assert status == 202
            async with asyncio.timeout(30):
                await target.calls(1)
            for pid in first:
                os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(30):
                await wait_until_gone(first)
                while health(admin_port)["workers"]["ready"] < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            workers = health(admin_port)["workers"]
            assert workers["restarts"] == 2
            assert not set(workers["pids"]) & set(first)
            target.release.set()
            async with asyncio.timeout(60):
                await target.calls(2)
                await wait_for_count(root, "aftersales", 1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        await runner.cleanup()
    assert target.seen == [f"{body['id']}:hook"] * 2
    assert len(maildir_messages(root, "aftersales")) == 1


async def test_kill_9_of_the_daemon_stops_its_workers_and_a_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    """kill -9 of the daemon process right after the 202s: its workers see their end of the
    socket pair close, finish what they hold and exit; the restarted daemon delivers the rest. Every
    message is in the Maildir exactly once."""
    web_port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path, webhook_port=web_port, admin_port=admin_port, dispatcher=DISPATCHER
    )
    root = tmp_path / "state" / "maildir"
    async with daemon_process(config, admin_port) as proc:
        workers = health(admin_port)["workers"]["pids"]
        await post_many(web_port, 40)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        async with asyncio.timeout(60):
            await wait_until_gone(workers)
    async with daemon_process(config, admin_port) as proc:
        async with asyncio.timeout(60):
            await wait_for_count(root, "aftersales", 40)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    subjects = sorted(str(m["Subject"]) for m in maildir_messages(root, "aftersales"))
    assert subjects == sorted(str(numbered(n)["subject"]) for n in range(40))


async def test_sighup_reloads_the_workers_only_with_a_good_file(tmp_path: Path) -> None:
    """A broken file stops at the daemon (workers keep routing by the old rules); a good
    edit reaches the workers: after-sales messages then go to the complaints desk."""
    web_port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path, webhook_port=web_port, admin_port=admin_port, dispatcher=DISPATCHER
    )
    rules, root = tmp_path / "rules.yaml", tmp_path / "state" / "maildir"
    good = rules.read_text()
    reload_ok = "triaged_rules_last_reload_successful"
    async with daemon_process(config, admin_port) as proc:
        async with asyncio.timeout(30):  # each worker has loaded the good file
            while health(admin_port)["workers"]["ready"] < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        rules.write_text("version: 1\nrules: [\n")
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            while await asyncio.to_thread(metric, admin_port, reload_ok) != 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await post_many(web_port, 4)
        async with asyncio.timeout(30):
            await wait_for_count(root, "aftersales", 4)
        edited = good.replace("set: {team: aftersales,", "set: {team: complaints,")
        assert edited != good
        rules.write_text(edited)
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            while await asyncio.to_thread(metric, admin_port, reload_ok) != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        # the daemon forwards the reload once its own load succeeded; each worker then loads
        # the file itself: post until both have (each takes a share of the messages)
        async with asyncio.timeout(30):
            while not maildir_messages(root, "complaints"):
                await post_many(web_port, 1)
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    assert len(maildir_messages(root, "aftersales")) >= 4


def test_worker_command_refuses_to_run_by_hand(tmp_path: Path) -> None:
    config = write_config(tmp_path, dispatcher=DISPATCHER)
    seat = ["--index", "0", "--wake-fd", "250", "--lock-fd", "251"]
    result = subprocess.run(
        [sys.executable, "-m", "router", "worker", "-c", str(config), *seat],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "descriptor 250 is not open" in result.stderr
