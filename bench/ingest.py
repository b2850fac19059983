"""Ingest benchmark: signed webhooks -> PostgreSQL -> outbox relay -> Redis stream, on loopback.

Runs ``chainfeed serve`` as a separate process (as in production; ``--workers`` uvicorn workers,
each also running the outbox relay and the stream consumer), seeds watchers, then posts
pre-built, signed Address Activity webhooks (``chainfeed.devtools.simulate``'s payloads) from
``--concurrency`` keep-alive connections until ``--webhooks`` are sent or ``--max-seconds`` pass,
and waits until the outbox is empty. Reports:

- ingest: activities/s committed to PostgreSQL while sending;
- end to end: activities/s from the first request until the last feed item is on the stream;
- webhook latency p50/p90/p99/max;
- CPU by process (app, PostgreSQL, Redis, this client, anything else running: on a shared
  machine "other" says how much the figures were disturbed), mean stage durations from the
  app's /metrics, and with ``--waits`` what PostgreSQL sessions wait on.

Embedded PostgreSQL and Redis are started in a temporary folder unless ``--database-url`` and
``--redis-url`` are given (a scratch database and a bench-only stream are then used and removed).
Loopback only; bounded by ``--webhooks`` and ``--max-seconds``.

    uv run python bench/ingest.py                 # about 45 s on 2 cores, setup included
    uv run python bench/ingest.py --concurrency 16 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

# isort: split
import harness  # bench/harness.py: a sibling, on sys.path when a bench script runs

SIGNING_KEY = "whsec_bench_" + secrets.token_hex(8)


@dataclass
class Figures:
    """What one run measured."""

    webhooks: int
    activities: int
    feed_items: int
    activities_per_webhook: int
    concurrency: int
    send_seconds: float
    end_to_end_seconds: float
    ingest_activities_per_s: float
    end_to_end_activities_per_s: float
    feed_items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failures: int
    workers: int
    #: CPU the whole machine spent during the run (100 = one core), ours and anyone else's.
    machine_cpu_percent: float
    #: That CPU by process kind: app, postgres, redis, bench client, other (anything else running).
    cpu_percent_by_process: dict[str, float]
    cores: int
    #: Mean duration of each pipeline stage inside the app (ms), from its /metrics.
    stage_mean_ms: dict[str, float]
    #: With --waits: mean number of PostgreSQL sessions in each state / wait event while sending.
    postgres_waits: dict[str, float]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhooks", type=int, default=3000, help="webhooks to send (default 3000)")
    parser.add_argument("--workers", type=int, default=1, help="app worker processes (default 1)")
    parser.add_argument("--activities", type=int, default=50, help="activities per webhook (default 50)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--addresses", type=int, default=2000, help="watched addresses (default 2000)")
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="stop sending after this (default 60)"
    )
    harness.add_service_options(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--waits", action="store_true", help="also sample what PostgreSQL sessions wait on (diagnosis)"
    )
    args = parser.parse_args()
    with _services(args.database_url, args.redis_url) as (services, stream):
        figures = asyncio.run(_run(args, services, stream))
    harness.report(figures, as_json=args.json, text=_print)
    return 0 if figures.failures == 0 else 1


@contextlib.contextmanager
def _services(database_url: str | None, redis_url: str | None) -> Iterator[tuple[harness.Services, str]]:
    """The servers and the stream: ``feed:stream`` on embedded ones, else one of our own, removed after."""
    with harness.services(
        database_url=database_url, redis_url=redis_url, prefix="chainfeed_bench"
    ) as services:
        if not redis_url:
            yield services, "feed:stream"
            return
        stream = f"bench:feed:{secrets.token_hex(4)}"
        try:
            yield services, stream
        finally:
            asyncio.run(_drop_stream(services.redis_url, stream))


async def _drop_stream(url: str, stream: str) -> None:
    redis = Redis.from_url(url)
    try:
        await redis.delete(stream)
    finally:
        await redis.aclose()


async def _seed(database_url: str, addresses: int) -> list[str]:
    """One user per address; every tenth address has a second watcher."""
    await harness.prepare(database_url)
    watched = [f"0x{random.randbytes(20).hex()}" for _ in range(addresses)]
    users = await harness.insert_users(database_url, addresses + addresses // 10)
    pairs = [(users[i], a) for i, a in enumerate(watched)]
    pairs += [(users[addresses + i], watched[i * 10]) for i in range(addresses // 10)]
    await harness.insert_watches(database_url, pairs)
    return watched


def _bodies(watched: list[str], count: int, activities: int) -> list[tuple[bytes, str]]:
    webhooks = harness.signed_webhooks(watched, count, activities=activities, seed=42, key=SIGNING_KEY)
    return [(body, signature) for _, body, signature in webhooks]


async def _sample_waits(database_url: str) -> dict[str, float]:
    """Until cancelled: how many sessions are, on average, active in each wait event."""
    counts: dict[str, int] = {}
    samples = 0
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS what FROM pg_stat_activity"
                " WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()"
            )
            samples += 1
            for row in rows:
                counts[row["what"]] = counts.get(row["what"], 0) + 1
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                break
    finally:
        await conn.close()
    return {what: round(n / samples, 2) for what, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8]}


async def _stop(sampler: asyncio.Task[dict[str, float]] | None) -> dict[str, float]:
    if sampler is None:
        return {}
    sampler.cancel()
    return await sampler


def _cpu_by_kind(app_pid: int) -> dict[str, float]:
    """CPU seconds so far of every process, summed by kind (Linux /proc; empty elsewhere).

    Processes that ended in between are missed, so "other" is a lower bound.
    """
    kinds = {"app": 0.0, "postgres": 0.0, "redis": 0.0, "bench client": 0.0, "other": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            pid, parent = int(entry.name), int(fields[1])
            kind = (
                "app"
                if app_pid in (pid, parent)
                else "bench client"
                if pid == os.getpid()
                else "postgres"
                if name == "postgres"
                else "redis"
                if name.startswith("redis-server")
                else "other"
            )
            kinds[kind] += seconds
    return kinds


async def _run(args: argparse.Namespace, services: harness.Services, stream: str) -> Figures:
    database_url = services.database_url
    watched = await _seed(database_url, args.addresses)
    warmup = _bodies(watched, 20, args.activities)
    bodies = _bodies(watched, args.webhooks, args.activities)
    app = harness.App(
        services, jwt_secret=secrets.token_urlsafe(48), signing_key=SIGNING_KEY, name="bench-app",
        env={"CHAINFEED_STREAM": stream}, workers=args.workers,
    )  # fmt: skip
    port = app.port
    db = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(
            timeout=30, limits=httpx.Limits(max_connections=args.concurrency)
        ) as http:
            await app.ready()
            await _send_all(port, warmup, args.concurrency, deadline=time.monotonic() + 30)
            await _all_published(db, deadline=time.monotonic() + 30)
            machine_before = harness.machine_busy_seconds()
            processes_before = _cpu_by_kind(app.pid)
            sampler = asyncio.create_task(_sample_waits(database_url)) if args.waits else None
            started = time.monotonic()
            results = await _send_all(port, bodies, args.concurrency, deadline=started + args.max_seconds)
            sent_at = time.monotonic()
            waits = await _stop(sampler)
            created = sum(items for _, _, items in results)
            await _all_published(db, deadline=sent_at + 120)
            done_at = time.monotonic()
            machine = harness.machine_busy_seconds() - machine_before
            processes_after = _cpu_by_kind(app.pid)
            metrics = (await http.get(f"{app.base_url}/metrics")).text
            stages = harness.means_ms(
                harness.histograms(metrics, "chainfeed_stage_duration_seconds", by="stage")
            )
    finally:
        await db.close()
        app.stop()
    latencies = sorted(latency for latency, status, _ in results if status == 200)
    failures = sum(1 for _, status, _ in results if status != 200)
    if failures:
        print(f"{failures} webhook(s) failed; the app's log is {app.log}", file=sys.stderr)
    else:
        app.log.unlink(missing_ok=True)
    activities = args.activities * (len(results) - failures)

    return Figures(
        webhooks=len(results),
        activities=activities,
        feed_items=created,
        activities_per_webhook=args.activities,
        concurrency=args.concurrency,
        send_seconds=round(sent_at - started, 3),
        end_to_end_seconds=round(done_at - started, 3),
        ingest_activities_per_s=round(activities / (sent_at - started)),
        end_to_end_activities_per_s=round(activities / (done_at - started)),
        feed_items_per_s=round(created / (done_at - started)),
        p50_ms=harness.percentile_ms(latencies, 0.50, digits=2),
        p90_ms=harness.percentile_ms(latencies, 0.90, digits=2),
        p99_ms=harness.percentile_ms(latencies, 0.99, digits=2),
        max_ms=harness.percentile_ms(latencies, 1.0, digits=2),
        failures=failures,
        workers=args.workers,
        machine_cpu_percent=round(100 * machine / (done_at - started)),
        cpu_percent_by_process={
            kind: round(100 * (seconds - processes_before.get(kind, 0.0)) / (done_at - started))
            for kind, seconds in processes_after.items()
        },
        cores=os.cpu_count() or 0,
        stage_mean_ms=stages,
        postgres_waits=waits,
    )


async def _send_all(
    port: int, bodies: list[tuple[bytes, str]], concurrency: int, *, deadline: float
) -> list[tuple[float, int, int]]:
    """Post every body over ``concurrency`` keep-alive connections; (latency s, status, new items) each.

    A minimal HTTP/1.1 client on raw streams with pre-built requests: on 2 cores the load generator
    shares the CPU with the app, PostgreSQL and Redis, and httpx would take several times more of it
    than these few lines (Alchemy, the real sender, runs elsewhere).
    """
    results: list[tuple[float, int, int]] = []
    queue = iter(bodies)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body, signature in queue:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                writer.write(
                    b"POST /webhooks/alchemy HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nX-Alchemy-Signature: %b\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (signature.encode(), len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                answer = await reader.readexactly(length)
                elapsed = time.perf_counter() - started
                items = json.loads(answer).get("new_feed_items", 0) if status == 200 else 0
                results.append((elapsed, status, items))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def _all_published(db: asyncpg.Connection, *, deadline: float) -> None:
    """Wait until the outbox is empty: every feed item has been XADDed and taken out of it.

    (XLEN cannot tell: the delivery side trims acknowledged entries as it goes.)
    """

    async def empty() -> bool:
        return not await db.fetchval("SELECT count(*) FROM feed_outbox")

    if not await harness.wait_for(empty, seconds=deadline - time.monotonic(), every=0.01):
        left = await db.fetchval("SELECT count(*) FROM feed_outbox")
        raise SystemExit(f"{left} feed items still unpublished at the deadline")


def _print(f: Figures) -> None:
    print(f"ChainFeed ingest benchmark ({f.cores} cores, loopback, app = {f.workers} uvicorn worker(s))")
    print(f"  sent        {f.webhooks} webhooks x {f.activities_per_webhook} activities,", end="")
    print(f" {f.concurrency} in flight")
    print(f"  ingest      {f.ingest_activities_per_s:,} activities/s into PostgreSQL ({f.send_seconds} s)")
    print(
        f"  end to end  {f.end_to_end_activities_per_s:,} activities/s into PostgreSQL + stream"
        f" ({f.feed_items:,} feed items, {f.feed_items_per_s:,}/s, {f.end_to_end_seconds} s)"
    )
    print(f"  webhook     p50 {f.p50_ms} ms · p90 {f.p90_ms} ms · p99 {f.p99_ms} ms · max {f.max_ms} ms")
    by_process = harness.joined(f.cpu_percent_by_process, "{} {}%")
    print(f"  CPU         {f.machine_cpu_percent}% of {f.cores * 100}%: {by_process}   failures {f.failures}")
    stages = harness.joined(sorted(f.stage_mean_ms.items()), "{} {} ms")
    print(f"  stage means {stages}")
    if f.postgres_waits:
        waits = harness.joined(f.postgres_waits)
        print(f"  PG sessions {waits}")


if __name__ == "__main__":
    raise SystemExit(main())
