"""Build daemon configs in a temp dir and wait for Maildir files, for end-to-end tests."""

from __future__ import annotations

import asyncio
import email
import mailbox
import shutil
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_RULES = REPO / "config" / "rules.yaml"

README_MESSAGE = {
    "from": "zhang.wei@example.cn",
    "name": "张伟",
    "subject": "订单 88812345 申请退款",
    "text": "你好，我收到的耳机有杂音，想申请退款。",
    "fields": {"order_id": "88812345", "tier": "standard"},
}


def write_config(
    directory: Path,
    *,
    queue: str = "sqlite",
    redis_url: str | None = None,
    webhook_port: int = 0,
    admin_port: int | None = 0,
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    rules: Path = EXAMPLE_RULES,
    dispatcher: dict[str, Any] | None = None,
    lease: str = "60s",
) -> Path:
    """A daemon config in ``directory`` with state under ``directory/state``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(rules, directory / "rules.yaml")
    queue_cfg: dict[str, Any] = {"type": queue, "lease": lease, "max_attempts": 5}
    if redis_url:
        queue_cfg["url"] = redis_url
    config = {
        "state_dir": str(directory / "state"),
        "rules": "rules.yaml",
        "instance": "test-instance",
        "queue": queue_cfg,
        "dispatcher": dispatcher or {"workers": 2, "retry": {"initial": "50ms", "max": "1s"}},
        "admin": {"listen": f"127.0.0.1:{admin_port}" if admin_port is not None else None},
        "log": {"level": "warning", "format": "json"},
        "inputs": inputs
        or {"web": {"type": "webhook", "listen": f"127.0.0.1:{webhook_port}", "anonymous": True}},
        "outputs": outputs or {"maildir": {"type": "maildir", "path": "maildir"}},
    }
    path = directory / "triaged.yaml"
    with path.open("w") as fh:
        YAML().dump(config, fh)
    return path


def maildir_messages(root: Path, team: str) -> list[EmailMessage]:
    """Every message in the team's Maildir (new and cur)."""
    folder = root / team
    if not folder.exists():
        return []
    box = mailbox.Maildir(folder, create=False)
    return [
        email.message_from_bytes(box.get_bytes(key), policy=policy.default)  # type: ignore[misc]
        for key in box.iterkeys()
    ]


async def wait_for_mail(root: Path, team: str, count: int = 1) -> list[EmailMessage]:
    """Wait until the team's Maildir holds ``count`` messages (the caller bounds the wait)."""
    while True:
        found = maildir_messages(root, team)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
