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
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import httpx
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chainfeed.devtools.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from chainfeed.devtools.simulate import ActivityFactory
from chainfeed.domain.signature import sign
from chainfeed.domain.tokens import issue_token
from chainfeed.storage import migrate

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
    if any("=" not in item for item in args.app_env):
        parser.error("--app-env takes NAME=VALUE")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.users + 1024)), hard))
    root = Path(tempfile.mkdtemp(prefix="chainfeed-e2e-"))
    root.chmod(0o755)  # the PostgreSQL service user must traverse it when we are root
    postgres, redis = EmbeddedPostgres(root / "postgres"), EmbeddedRedis(root / "redis")
    try:
        figures = asyncio.run(_run(args, root, postgres.start(), redis.start()))
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
    else:
        _print(figures)
    return 0 if figures.frames_lost == 0 and set(figures.webhook_status) <= {"200"} else 1


async def _seed(database_url: str, users: int, per_user: int) -> tuple[list[int], dict[str, list[int]]]:
    """(user ids, watchers by address): ``per_user`` addresses each, every tenth also the next user's."""
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines would spoil --json
        await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (username, password_hash)"
            " SELECT 'e2e' || n, 'x' FROM generate_series(1, $1) n RETURNING id",
            users,
        )
        ids = [row["id"] for row in rows]
        watchers: dict[str, list[int]] = {}
        for n, user_id in enumerate(ids):
            for k in range(per_user):
                address = f"0x{random.randbytes(20).hex()}"
                watchers[address] = [user_id]
                if k == 0 and n % 10 == 0 and len(ids) > 1:
                    watchers[address].append(ids[(n + 1) % len(ids)])
        pairs = [(user_id, a) for a, owners in watchers.items() for user_id in owners]
        await conn.copy_records_to_table("watched_addresses", records=pairs, columns=["user_id", "address"])
    finally:
        await conn.close()
    return ids, watchers


def _bodies(
    watchers: dict[str, list[int]], count: int, activities: int, seed: int
) -> tuple[list[tuple[bytes, str]], list[list[tuple[str, set[int]]]]]:
    """Signed bodies, and per body its transfers as (tx hash, users who get a feed item)."""
    factory = ActivityFactory(random.Random(seed))
    watched = list(watchers)
    bodies, transfers = [], []
    for _ in range(count):
        webhook = factory.webhook(watched, activities=activities)
        body = json.dumps(webhook, separators=(",", ":")).encode()
        bodies.append((body, sign(body, SIGNING_KEY)))
        transfers.append(
            [
                (a["hash"], {u for side in ("fromAddress", "toAddress") for u in watchers.get(a[side], ())})
                for a in webhook["event"]["activity"]
            ]
        )
    return bodies, transfers


def _app(
    database_url: str, redis_url: str, *, port: int, log: Path, workers: int, extra: list[str]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHAINFEED_DATABASE_URL": database_url,
        "CHAINFEED_REDIS_URL": redis_url,
        "CHAINFEED_JWT_SECRET": JWT_SECRET,
        "CHAINFEED_ALCHEMY_SIGNING_KEYS": SIGNING_KEY,
        "CHAINFEED_LOG_FORMAT": "json",
        **dict(item.split("=", 1) for item in extra),
    }
    command = [sys.executable, "-m", "chainfeed", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--workers", str(workers)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


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
    before = _rusage()
    results, late = asyncio.run(_sender(plan, bodies))
    return results, late, _rusage() - before


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


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each pid and its descendants (those still alive)."""
    totals = {}
    for pid in pids:
        total = 0.0
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
        totals[pid] = total
    return totals


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (guest time is already counted in user time)."""
    times = psutil.cpu_times()._asdict()
    idle = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(v for k, v in times.items() if k not in idle)


def _histograms(text: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each stage's histogram, and ``entry_to_frame``: stream entry -> frame written."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        for name in _HISTOGRAMS:
            for suffix, slot in (("_sum", 0), ("_count", 1)):
                if line.startswith(name + suffix):
                    series, value = line.rsplit(" ", 1)
                    key = (
                        series.split('stage="', 1)[1].split('"', 1)[0]
                        if 'stage="' in series
                        else "entry_to_frame"
                    )
                    out.setdefault(key, [0.0, 0.0])[slot] += float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


async def _run(args: argparse.Namespace, root: Path, database_url: str, redis_url: str) -> Figures:  # noqa: PLR0915 - one scenario, top to bottom
    user_ids, watchers = await _seed(database_url, args.users, args.addresses_per_user)
    count = int(args.rate * args.duration)
    warmup, warmup_transfers = _bodies(watchers, 20, args.activities, seed=1)
    bodies, transfers = _bodies(watchers, count, args.activities, seed=2)
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"chainfeed-e2e-app-{port}.log"
    app = _app(database_url, redis_url, port=port, log=log, workers=args.workers, extra=args.app_env)
    pids = {"app": app.pid, "postgres": _pidfile(root / "postgres" / "postmaster.pid")}
    pids["redis"] = _pidfile(root / "redis" / "redis.pid")
    tabs: list[Tab] = []
    tasks: list[asyncio.Task[None]] = []
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await _ready(http, app, log)
            for n, user_id in enumerate(user_ids):
                token = issue_token(user_id, secret=JWT_SECRET, ttl_seconds=3600)
                tabs += [Tab(user_id, f"ws://127.0.0.1:{port}/ws?token={token}") for _ in range(2 - n % 2)]
            tasks = [asyncio.create_task(tab.run()) for tab in tabs]
            async with asyncio.timeout(60):
                await asyncio.gather(*(tab.open.wait() for tab in tabs))
            pids["sender"] = await loop.run_in_executor(pool, _sender_pid)
            # Warm-up: a few webhooks, and their frames, before anything is measured.
            await asyncio.gather(*(_post(http, body, sig) for body, sig in warmup))
            await _frames_arrive(tabs, _expected(tabs, warmup_transfers), deadline=time.monotonic() + 30)
            for tab in tabs:
                tab.frames.clear()
            metrics_before = _histograms((await http.get("/metrics")).text)
            measured_from = time.monotonic()
            cpu_before, machine_before, rusage_before = (
                _cpu_seconds(list(pids.values())),
                _machine_busy(),
                _rusage(),
            )
            rss = asyncio.create_task(_sample_rss(app.pid))
            start_at = measured_from + 0.5  # time to hand the bodies to the sender process
            plan = Plan(
                port, start_at, args.rate, args.connections, start_at + count / args.rate + args.drain
            )
            results, late, sender_cpu = await loop.run_in_executor(pool, _send_scheduled, plan, bodies)
            ok = [t for t, (status, _) in zip(transfers, results, strict=True) if status == "200"]
            await _frames_arrive(tabs, _expected(tabs, ok), deadline=time.monotonic() + args.drain)
            window = time.monotonic() - measured_from
            cpu_after, machine, bench_cpu = _cpu_seconds(list(pids.values())), _machine_busy(), _rusage()
            rss.cancel()
            rss_samples = await rss
            metrics_after = _histograms((await http.get("/metrics")).text)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pool.shutdown(wait=True, cancel_futures=True)
        app.terminate()
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
    cpu = {
        kind: 100 * (cpu_after[pid] - cpu_before[pid]) / window
        for kind, pid in pids.items()
        if kind != "sender"
    }
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
        stages=_stage_means(metrics_before, metrics_after),
    )
    if figures.frames_lost or set(figures.webhook_status) - {"200"}:
        print(f"frames lost or webhooks failed; the app's log is {log}", file=sys.stderr)
    else:
        log.unlink(missing_ok=True)
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
        webhook_response_p50_ms=_pct(responses, 0.50),
        webhook_response_p99_ms=_pct(responses, 0.99),
        send_late_max_ms=round(late * 1000, 1),
        ingest_activities_per_s=round(args.activities * len(answered) / (last - start_at)),
        frames_expected=expected,
        frames_received=len(latencies),
        frames_lost=max(0, expected - len(latencies)),
        frames_duplicate=duplicates,
        frames_unexpected=unexpected,
        tabs_closed=sum(tab.closed is not None for tab in tabs),
        latency_p50_ms=_pct(latencies, 0.50),
        latency_p90_ms=_pct(latencies, 0.90),
        latency_p99_ms=_pct(latencies, 0.99),
        latency_max_ms=round(latencies[-1] * 1000, 1) if latencies else 0.0,
        after_response_p50_ms=_pct(after_response, 0.50),
        after_response_p99_ms=_pct(after_response, 0.99),
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


def _pct(ordered: list[float], p: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1) if ordered else 0.0


def _expected(tabs: list[Tab], transfers: list[list[tuple[str, set[int]]]]) -> int:
    """Frames the tabs should get: one per transfer per tab of each user watching either side."""
    tabs_of = Counter(tab.user_id for tab in tabs)
    return sum(tabs_of[u] for txs in transfers for _, users in txs for u in users)


async def _frames_arrive(tabs: list[Tab], expected: int, *, deadline: float) -> None:
    while sum(len(tab.frames) for tab in tabs) < expected and time.monotonic() < deadline:  # noqa: ASYNC110 - polls counters
        await asyncio.sleep(0.05)


async def _post(http: httpx.AsyncClient, body: bytes, signature: str) -> None:
    headers = {"Content-Type": "application/json", "X-Alchemy-Signature": signature}
    (await http.post("/webhooks/alchemy", content=body, headers=headers)).raise_for_status()


async def _ready(http: httpx.AsyncClient, app: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise SystemExit(f"the app exited during start-up; its log: {log}")
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("the app did not become ready within 60 s")


async def _sample_rss(pid: int) -> list[float]:
    """The app's RSS (MiB, its worker processes included) every 0.5 s until cancelled."""
    samples: list[float] = []
    process = psutil.Process(pid)
    while True:
        with contextlib.suppress(psutil.Error):
            procs = [process, *process.children(recursive=True)]
            samples.append(round(sum(p.memory_info().rss for p in procs) / 2**20, 1))
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            return samples


def _rusage() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pidfile(path: Path) -> int:
    return int(path.read_text().split()[0])


def _stage_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean duration (ms) of each stage during the measured window: the difference of two scrapes."""
    means = {}
    for key, (total, count) in after.items():
        total0, count0 = before.get(key, (0.0, 0.0))
        if count > count0:
            means[key] = round(1000 * (total - total0) / (count - count0), 2)
    return means


def _print(f: Figures) -> None:
    print(f"ChainFeed end-to-end benchmark ({f.cores} cores, loopback)")
    print(
        f"  load       {f.webhooks} webhooks x {f.activities_per_webhook} activities at {f.rate:g}/s"
        f" for {f.duration:g} s; {f.users} users, {f.tabs} WebSocket tabs"
    )
    statuses = " · ".join(f"{status} x{n}" for status, n in sorted(f.webhook_status.items()))
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
    cpu = " · ".join(f"{kind} {pct}%" for kind, pct in f.cpu_percent.items())
    print(f"  CPU        {cpu} (100% = one core, over {f.window_seconds} s)")
    per_activity = " · ".join(f"{kind} {ms}" for kind, ms in f.cpu_ms_per_activity.items())
    print(f"             CPU ms per activity: {per_activity}")
    print(f"  generator  {f.generator_share_percent}% of the machine's busy CPU (ws clients + sender)")
    print(f"  app RSS    max {f.app_rss_max_mib} MiB · end {f.app_rss_end_mib} MiB")
    stages = " · ".join(f"{stage} {ms} ms" for stage, ms in sorted(f.stage_mean_ms.items()))
    print(f"  app stages {stages} (means during the run)")


if __name__ == "__main__":
    raise SystemExit(main())
