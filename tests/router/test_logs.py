"""The dispatcher's per-message log context (``router.logs.message_context``)."""

from __future__ import annotations

import asyncio
from typing import Any

from router.logs import merge_message_context, message_context


def _merged(**event: Any) -> dict[str, Any]:
    return dict(merge_message_context(None, "info", event))


async def test_each_task_sees_only_its_own_message() -> None:
    seen: dict[str, dict[str, Any]] = {}

    async def handle(message_id: str) -> None:
        with message_context({"message_id": message_id, "source": "web"}):
            await asyncio.sleep(0)  # the other tasks run inside their own contexts meanwhile
            seen[message_id] = _merged(event="delivery.sent")

    await asyncio.gather(*(handle(f"m{i}") for i in range(5)))
    assert {k: v["message_id"] for k, v in seen.items()} == {f"m{i}": f"m{i}" for i in range(5)}
    assert _merged(event="after") == {"event": "after"}  # nothing left behind


def test_a_lines_own_keys_win_and_the_context_is_restored() -> None:
    with message_context({"message_id": "outer", "team": "sales"}):
        with message_context({"message_id": "inner"}):
            assert _merged(event="x") == {"event": "x", "message_id": "inner"}
        assert _merged(event="x", team="billing") == {
            "event": "x",
            "team": "billing",
            "message_id": "outer",
        }
    assert _merged(event="x") == {"event": "x"}
