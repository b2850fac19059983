"""The public proxy: Debian's nginx running deploy/nginx.conf in front of a real ChainFeed.

nginx (``/usr/sbin/nginx``, scripts/install-test-deps) runs as this user on a loopback port, on a
copy of the committed file where only the addresses and file paths differ: it listens on
127.0.0.1, proxies to the test app's port instead of ``app:8000``, and logs into the test's
folder. The app trusts X-Forwarded-For from 127.0.0.1, as the compose app trusts the proxy's
address (FORWARDED_ALLOW_IPS), so the proxy alone decides which client address the app sees.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from chainfeed.devtools.embedded import free_port
from chainfeed.domain.ratelimit import DEFAULT_LOGIN_POLICY
from chainfeed.names import LOGIN_IP_PREFIX
from tests.conftest import AppFactory, RunningApp
from tests.delivery_support import eventually
from tests.prometheus_harness import REPO, require_tool, stop_process

NGINX_CONF = REPO / "deploy" / "nginx.conf"
#: What a client may try to pass off as its own address.
SPOOFED = "1.2.3.4"


def render_nginx_config(directory: Path, *, port: int, upstream: str, source: Path | None = None) -> Path:
    """A main nginx.conf in ``directory`` including a loopback copy of ``source`` (default:
    deploy/nginx.conf); returns its path.

    Only ``listen 80``, the upstream ``http://app:8000`` and the /dev/stdout, /dev/stderr logs are
    replaced (each must be found, so a reshaped file fails here rather than testing something
    else); pid, temp folders and logs live in ``directory``.
    """
    source = source or NGINX_CONF
    site = source.read_text(encoding="utf-8")
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("http://app:8000", f"http://{upstream}"),
        ("/dev/stdout", str(directory / "access.log")),
        ("/dev/stderr", str(directory / "error.log")),
    ):
        assert old in site, f"{source} has no {old!r} any more: update render_nginx_config"
        site = site.replace(old, new)
    (directory / "site.conf").write_text(site, encoding="utf-8")
    temp = " ".join(
        f"{kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Run as root (a container), nginx's workers would switch to `nobody`: keep this user instead.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    main = directory / "nginx.conf"
    main.write_text(
        f"{user}pid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n{temp}\ninclude {directory / 'site.conf'};\n}}\n",
        encoding="utf-8",
    )
    return main


@contextlib.contextmanager
def nginx_server(config: Path, *, port: int, ready_timeout: float = 15.0) -> Iterator[str]:
    """Run nginx in the foreground on ``config``; yields its base URL once /proxy-healthz answers."""
    binary = require_tool("nginx")
    prefix = config.parent
    error_log = prefix / "error.log"
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(config), "-e", str(error_log), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                log = error_log.read_text() if error_log.exists() else ""
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/proxy-healthz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx not ready after {ready_timeout} s:\n{error_log.read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        stop_process(process)


@pytest.fixture
async def app(app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch) -> RunningApp:
    """The app under uvicorn trusting X-Forwarded-For from 127.0.0.1 only (what compose does for
    the proxy's address), whatever this shell's FORWARDED_ALLOW_IPS says."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")
    return await app_factory()


@pytest.fixture
async def proxy(app: RunningApp, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of nginx (deploy/nginx.conf) in front of ``app`` (which runs on this event loop)."""
    port = free_port()
    config = render_nginx_config(tmp_path, port=port, upstream=f"127.0.0.1:{app.port}")
    with nginx_server(config, port=port) as base:  # nginx answers /proxy-healthz itself: no app call
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            yield client


async def _failed_login(client: httpx.AsyncClient, username: str, forwarded_for: str) -> httpx.Response:
    """A login refused before any password hashing (the password is too short), from ``forwarded_for``."""
    return await client.post(
        "/api/auth/login",
        json={"username": username, "password": "x"},
        headers={"X-Forwarded-For": forwarded_for},
    )


async def _counted_ips(redis: Redis) -> set[str]:
    """The client addresses the login limiter has counted failures for."""
    return {key.removeprefix(LOGIN_IP_PREFIX) async for key in redis.scan_iter(f"{LOGIN_IP_PREFIX}*")}


async def test_the_app_believes_forwarded_for_from_the_proxys_address(app: RunningApp, redis: Redis) -> None:
    """Without nginx in between, a header from 127.0.0.1 is believed: what makes the next tests
    meaningful (the proxy must overwrite it, or any client picks its address)."""
    response = await app.http.post(
        "/api/auth/login",
        json={"username": "someone", "password": "x"},
        headers={"X-Forwarded-For": "5.6.7.8"},
    )
    assert response.status_code == 401
    assert await _counted_ips(redis) == {"5.6.7.8"}


async def test_a_client_cannot_choose_its_address_through_the_proxy(
    proxy: httpx.AsyncClient, redis: Redis
) -> None:
    """A spoofed X-Forwarded-For is replaced by the address nginx saw: the per-IP login limit counts
    the real client, and rotating the header does not buy a fresh budget."""
    assert (await _failed_login(proxy, "victim-0", SPOOFED)).status_code == 401
    assert await _counted_ips(redis) == {"127.0.0.1"}

    limit = DEFAULT_LOGIN_POLICY.per_ip.attempts
    for attempt in range(1, limit):  # one failure is in already
        # A fresh account and a fresh claimed address each time: only the per-IP limit can bite.
        response = await _failed_login(proxy, f"victim-{attempt}", f"10.9.{attempt // 250}.{attempt % 250}")
        assert response.status_code == 401, (attempt, response.text)
    refused = await _failed_login(proxy, "victim-last", "192.0.2.77")
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert await _counted_ips(redis) == {"127.0.0.1"}


@pytest.mark.parametrize(
    "path",
    ["/metrics", "/metrics/", "/metrics?format=text", "//metrics", "/%6Detrics", "/readyz", "/readyz/"],
)
async def test_internal_endpoints_are_not_served_publicly(proxy: httpx.AsyncClient, path: str) -> None:
    """/metrics and /readyz (and spellings that reach them) answer 404 through the proxy."""
    # Sent as written: httpx would read "//metrics" as a host name, and normalise nothing else.
    response = await proxy.get(proxy.base_url.copy_with(raw_path=path.encode()))
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert "process_cpu_seconds_total" not in response.text
    assert "postgres" not in response.text


async def test_internal_endpoints_still_answer_on_the_internal_network(app: RunningApp) -> None:
    """Prometheus and operators reach them directly (here: the app's own port, as in compose)."""
    assert "process_cpu_seconds_total" in (await app.http.get("/metrics")).text

    async def ready() -> bool:
        return (await app.http.get("/readyz")).status_code == 200

    await eventually(ready, within=10, interval=0.1)


async def test_public_endpoints_pass_through(proxy: httpx.AsyncClient) -> None:
    """/healthz, the /feed page and the proxy's own liveness answer through nginx."""
    assert (await proxy.get("/proxy-healthz")).text == "ok\n"
    health = await proxy.get("/healthz")
    assert health.status_code == 200, health.text
    feed = await proxy.get("/feed")
    assert feed.status_code == 200, feed.text[:200]
    assert feed.headers["content-type"].startswith("text/html")
