"""Dead letters as an operator meets them: a permanent failure, list, fix, replay, delivered.

The daemon runs in-process; the commands run as subprocesses beside it, as from a shell.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from router import config as config_mod
from router.daemon import running_daemon
from tests.daemon_helpers import EXAMPLE_RULES, README_MESSAGE, write_config
from tests.servers import free_port

pytestmark = pytest.mark.timeout(90)


class Target:
    """A webhook target that refuses (404) until fixed, then records what it gets."""

    def __init__(self) -> None:
        self.fixed = False
        self.received: list[dict[str, object]] = []
        self.got = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        if not self.fixed:
            return web.Response(status=404, text="no such channel")
        self.received.append(await request.json())
        self.got.set()
        return web.Response(status=200)


def triaged(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60
    )


async def test_dead_letter_listed_with_reason_then_replayed_and_delivered(tmp_path: Path) -> None:
    """Steps:
    1. The after-sales team's only target answers 404: the delivery fails permanently.
    2. `triaged dead-letters list --json` beside the running daemon shows it with the reason.
    3. The target is fixed; `triaged dead-letters replay --all` puts it back.
    4. The running daemon delivers it; the list is empty.
    """
    target = Target()
    app = web.Application()
    app.router.add_post("/hook", target.hook)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rules = tmp_path / "rules-hook.yaml"
    text = EXAMPLE_RULES.read_text()
    team = "  aftersales:\n    description: Returns, refunds, repairs\n"
    rules.write_text(text.replace(team + "    inbox: [maildir]", team + "    inbox: [hook]"))
    outputs = {
        "maildir": {"type": "maildir", "path": "maildir"},
        "hook": {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"},
    }
    path = write_config(tmp_path / "cfg", outputs=outputs, rules=rules)
    cfg = config_mod.load(path)
    try:
        async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{daemon.inputs['web'].port}/v1/messages"
            async with http.post(url, json=README_MESSAGE) as resp:
                message_id = (await resp.json())["id"]
            async with asyncio.timeout(30):
                while (await daemon._queue.stats()).dead == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

            listed = await asyncio.to_thread(
                triaged, "dead-letters", "list", "-c", str(path), "--json"
            )
            assert listed.returncode == 0, listed.stderr
            [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
            assert letter["message"]["id"] == message_id
            assert "hook" in letter["reason"]
            assert "404" in letter["reason"]

            target.fixed = True
            replayed = await asyncio.to_thread(
                triaged, "dead-letters", "replay", "-c", str(path), "--all"
            )
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.strip() == "replayed 1 messages"
            async with asyncio.timeout(30):
                await target.got.wait()
            empty = await asyncio.to_thread(
                triaged, "dead-letters", "list", "-c", str(path), "--json"
            )
    finally:
        await runner.cleanup()
    assert [m["message_id"] for m in target.received] == [message_id]
    assert empty.stdout == ""
