"""Rule-engine benchmark: 1,000 generated rules, the compiled engine against its baselines.

Run by hand, from the repository root (never part of CI's pass/fail):

    .venv/bin/python bench/rules.py [--seed 1] [--messages 2000]

Everything is generated from the seed (``bench/rulegen.py``): a rule file of 1,000 realistic
rules (mixed Chinese and English keyword lists, ~3,000 keywords, ~90 RE2 regexes, field
conditions on channel, sender domain, ``fields.tier``, headers and amounts, all/any/not
nesting, lists, named conditions, ``ascii_word``) and messages of 1.5 KB and 4 KB (UTF-8)
mixing Chinese and English support prose, most of them hitting a few keywords. One process,
one thread. Printed, all measured in this run:

* load (= reload) of the 1,000-rule file, ``load_file`` end to end: median of 5, wall and CPU;
* per message size: engine msg/s (CPU time of this process = one core); a bare
  ``ahocorasick_rs`` overlapping scan of the same keywords over the same normalised messages
  (subject + "\\n" + body) on ``str`` (as the issue measured it) and on UTF-8 ``bytes`` (as
  the engine scans), and the ratio engine/bare for both — each the best of 5 rounds run
  interleaved, so a slow spell of a shared machine hits all alike (the engine's median round
  is shown too); p50/p99 of single evaluations (wall clock, and CPU time of the thread, which
  a busy machine does not inflate); the naive evaluator's msg/s on a subset, and whether it
  decided the same.

Targets (the issue): ≥ 10,000 msg/s and p99 ≤ 2 ms, checked for both sizes; ≥ 0.3x the bare
``str`` scan, checked at 4 KB; reload of 1,000 rules ≤ 200 ms. The ratio is the issue's 10,000
msg/s put relative to the machine (it measured the bare scan at 35.5 k msg/s on 4 KB
messages: 0.3x is ~10 k), so it is checked at the size it is defined on, the largest. At
1.5 KB it is printed for information: the engine's fixed cost per message (fields, index,
decision) weighs more against a shorter scan, and no engine could keep 0.3x as messages
shrink (a 100-byte message's bare scan takes half a microsecond). The load average is
printed: on a busy machine wall-clock figures (load, p99) are not the engine's.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import ahocorasick_rs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rulegen import RuleGen, message_texts
from rules.engine import Facts, evaluate
from rules.loader import RuleSet, load_file
from rules.naive import evaluate_naive

TARGET_RATE, TARGET_RATIO, TARGET_P99_MS, TARGET_LOAD_MS = 10_000, 0.3, 2.0, 200.0
SIZES = (("1.5 KB", 1536), ("4 KB", 4096))
RATIO_SIZE = 4096  # the size the ratio target is checked at (see the docstring)
CHANNELS = ("email", "email", "email", "telegram", "webhook", "imap")
TIERS = ("free",) * 10 + ("bronze",) * 4 + ("silver",) * 3 + ("gold", "gold", "enterprise")


def build_messages(gen: RuleGen, size: int, count: int, seed: int) -> list[Facts]:
    """``count`` messages whose subject + body is ``size`` UTF-8 bytes (±1 character)."""
    rnd = random.Random(seed * 7919 + size)
    start = datetime(2026, 3, 2, 0, 0, tzinfo=timezone(timedelta(hours=8)))
    out = []
    for _ in range(count):
        subject, body = message_texts(rnd, gen, size)
        domain = rnd.choice(gen.domains) if rnd.random() < 0.3 else "mail.example.com"
        headers = [("Message-ID", f"<{rnd.getrandbits(64):x}@{domain}>")]
        if rnd.random() < 0.2:
            headers.append(("X-Priority", rnd.choice(["1", "3", "5"])))
        if rnd.random() < 0.05:
            headers.append(("Auto-Submitted", "auto-replied"))
        fields: dict[str, object] = {"tier": rnd.choice(TIERS)}
        if rnd.random() < 0.3:
            fields["amount"] = int(10 ** rnd.uniform(1, 4.8))  # log-uniform, 10 to 63,000
        out.append(
            Facts(
                channel=rnd.choice(CHANNELS),
                source="bench",
                subject=subject,
                body=body,
                sender=f"user{rnd.randint(1, 999)}@{domain}",
                sender_name="",
                recipients=("support@corp.example",),
                headers=tuple(headers),
                fields=fields,
                attachments=rnd.choice((0, 0, 0, 1, 2)),
                received_at=start + timedelta(minutes=rnd.randint(0, 7 * 24 * 60)),
            )
        )
    return out


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) milliseconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def _rate(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    """Items per CPU second of one pass (process time: one thread, so one core)."""
    started = time.process_time()
    for item in items:
        fn(item)
    return len(items) / max(time.process_time() - started, 1e-9)


def _rounds(passes: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run the passes interleaved, ``rounds`` times: a slow spell of a shared machine hits
    them alike, and the best round of each is comparable with the others'."""
    out: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(rounds):
        gc.collect()
        for name, run in passes.items():
            out[name].append(run())
    return out


def _latencies_ms(ruleset: RuleSet, batch: Sequence[Facts]) -> tuple[float, ...]:
    """(p50, p99) of single evaluations in wall-clock, then in thread-CPU milliseconds."""
    wall, cpu = [], []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for facts in batch:
        started, started_cpu = clock(), cpu_clock()
        evaluate(ruleset, facts)
        cpu.append(cpu_clock() - started_cpu)
        wall.append(clock() - started)
    out = []
    for samples in (wall, cpu):
        samples.sort()
        out += [samples[len(samples) // 2] / 1e6, samples[int(len(samples) * 0.99)] / 1e6]
    return tuple(out)


def _passes(ruleset: RuleSet, batch: Sequence[Facts]) -> tuple[dict[str, Any], int]:
    """Timed passes over ``batch``: the engine, and a bare overlapping ``ahocorasick_rs``
    scan of all the ruleset's keywords over the normalised messages on ``str`` and on UTF-8
    ``bytes``; and the keyword hits per message."""
    keywords = ruleset.program.keywords.items()
    words = sorted({w for (_, view), table in keywords if view == "fold" for w in table})
    fold = ruleset.views["fold"]
    texts = [fold(f.subject) + "\n" + fold(f.body) for f in batch]
    encoded = [t.encode() for t in texts]
    on_str = ahocorasick_rs.AhoCorasick(words)
    on_bytes = ahocorasick_rs.BytesAhoCorasick([w.encode() for w in words])
    hits = sum(len(on_str.find_matches_as_indexes(t, overlapping=True)) for t in texts)
    passes = {
        "engine": lambda: _rate(lambda f: evaluate(ruleset, f), batch),
        "str": lambda: _rate(lambda t: on_str.find_matches_as_indexes(t, overlapping=True), texts),
        "bytes": lambda: _rate(
            lambda b: on_bytes.find_matches_as_indexes(b, overlapping=True), encoded
        ),
    }
    return passes, hits // len(texts)


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _report_size(
    label: str, ruleset: RuleSet, batch: list[Facts], naive_n: int, rounds: int, with_ratio: bool
) -> bool:
    """Measure one message size and print its block; True when its targets are met (the
    ratio's only ``with_ratio``)."""
    size = sum(len(f.subject.encode()) + len(f.body.encode()) + 1 for f in batch) / len(batch)
    chars = sum(len(f.subject) + len(f.body) + 1 for f in batch) / len(batch)
    for facts in batch[:200]:  # warm-up
        evaluate(ruleset, facts)
    passes, hits = _passes(ruleset, batch)
    rates = _rounds(passes, rounds)
    rate, str_rate, bytes_rate = (max(rates[name]) for name in ("engine", "str", "bytes"))
    median = statistics.median(rates["engine"])
    p50, p99, cpu50, cpu99 = _latencies_ms(ruleset, batch * 2)
    subset = batch[:naive_n]
    naive = _rate(lambda f: evaluate_naive(ruleset, f), subset)
    decisions = [evaluate(ruleset, f) for f in batch]
    same = all(
        evaluate_naive(ruleset, f).as_record() == d.as_record()
        for f, d in zip(subset, decisions, strict=False)
    )
    tried = sum(len(d.trace) for d in decisions) / len(decisions)
    fired = sum(len(d.rules) for d in decisions) / len(decisions)
    ratio, ratio_bytes = rate / str_rate, rate / bytes_rate
    print(f"\n{label}: {len(batch)} messages, {size:,.0f} bytes UTF-8 ({chars:,.0f} chars) each")
    print(f"  keyword hits/msg {hits}, rules evaluated/msg {tried:.1f}, fired/msg {fired:.1f}")
    print(f"  engine          {rate:>8,.0f} msg/s  (median round {median:,.0f})  "
          f"p50/p99 {p50:.3f}/{p99:.3f} ms wall, {cpu50:.3f}/{cpu99:.3f} ms CPU")  # fmt: skip
    print(
        f"  naive           {naive:>8,.0f} msg/s  ({len(subset)} messages; same decisions: {same})"
    )
    print(f"  bare str scan   {str_rate:>8,.0f} msg/s  engine/bare {ratio:.3f}x")
    print(f"  bare bytes scan {bytes_rate:>8,.0f} msg/s  engine/bare {ratio_bytes:.3f}x")
    ok_rate, ok_ratio, ok_p99 = rate >= TARGET_RATE, ratio >= TARGET_RATIO, p99 <= TARGET_P99_MS
    shown = _mark(ok_ratio) if with_ratio else f"not checked at this size: {ratio:.2f}x"
    print(f"  targets: ≥ {TARGET_RATE:,} msg/s {_mark(ok_rate)}; ≥ {TARGET_RATIO}x bare str scan "
          f"{shown}; p99 ≤ {TARGET_P99_MS:g} ms {_mark(ok_p99)}")  # fmt: skip
    return ok_rate and (ok_ratio or not with_ratio) and ok_p99 and same


def _load(text: str) -> tuple[RuleSet, bool]:
    """Write the rule file, load it, print the reload time; (ruleset, target met)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(text, encoding="utf-8")
        ruleset = load_file(path)
        wall, cpu = _median_ms(lambda: load_file(path), 5)
    stats = ruleset.program.stats
    print(f"rule file: {len(text.encode()) / 1024:,.0f} KB, {text.count(chr(10)):,} lines; "
          f"{stats['rules']:,} rules, {stats['keywords']:,} keywords, {stats['regexes']} regexes, "
          f"{stats['unindexed']} unindexed; {len(ruleset.warnings)} warnings")  # fmt: skip
    ok = wall <= TARGET_LOAD_MS
    print(f"load/reload   {wall:6.1f} ms wall, {cpu:6.1f} ms CPU (median of 5)   "
          f"target ≤ {TARGET_LOAD_MS:.0f} ms: {_mark(ok)}")  # fmt: skip
    return ruleset, ok


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, load, measure, print; exit 1 when a target is missed (informational)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--messages", type=int, default=2000, help="per size")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--naive", type=int, default=40, help="messages for the naive evaluator")
    parser.add_argument("--keep", type=Path, help="also write the rule file here")
    args = parser.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    gen = RuleGen(args.seed)
    text = gen.rule_file()
    if args.keep:
        args.keep.write_text(text, encoding="utf-8")
    ruleset, ok = _load(text)
    for label, size in SIZES:
        batch = build_messages(gen, size, args.messages, args.seed)
        with_ratio = size == RATIO_SIZE
        ok = _report_size(label, ruleset, batch, args.naive, args.rounds, with_ratio) and ok
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"all targets: {_mark(ok)}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
