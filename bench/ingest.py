"""Ingest and end-to-end benchmark of a running triaged daemon, against a bare baseline.

Run by hand (never in CI's pass/fail), from the repository root, after `bash tests/run` or
`pip install -e .` (needs redis-server and wrk: `apt-get install redis-server wrk`):

    .venv/bin/python bench/ingest.py [--seconds 6] [--rounds 3] [--connections 64]

Everything listens on loopback; each server is its own process; wrk is the load generator.
Each daemon run follows a bare run of the same length, and its ratio is to that bare run: the
speed of this shared 2-core machine drifts by a fifth from minute to minute, which a single
bare run at the start let into every ratio. The figures are the medians over ``--rounds``
rounds, with the range of the ratios. Printed, each as a ratio to the bare aiohttp handler:

(a) ingest throughput — 202 only after the message is durable — for sqlite and redis, with
    the workers off (``dispatcher.workers: 0``) so only ingest is measured;
(b) end-to-end throughput webhook → queue → rules → Maildir: messages delivered per second,
    from the first request until the last file, and the daemon's CPU time per message;
    beside it, for both backends, delivery alone: the daemon restarted with workers on the
    queue (a) filled, messages delivered per second until it is empty (what the workers can
    do when they do not share the process with ingest);
(c) ingest-to-delivery latency p50/p99 at a paced load (the time of the daemon's
    ``message.routed`` log line minus the id's millisecond timestamp), beside the bare
    handler's request latency at the same pace.

One daemon is one process: ingest and delivery share one core's worth of Python (the GIL);
the CPU figures show where the time goes.

Targets (issue 2): redis ingest ≥ 50 %, sqlite ingest ≥ 30 %, end to end ≥ 25 % of the bare
handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import aiohttp
from ulid import ULID

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.daemon_helpers import README_MESSAGE, write_config  # noqa: E402
from tests.servers import free_port, redis_server  # noqa: E402

# (b)'s daemon: the example config's dispatcher but with PROCESSES worker processes, each
# running WORKERS batches of BATCH messages (the README's "More cores" section)
PROCESSES = int(os.environ.get("BENCH_PROCESSES", 2))
WORKERS = int(os.environ.get("BENCH_WORKERS", 4))
BATCH = int(os.environ.get("BENCH_BATCH", 64))

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body   = [[%s]]
wrk.headers["Content-Type"] = "application/json"
"""


def wait_port(port: int, path: str = "/") -> None:
    """Wait (bounded) until something answers HTTP on the port."""
    for _ in range(1000):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def bare_server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "bare.py"), str(port)])
    try:
        wait_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and its children (worker processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_s(int(child)) for child in children)


@contextmanager
def daemon(
    workdir: Path,
    queue: str,
    workers: int,
    redis_url: str | None,
    log: Path | None = None,
    processes: int = 0,
) -> Iterator[tuple[int, int]]:
    """A daemon on ``workdir`` (state kept between runs on the same one): (port, pid).
    With ``log``, it logs at info level (JSON lines) to that file. ``processes``: worker
    processes (``dispatcher.processes``), each with ``workers`` batches of ``BATCH``."""
    port, admin = free_port(), free_port()
    dispatcher = {"workers": workers, "processes": processes}
    if processes:
        dispatcher["batch"] = BATCH
    config = write_config(
        workdir,
        queue=queue,
        redis_url=redis_url,
        webhook_port=port,
        admin_port=admin,
        dispatcher=dispatcher,
    )
    out = None
    if log is not None:
        config.write_text(config.read_text().replace("level: warning", "level: info"))
        out = log.open("w")
    command = [sys.executable, "-m", "router", "run", "-c", str(config)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=out)
    try:
        wait_port(admin, "/healthz")
        if processes:  # until every worker process is ready to take
            wait_workers_ready(admin, processes)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait()
        if out is not None:
            out.close()


def wait_workers_ready(admin: int, processes: int) -> None:
    """Wait (bounded) until /healthz counts ``processes`` worker processes ready."""
    for _ in range(1000):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz") as resp:
                document = json.load(resp)
        except urllib.error.HTTPError as exc:  # 503 until one is ready
            document = json.load(exc)
        if document.get("workers", {}).get("ready") == processes:
            return
        time.sleep(0.02)
    raise RuntimeError("the worker processes did not become ready")


def wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    """Run wrk against POST /v1/messages; requests/s, 2xx count and latency percentiles."""
    body = json.dumps(README_MESSAGE, ensure_ascii=False)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT % body)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", fh.name,
         f"http://127.0.0.1:{port}/v1/messages"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    os.unlink(fh.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    return {"rps": rps, "ok": total - errors, "errors": errors}


def count_files(root: Path) -> int:
    if not root.exists():
        return 0
    return sum(len(os.listdir(d / "new")) for d in root.iterdir() if not d.name.startswith("."))


def latencies_ms(log: Path) -> list[float]:
    """Per routed message: the time of its ``message.routed`` log line (written once every
    target has it and the queue entry is settled; microseconds) minus the ULID's millisecond
    timestamp (taken when the request was read). File times are no use here: ext4 stamps them
    from a clock that advances every few milliseconds."""
    found = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == "message.routed":
            routed = datetime.fromisoformat(entry["timestamp"]).timestamp() * 1000
            found.append(routed - ULID.from_str(entry["message_id"]).milliseconds)
    return found


async def paced(port: int, rate: int, seconds: int) -> list[float]:
    """POST at a fixed rate; returns each request's latency in ms."""
    out: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def one() -> None:
            t0 = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{port}/v1/messages", json=README_MESSAGE):
                out.append((time.perf_counter() - t0) * 1000)

        tasks = []
        for _ in range(rate * seconds):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else float("nan")


def _round(work: Path, redis_url: str, s: int, c: int) -> dict[str, float]:
    """One round: each daemon run right after a bare run of the same length, so a slower
    spell of a shared machine hits both sides of a ratio alike. Returns msg/s, ratios to the
    bare run just before, and CPU ms per message."""
    out: dict[str, float] = {}
    for queue in ("sqlite", "redis"):
        url = redis_url if queue == "redis" else None
        with bare_server() as port:
            bare = wrk(port, s, c)
        with daemon(work / f"ingest-{queue}", queue, 0, url) as (port, _):
            ingest = wrk(port, s, c)
        out[f"bare:{queue}"] = bare["rps"]
        out[f"ingest:{queue}"] = ingest["rps"]
        out[f"ingest:{queue}:ratio"] = ingest["rps"] / bare["rps"]
        out[f"ingest:{queue}:errors"] = ingest["errors"]
        root = work / f"ingest-{queue}" / "state" / "maildir"
        already = count_files(root)
        with daemon(work / f"ingest-{queue}", queue, 8, url) as (_, pid):
            t0, cpu0 = time.monotonic(), cpu_s(pid)
            while count_files(root) < already + ingest["ok"]:
                time.sleep(0.02)
            wall, cpu = time.monotonic() - t0, cpu_s(pid) - cpu0
        out[f"drain:{queue}"] = ingest["ok"] / wall
        out[f"drain:{queue}:ratio"] = out[f"drain:{queue}"] / bare["rps"]
        out[f"drain:{queue}:cpu"] = cpu / ingest["ok"] * 1000
    for key, processes in (("e2e", PROCESSES), ("e2e1", 0)):
        with bare_server() as port:
            bare = wrk(port, s, c)
        root = work / key / "state" / "maildir"
        already = count_files(root)
        workers = WORKERS if processes else 8
        with daemon(work / key, "sqlite", workers, None, processes=processes) as (port, pid):
            t0, cpu0 = time.monotonic(), cpu_s(pid)
            e2e = wrk(port, s, c)
            while count_files(root) < already + e2e["ok"]:
                time.sleep(0.02)
            out[key] = e2e["ok"] / (time.monotonic() - t0)
            out[f"{key}:cpu"] = (cpu_s(pid) - cpu0) / e2e["ok"] * 1000
        out[f"bare:{key}"] = bare["rps"]
        out[f"{key}:ratio"] = out[key] / bare["rps"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=200, help="paced load for (c), msg/s")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis_url:
        work = Path(tmp)
        rounds = [
            _round(work / f"round-{i}", redis_url, args.seconds, args.connections)
            for i in range(args.rounds)
        ]
        with bare_server() as port:
            bare_lat = asyncio.run(paced(port, args.rate, 5))
        root = work / "lat" / "state" / "maildir"
        log = work / "lat.log"
        with daemon(work / "lat", "sqlite", 8, None, log) as (port, _):
            asyncio.run(paced(port, args.rate, 5))
            while count_files(root) < args.rate * 5:
                time.sleep(0.05)
        lat = latencies_ms(log)
    report(rounds, lat, bare_lat, args)


def report(rounds: list[dict[str, float]], lat: list[float], bare_lat: list[float], args) -> None:  # type: ignore[no-untyped-def]
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def spread(key: str) -> str:
        values = sorted(r[key] for r in rounds)
        return f"{values[0]:.2f}–{values[-1]:.2f}" if len(values) > 1 else ""

    print(f"wrk: {args.connections} connections, {args.seconds} s per run, loopback, 2 threads; "
          f"{args.rounds} rounds, each daemon run right after a bare run of its own; "
          "medians, ratio range over the rounds")  # fmt: skip
    print(f"{'what':<44}{'msg/s':>9}{'ratio':>7}{'range':>12}{'target':>8}")
    bare = statistics.median(r[k] for r in rounds for k in r if k.startswith("bare:"))
    print(f"{'bare aiohttp handler (parse JSON, 202)':<44}{bare:>9.0f}{1:>7.2f}")
    for queue, target in (("sqlite", 0.30), ("redis", 0.50)):
        key = f"ingest:{queue}"
        line = f"(a) ingest, {queue}, 202 after durable"
        errors = sum(r[f"{key}:errors"] for r in rounds)
        print(f"{line:<44}{med(key):>9.0f}{med(key + ':ratio'):>7.2f}{spread(key + ':ratio'):>12}"
              f"{target:>8.2f}" + (f"  ({errors:.0f} non-2xx)" if errors else ""))  # fmt: skip
    line = f"(b) end to end, {PROCESSES} worker processes"
    print(f"{line:<44}{med('e2e'):>9.0f}{med('e2e:ratio'):>7.2f}{spread('e2e:ratio'):>12}"
          f"{0.25:>8.2f}  ({med('e2e:cpu'):.3f} ms CPU/msg)")  # fmt: skip
    line = "    end to end, one process (processes: 0)"
    print(f"{line:<44}{med('e2e1'):>9.0f}{med('e2e1:ratio'):>7.2f}{spread('e2e1:ratio'):>12}"
          f"{'':>8}  ({med('e2e1:cpu'):.3f} ms CPU/msg)")  # fmt: skip
    for queue in ("sqlite", "redis"):
        key = f"drain:{queue}"
        line = f"    delivery alone, {queue} (queue pre-filled)"
        print(f"{line:<44}{med(key):>9.0f}{med(key + ':ratio'):>7.2f}{spread(key + ':ratio'):>12}"
              f"{'':>8}  ({med(key + ':cpu'):.3f} ms CPU/msg)")  # fmt: skip
    print(f"(c) paced {args.rate} msg/s for 5 s:")
    print(f"    ingest-to-delivery   p50 {pct(lat, 50):7.1f} ms   p99 {pct(lat, 99):7.1f} ms"
          f"   ({len(lat)} messages)")  # fmt: skip
    p50, p99 = pct(bare_lat, 50), pct(bare_lat, 99)
    print(f"    bare handler request p50 {p50:7.1f} ms   p99 {p99:7.1f} ms")


if __name__ == "__main__":
    main()
