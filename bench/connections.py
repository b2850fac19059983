"""Connections: how many idle, authenticated WebSockets one ``chainfeed serve`` process holds, at what cost.

For each ``--connections`` level a fresh ``chainfeed serve`` (one process, one worker) is started
on embedded PostgreSQL and Redis (started once, in a temporary folder). Users are inserted straight
into ``users`` (no scrypt) and tokens minted with ``chainfeed.domain.tokens``; each user has 2-4
tabs. The clients live in ``--clients`` child processes of this script (uvloop, the websockets
client, each bound to its own loopback source address 127.0.0.2, 127.0.0.3, ... so ephemeral ports
never run short); every connection targets 127.0.0.1. Clients never ping (browsers do not), the
server pings each connection every ``--ping-interval`` s. Per level it measures:

- RSS per connection: half the connections are opened without permessage-deflate, then the other
  half with it (the client decides: ``compression=None`` / ``"deflate"``); the server's RSS growth
  over each batch divided by its size (and over all of them, divided by N). RSS is sampled once
  the server's ``websocket_active_connections`` gauge shows the whole batch registered.
- Connect time: from the first handshake until the gauge shows all N (``--concurrency`` handshakes
  in flight per client process), with the CPU of the server, the clients, PostgreSQL + Redis and
  every other process meanwhile (which one limited the rate), and the server's CPU per connection.
- Idle CPU of the server over ``--idle`` s with every connection open (heartbeat pings only).
- Reconnect storm: feed items are created at ``--rate``/s (mostly for the users of the storm tabs);
  after ``--pre-storm`` s, ``--storm`` tabs drop at once (transport aborted, as a lost network
  does) and reconnect at once with ``?since=<last id seen>``. Reported: the time until all are
  open again, the time until every tab holds every item created before they were all back, and,
  after ``--post-storm`` s more of items and a drain, the items any tab missed and the duplicates
  it received (frames whose ``id`` it already had).
- Disconnect: every client leaves at once; the time until the app has let them all go (its gauge
  at 0). Only then is the app stopped; warnings and errors in its log are listed under the table.

Items for the storm are real feed items: a ``feed_items`` row and its ``feed_outbox`` row inserted
in one statement, which is what ingest commits for a webhook; the app's outbox relay (sweeping
every second) publishes them to the stream, and resume replays them from PostgreSQL. Signed
webhooks would exercise ingest as well, which bench/ingest.py measures; here it would only add
CPU on the same two cores. Each item's payload carries ``published_at_ms`` (its creation time).

The server's open files are capped by RLIMIT_NOFILE, which this script cannot raise above its hard
limit: a level above that (less a reserve for the app's own files) is lowered and the table says so.
Loopback only; every phase has a deadline; the app, the client processes and the embedded
servers are stopped in ``finally``.

    uv run python bench/connections.py --quick                 # 2,000 connections, about 1.5 min
    uv run python bench/connections.py                         # 10,000 and 20,000, about 10 min
    uv run python bench/connections.py --connections 5000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import resource
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from chainfeed.domain.tokens import issue_token

# isort: split
import harness  # bench/harness.py: a sibling, on sys.path when a bench script runs

JWT_SECRET = "connections-" + secrets.token_hex(24)
#: File descriptors the app keeps for itself (pools, pipes, logs, the listening socket, the storm's overlap).
FD_RESERVE = 300
TABS_PER_USER = (2, 3, 4)


@dataclass
class Level:
    """What one level measured."""

    requested: int
    connections: int
    limited_by: str
    users: int
    ping_interval_s: float
    rss_before_mib: float
    rss_after_mib: float
    rss_per_connection_kib: float
    rss_per_connection_plain_kib: float
    rss_per_connection_deflate_kib: float
    connect_seconds: float
    connect_per_second: float
    handshake_p50_ms: float
    handshake_p99_ms: float
    connect_server_cpu_percent: float
    connect_clients_cpu_percent: float
    connect_services_cpu_percent: float
    connect_other_cpu_percent: float
    connect_server_cpu_ms_per_connection: float
    connect_failures: int
    connect_listen_overflows: int
    idle_seconds: float
    idle_server_cpu_percent: float
    idle_clients_cpu_percent: float
    idle_services_cpu_percent: float
    idle_other_cpu_percent: float
    unexpected_closes: int
    storm_clients: int
    storm_reconnect_seconds: float
    storm_handshake_p50_ms: float
    storm_handshake_p99_ms: float
    storm_caught_up_seconds: float
    storm_reconnect_failures: int
    storm_listen_overflows: int
    storm_server_cpu_percent: float
    storm_server_cpu_ms_per_reconnect: float
    storm_services_cpu_percent: float
    storm_other_cpu_percent: float
    items_created: int
    frames_expected: int
    frames_received: int
    missed: int
    duplicates: int
    disconnect_all_seconds: float
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Client child process: holds its share of the tabs, answers JSON-line commands on stdin.
# ---------------------------------------------------------------------------------------------


class Tab:
    """One browser tab: connects, records the ids it receives, reconnects after a drop."""

    def __init__(self, index: int, user_id: int, token: str, deflate: bool) -> None:
        self.index, self.user_id, self.token, self.deflate = index, user_id, token, deflate
        self.received: set[int] = set()
        self.duplicates = 0
        self.last_id = 0
        self.opened = asyncio.Event()
        self.ws: Any = None
        self.dropping = False
        self.stopping = False
        self.connects = 0
        self.failures = 0
        #: Seconds the last opening handshake took (TCP connect to the server's 101, token checked).
        self.handshake = 0.0
        self.unexpected_closes = 0
        self.task: asyncio.Task[None] | None = None


class Client:
    """The tabs of one child process and the commands the parent sends."""

    def __init__(self, url: str, local_host: str, concurrency: int) -> None:
        self.url, self.local_host = url, local_host
        self.handshakes = asyncio.Semaphore(concurrency)
        self.tabs: list[Tab] = []
        #: Why handshakes failed, by exception type (and close code, when the server refused).
        self.failure_kinds: collections.Counter[str] = collections.Counter()
        self.since_floor = 0

    async def _tab(self, tab: Tab, limited: bool) -> None:
        from websockets.asyncio.client import connect  # noqa: PLC0415 - only the children need it

        while not tab.stopping:
            since = max(tab.last_id, self.since_floor)
            url = f"{self.url}?token={tab.token}" + (f"&since={since}" if tab.connects else "")
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if limited:
                        await stack.enter_async_context(self.handshakes)
                    began = time.monotonic()
                    ws = await connect(
                        url,
                        compression="deflate" if tab.deflate else None,
                        ping_interval=None,  # browsers do not ping; the server's heartbeat is measured
                        open_timeout=60,
                        close_timeout=2,
                        max_queue=None,
                        local_addr=(self.local_host, 0),
                    )
            except Exception as exc:
                tab.failures += 1
                self.failure_kinds[_failure_kind(exc)] += 1
                await asyncio.sleep(0.5 + random.random())
                continue
            tab.ws, limited = ws, False
            tab.handshake = time.monotonic() - began
            tab.connects += 1
            tab.opened.set()
            with contextlib.suppress(Exception):
                async for message in ws:
                    frame = json.loads(message)
                    item_id = frame.get("id")
                    if frame.get("type") != "new_transaction" or not isinstance(item_id, int):
                        continue
                    if item_id in tab.received:
                        tab.duplicates += 1
                    tab.received.add(item_id)
                    tab.last_id = max(tab.last_id, item_id)
            tab.ws = None
            if tab.dropping:
                tab.dropping = False
                continue
            if not tab.stopping:
                tab.unexpected_closes += 1
                tab.opened.clear()
                await asyncio.sleep(1)

    async def connect(self, tabs: list[list[Any]], seconds: float) -> dict[str, Any]:
        new = [Tab(i, user_id, token, deflate) for i, user_id, token, deflate in tabs]
        self.tabs += new
        for tab in new:
            tab.task = asyncio.create_task(self._tab(tab, limited=True))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(t.opened.wait() for t in new))
        return {
            "opened": sum(t.opened.is_set() for t in new),
            "failures": sum(t.failures for t in new),
            "handshakes": [round(t.handshake, 4) for t in new if t.opened.is_set()],
        }

    async def drop(self, below: int, since_floor: int, seconds: float) -> dict[str, Any]:
        self.since_floor = since_floor
        storm = [t for t in self.tabs if t.index < below and t.ws is not None]
        failures_before = sum(t.failures for t in storm)
        for tab in storm:  # all at once, as when a network link goes down
            tab.dropping = True
            tab.opened.clear()
            tab.ws.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(t.opened.wait() for t in storm))
        return {
            "dropped": len(storm),
            "reopened": sum(t.opened.is_set() for t in storm),
            "handshakes": [round(t.handshake, 4) for t in storm if t.opened.is_set()],
            "failures": sum(t.failures for t in storm) - failures_before,
            "failure_kinds": dict(self.failure_kinds),
        }

    def missing(self, items: list[list[int]]) -> dict[str, int]:
        by_user: dict[int, list[int]] = {}
        for item_id, user_id in items:
            by_user.setdefault(user_id, []).append(item_id)
        expected = missing = 0
        for tab in self.tabs:
            ids = by_user.get(tab.user_id, ())
            expected += len(ids)
            missing += sum(i not in tab.received for i in ids)
        return {
            "expected": expected,
            "missing": missing,
            "received": sum(len(t.received) + t.duplicates for t in self.tabs),
            "duplicates": sum(t.duplicates for t in self.tabs),
            "unexpected_closes": sum(t.unexpected_closes for t in self.tabs),
        }

    async def close(self) -> dict[str, Any]:
        for tab in self.tabs:
            tab.stopping = True
            if tab.ws is not None:
                tab.ws.transport.abort()
            if tab.task is not None:
                tab.task.cancel()
        await asyncio.gather(*(t.task for t in self.tabs if t.task is not None), return_exceptions=True)
        closed, self.tabs = len(self.tabs), []
        return {"closed": closed}


def _failure_kind(exc: Exception) -> str:
    """A short name for why a handshake failed: the exception type, and the status or close code."""
    code = getattr(getattr(exc, "response", None), "status_code", None) or getattr(
        getattr(exc, "rcvd", None), "code", None
    )
    return type(exc).__name__ + (f"({code})" if code else "")


async def _child(local_host: str, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client: Client | None = None
    while line := await reader.readline():
        command = json.loads(line)
        kind = command["cmd"]
        if kind == "init":
            client = Client(command["url"], local_host, concurrency)
            reply: dict[str, Any] = {"pid": os.getpid()}
        elif client is None:
            reply = {"error": "init first"}
        elif kind == "connect":
            reply = await client.connect(command["tabs"], command["timeout"])
        elif kind == "drop":
            reply = await client.drop(command["below"], command["since_floor"], command["timeout"])
        elif kind == "missing":
            reply = client.missing(command["items"])
        elif kind == "close":
            reply = await client.close()
        else:
            reply = {"error": f"unknown command {kind}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if client is not None:
        await client.close()


def _child_main(local_host: str, concurrency: int) -> None:
    harness.raise_nofile()
    import uvloop  # noqa: PLC0415 - the parent does not need it

    uvloop.run(_child(local_host, concurrency))


# ---------------------------------------------------------------------------------------------
# Parent: services, the app, the phases.
# ---------------------------------------------------------------------------------------------


class Children:
    """The client processes, driven over their stdin/stdout."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes
        self.pids = [p.pid for p in processes]

    @classmethod
    async def start(cls, count: int, concurrency: int) -> Children:
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--child",
                f"127.0.0.{2 + i}",
                str(concurrency),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=2**26,
            )
            for i in range(count)
        ]
        return cls(processes)

    async def ask(self, command: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send a command (or one per child) to every child; their replies, in child order."""
        commands = command if isinstance(command, list) else [command] * len(self.processes)
        for process, cmd in zip(self.processes, commands, strict=True):
            assert process.stdin is not None
            process.stdin.write((json.dumps(cmd) + "\n").encode())
            await process.stdin.drain()

        async def reply(process: asyncio.subprocess.Process) -> dict[str, Any]:
            assert process.stdout is not None
            line = await process.stdout.readline()
            if not line:
                raise RuntimeError(f"client process {process.pid} exited")
            return dict(json.loads(line))

        return list(await asyncio.gather(*(reply(p) for p in self.processes)))

    async def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


class CpuMeter:
    """CPU seconds by role: the app, the client processes, PostgreSQL and Redis, this script, and
    ``other``: everything else on the machine (on a shared machine, how much the figures were disturbed).
    """

    def __init__(self, app: int, clients: list[int], services: list[int]) -> None:
        self.roles = {"app": [app], "clients": clients, "services": services}

    def read(self) -> dict[str, float]:
        used = {role: sum(map(harness.tree_cpu_seconds, pids)) for role, pids in self.roles.items()}
        used["bench"] = harness.own_cpu_seconds()
        used["other"] = harness.machine_busy_seconds() - sum(used.values())
        return used

    def since(self, before: dict[str, float]) -> dict[str, float]:
        return {role: value - before[role] for role, value in self.read().items()}


def _log_errors(path: Path) -> list[str]:
    """One note per distinct error (or warning) event in the app's JSON log, with its count."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Error" in line or "error" in line:
                counts[f"(not JSON) {line[:120]}"] += 1
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical", "warning"):
            detail = record.get("exception", record.get("error", ""))
            last = str(detail).strip().splitlines()[-1:] if detail else []
            counts[f"{record['level']}: {record.get('event')} {' '.join(last)[:160]}".strip()] += 1
    return [f"app log, {count} x {event}" for event, count in counts.most_common(8)]


def _listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (TcpExt ListenOverflows)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in itertools.pairwise(lines):
        if names[0] == "TcpExt:" and values[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return 0


def _percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` (seconds) in milliseconds; nan when empty."""
    return harness.percentile_ms(sorted(values), pct / 100, empty=float("nan"))


async def _active(http: httpx.AsyncClient) -> int:
    return int(harness.metric((await http.get("/metrics")).text, "websocket_active_connections"))


async def _wait_active(
    http: httpx.AsyncClient, target: int, seconds: float, *, at_most: bool = False
) -> bool:
    """Wait until the app shows at least ``target`` connections (or at most, with ``at_most``)."""

    async def reached() -> bool:
        active = await _active(http)
        return (active <= target) if at_most else (active >= target)

    return await harness.wait_for(reached, seconds=seconds, every=0.2)


def _plan(user_ids: list[int], tabs: int) -> list[tuple[int, str]]:
    """(user id, token) for each tab: users in turn with 2, 3, 4 tabs."""
    plan: list[tuple[int, str]] = []
    for n, user_id in enumerate(user_ids):
        token = issue_token(user_id, secret=JWT_SECRET, ttl_seconds=6 * 3600)
        plan += [(user_id, token)] * TABS_PER_USER[n % len(TABS_PER_USER)]
        if len(plan) >= tabs:
            return plan[:tabs]
    raise ValueError("not enough users")


# A feed item and its outbox row in one statement, as ingest commits them (storage/ingest.py).
_CREATE_ITEMS = """
WITH items AS (
    INSERT INTO feed_items (user_id, payload)
    SELECT owner, payload::jsonb FROM unnest($1::bigint[], $2::text[]) AS input (owner, payload)
    RETURNING id, user_id
), outboxed AS (
    INSERT INTO feed_outbox (feed_item_id) SELECT id FROM items
)
SELECT id, user_id FROM items
"""


class Producer:
    """Creates feed items (item + outbox row, as ingest commits them) at a steady rate."""

    def __init__(self, pool: asyncpg.Pool, users: list[int], storm_users: list[int], rate: float) -> None:
        self.pool, self.users, self.storm_users, self.rate = pool, users, storm_users, rate
        #: (feed item id, user id, monotonic creation time)
        self.items: list[tuple[int, int, float]] = []

    async def run(self) -> None:
        async for batch in harness.ticks(self.rate, 0.1):
            if batch:
                owners = [
                    random.choice(self.storm_users if random.random() < 0.8 else self.users)
                    for _ in range(batch)
                ]
                now_ms = int(time.time() * 1000)
                payloads = [json.dumps({"bench": "connections", "published_at_ms": now_ms})] * batch
                rows = await self.pool.fetch(_CREATE_ITEMS, owners, payloads)
                created = time.monotonic()
                self.items += [(row["id"], row["user_id"], created) for row in rows]

    def upto(self, at: float) -> list[list[int]]:
        return [[item_id, user] for item_id, user, created in self.items if created <= at]


async def _level(  # noqa: PLR0915 - one scenario, top to bottom
    args: argparse.Namespace,
    requested: int,
    *,
    services: harness.Services,
    user_ids: list[int],
    children: Children,
) -> Level:
    notes: list[str] = []
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    n, limited_by = requested, "-"
    if hard != resource.RLIM_INFINITY and n > hard - FD_RESERVE:
        n, limited_by = hard - FD_RESERVE, f"RLIMIT_NOFILE hard limit {hard}"
        notes.append(f"lowered from {requested} to {n}: the app may open at most {hard} files")
    plan = _plan(user_ids, n)
    half = n // 2
    env = {
        "CHAINFEED_WS_MAX_TOTAL": str(2 * n + 100),  # dropped and returning tabs overlap in a storm
        "CHAINFEED_WS_MAX_PER_USER": "16",  # likewise: 4 tabs, plus their not yet closed old selves
        "CHAINFEED_WS_PING_INTERVAL": str(args.ping_interval),
        "CHAINFEED_WS_PONG_TIMEOUT": str(args.ping_interval + 30),
    }
    app = harness.App(
        services,
        jwt_secret=JWT_SECRET,
        signing_key="connections-key",
        name=f"connections-{requested}",
        env=env,
    )
    pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
    producer_task: asyncio.Task[None] | None = None
    count = len(children.processes)
    try:
        await app.ready()
        async with httpx.AsyncClient(base_url=app.base_url, timeout=30) as http:
            await children.ask({"cmd": "init", "url": app.ws_url})
            # One connection through every code path first, so imports and first-use caches do not
            # count as per-connection memory.
            await children.ask(
                [{"cmd": "connect", "tabs": [[n + 1, plan[0][0], plan[0][1], True]], "timeout": 30}]
                + [{"cmd": "connect", "tabs": [], "timeout": 1}] * (count - 1)
            )
            await children.ask({"cmd": "close"})
            await asyncio.sleep(2)
            rss_before = harness.rss_mib(app.pid)

            meter = CpuMeter(app.pid, children.pids, [services.redis_pid, services.postgres_pid])

            async def batch(tabs: range, deflate: bool) -> tuple[float, dict[str, float], int, list[float]]:
                """Open ``tabs``: (seconds until the server has them all, CPU used, failures, handshakes)."""
                shares: list[list[list[Any]]] = [[] for _ in range(count)]
                for t in tabs:
                    shares[t % count].append([t, plan[t][0], plan[t][1], deflate])
                cpu, started = meter.read(), time.monotonic()
                replies = await children.ask(
                    [{"cmd": "connect", "tabs": share, "timeout": args.max_seconds} for share in shares]
                )
                if not await _wait_active(http, tabs.stop, seconds=60):
                    notes.append(f"server shows {await _active(http)} of {tabs.stop} connections")
                seconds, used = time.monotonic() - started, meter.since(cpu)
                await asyncio.sleep(2)  # let the server settle before its RSS is read
                handshakes = [h for r in replies for h in r["handshakes"]]
                return seconds, used, sum(r["failures"] for r in replies), handshakes

            print(f"[{n}] connecting {half} without deflate, {n - half} with", file=sys.stderr)
            overflows = _listen_overflows()
            seconds_plain, cpu_plain, failures_plain, handshakes = await batch(range(half), deflate=False)
            rss_plain = harness.rss_mib(app.pid)
            seconds_deflate, cpu_deflate, failures_deflate, more = await batch(range(half, n), deflate=True)
            rss_deflate = harness.rss_mib(app.pid)
            handshakes += more
            connect_overflows = _listen_overflows() - overflows
            connect_seconds = seconds_plain + seconds_deflate
            connect_cpu = {k: (cpu_plain[k] + cpu_deflate[k]) / connect_seconds * 100 for k in cpu_plain}
            connect_app_seconds = cpu_plain["app"] + cpu_deflate["app"]
            active = await _active(http)
            print(f"[{n}] {active} open after {connect_seconds:.1f}s; idle {args.idle:.0f}s", file=sys.stderr)

            cpu, started = meter.read(), time.monotonic()
            await asyncio.sleep(args.idle)
            idle_seconds = time.monotonic() - started
            idle_cpu = {k: v / idle_seconds * 100 for k, v in meter.since(cpu).items()}
            rss_after = harness.rss_mib(app.pid)

            storm = min(args.storm, n)
            base_id = await pool.fetchval("SELECT coalesce(max(id), 0) FROM feed_items")
            storm_users = sorted({plan[t][0] for t in range(storm)})
            producer = Producer(pool, sorted({u for u, _ in plan}), storm_users, args.rate)
            producer_task = asyncio.create_task(producer.run())
            print(f"[{n}] items at {args.rate}/s; storm of {storm} in {args.pre_storm:.0f}s", file=sys.stderr)
            await asyncio.sleep(args.pre_storm)
            cpu, overflows, dropped_at = meter.read(), _listen_overflows(), time.monotonic()
            replies = await children.ask(
                {"cmd": "drop", "below": storm, "since_floor": base_id, "timeout": args.max_seconds}
            )
            reconnected_at = time.monotonic()
            storm_used = meter.since(cpu)
            storm_cpu = {k: v / (reconnected_at - dropped_at) * 100 for k, v in storm_used.items()}
            storm_overflows = _listen_overflows() - overflows
            storm_failures = sum(r["failures"] for r in replies)
            kinds = collections.Counter[str]()
            for reply in replies:
                kinds.update(reply["failure_kinds"])
            if kinds:
                notes.append(
                    "failed handshakes (whole level so far): "
                    + ", ".join(f"{k} x{v}" for k, v in kinds.items())
                )
            storm_handshakes = [h for r in replies for h in r["handshakes"]]
            reopened = sum(r["reopened"] for r in replies)
            if reopened < storm:
                notes.append(f"storm: only {reopened} of {storm} reconnected in {args.max_seconds:.0f}s")
            if not await _wait_active(http, n, seconds=30):
                notes.append(f"after the storm the server shows {await _active(http)} of {n}")
            before_back = producer.upto(reconnected_at)
            caught_up = float("nan")
            deadline = time.monotonic() + args.max_seconds
            while time.monotonic() < deadline:
                replies = await children.ask({"cmd": "missing", "items": before_back})
                if sum(r["missing"] for r in replies) == 0:
                    caught_up = time.monotonic() - dropped_at
                    break
                await asyncio.sleep(0.25)
            print(f"[{n}] storm: back in {reconnected_at - dropped_at:.1f}s", file=sys.stderr)
            await asyncio.sleep(max(0.0, args.post_storm - (time.monotonic() - reconnected_at)))
            producer_task.cancel()
            await asyncio.gather(producer_task, return_exceptions=True)
            producer_task = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                replies = await children.ask({"cmd": "missing", "items": producer.upto(time.monotonic())})
                backlog = await pool.fetchval("SELECT count(*) FROM feed_outbox")
                if backlog == 0 and sum(r["missing"] for r in replies) == 0:
                    break
                await asyncio.sleep(0.5)
            # Every client leaves at once; the app is stopped only once it has let them all go.
            closed_at = time.monotonic()
            await children.ask({"cmd": "close"})
            left = await _wait_active(http, 0, seconds=120, at_most=True)
            disconnect_seconds = time.monotonic() - closed_at
            if not left:
                notes.append(f"{await _active(http)} connections still registered 120 s after all left")
    finally:
        if producer_task is not None:
            producer_task.cancel()
            await asyncio.gather(producer_task, return_exceptions=True)
        await pool.close()
        app.stop()
    notes += _log_errors(app.log)
    app.log.unlink(missing_ok=True)
    return Level(
        requested=requested,
        connections=n,
        limited_by=limited_by,
        users=len({u for u, _ in plan}),
        ping_interval_s=args.ping_interval,
        rss_before_mib=round(rss_before, 1),
        rss_after_mib=round(rss_after, 1),
        rss_per_connection_kib=round((rss_deflate - rss_before) * 1024 / n, 1),
        rss_per_connection_plain_kib=round((rss_plain - rss_before) * 1024 / half, 1),
        rss_per_connection_deflate_kib=round((rss_deflate - rss_plain) * 1024 / (n - half), 1),
        connect_seconds=round(connect_seconds, 1),
        connect_per_second=round(n / connect_seconds),
        handshake_p50_ms=_percentile(handshakes, 50),
        handshake_p99_ms=_percentile(handshakes, 99),
        connect_server_cpu_percent=round(connect_cpu["app"]),
        connect_clients_cpu_percent=round(connect_cpu["clients"]),
        connect_services_cpu_percent=round(connect_cpu["services"]),
        connect_other_cpu_percent=round(connect_cpu["other"]),
        connect_server_cpu_ms_per_connection=round(connect_app_seconds * 1000 / n, 2),
        connect_failures=failures_plain + failures_deflate,
        connect_listen_overflows=connect_overflows,
        idle_seconds=round(idle_seconds, 1),
        idle_server_cpu_percent=round(idle_cpu["app"], 1),
        idle_clients_cpu_percent=round(idle_cpu["clients"], 1),
        idle_services_cpu_percent=round(idle_cpu["services"], 1),
        idle_other_cpu_percent=round(idle_cpu["other"], 1),
        unexpected_closes=sum(r["unexpected_closes"] for r in replies),
        storm_clients=storm,
        storm_reconnect_seconds=round(reconnected_at - dropped_at, 2),
        storm_handshake_p50_ms=_percentile(storm_handshakes, 50),
        storm_handshake_p99_ms=_percentile(storm_handshakes, 99),
        storm_caught_up_seconds=round(caught_up, 2),
        storm_reconnect_failures=storm_failures,
        storm_listen_overflows=storm_overflows,
        storm_server_cpu_percent=round(storm_cpu["app"]),
        storm_server_cpu_ms_per_reconnect=round(storm_used["app"] * 1000 / max(1, storm), 2),
        storm_services_cpu_percent=round(storm_cpu["services"]),
        storm_other_cpu_percent=round(storm_cpu["other"]),
        items_created=len(producer.items),
        frames_expected=sum(r["expected"] for r in replies),
        frames_received=sum(r["received"] for r in replies),
        missed=sum(r["missing"] for r in replies),
        duplicates=sum(r["duplicates"] for r in replies),
        disconnect_all_seconds=round(disconnect_seconds, 1),
        notes=notes,
    )


async def _run(args: argparse.Namespace, services: harness.Services) -> list[Level]:
    await harness.prepare(services.database_url)
    most = max(args.connections)
    user_ids = await harness.insert_users(
        services.database_url, most // min(TABS_PER_USER) + 1, prefix=f"bench-{secrets.token_hex(3)}-"
    )
    print(f"{len(user_ids)} users inserted", file=sys.stderr)
    children = await Children.start(args.clients, args.concurrency)
    try:
        return [
            await _level(args, n, services=services, user_ids=user_ids, children=children)
            for n in args.connections
        ]
    finally:
        await children.stop()


def _print(levels: list[Level]) -> None:
    rows = [k for k in asdict(levels[0]) if k != "notes"]
    width = max(len(r) for r in rows)
    print(f"{'':>{width}}  " + "  ".join(f"{lv.requested:>14}" for lv in levels))
    for row in rows:
        print(f"{row:>{width}}  " + "  ".join(f"{getattr(lv, row)!s:>14}" for lv in levels))
    for lv in levels:
        for note in lv.notes:
            print(f"[{lv.requested}] {note}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[10000, 20000], help="levels (N)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 connections, short phases")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=250, help="handshakes in flight per client")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="server heartbeat, s (default 20)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--storm", type=int, default=5000, help="tabs that drop and reconnect at once")
    parser.add_argument("--rate", type=float, default=50.0, help="feed items created per second")
    parser.add_argument("--pre-storm", type=float, default=10.0, help="seconds of items before the storm")
    parser.add_argument("--post-storm", type=float, default=10.0, help="seconds of items after it")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="deadline of each phase")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.connections, args.idle, args.storm = [2000], 10.0, 1000
        args.pre_storm = args.post_storm = 5.0
    harness.raise_nofile()
    with harness.services(database_url=None, redis_url=None, prefix="chainfeed_connections") as services:
        levels = asyncio.run(_run(args, services))
    harness.report(levels, as_json=args.json, text=_print)


if __name__ == "__main__":
    main()
