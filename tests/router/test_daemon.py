"""The whole pipeline in-process: webhook → durable queue → rules → team Maildir.

Real HTTP on loopback, a real SQLite file and a real private redis-server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import aiohttp
import pytest

from router import config as config_mod
from router.daemon import running_daemon
from tests.daemon_helpers import README_MESSAGE, maildir_messages, wait_for_mail, write_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "redis"])
def queue_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config_path(tmp_path: Path, queue_kind: str, request: pytest.FixtureRequest) -> Path:
    redis_url = request.getfixturevalue("redis_url") if queue_kind == "redis" else None
    return write_config(tmp_path, queue=queue_kind, redis_url=redis_url)


def url(daemon, path: str = "/v1/messages") -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{daemon.inputs['web'].port}{path}"


async def test_readme_message_lands_in_the_right_team_maildir(config_path: Path) -> None:
    cfg = config_mod.load(config_path)
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        async with http.post(url(daemon), json=README_MESSAGE) as resp:
            assert resp.status == 202
            body = await resp.json()
        async with asyncio.timeout(30):
            [mail] = await wait_for_mail(cfg.state_dir / "maildir", "aftersales")
    assert mail["Subject"] == README_MESSAGE["subject"]
    assert README_MESSAGE["text"] in mail.get_body(("plain",)).get_content()
    assert mail["X-Triaged-Message-Id"] == body["id"]
    assert mail["X-Triaged-Team"] == "aftersales"
    assert mail["X-Triaged-Category"] == "after-sales"
    assert maildir_messages(cfg.state_dir / "maildir", "triage") == []


@pytest.mark.parametrize(
    ("message", "team", "priority"),
    [
        ({"from": "a@x.example", "text": "网站宕机了，全部用户无法访问"}, "support", "urgent"),
        ({"from": "a@x.example", "text": "Cannot download the invoice"}, "triage", "low"),
        ({"from": "a@x.example", "text": "我要投诉你们的客服，紧急"}, "complaints", "high"),
        ({"from": "a@x.example", "text": "请问企业版多少钱？"}, "sales", "low"),
        ({"from": "a@x.example", "text": "问题已解决，不需要退款，谢谢"}, "triage", "low"),
    ],
)
async def test_example_rules_route_by_content(
    tmp_path: Path, message: dict[str, str], team: str, priority: str
) -> None:
    cfg = config_mod.load(write_config(tmp_path))
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        async with http.post(url(daemon), json=message) as resp:
            assert resp.status == 202
        async with asyncio.timeout(30):
            [mail] = await wait_for_mail(cfg.state_dir / "maildir", team)
    assert mail["X-Triaged-Priority"] == priority


async def test_many_messages_each_delivered_exactly_once(config_path: Path) -> None:
    cfg = config_mod.load(config_path)
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:

        async def send(n: int) -> str:
            message = {"from": f"c{n}@x.example", "text": f"第{n}号 订单 退款"}
            async with http.post(url(daemon), json=message) as resp:
                assert resp.status == 202
                return str((await resp.json())["id"])

        ids = await asyncio.gather(*(send(n) for n in range(60)))
        async with asyncio.timeout(30):
            mails = await wait_for_mail(cfg.state_dir / "maildir", "aftersales", 60)
    assert sorted(m["X-Triaged-Message-Id"] for m in mails) == sorted(ids)


async def test_signed_source_accepts_good_signature_and_refuses_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_SECRET", "s3cret-值")
    inputs = {
        "web": {
            "type": "webhook",
            "listen": "127.0.0.1:0",
            "max_body_bytes": 4096,
            "sources": {"shop": {"secret": {"env": "SHOP_SECRET"}}},
        }
    }
    cfg = config_mod.load(write_config(tmp_path, inputs=inputs))
    body = json.dumps(README_MESSAGE, ensure_ascii=False).encode()
    good = hmac.new("s3cret-值".encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json"}
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        shop = url(daemon, "/v1/messages/shop")
        bad = {**headers, "X-Triaged-Signature": "sha256=" + "0" * 64}
        async with http.post(shop, data=body, headers=bad) as resp:
            assert resp.status == 401
        async with http.post(url(daemon), json=README_MESSAGE) as resp:
            assert resp.status == 401  # anonymous endpoint is off
        big = json.dumps({**README_MESSAGE, "text": "长" * 5000}).encode()
        sig = hmac.new("s3cret-值".encode(), big, hashlib.sha256).hexdigest()
        async with http.post(
            shop, data=big, headers={**headers, "X-Triaged-Signature": f"sha256={sig}"}
        ) as resp:
            assert resp.status == 413
        stats = await daemon._queue.stats()
        assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)
        ok = {**headers, "X-Triaged-Signature": f"sha256={good}"}
        async with http.post(shop, data=body, headers=ok) as resp:
            assert resp.status == 202
        async with asyncio.timeout(30):
            [mail] = await wait_for_mail(cfg.state_dir / "maildir", "aftersales")
    assert mail["X-Triaged-Source"] == "webhook/shop"


async def test_health_and_metrics(tmp_path: Path) -> None:
    cfg = config_mod.load(write_config(tmp_path))
    async with running_daemon(cfg) as daemon, aiohttp.ClientSession() as http:
        async with http.post(url(daemon), json=README_MESSAGE) as resp:
            assert resp.status == 202
        async with asyncio.timeout(30):
            await wait_for_mail(cfg.state_dir / "maildir", "aftersales")
        admin = f"http://127.0.0.1:{daemon.admin.port}"
        async with http.get(f"{admin}/healthz") as resp:
            health = await resp.json()
            assert resp.status == 200
        async with http.get(f"{admin}/metrics") as resp:
            text = await resp.text()
    assert health["status"] == "ok"
    assert health["rules"]["hash"] == daemon.ruleset.hash
    assert (
        'triaged_messages_routed_total{category="after-sales",priority="medium",team="aftersales"}'
        in text
    )
    assert "triaged_queue_messages" in text
