"""Delivery benchmark: ``feed:stream`` -> consumer group -> hub -> 1,000 WebSockets, on loopback.

Starts embedded PostgreSQL and Redis in a temporary folder (or uses ``--database-url`` and
``--redis-url``), seeds ``--users`` users (100 with one tab, the rest with two or three: 500
users hold 1,000 connections), runs ``chainfeed serve --workers W`` and connects the tabs from
``--client-processes`` child processes. Then, one phase per ``--rates`` value, XADDs entries to
``feed:stream`` for ``--duration`` seconds, shaped as the outbox relay writes them (``feed_item_id``
set, so the consumer needs no PostgreSQL round trip) to uniformly random users, each payload
carrying its publish time (``time.time()`` taken just before the pipeline of XADDs is sent).
A last phase (``--max-rate``) offers far more than the server can deliver: what arrives per second
is the maximum.

Per phase it prints publish->receive latency p50/p90/p99/max (every frame of every tab), frames
expected / received / lost / duplicated (by frame id, per tab), delivered frames/s, CPU seconds
of the app (all workers), Redis and the load generator (this process, which publishes, plus the
client processes) during the phase, server CPU per delivered frame, and the app's RSS.

The clients are a minimal WebSocket reader on asyncio (uvloop) Protocols: they never offer
permessage-deflate (as most load tools), answer pings, parse each frame's JSON and record
``(frame id, latency, receive time)``. A lean client keeps the load generator's CPU share low on a
2-core machine; it is printed so a reader can tell when it was the bottleneck.

    uv run python bench/delivery.py                       # 1k/s and 5k/s for 10 s, then max mode
    uv run python bench/delivery.py --workers 2 --json

Loopback only; every phase is bounded by ``--duration`` plus a 15 s drain.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import itertools
import json
import os
import pickle
import random
import secrets
import subprocess
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil
from redis.asyncio import Redis

from chainfeed.broker.wire import Commands
from chainfeed.domain.tokens import issue_token

# isort: split
import harness  # bench/harness.py: a sibling, on sys.path when a bench script runs

JWT_SECRET = "bench-" + secrets.token_hex(24)
PHASE_IDS = 10**9  # feed item ids of phase k are k * PHASE_IDS + n
TICK = 0.002  # the publisher sends a pipeline of XADDs every 2 ms
# A transfer-like payload (about 330 bytes of frame); "pub" is filled in per entry.
PAYLOAD = (
    '{{"pub":{pub:.6f},"hash":"0x{h}","from":"0x{a}","to":"0x{b}","value":"1.25",'
    '"asset":"ETH","category":"external","network":"ETH_MAINNET","block_num":"0x12ab34"}}'
)


# ---------------------------------------------------------------------------------------------
# Client processes: raw WebSocket readers.


class _Tab(asyncio.Protocol):
    """One WebSocket connection, read frame by frame; records every text frame it receives."""

    def __init__(self, request: bytes, index: int, records: list[array[float]]) -> None:
        self._request = request
        self._index = index
        self._records = records
        self._buffer = bytearray()
        self._upgraded = False
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed during handshake"))

    def data_received(self, data: bytes) -> None:  # noqa: PLR0912 - one frame parser
        now = time.time()
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.open.set_exception(ConnectionError(head.decode(errors="replace")))
                return
            self._upgraded = True
            self.open.set_result(None)
        offset, size = 0, len(buffer)
        ids, latencies, times = self._records
        loads = json.loads
        while size - offset >= 2:
            first, length = buffer[offset], buffer[offset + 1] & 0x7F
            start = offset + 2
            if length == 126:
                if size - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
                start = offset + 4
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2 : offset + 10], "big")
                start = offset + 10
            end = start + length
            if end > size:
                break
            opcode = first & 0x0F
            if opcode == 1:
                frame = loads(buffer[start:end])
                if frame.get("type") == "new_transaction":
                    ids.append(self._index * PHASE_IDS * 16 + frame["id"])
                    latencies.append(now - frame["payload"]["pub"])
                    times.append(now)
            elif opcode == 9:  # ping: answer with a pong (client frames are masked; key 0)
                payload = bytes(buffer[start:end])
                assert self.transport is not None
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 8:
                self.closed = True
            offset = end
        del buffer[:offset]


async def _client_main(spec: dict[str, object]) -> None:
    """Open the tabs, say so on stdout, record frames until stdin closes, then dump the records."""
    host, port = "127.0.0.1", int(spec["port"])  # type: ignore[call-overload]
    tabs: list[_Tab] = []
    ids: array[float] = array("d")  # tab index * 16e9 + frame id (exact below 2**53)
    latencies: array[float] = array("d")
    times: array[float] = array("d")
    records = [ids, latencies, times]
    loop = asyncio.get_running_loop()
    for index, token in spec["tabs"]:  # type: ignore[attr-defined]
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        _, tab = await loop.create_connection(lambda r=request, i=index: _Tab(r, i, records), host, port)
        await tab.open
        tabs.append(tab)
    print("open", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    closed = sum(tab.closed for tab in tabs)
    for tab in tabs:
        if tab.transport is not None:
            tab.transport.close()
    sys.stdout.buffer.write(pickle.dumps((closed, [r.tobytes() for r in records])))
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# The benchmark.


@dataclass
class Phase:
    name: str
    offered_per_second: float
    entries: int
    expected_frames: int
    received_frames: int
    lost: int
    duplicates: int
    delivered_frames_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    app_cpu_seconds: float
    redis_cpu_seconds: float
    generator_cpu_seconds: float
    app_cpu_us_per_frame: float
    app_plus_redis_cpu_us_per_frame: float
    generator_cpu_share: float
    app_rss_mib: float
    seconds: float
    app_system_share: float = 0.0


def _bucket_quantiles(before: harness.Histogram, after: harness.Histogram) -> dict[str, str]:
    """p50/p99 of the app's own latency histogram over the phase, as bucket bounds (``<= x ms``).

    Measured by the server (stream entry time to frame written): set beside the clients' figures
    it tells the server's share of the latency from the clients' and the machine's.
    """
    window = after.since(before)
    return {name: f"<= {window.bound(q) * 1000:g} ms" for name, q in (("p50", 0.5), ("p99", 0.99))}


def _latency(text: str) -> harness.Histogram:
    """The app's delivery-latency histogram (stream entry time -> frame written)."""
    return harness.histograms(text, "chainfeed_delivery_latency_seconds").get("", harness.Histogram())


def _tab_plan(users: int, connections: int) -> list[int]:
    """Tabs per user: a fifth of the users with one, a fifth with three, the rest with two."""
    plan = [2] * users
    for i in range(users // 5):
        plan[i] = 1
        plan[users - 1 - i] = 3
    extra = connections - sum(plan)
    for i in range(abs(extra)):
        plan[(users // 5 + i) % users] += 1 if extra > 0 else -1
    return plan


class _Publisher:
    """XADDs shaped as the outbox relay writes them, paced in 2 ms ticks.

    Sent on ChainFeed's own lean connection (:mod:`chainfeed.broker.wire`): redis-py's pipeline
    cost ~50 us per XADD here and capped the max mode at ~9,000 entries/s.
    """

    def __init__(self, redis: Redis, user_ids: list[int]) -> None:
        self._wire = Commands(redis)
        self._users = user_ids

    async def close(self) -> None:
        await self._wire.close()

    async def run(self, phase: int, rate: float, duration: float) -> list[int]:
        """Publish for ``duration`` s at ``rate``/s; returns the user of each entry, by index."""
        sent: list[int] = []
        choice, users = random.choice, self._users
        base = phase * PHASE_IDS
        filler_a, filler_b = "ab" * 20, "cd" * 20
        async for count in harness.ticks(rate, TICK, seconds=duration):
            commands = []
            pub = time.time()
            for _ in range(count):
                user = choice(users)
                item = base + len(sent) + 1
                sent.append(user)
                payload = PAYLOAD.format(pub=pub, h=f"{item:064x}", a=filler_a, b=filler_b)
                entry = harness.relay_entry(user, item, payload, "2026-11-27T00:00:00+00:00")
                commands.append(["XADD", "feed:stream", "*", *itertools.chain(*entry.items())])
            if commands:
                await self._wire.execute(commands)
        return sent


async def _run(  # noqa: PLR0912, PLR0915 - one scenario, top to bottom
    args: argparse.Namespace, services: harness.Services
) -> dict[str, object]:
    await harness.prepare(services.database_url)
    user_ids = await harness.insert_users(services.database_url, args.users)
    plan = _tab_plan(args.users, args.connections)
    tabs_of_user = dict(zip(user_ids, plan, strict=True))
    tokens = {u: issue_token(u, secret=JWT_SECRET, ttl_seconds=6 * 3600) for u in user_ids}
    tab_specs: list[tuple[int, str]] = []  # (tab index, token)
    tab_user: list[int] = []
    for user in user_ids:
        for _ in range(tabs_of_user[user]):
            tab_specs.append((len(tab_specs), tokens[user]))
            tab_user.append(user)
    env = {
        "CHAINFEED_LOG_LEVEL": "warning",
        "CHAINFEED_WS_MAX_TOTAL": str(args.connections + 100),
        "CHAINFEED_WS_MAX_PER_USER": "10",
        "CHAINFEED_WS_SEND_QUEUE": str(args.send_queue),
        **harness.env_options(args.env),
    }
    redis = Redis.from_url(services.redis_url)
    await redis.delete("feed:stream")
    app = harness.App(
        services,
        jwt_secret=JWT_SECRET,
        signing_key="bench-key",
        name="delivery",
        env=env,
        workers=args.workers,
    )
    clients: list[subprocess.Popen[bytes]] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    phases: list[Phase] = []
    try:
        await app.ready()
        async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as http:

            async def scrape(name: str) -> float:
                return harness.metric((await http.get("/metrics")).text, name)

            for k in range(args.client_processes):
                spec = {"port": app.port, "tabs": tab_specs[k :: args.client_processes]}
                client = subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, __file__, "--client"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                assert client.stdin is not None
                client.stdin.write(json.dumps(spec).encode() + b"\n")
                client.stdin.flush()
                clients.append(client)
            for client in clients:
                assert client.stdout is not None
                line = await asyncio.to_thread(client.stdout.readline)
                if line.strip() != b"open":
                    raise RuntimeError(f"a client process failed to connect: {line!r}")

            # Tabs are open; their subscriptions are confirmed once the gauge counts them all.
            async def registered() -> bool:
                return await scrape("websocket_active_connections") >= int(args.connections)

            if not await harness.wait_for(registered, seconds=60, every=0.2):
                raise RuntimeError("not every connection was registered within 60 s")
            print(f"{args.connections} connections open; publishing (app pid {app.pid})", file=sys.stderr)
            app_processes = harness.tree(app.pid)
            redis_process = [psutil.Process(services.redis_pid)] if services.redis_pid else []
            me = psutil.Process()
            client_processes = [psutil.Process(c.pid) for c in clients]
            publisher = _Publisher(redis, user_ids)
            closers.append(publisher.close)
            plans = [(f"{rate:g}/s", rate, args.duration) for rate in args.rates]
            if args.max_rate:
                plans.append(("max", args.max_rate, args.duration))
            sent_by_phase: list[list[int]] = []
            for index, (name, rate, duration) in enumerate(plans, start=1):
                await asyncio.sleep(1.0)
                text = (await http.get("/metrics")).text
                sent_before = harness.metric(text, "websocket_messages_sent_total")
                latency_before = _latency(text)
                cpu = harness.cpu_seconds
                app_cpu, redis_cpu = cpu(app_processes), cpu(redis_process)
                app_system = cpu(app_processes, system_only=True)
                generator_cpu = cpu([me, *client_processes])
                started = time.monotonic()
                sent = await publisher.run(index, rate, duration)
                expected = sum(tabs_of_user[u] for u in sent)

                async def drained(before: float = sent_before, frames: int = expected) -> bool:
                    return await scrape("websocket_messages_sent_total") - before >= frames

                await harness.wait_for(drained, seconds=15, every=0.05)
                seconds = time.monotonic() - started
                server_side = _bucket_quantiles(latency_before, _latency((await http.get("/metrics")).text))
                app_cpu = cpu(app_processes) - app_cpu
                app_system = cpu(app_processes, system_only=True) - app_system
                redis_cpu = cpu(redis_process) - redis_cpu
                generator_cpu = cpu([me, *client_processes]) - generator_cpu
                rss = harness.rss_mib(app.pid)
                sent_by_phase.append(sent)
                print(f"phase {name}: server-side entry->written {server_side}", file=sys.stderr)
                phases.append(
                    Phase(
                        name,
                        rate,
                        len(sent),
                        expected,
                        0,
                        0,
                        0,
                        0.0,
                        0,
                        0,
                        0,
                        0,
                        round(app_cpu, 2),
                        round(redis_cpu, 2),
                        round(generator_cpu, 2),
                        0.0,
                        0.0,
                        round(generator_cpu / max(seconds, 1e-9), 2),
                        round(rss, 1),
                        round(seconds, 2),
                        round(app_system / max(app_cpu, 1e-9), 2),
                    )
                )
                print(f"phase {name}: {len(sent)} entries, {expected} frames expected", file=sys.stderr)
        results: list[tuple[int, list[bytes]]] = []
        for client in clients:
            assert client.stdin is not None
            assert client.stdout is not None
            client.stdin.close()
            results.append(pickle.loads(await asyncio.to_thread(client.stdout.read)))  # noqa: S301 - our own child
        closed = sum(r[0] for r in results)
        ids, latencies, times = array("d"), array("d"), array("d")
        for _, (raw_ids, raw_latencies, raw_times) in results:
            ids.frombytes(raw_ids)
            latencies.frombytes(raw_latencies)
            times.frombytes(raw_times)
        for index, phase in enumerate(phases, start=1):
            _score(phase, index, ids, latencies, times)
        if args.dump:  # every frame: receive time, latency, phase, for a look at the tail
            with Path(args.dump).open("w") as out:  # noqa: ASYNC230 - after the measurement
                for key, latency, at in zip(ids, latencies, times, strict=True):
                    out.write(f"{at:.6f} {latency * 1000:.3f} {int(key % (PHASE_IDS * 16)) // PHASE_IDS}\n")
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        app.stop()
        for close in closers:
            await close()
        await redis.aclose()
    return {
        "workers": args.workers,
        "users": args.users,
        "connections": args.connections,
        "client_processes": args.client_processes,
        "tabs_closed_by_server": closed,
        "phases": [asdict(p) for p in phases],
    }


def _score(phase: Phase, index: int, ids: array[float], latencies: array[float], times: array[float]) -> None:
    """Fill in what the clients saw of phase ``index``."""
    seen: set[float] = set()
    mine: list[float] = []
    arrivals: list[float] = []
    duplicates = 0
    low, high = index * PHASE_IDS, (index + 1) * PHASE_IDS
    for key, latency, at in zip(ids, latencies, times, strict=True):
        if not low <= key % (PHASE_IDS * 16) < high:
            continue
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        mine.append(latency)
        arrivals.append(at)
    mine.sort()

    phase.received_frames = len(mine)
    phase.duplicates = duplicates
    phase.lost = max(0, phase.expected_frames - len(mine))
    phase.p50_ms, phase.p90_ms, phase.p99_ms, phase.max_ms = (
        harness.percentile_ms(mine, q, digits=2) for q in (0.50, 0.90, 0.99, 1.0)
    )
    if arrivals:
        arrivals.sort()
        span = arrivals[-1] - arrivals[0]
        phase.delivered_frames_per_second = round(len(arrivals) / span, 0) if span > 0 else 0.0
    frames = max(1, len(mine))
    phase.app_cpu_us_per_frame = round(1e6 * phase.app_cpu_seconds / frames, 1)
    phase.app_plus_redis_cpu_us_per_frame = round(
        1e6 * (phase.app_cpu_seconds + phase.redis_cpu_seconds) / frames, 1
    )


_COLUMNS = (
    ("phase", "name"),
    ("entries", "entries"),
    ("expected", "expected_frames"),
    ("received", "received_frames"),
    ("lost", "lost"),
    ("dup", "duplicates"),
    ("frames/s", "delivered_frames_per_second"),
    ("p50 ms", "p50_ms"),
    ("p90 ms", "p90_ms"),
    ("p99 ms", "p99_ms"),
    ("max ms", "max_ms"),
    ("app cpu s", "app_cpu_seconds"),
    ("redis s", "redis_cpu_seconds"),
    ("gen cpu s", "generator_cpu_seconds"),
    ("us/frame", "app_cpu_us_per_frame"),
    ("+redis", "app_plus_redis_cpu_us_per_frame"),
    ("gen share", "generator_cpu_share"),
    ("rss MiB", "app_rss_mib"),
)


def _print(figures: dict[str, object]) -> None:
    print(
        f"workers={figures['workers']} users={figures['users']} connections={figures['connections']} "
        f"client processes={figures['client_processes']} "
        f"closed by the server={figures['tabs_closed_by_server']}"
    )
    print(" ".join(f"{title:>9}" for title, _ in _COLUMNS))
    for phase in figures["phases"]:  # type: ignore[attr-defined]
        print(" ".join(f"{phase[key]:>9}" for _, key in _COLUMNS))


def main() -> None:
    if "--client" in sys.argv:
        import uvloop  # noqa: PLC0415 - the client processes only

        spec = json.loads(sys.stdin.readline())
        gc.disable()  # a short-lived reader: its GC pauses would show as the server's latency
        uvloop.run(_client_main(spec))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument(
        "--rates", type=float, nargs="*", default=[1000.0, 5000.0], help="entries/s per phase"
    )
    parser.add_argument(
        "--max-rate", type=float, default=40000.0, help="offered entries/s of max mode (0: skip)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing per phase")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--send-queue", type=int, default=1024, help="CHAINFEED_WS_SEND_QUEUE")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra app setting")
    harness.add_service_options(parser)
    parser.add_argument("--dump", metavar="FILE", help="write every frame's receive time and latency")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    harness.raise_nofile(4 * args.connections + 1024)
    with harness.services(
        database_url=args.database_url, redis_url=args.redis_url, prefix="chainfeed_delivery"
    ) as services:
        figures = asyncio.run(_run(args, services))
    harness.report(figures, as_json=args.json, text=_print)


if __name__ == "__main__":
    main()
