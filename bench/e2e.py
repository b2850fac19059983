"""End-to-end benchmark: signed webhook in, WebSocket frame out, timed per frame, on loopback.

Starts embedded PostgreSQL and Redis in a temporary folder and ``chainfeed serve`` (``--workers``
uvicorn workers), seeds ``--users`` users watching ``--addresses-per-user`` addresses each (every
tenth address has a second watcher) with tokens minted from the JWT secret given to the app, and
opens their WebSockets from this process (every other user has two tabs). A child process then
posts ``--rate`` signed Address Activity webhooks a second, ``--activities`` each, for
``--duration`` s to ``/webhooks/alchemy`` over ``--connections`` keep-alive httpx connections
(a separate process, so its CPU, printed, does not slow the WebSocket clients' clock readings).
``--app-env NAME=VALUE`` passes a setting to the app (e.g. ``CHAINFEED_STREAM_BATCH=100``).

Webhook i is due at ``start + i / rate`` and is sent then (or as soon as the sender can, if it is
late). Latencies are measured from that scheduled time, not from when the request actually left,
so a stalled server or sender cannot hide its own delay (no coordinated omission): the webhook
response time is scheduled send -> response, the end-to-end latency is scheduled send -> frame
read by the client (both processes read the same system-wide monotonic clock). A request still
waiting for a connection ``--drain`` s after the last one was due is abandoned and reported as
such, so a stalled app cannot stall the benchmark.

Frames are matched to webhooks by the transaction hash in their payload, and to the expected set
by the watch lists, so lost frames and duplicates (a frame id twice on one tab) are counted
exactly. Reports latency percentiles, frames expected/received/lost/duplicated, webhook statuses
and response times, ingest activities/s achieved, CPU by process (app, PostgreSQL, Redis, the
WebSocket clients, the sender, anything else on the machine), the app's RSS, and the app's own
per-stage means from /metrics. Loopback only; bounded by ``--duration`` plus at most ``--drain``
s of waiting for the last responses and frames.

    uv run python bench/e2e.py                          # 200 webhooks/s x 5 activities, 10 s
    uv run python bench/e2e.py --rate 50 --duration 3   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import secrets
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import httpx
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chainfeed.domain.tokens import issue_token

# isort: split
import harness  # bench/harness.py: a sibling, on sys.path when a bench script runs

JWT_SECRET = "e2e-" + secrets.token_hex(24)
SIGNING_KEY = "whsec_e2e_" + secrets.token_hex(8)
#: Per-stage histograms of the app, and its own stream-entry -> frame-written latency.
_HISTOGRAMS = ("chainfeed_stage_duration_seconds", "chainfeed_delivery_latency_seconds")


@dataclass
class Figures:
    """What one run measured (latencies in ms, CPU in % of one core)."""

    rate: float
    duration: float
    activities_per_webhook: int
    users: int
    tabs: int
    webhooks: int
    webhook_status: dict[str, int]
    webhook_response_p50_ms: float
    webhook_response_p99_ms: float
    send_late_max_ms: float
    ingest_activities_per_s: float
    frames_expected: int
    frames_received: int
    frames_lost: int
    frames_duplicate: int
    frames_unexpected: int
    tabs_closed: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    #: Webhook response received -> frame read: the delivery side alone, without ingest queueing.
    after_response_p50_ms: float
    after_response_p99_ms: float
    window_seconds: float
    cpu_percent: dict[str, float]
    #: CPU ms per activity ingested, by process: hardly disturbed by what else runs on the machine.
    cpu_ms_per_activity: dict[str, float]
    generator_share_percent: float
    cores: int
    app_rss_max_mib: float
    app_rss_end_mib: float
    stage_mean_ms: dict[str, float]


class Tab:
    """One browser tab: records (monotonic time read, raw text) of every frame."""

    def __init__(self, user_id: int, url: str) -> None:
        self.user_id = user_id
        self.url = url
        self.frames: list[tuple[float, str | bytes]] = []
        self.open = asyncio.Event()
        self.closed: str | None = None

    async def run(self) -> None:
        try:
            async with connect(self.url, open_timeout=30) as ws:
                self.open.set()
                async for message in ws:
                    self.frames.append((time.monotonic(), message))
                self.closed = str(ws.close_code)  # the server closed it cleanly (1000, 1001)
        except ConnectionClosed as exc:
            self.closed = f"{exc.rcvd.code if exc.rcvd else 'no close frame'}"
        except OSError as exc:
            self.closed = type(exc).__name__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second (default 200)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending (default 10)")
    parser.add_argument("--activities", type=int, default=5, help="activities per webhook (default 5)")
    parser.add_argument("--users", type=int, default=200, help="connected users (default 200)")
    parser.add_argument("--addresses-per-user", type=int, default=5, help="watched by each (default 5)")
    parser.add_argument("--connections", type=int, default=8, help="sender connections (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="app worker processes (default 1)")
    parser.add_argument("--drain", type=float, default=15.0, help="max s to wait for frames (default 15)")
    parser.add_argument(
        "--app-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for the app, e.g. CHAINFEED_STREAM_BATCH=100 (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    args.app_env = harness.env_options(args.app_env)
    harness.raise_nofile(4 * args.users + 1024)
    with harness.services(database_url=None, redis_url=None, prefix="chainfeed_e2e") as services:
        figures = asyncio.run(_run(args, services))
    harness.report(figures, as_json=args.json, text=_print)
    return 0 if figures.frames_lost == 0 and set(figures.webhook_status) <= {"200"} else 1


async def _seed(database_url: str, users: int, per_user: int) -> tuple[list[int], dict[str, list[int]]]:
    """(user ids, watchers by address): ``per_user`` addresses each, every tenth also the next user's."""
    await harness.prepare(database_url)
    ids = await harness.insert_users(database_url, users, prefix="e2e")
    watchers: dict[str, list[int]] = {}
    for n, user_id in enumerate(ids):
        for k in range(per_user):
            address = f"0x{random.randbytes(20).hex()}"
            watchers[address] = [user_id]
            if k == 0 and n % 10 == 0 and len(ids) > 1:
                watchers[address].append(ids[(n + 1) % len(ids)])
    await harness.insert_watches(database_url, [(u, a) for a, owners in watchers.items() for u in owners])
    return ids, watchers


def _bodies(
    watchers: dict[str, list[int]], count: int, activities: int, seed: int
) -> tuple[list[tuple[bytes, str]], list[list[tuple[str, set[int]]]]]:
    """Signed bodies, and per body its transfers as (tx hash, users who get a feed item)."""
    bodies, transfers = [], []
    for webhook, body, signature in harness.signed_webhooks(
        list(watchers), count, activities=activities, seed=seed, key=SIGNING_KEY
    ):
        bodies.append((body, signature))
        transfers.append(
            [
                (a["hash"], {u for side in ("fromAddress", "toAddress") for u in watchers.get(a[side], ())})
                for a in webhook["event"]["activity"]
            ]
        )
    return bodies, transfers


def _sender_pid() -> int:
    """Run first in the sender process: its pid (and its imports are done before the clock starts)."""
    return os.getpid()


@dataclass(frozen=True)
class Plan:
    """What the sender process is told: body i is due at ``start_at + i / rate``."""

    port: int
    start_at: float
    rate: float
    connections: int
    #: Requests not started by then are abandoned (monotonic time).
    give_up: float


def _send_scheduled(
    plan: Plan, bodies: list[tuple[bytes, str]]
) -> tuple[list[tuple[str, float]], float, float]:
    """In the sender process: ((status, response monotonic time) per body, max lateness s, CPU s)."""
    before = harness.own_cpu_seconds()
    results, late = asyncio.run(_sender(plan, bodies))
    return results, late, harness.own_cpu_seconds() - before


async def _sender(plan: Plan, bodies: list[tuple[bytes, str]]) -> tuple[list[tuple[str, float]], float]:
    """Body i is posted when due (at once when behind: no pause hides a stall)."""
    results: list[tuple[str, float]] = [("not sent", 0.0)] * len(bodies)
    limits = httpx.Limits(max_connections=plan.connections, max_keepalive_connections=plan.connections)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{plan.port}", timeout=10, limits=limits) as http:
        # Requests past the connections wait here, not in httpx's pool, which costs far more CPU per
        # waiting request when the server falls behind. Either way the wait counts in the latency.
        in_flight = asyncio.Semaphore(plan.connections)

        async def post(i: int, body: bytes, signature: str) -> None:
            headers = {"Content-Type": "application/json", "X-Alchemy-Signature": signature}
            async with in_flight:
                if time.monotonic() > plan.give_up:
                    results[i] = ("abandoned", time.monotonic())
                    return
                try:
                    response = await http.post("/webhooks/alchemy", content=body, headers=headers)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
            results[i] = (status, time.monotonic())

        await asyncio.gather(*(http.get("/healthz") for _ in range(plan.connections)))  # open the connections
        tasks, late = [], 0.0
        for i, (body, signature) in enumerate(bodies):
            due = plan.start_at + i / plan.rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            late = max(late, time.monotonic() - due)
            tasks.append(asyncio.create_task(post(i, body, signature)))
        await asyncio.gather(*tasks)
    return results, late


def _histograms(text: str) -> dict[str, harness.Histogram]:
    """Each stage's histogram, and ``entry_to_frame``: the app's stream entry -> frame written."""
    found = harness.histograms(text, "chainfeed_stage_duration_seconds", by="stage")
    for latency in harness.histograms(text, "chainfeed_delivery_latency_seconds").values():
        found["entry_to_frame"] = latency
    return found


async def _run(args: argparse.Namespace, services: harness.Services) -> Figures:  # noqa: PLR0915 - one scenario, top to bottom
    user_ids, watchers = await _seed(services.database_url, args.users, args.addresses_per_user)
    count = int(args.rate * args.duration)
    warmup, warmup_transfers = _bodies(watchers, 20, args.activities, seed=1)
    bodies, transfers = _bodies(watchers, count, args.activities, seed=2)
    app = harness.App(
        services, jwt_secret=JWT_SECRET, signing_key=SIGNING_KEY, name="e2e-app", env=args.app_env,
        workers=args.workers,
    )  # fmt: skip
    pids = {"app": app.pid, "postgres": services.postgres_pid, "redis": services.redis_pid}

    def cpu_seconds() -> dict[str, float]:
        return {kind: harness.tree_cpu_seconds(pid) for kind, pid in pids.items()}

    tabs: list[Tab] = []
    tasks: list[asyncio.Task[None]] = []
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    try:
        await app.ready()
        async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as http:
            for n, user_id in enumerate(user_ids):
                token = issue_token(user_id, secret=JWT_SECRET, ttl_seconds=3600)
                tabs += [Tab(user_id, f"{app.ws_url}?token={token}") for _ in range(2 - n % 2)]
            tasks = [asyncio.create_task(tab.run()) for tab in tabs]
            async with asyncio.timeout(60):
                await asyncio.gather(*(tab.open.wait() for tab in tabs))
            pids["sender"] = await loop.run_in_executor(pool, _sender_pid)
            # Warm-up: a few webhooks, and their frames, before anything is measured.
            await asyncio.gather(*(_post(http, body, sig) for body, sig in warmup))
            await _frames_arrive(tabs, _expected(tabs, warmup_transfers), seconds=30)
            for tab in tabs:
                tab.frames.clear()
            metrics_before = _histograms((await http.get("/metrics")).text)
            measured_from = time.monotonic()
            cpu_before, machine_before = cpu_seconds(), harness.machine_busy_seconds()
            rusage_before = harness.own_cpu_seconds()
            rss = asyncio.create_task(_sample_rss(app.pid))
            start_at = measured_from + 0.5  # time to hand the bodies to the sender process
            plan = Plan(
                app.port, start_at, args.rate, args.connections, start_at + count / args.rate + args.drain
            )
            results, late, sender_cpu = await loop.run_in_executor(pool, _send_scheduled, plan, bodies)
            ok = [t for t, (status, _) in zip(transfers, results, strict=True) if status == "200"]
            await _frames_arrive(tabs, _expected(tabs, ok), seconds=args.drain)
            window = time.monotonic() - measured_from
            cpu_after, machine = cpu_seconds(), harness.machine_busy_seconds()
            bench_cpu = harness.own_cpu_seconds()
            rss.cancel()
            rss_samples = await rss
            metrics_after = _histograms((await http.get("/metrics")).text)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pool.shutdown(wait=True, cancel_futures=True)
        app.stop()
    cpu = {kind: 100 * (cpu_after[kind] - cpu_before[kind]) / window for kind in pids if kind != "sender"}
    cpu["ws clients"] = 100 * (bench_cpu - rusage_before) / window
    cpu["sender"] = 100 * sender_cpu / window
    cpu["machine"] = 100 * (machine - machine_before) / window
    cpu["other"] = cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")
    figures = _figures(
        args,
        tabs=tabs,
        transfers=transfers,
        results=results,
        start_at=start_at,
        late=late,
        window=window,
        cpu=cpu,
        rss=rss_samples,
        stages=harness.means_ms(metrics_after, metrics_before),
    )
    if figures.frames_lost or set(figures.webhook_status) - {"200"}:
        print(f"frames lost or webhooks failed; the app's log is {app.log}", file=sys.stderr)
    else:
        app.log.unlink(missing_ok=True)
    return figures


def _figures(
    args: argparse.Namespace,
    *,
    tabs: list[Tab],
    transfers: list[list[tuple[str, set[int]]]],
    results: list[tuple[str, float]],
    start_at: float,
    late: float,
    window: float,
    cpu: dict[str, float],
    rss: list[float],
    stages: dict[str, float],
) -> Figures:
    webhook_of = {tx: i for i, txs in enumerate(transfers) for tx, _ in txs}
    ok = {tx for txs, (status, _) in zip(transfers, results, strict=True) if status == "200" for tx, _ in txs}
    latencies, after_response, duplicates, unexpected = [], [], 0, 0
    for tab in tabs:
        seen: set[int] = set()
        for at, raw in tab.frames:
            frame = json.loads(raw)
            if frame.get("type") != "new_transaction":
                continue
            if frame["id"] in seen:
                duplicates += 1
                continue
            seen.add(frame["id"])
            tx = frame["payload"].get("hash")
            if tx not in ok or frame["user_id"] != tab.user_id:
                unexpected += 1
                continue
            i = webhook_of[tx]
            latencies.append(at - (start_at + i / args.rate))
            after_response.append(at - results[i][1])
    latencies.sort()
    after_response.sort()
    expected = _expected(
        tabs, [t for t, (status, _) in zip(transfers, results, strict=True) if status == "200"]
    )
    answered = [(i, at) for i, (status, at) in enumerate(results) if status == "200"]
    responses = sorted(at - (start_at + i / args.rate) for i, at in answered)
    last = max((at for _, at in answered), default=start_at + 1e-9)
    return Figures(
        rate=args.rate,
        duration=args.duration,
        activities_per_webhook=args.activities,
        users=args.users,
        tabs=len(tabs),
        webhooks=len(results),
        webhook_status=dict(Counter(status for status, _ in results)),
        webhook_response_p50_ms=harness.percentile_ms(responses, 0.50),
        webhook_response_p99_ms=harness.percentile_ms(responses, 0.99),
        send_late_max_ms=round(late * 1000, 1),
        ingest_activities_per_s=round(args.activities * len(answered) / (last - start_at)),
        frames_expected=expected,
        frames_received=len(latencies),
        frames_lost=max(0, expected - len(latencies)),
        frames_duplicate=duplicates,
        frames_unexpected=unexpected,
        tabs_closed=sum(tab.closed is not None for tab in tabs),
        latency_p50_ms=harness.percentile_ms(latencies, 0.50),
        latency_p90_ms=harness.percentile_ms(latencies, 0.90),
        latency_p99_ms=harness.percentile_ms(latencies, 0.99),
        latency_max_ms=harness.percentile_ms(latencies, 1.0),
        after_response_p50_ms=harness.percentile_ms(after_response, 0.50),
        after_response_p99_ms=harness.percentile_ms(after_response, 0.99),
        window_seconds=round(window, 2),
        cpu_percent={kind: round(value) for kind, value in cpu.items()},
        cpu_ms_per_activity={
            kind: round(10 * cpu[kind] * window / max(1, args.activities * len(answered)), 3)
            for kind in ("app", "postgres", "redis", "ws clients", "sender")
        },
        generator_share_percent=round(100 * (cpu["ws clients"] + cpu["sender"]) / max(cpu["machine"], 1e-9)),
        cores=os.cpu_count() or 0,
        app_rss_max_mib=max(rss, default=0.0),
        app_rss_end_mib=rss[-1] if rss else 0.0,
        stage_mean_ms=stages,
    )


def _expected(tabs: list[Tab], transfers: list[list[tuple[str, set[int]]]]) -> int:
    """Frames the tabs should get: one per transfer per tab of each user watching either side."""
    tabs_of = Counter(tab.user_id for tab in tabs)
    return sum(tabs_of[u] for txs in transfers for _, users in txs for u in users)


async def _frames_arrive(tabs: list[Tab], expected: int, *, seconds: float) -> None:
    await harness.wait_for(
        lambda: sum(len(tab.frames) for tab in tabs) >= expected, seconds=seconds, every=0.05
    )


async def _post(http: httpx.AsyncClient, body: bytes, signature: str) -> None:
    headers = {"Content-Type": "application/json", "X-Alchemy-Signature": signature}
    (await http.post("/webhooks/alchemy", content=body, headers=headers)).raise_for_status()


async def _sample_rss(pid: int) -> list[float]:
    """The app's RSS (MiB, its worker processes included) every 0.5 s until cancelled."""
    samples: list[float] = []
    while True:
        with contextlib.suppress(psutil.Error):
            samples.append(round(harness.rss_mib(pid), 1))
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            return samples


def _print(f: Figures) -> None:
    print(f"ChainFeed end-to-end benchmark ({f.cores} cores, loopback)")
    print(
        f"  load       {f.webhooks} webhooks x {f.activities_per_webhook} activities at {f.rate:g}/s"
        f" for {f.duration:g} s; {f.users} users, {f.tabs} WebSocket tabs"
    )
    statuses = harness.joined(sorted(f.webhook_status.items()), "{} x{}")
    print(
        f"  webhooks   {statuses} · response p50 {f.webhook_response_p50_ms} ms · p99"
        f" {f.webhook_response_p99_ms} ms · sender late max {f.send_late_max_ms} ms"
    )
    print(f"  ingest     {f.ingest_activities_per_s:,} activities/s")
    print(
        f"  frames     expected {f.frames_expected:,} · received {f.frames_received:,} · lost {f.frames_lost}"
        f" · duplicates {f.frames_duplicate} · unexpected {f.frames_unexpected} · tabs closed {f.tabs_closed}"
    )
    print(
        f"  latency    webhook -> frame p50 {f.latency_p50_ms} ms · p90 {f.latency_p90_ms} ms"
        f" · p99 {f.latency_p99_ms} ms · max {f.latency_max_ms} ms"
    )
    print(
        f"             webhook response -> frame p50 {f.after_response_p50_ms} ms"
        f" · p99 {f.after_response_p99_ms} ms"
    )
    cpu = harness.joined(f.cpu_percent, "{} {}%")
    print(f"  CPU        {cpu} (100% = one core, over {f.window_seconds} s)")
    per_activity = harness.joined(f.cpu_ms_per_activity)
    print(f"             CPU ms per activity: {per_activity}")
    print(f"  generator  {f.generator_share_percent}% of the machine's busy CPU (ws clients + sender)")
    print(f"  app RSS    max {f.app_rss_max_mib} MiB · end {f.app_rss_end_mib} MiB")
    stages = harness.joined(sorted(f.stage_mean_ms.items()), "{} {} ms")
    print(f"  app stages {stages} (means during the run)")


if __name__ == "__main__":
    raise SystemExit(main())
