"""Soak: many open WebSockets and a steady stream of entries for minutes; does anything grow?

Starts embedded PostgreSQL and Redis in a temporary folder and ``chainfeed serve`` (one process),
registers users, opens ``--connections`` WebSockets (two tabs per user) from this process, and
XADDs ``--rate`` entries a second (shaped as the outbox relay writes them, to random users) for
``--duration`` seconds. Every 5 s it samples the app's RSS, the consumer lag and pending count
(/metrics), frames received. Reports RSS growth after the warm-up (the first fifth of the run,
at least 30 s), the lag (max and at the end), frames lost (expected minus received), and how many
error lines the app logged. Loopback only; bounded by ``--duration``.

    uv run python bench/soak.py                         # 2,000 connections, 1,000/s, 10 min
    uv run python bench/soak.py --duration 150 --json   # a shorter run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import connect

# isort: split
import harness  # bench/harness.py: a sibling, on sys.path when a bench script runs

JWT_SECRET = "soak-" + secrets.token_hex(24)


@dataclass
class Sample:
    at: float
    rss_mib: float
    lag_seconds: float
    pending: float
    received: int


@dataclass
class Figures:
    connections: int
    rate: float
    duration: float
    entries: int
    expected_frames: int
    received_frames: int
    lost_frames: int
    rss_after_warmup_mib: float
    rss_end_mib: float
    rss_growth_mib: float
    lag_max_seconds: float
    lag_end_seconds: float
    pending_end: float
    error_log_lines: int
    reconnects: int
    samples: list[Sample] = field(default_factory=list)


class Tab:
    def __init__(self, url: str) -> None:
        self.url = url
        self.received = 0
        self.connects = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                async with connect(self.url, open_timeout=30, max_queue=1024) as ws:
                    self.connects += 1
                    async for _ in ws:
                        self.received += 1
            except Exception:  # a soak keeps going; reconnects are reported
                await asyncio.sleep(1)


async def _soak(args: argparse.Namespace, services: harness.Services) -> Figures:  # noqa: PLR0915 - one scenario, top to bottom
    await harness.prepare(services.database_url)
    app = harness.App(
        services, jwt_secret=JWT_SECRET, signing_key="soak-key", name="soak",
        env={"CHAINFEED_WS_MAX_TOTAL": str(args.connections + 100)},
    )  # fmt: skip
    redis = Redis.from_url(services.redis_url, decode_responses=True)
    tabs: list[Tab] = []
    try:
        await app.ready()
        async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as http:
            users = args.connections // 2
            tokens: list[tuple[int, str]] = []
            for start in range(0, users, 50):
                bodies = await asyncio.gather(
                    *(
                        http.post(
                            "/api/auth/register",
                            json={"username": f"soak{i}", "password": "soak-password"},
                        )
                        for i in range(start, min(users, start + 50))
                    )
                )
                tokens += [(b.json()["user"]["id"], b.json()["access_token"]) for b in bodies]
            print(f"{len(tokens)} users registered; opening {args.connections} connections", file=sys.stderr)
            for _user_id, token in tokens:
                for _ in range(2):
                    tab = Tab(f"{app.ws_url}?token={token}")
                    tab.task = asyncio.create_task(tab.run())
                    tabs.append(tab)
                    await asyncio.sleep(0.002)
            if not await harness.wait_for(lambda: all(t.connects for t in tabs), seconds=300, every=0.2):
                raise RuntimeError("not every connection opened within 300 s")
            print("all connected; streaming", file=sys.stderr)
            samples: list[Sample] = []
            entries = 0
            started = time.monotonic()
            item_ids = iter(range(1, 10**12))

            async def produce() -> None:
                nonlocal entries
                async for batch in harness.ticks(args.rate, 0.05):
                    pipe = redis.pipeline(transaction=False)
                    for _ in range(batch):
                        user_id, _ = random.choice(tokens)
                        entry = harness.relay_entry(
                            user_id, next(item_ids), '{"soak":true}', "2026-01-01T00:00:00+00:00"
                        )
                        pipe.xadd("feed:stream", entry)  # type: ignore[arg-type]  # redis-py's dict type
                    await pipe.execute()
                    entries += batch

            producer = asyncio.create_task(produce())
            while (elapsed := time.monotonic() - started) < args.duration:
                await asyncio.sleep(5)
                metrics = (await http.get("/metrics")).text
                sample = Sample(
                    at=round(time.monotonic() - started, 1),
                    rss_mib=round(harness.rss_mib(app.pid), 1),
                    lag_seconds=harness.metric(metrics, "redis_stream_consumer_lag_seconds"),
                    pending=harness.metric(metrics, "redis_stream_pending"),
                    received=sum(t.received for t in tabs),
                )
                samples.append(sample)
                print(
                    f"t={sample.at:>6}s rss={sample.rss_mib} MiB lag={sample.lag_seconds:.2f}s "
                    f"pending={sample.pending:.0f} entries={entries} frames={sample.received}",
                    file=sys.stderr,
                )
                del elapsed
            producer.cancel()
            await asyncio.wait({producer}, timeout=5)  # bounded: the soak stops by itself
            expected = entries * 2
            await harness.wait_for(lambda: sum(t.received for t in tabs) >= expected, seconds=30, every=0.5)
            metrics = (await http.get("/metrics")).text
    finally:
        for tab in tabs:
            if tab.task is not None:
                tab.task.cancel()
        pending = {t.task for t in tabs if t.task is not None}
        if pending:  # bounded: a close handshake that never ends must not hang the soak
            await asyncio.wait(pending, timeout=20)
        await redis.aclose()
        app.stop()
    warm = max(30.0, args.duration / 5)
    after_warmup = next((s for s in samples if s.at >= warm), samples[-1])
    errors = sum('"level": "error"' in line for line in app.log.read_text(errors="replace").splitlines())
    app.log.unlink(missing_ok=True)
    received = sum(t.received for t in tabs)
    return Figures(
        connections=len(tabs),
        rate=args.rate,
        duration=args.duration,
        entries=entries,
        expected_frames=expected,
        received_frames=received,
        lost_frames=max(0, expected - received),
        rss_after_warmup_mib=after_warmup.rss_mib,
        rss_end_mib=samples[-1].rss_mib,
        rss_growth_mib=round(samples[-1].rss_mib - after_warmup.rss_mib, 1),
        lag_max_seconds=max(s.lag_seconds for s in samples),
        lag_end_seconds=harness.metric(metrics, "redis_stream_consumer_lag_seconds"),
        pending_end=harness.metric(metrics, "redis_stream_pending"),
        error_log_lines=errors,
        reconnects=sum(max(0, t.connects - 1) for t in tabs),
        samples=samples,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="entries per second")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of streaming")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    harness.raise_nofile(4 * args.connections + 1024)
    with harness.services(database_url=None, redis_url=None, prefix="chainfeed_soak") as services:
        figures = asyncio.run(_soak(args, services))
    harness.report(figures, as_json=args.json, text=_print)


def _print(figures: Figures) -> None:
    for key, value in asdict(figures).items():
        if key != "samples":
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
