"""Hot reload: POST /-/reload, file watching; the old rules stay on error; nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from router import config as config_mod
from router.daemon import running_daemon
from tests.daemon_helpers import README_MESSAGE, wait_for_mail, write_config

pytestmark = pytest.mark.timeout(60)
TOKEN = "reload-token-值"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> config_mod.Config:
    monkeypatch.setenv("TRIAGED_ADMIN_TOKEN", TOKEN)
    path = write_config(tmp_path)
    text = path.read_text().replace(
        "admin:\n  listen: 127.0.0.1:0",
        "admin:\n  listen: 127.0.0.1:0\n  token: {env: TRIAGED_ADMIN_TOKEN}",
    )
    path.write_text(text)
    return config_mod.load(path)


def reroute_refunds(rules: Path) -> None:
    """Send refunds to the complaints team instead of after-sales."""
    text = rules.read_text()
    old = "set: {team: aftersales, category: after-sales"
    assert old in text
    rules.write_text(text.replace(old, "set: {team: complaints, category: after-sales"))


async def post(http: aiohttp.ClientSession, daemon, message: dict[str, object]) -> str:  # type: ignore[no-untyped-def]
    async with http.post(
        f"http://127.0.0.1:{daemon.inputs['web'].port}/v1/messages", json=message
    ) as resp:
        assert resp.status == 202
        return str((await resp.json())["id"])


async def test_reload_endpoint_keeps_old_rules_on_error_and_swaps_good_ones(
    cfg: config_mod.Config,
) -> None:
    maildir = cfg.state_dir / "maildir"
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        reload_url = f"http://127.0.0.1:{daemon.admin.port}/-/reload"
        async with http.post(reload_url) as resp:
            assert resp.status == 401
        async with http.post(reload_url, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        old_hash = daemon.ruleset.hash

        good = cfg.rules.read_text()
        cfg.rules.write_text(good.replace("contains_any: $refund_words", "containz: $refund_words"))
        async with http.post(reload_url, headers=auth) as resp:
            assert resp.status == 422
            body = await resp.json()
        [problem] = body["problems"]
        assert problem["code"] == "E107"
        assert problem["file"] == str(cfg.rules)
        assert (
            problem["line"]
            == good.splitlines().index(
                next(line for line in good.splitlines() if "contains_any: $refund_words" in line)
            )
            + 1
        )
        assert daemon.ruleset.hash == old_hash
        await post(http, daemon, README_MESSAGE)
        async with asyncio.timeout(30):
            await wait_for_mail(maildir, "aftersales", 1)

        cfg.rules.write_text(good)
        reroute_refunds(cfg.rules)
        async with http.post(reload_url, headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.json())["rules"]["hash"] == daemon.ruleset.hash != old_hash
        await post(http, daemon, README_MESSAGE)
        async with asyncio.timeout(30):
            [mail] = await wait_for_mail(maildir, "complaints", 1)
    assert mail["X-Triaged-Category"] == "after-sales"


async def test_reloads_while_messages_flow_lose_nothing(cfg: config_mod.Config) -> None:
    """Steps: 40 messages are posted while the rules are reloaded ten times over; every
    message is delivered exactly once, to one of the two teams the two rulesets name."""
    original = cfg.rules.read_text()
    rerouted = cfg.rules.parent / "rerouted.yaml"
    rerouted.write_text(original)
    reroute_refunds(rerouted)
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:

        async def flip() -> None:
            for n in range(10):
                cfg.rules.write_text(rerouted.read_text() if n % 2 == 0 else original)
                assert await daemon.reload("http") == []

        ids, _ = await asyncio.gather(
            asyncio.gather(*(post(http, daemon, README_MESSAGE) for _ in range(40))), flip()
        )
        maildir = cfg.state_dir / "maildir"
        async with asyncio.timeout(30):
            while True:
                mails = [
                    *await wait_for_mail(maildir, "aftersales", 0),
                    *await wait_for_mail(maildir, "complaints", 0),
                ]
                if len(mails) >= len(ids):
                    break
                await asyncio.sleep(0.05)
    assert sorted(m["X-Triaged-Message-Id"] for m in mails) == sorted(ids)


async def test_watched_rules_file_reloads_on_change(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "rules_watch: 50ms\n")
    cfg = config_mod.load(path)
    async with running_daemon(cfg) as daemon:
        old_hash = daemon.ruleset.hash
        reroute_refunds(cfg.rules)
        async with asyncio.timeout(30):
            while daemon.ruleset.hash == old_hash:  # noqa: ASYNC110 (the watcher polls too)
                await asyncio.sleep(0.02)
        cfg.rules.write_text("version: 1\nrules: [\n")
        new_hash = daemon.ruleset.hash
        for _ in range(20):  # give the watcher time to see the broken file; routing must stay
            await asyncio.sleep(0.05)
        assert daemon.ruleset.hash == new_hash


async def test_watched_included_file_reloads_on_change(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    rules = tmp_path / "rules.yaml"
    text = rules.read_text()
    start = text.index("  sales_words:")
    end = text.index("\n", start) + 1
    (tmp_path / "sales.yaml").write_text("lists:\n" + text[start:end])
    rules.write_text("include: [sales.yaml]\n" + text[:start] + text[end:])
    path.write_text(path.read_text() + "rules_watch: 50ms\n")
    cfg = config_mod.load(path)
    async with running_daemon(cfg) as daemon:
        old_hash = daemon.ruleset.hash
        assert str(tmp_path / "sales.yaml") in daemon.ruleset.files
        sales = tmp_path / "sales.yaml"
        sales.write_text(sales.read_text().replace("[价格,", "[价格, 发票,"))
        async with asyncio.timeout(30):
            while daemon.ruleset.hash == old_hash:  # noqa: ASYNC110 (the watcher polls too)
                await asyncio.sleep(0.02)


REFUND_FIRST = """\
rules:
  - id: refund-first
    when: {text: {contains_any: [退款]}}
    set: {team: complaints, category: after-sales}
"""


def put_atomically(path: Path, text: str) -> None:
    """Write beside ``path`` under a name no include reads, then rename: no half file is seen."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def test_watched_directory_sees_added_and_removed_files(tmp_path: Path) -> None:
    """Steps: the rules include an empty directory; (1) a broken file is added to it: the
    reload fails and is logged, the old rules stay; (2) the file is fixed: its rule takes
    effect and a refund goes to complaints; (3) the file is removed: refunds go to after-sales
    again. Each step waits for the watcher's reload (or failure), not for a time."""
    path = write_config(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text("include: [rules.d/]\n" + rules.read_text())
    (tmp_path / "rules.d").mkdir()
    added = tmp_path / "rules.d" / "refunds.yaml"
    path.write_text(path.read_text() + "rules_watch: 50ms\n")
    cfg = config_mod.load(path)
    maildir = cfg.state_dir / "maildir"
    with capture_logs() as logs:
        async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
            old_hash = daemon.ruleset.hash
            assert daemon.ruleset.dirs == (str(tmp_path / "rules.d"),)
            put_atomically(added, "rules: [\n")
            async with asyncio.timeout(30):
                while not any(e["event"] == "rules.reload_failed" for e in logs):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            failed = next(e for e in logs if e["event"] == "rules.reload_failed")
            assert failed["trigger"] == "watch"
            assert failed["problem"].startswith(f"{added}:")
            assert daemon.ruleset.hash == old_hash

            put_atomically(added, REFUND_FIRST)
            async with asyncio.timeout(30):
                while "refund-first" not in daemon.ruleset.rule_ids:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert str(added) in daemon.ruleset.files
            await post(http, daemon, README_MESSAGE)
            async with asyncio.timeout(30):
                await wait_for_mail(maildir, "complaints", 1)

            added.unlink()
            async with asyncio.timeout(30):
                while "refund-first" in daemon.ruleset.rule_ids:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert daemon.ruleset.hash == old_hash
            await post(http, daemon, README_MESSAGE)
            async with asyncio.timeout(30):
                await wait_for_mail(maildir, "aftersales", 1)
    reloads = [e for e in logs if e["event"] == "rules.reloaded"]
    assert [e["trigger"] for e in reloads] == ["watch", "watch"]
