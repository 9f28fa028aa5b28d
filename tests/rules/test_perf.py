"""A performance floor with 1,000 generated rules: catches 10x regressions, not 10 % ones.

The target (research/rules.md §5.7) is ≥ 10,000 msg/s for 1.5 KB messages on one core; the
floor here is low so a busy CI machine does not flake. The rule index must keep the number
of rules evaluated per message small.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from rules.engine import evaluate
from rules.loader import load_text
from tests.rules.helpers import message

CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def _word(rnd: random.Random) -> str:
    if rnd.random() < 0.4:
        return "".join(rnd.choice(CJK) for _ in range(rnd.randint(2, 4)))
    return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(4, 9)))


def _rules(rnd: random.Random, vocab: list[str]) -> list[dict[str, Any]]:
    rules = []
    for i in range(1000):
        kind = i % 10
        if kind < 7:
            when: dict[str, Any] = {
                "all": [
                    {"text": {"contains_any": rnd.sample(vocab, 5), "ascii_word": kind % 2 == 0}},
                    {"not": {"body": {"contains_any": rnd.sample(vocab, 2)}}},
                ]
            }
        elif kind == 7:
            when = {"subject": {"regex": f"(order|订单)\\s*#?{rnd.randint(10, 99)}\\d{{4,}}"}}
        elif kind == 8:
            when = {"sender_domain": {"in": [_word(rnd) + ".example" for _ in range(3)]}}
        else:
            when = {"channel": {"equals": "webhook"}, "fields.amount": {"gte": rnd.randint(1, 9)}}
        action: dict[str, Any] = {"tags": [f"t{i}"], **({"team": "b"} if i % 3 == 0 else {})}
        rules.append({"id": f"r{i}", "when": when, "set": action})
    return rules


def test_thousand_rules_throughput() -> None:
    rnd = random.Random(7)
    vocab = sorted({_word(rnd) for _ in range(4000)})
    doc = {
        "version": 1,
        "teams": {"a": {"inbox": ["x"]}, "b": {"inbox": ["x"]}},
        "defaults": {"team": "a", "category": "general", "priority": "medium"},
        "rules": _rules(rnd, vocab),
    }
    ruleset = load_text(json.dumps(doc, ensure_ascii=False), "bench.yaml")
    assert ruleset.program.stats["unindexed"] == 0

    def body() -> str:
        words = [rnd.choice(vocab) if rnd.random() < 0.02 else _word(rnd) for _ in range(250)]
        return " ".join(words)[:1500]

    batch = [message(subject=_word(rnd), body=body()) for _ in range(300)]
    started = time.perf_counter()
    decisions = [evaluate(ruleset, facts) for facts in batch * 3]
    rate = len(decisions) / (time.perf_counter() - started)
    assert all(d.error is None for d in decisions)
    evaluated = sum(len(d.trace) for d in decisions) / len(decisions)
    assert evaluated < 20, f"{evaluated:.1f} rules evaluated per message: the index is not working"
    assert rate > 2000, f"{rate:.0f} msg/s"
