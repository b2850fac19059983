"""What the benchmarks in bench/ share: their servers, the app under test, its /metrics, CPU and memory.

Each script measures something else, but all start and read the same things; done once here, a fix
(a readiness wait that notices a crashed app, a CPU total that counts every worker) reaches every
benchmark. Not a package: ``python bench/<name>.py`` puts bench/ on sys.path, so the scripts
``import harness`` as a sibling module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil  # type: ignore[import-untyped]  # no stubs in the dev group

from chainfeed.devtools.embedded import free_port
from chainfeed.devtools.services import scratch_services
from chainfeed.devtools.simulate import ActivityFactory
from chainfeed.domain.signature import sign
from chainfeed.storage import migrate

#: A condition :func:`wait_for` polls: a plain or an async callable.
Check = Callable[[], bool | Awaitable[bool]]


@dataclass(frozen=True)
class Services:
    """The servers of one run. A pid is 0 when the server is not on this machine (its CPU unknown)."""

    database_url: str
    redis_url: str
    postgres_pid: int
    redis_pid: int


@contextlib.contextmanager
def services(*, database_url: str | None, redis_url: str | None, prefix: str) -> Iterator[Services]:
    """External servers when both URLs are given (a scratch database on them), else embedded ones.

    Either way cleaned up after (scratch_services). The pids are those of the listening sockets,
    found alike for embedded servers and for external ones on this machine.
    """
    if bool(database_url) != bool(redis_url):
        raise SystemExit("give both --database-url and --redis-url, or neither")
    with scratch_services(database_url=database_url, redis_url=redis_url, prefix=prefix) as (db, redis):
        yield Services(db, redis, _listener_pid(db), _listener_pid(redis))


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--redis-url``: external servers for :func:`services`, not embedded ones."""
    parser.add_argument(
        "--database-url", help="external PostgreSQL (a scratch database on it; default: embedded)"
    )
    parser.add_argument("--redis-url", help="external Redis (with --database-url; default: embedded)")


def _listener_pid(url: str) -> int:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return 0
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == parts.port and conn.pid:
            return int(conn.pid)
    return 0


async def prepare(database_url: str) -> None:
    """Apply the schema; its log lines go to stderr, so that ``--json`` output stays parseable."""
    with contextlib.redirect_stdout(sys.stderr):
        await migrate(database_url)


async def insert_users(database_url: str, count: int, *, prefix: str = "bench") -> list[int]:
    """``count`` users inserted with SQL; their ids, ascending.

    The hash ``!`` is no scrypt hash: they cannot log in, they hold tokens minted with the app's JWT
    secret (registering hundreds through the API would cost ~50 ms of scrypt each).
    """
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (username, password_hash)"
            " SELECT $2 || n, '!' FROM generate_series(1, $1) AS n RETURNING id",
            count,
            prefix,
        )
    finally:
        await conn.close()
    return sorted(row["id"] for row in rows)


async def insert_watches(database_url: str, pairs: Sequence[tuple[int, str]]) -> None:
    """``(user id, address)`` rows of ``watched_addresses``, with COPY (thousands in milliseconds)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table("watched_addresses", records=pairs, columns=["user_id", "address"])
    finally:
        await conn.close()


def signed_webhooks(
    watched: Sequence[str], count: int, *, activities: int, seed: int, key: str
) -> list[tuple[dict[str, Any], bytes, str]]:
    """``(webhook, body, signature)`` as ``chainfeed simulate`` builds them, made before the clock starts."""
    factory = ActivityFactory(random.Random(seed))
    out = []
    for _ in range(count):
        webhook = factory.webhook(list(watched), activities=activities)
        body = json.dumps(webhook, separators=(",", ":")).encode()
        out.append((webhook, body, sign(body, key)))
    return out


def relay_entry(user_id: int, item_id: int, payload: str, created_at: str) -> dict[str, str]:
    """The fields of a stream entry as the outbox relay XADDs it: with ``feed_item_id`` set, the
    consumer needs no PostgreSQL round trip, so a bench can feed the delivery side directly."""
    return {"user_id": str(user_id), "type": "new_transaction", "payload": payload,
            "feed_item_id": str(item_id), "created_at": created_at}  # fmt: skip


class App:
    """``chainfeed serve`` in a process of its own, as in production: its CPU and memory are measured
    apart from the load generator's, and ``workers`` > 1 forks real uvicorn workers."""

    def __init__(
        self, services: Services, *, jwt_secret: str, signing_key: str, name: str,
        env: Mapping[str, str] | None = None, workers: int = 1,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.log = Path(tempfile.gettempdir()) / f"chainfeed-{name}-{self.port}.log"
        settings = {
            "CHAINFEED_DATABASE_URL": services.database_url,
            "CHAINFEED_REDIS_URL": services.redis_url,
            "CHAINFEED_JWT_SECRET": jwt_secret,
            "CHAINFEED_ALCHEMY_SIGNING_KEYS": signing_key,
            "CHAINFEED_LOG_FORMAT": "json",
            **(env or {}),
        }
        command = ["chainfeed", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers"]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *command, str(workers)],
                env={**os.environ, **settings},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid

    async def ready(self, seconds: float = 60.0) -> None:
        """Wait for ``/readyz`` (PostgreSQL and Redis answer it); give up at once if the app exited."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as http:

            async def up() -> bool:
                if self.process.poll() is not None:
                    raise SystemExit(f"the app exited during start-up; see {self.log}")
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get("/readyz")).status_code == 200
                return False

            if not await wait_for(up, seconds=seconds):
                raise SystemExit(f"the app did not become ready within {seconds:.0f} s; see {self.log}")

    def stop(self, seconds: float = 20.0) -> None:
        """SIGTERM (a graceful shutdown, as in production), SIGKILL if that takes too long."""
        self.process.terminate()
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def metric(text: str, name: str) -> float:
    """The sum of every series of ``name`` in Prometheus text (a gauge or counter over its labels)."""
    return sum(value for _, value in _samples(text, name))


def _samples(text: str, name: str) -> Iterator[tuple[str, float]]:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            series, value = line.rsplit(" ", 1)
            yield series[len(name) :], float(value)


def _label(labels: str, key: str) -> str:
    marker = f'{key}="'
    return labels.split(marker, 1)[1].split('"', 1)[0] if marker in labels else ""


@dataclass
class Histogram:
    """One histogram as scraped: cumulative counts by upper bound, the sum and the count."""

    buckets: dict[float, float] = field(default_factory=dict)
    total: float = 0.0
    count: float = 0.0

    def since(self, before: Histogram | None) -> Histogram:
        """What was observed between an earlier scrape and this one."""
        if before is None:
            return self
        buckets = {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()}
        return Histogram(buckets, self.total - before.total, self.count - before.count)

    def bound(self, q: float) -> float:
        """The smallest bucket bound holding a share ``q`` of the observations (inf when there are none)."""
        ordered = sorted(self.buckets.items())
        total = ordered[-1][1] if ordered else 0.0
        return next((le for le, n in ordered if total and n >= q * total), float("inf"))


def histograms(text: str, name: str, *, by: str | None = None) -> dict[str, Histogram]:
    """Histogram ``name`` by the value of its label ``by`` (every series summed under ``""`` without)."""
    found: dict[str, Histogram] = {}
    for suffix in ("_bucket", "_sum", "_count"):
        for labels, value in _samples(text, name + suffix):
            histogram = found.setdefault(_label(labels, by) if by else "", Histogram())
            if suffix == "_bucket":
                le = float(_label(labels, "le").replace("+Inf", "inf"))
                histogram.buckets[le] = histogram.buckets.get(le, 0.0) + value
            elif suffix == "_sum":
                histogram.total += value
            else:
                histogram.count += value
    return found


def means_ms(after: Mapping[str, Histogram], before: Mapping[str, Histogram] = {}) -> dict[str, float]:
    """Mean observation (ms) of each histogram that observed anything between the two scrapes."""
    windows = {key: histogram.since(before.get(key)) for key, histogram in after.items()}
    return {key: round(1000 * w.total / w.count, 2) for key, w in windows.items() if w.count > 0}


def tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants alive now (uvicorn workers, PostgreSQL backends)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: Iterable[psutil.Process], *, system_only: bool = False) -> float:
    """User + system (or system only) CPU seconds of those processes that still run."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += float(times.system if system_only else times.user + times.system)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants alive now; 0 when ``pid`` is 0 or gone."""
    with contextlib.suppress(psutil.Error, ValueError):
        return cpu_seconds(tree(pid)) if pid else 0.0
    return 0.0


def own_cpu_seconds() -> float:
    """CPU seconds of this process alone (not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (every uvicorn worker), MiB."""
    return sum(float(p.memory_info().rss) for p in tree(pid) if p.is_running()) / 2**20


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy: on a shared machine, what the figures compete with.

    Idle, I/O wait and steal are no work done here; guest time is already counted in user time.
    """
    times = psutil.cpu_times()._asdict()
    idle = ("idle", "iowait", "steal", "guest", "guest_nice")
    return float(sum(value for kind, value in times.items() if kind not in idle))


def percentile_ms(ordered: Sequence[float], q: float, *, digits: int = 1, empty: float = 0.0) -> float:
    """The ``q`` quantile (0..1, nearest rank; 1 is the maximum) of ascending seconds, in ms."""
    if not ordered:
        return empty
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, digits)


def joined(items: Mapping[Any, Any] | Iterable[tuple[Any, Any]], template: str = "{} {}") -> str:
    """Pairs on one line, as the figures print them: ``app 70% · redis 5%``."""
    pairs = items.items() if isinstance(items, Mapping) else items
    return " · ".join(template.format(key, value) for key, value in pairs)


def report(figures: Any, *, as_json: bool, text: Callable[[Any], None]) -> None:
    """``--json``: the figures (a dataclass, a list of them, or plain data) on stdout; else ``text``."""
    if not as_json:
        text(figures)
        return
    items = figures if isinstance(figures, list) else [figures]
    plain = [dataclasses.asdict(f) if dataclasses.is_dataclass(f) else f for f in items]  # type: ignore[arg-type]
    print(json.dumps(plain if isinstance(figures, list) else plain[0], indent=2))


def raise_nofile(at_least: int | None = None) -> None:
    """Raise the soft limit of open files (one per socket) to ``at_least``, or to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if at_least is None else min(hard, max(soft, at_least))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def env_options(items: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` options (app settings for one run) as a mapping."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit("app settings take NAME=VALUE")
    return {pair[0]: pair[1] for pair in pairs}


async def wait_for(check: Check, *, seconds: float, every: float = 0.1) -> bool:
    """Poll ``check`` until it holds (True) or ``seconds`` have passed (False): no wait is unbounded."""
    deadline = time.monotonic() + seconds
    while True:
        outcome = check()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)


async def ticks(rate: float, tick: float, *, seconds: float = float("inf")) -> AsyncIterator[int]:
    """How many to send in each ``tick`` s to offer ``rate`` per s (fractions carried) for ``seconds``.

    Paced by the clock, not by sleeping a tick after each batch, so slow batches do not lower the
    rate; when 0.5 s behind (max mode), the schedule restarts instead of catching up in one burst.
    """
    carry, started = 0.0, time.monotonic()
    next_at = started
    while time.monotonic() - started < seconds:
        carry += rate * tick
        count = int(carry)
        carry -= count
        yield count
        next_at += tick
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:
            next_at = time.monotonic()
