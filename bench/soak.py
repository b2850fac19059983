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
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from chainfeed.devtools.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from chainfeed.storage import migrate

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


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


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


async def _soak(args: argparse.Namespace, root: Path) -> Figures:  # noqa: PLR0912, PLR0915 - one scenario, top to bottom
    postgres, redis_server = EmbeddedPostgres(root / "postgres"), EmbeddedRedis(root / "redis")
    database_url, redis_url = postgres.start(), redis_server.start()
    await migrate(database_url)
    port = free_port()
    log_path = root / "app.log"
    env = {
        **os.environ,
        "CHAINFEED_DATABASE_URL": database_url,
        "CHAINFEED_REDIS_URL": redis_url,
        "CHAINFEED_JWT_SECRET": JWT_SECRET,
        "CHAINFEED_ALCHEMY_SIGNING_KEYS": "soak-key",
        "CHAINFEED_LOG_FORMAT": "json",
        "CHAINFEED_WS_MAX_TOTAL": str(args.connections + 100),
    }
    with log_path.open("wb") as out:
        app = subprocess.Popen(  # noqa: ASYNC220 - returns at once; stopped in finally
            [sys.executable, "-m", "chainfeed", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    redis = Redis.from_url(redis_url, decode_responses=True)
    tabs: list[Tab] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
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
                    tab = Tab(f"ws://127.0.0.1:{port}/ws?token={token}")
                    tab.task = asyncio.create_task(tab.run())
                    tabs.append(tab)
                    await asyncio.sleep(0.002)
            while sum(t.connects > 0 for t in tabs) < len(tabs):  # noqa: ASYNC110 - polls counters
                await asyncio.sleep(0.2)
            print("all connected; streaming", file=sys.stderr)
            process = psutil.Process(app.pid)
            samples: list[Sample] = []
            entries = 0
            started = time.monotonic()
            item_ids = iter(range(1, 10**12))

            async def produce() -> None:
                nonlocal entries
                tick = 0.05
                per_tick = args.rate * tick
                carry = 0.0
                next_at = time.monotonic()
                while True:
                    carry += per_tick
                    batch, carry = int(carry), carry - int(carry)
                    pipe = redis.pipeline(transaction=False)
                    for _ in range(batch):
                        user_id, _ = random.choice(tokens)
                        pipe.xadd(
                            "feed:stream",
                            {
                                "user_id": str(user_id),
                                "type": "new_transaction",
                                "payload": '{"soak":true}',
                                "feed_item_id": str(next(item_ids)),
                                "created_at": "2026-01-01T00:00:00+00:00",
                            },
                        )
                    await pipe.execute()
                    entries += batch
                    next_at += tick
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            producer = asyncio.create_task(produce())
            while (elapsed := time.monotonic() - started) < args.duration:
                await asyncio.sleep(5)
                metrics = (await http.get("/metrics")).text
                sample = Sample(
                    at=round(time.monotonic() - started, 1),
                    rss_mib=round(process.memory_info().rss / 2**20, 1),
                    lag_seconds=_metric(metrics, "redis_stream_consumer_lag_seconds"),
                    pending=_metric(metrics, "redis_stream_pending"),
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
            deadline = time.monotonic() + 30
            while sum(t.received for t in tabs) < expected and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            metrics = (await http.get("/metrics")).text
    finally:
        for tab in tabs:
            if tab.task is not None:
                tab.task.cancel()
        pending = {t.task for t in tabs if t.task is not None}
        if pending:  # bounded: a close handshake that never ends must not hang the soak
            await asyncio.wait(pending, timeout=20)
        await redis.aclose()
        app.terminate()
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.kill()
        redis_server.stop()
        postgres.stop()
    warm = max(30.0, args.duration / 5)
    after_warmup = next((s for s in samples if s.at >= warm), samples[-1])
    errors = sum('"level": "error"' in line for line in log_path.read_text(errors="replace").splitlines())
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
        lag_end_seconds=_metric(metrics, "redis_stream_consumer_lag_seconds"),
        pending_end=_metric(metrics, "redis_stream_pending"),
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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections + 1024)), hard))
    root = Path(tempfile.mkdtemp(prefix="chainfeed-soak-"))
    root.chmod(0o755)
    try:
        figures = asyncio.run(_soak(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
        return
    summary = {k: v for k, v in asdict(figures).items() if k != "samples"}
    for key, value in summary.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
