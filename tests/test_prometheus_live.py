"""A real Prometheus scrapes a running ChainFeed: the stream alerts fire, every panel has data.

Prometheus (Debian's package, ``scripts/install-test-deps``) runs on a copy of
``monitoring/prometheus/prometheus.yml`` whose ``chainfeed`` job scrapes the app on a loopback
port, every second, with the committed rules at ``for: 2s``; thresholds are the committed ones.
The backlog is real: after some traffic the app's consumer is stopped, more than 10000 entries
are added to the stream, and another consumer of the group reads 1500 of them without
acknowledging them (what a stuck instance does). Skipped when ``prometheus`` is missing, unless
CI is set (then it fails).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from chainfeed.devtools.embedded import free_port
from tests.alchemy_fake import TOKEN, WEBHOOK_ID, running_fake
from tests.conftest import AppFactory, app_runtime
from tests.delivery_support import client, closed_with, ready, recv_frames
from tests.ingest_support import activity, address, post_webhook, watch, webhook
from tests.prometheus_harness import (
    DASHBOARDS,
    dashboard_queries,
    grafana_to_promql,
    prometheus_server,
    render_local_config,
    require_tool,
)

#: More than the RedisStreamBacklog threshold (10000), and what a stuck consumer holds (> 1000).
BACKLOG = 10_500
STUCK = 1_500
DEADLINE = 40.0


async def _traffic(app: Any, fake: Any) -> None:
    """A login, a watched address (synced to the fake Alchemy), a WS push, an auth failure."""
    user = await app.register(password="live-check-password")
    login = await app.http.post(
        "/api/auth/login", json={"username": user["user"]["username"], "password": "live-check-password"}
    )
    assert login.status_code == 200
    token = login.json()["access_token"]
    watched = address(0x11FE)
    await watch(app, token, watched)
    await fake.wait_for(lambda: watched in fake.added())
    async with client(app, token) as ws:
        await ready(ws)
        response = await post_webhook(app, webhook(activity("external", frm=address(1), to=watched)))
        assert response.status_code == 200, response.text
        await recv_frames(ws, 1)
    async with client(app, "not-a-token") as refused:
        assert (await closed_with(refused))[0] == 4401


async def _stop_consumers_and_pile_up(app: Any, redis: Redis) -> None:
    """Stop this app's consumer, add BACKLOG entries, and let a stuck consumer take STUCK of them."""
    runtime = app_runtime(app)
    for task in runtime.workers:
        if task.get_name() in ("stream-consumer", "stream-claimer"):
            task.cancel()
    payload = json.dumps({"test": "backlog"})
    for start in range(0, BACKLOG, 1000):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(1000, BACKLOG - start)):
            pipe.xadd("feed:stream", {"user_id": "1", "type": "test", "payload": payload})
        await pipe.execute()
    await redis.xreadgroup("feed:consumers", "stuck-instance", {"feed:stream": ">"}, count=STUCK)


async def _alert_states(prometheus: httpx.AsyncClient) -> dict[str, str]:
    alerts = (await prometheus.get("/api/v1/alerts")).json()["data"]["alerts"]
    return {alert["labels"]["alertname"]: alert["state"] for alert in alerts}


async def _empty_queries(prometheus: httpx.AsyncClient, queries: list[tuple[str, str]]) -> list[str]:
    """The panel queries that fail or return no series yet."""
    empty = []
    for title, expr in queries:
        answer = (await prometheus.get("/api/v1/query", params={"query": grafana_to_promql(expr)})).json()
        if answer["status"] != "success" or not answer["data"]["result"]:
            empty.append(f"{title}: {expr} -> {answer.get('error') or 'no data'}")
    return empty


async def test_stream_alerts_fire_and_every_panel_has_data(
    app_factory: AppFactory, redis: Redis, tmp_path: Path
) -> None:
    """RedisStreamBacklog and RedisStreamPendingHigh fire; each Grafana query returns series."""
    require_tool("prometheus")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    async with running_fake() as fake:
        app = await app_factory(
            alchemy_api_url=fake.url, alchemy_auth_token=TOKEN, alchemy_webhook_id=WEBHOOK_ID
        )
        config = render_local_config(tmp_path, target=f"127.0.0.1:{app.port}", rule_for="2s")
        server = prometheus_server(config, port=free_port())
        # Its start-up waits with blocking calls: off the loop, which serves the app's /metrics.
        base = await asyncio.to_thread(server.__enter__)
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as prometheus:
                await _traffic(app, fake)
                await _stop_consumers_and_pile_up(app, redis)
                # /readyz now names the stopped consumer (a 503: the HTTP error panel's data).
                while (await app.http.get("/readyz")).status_code != 503:
                    assert loop.time() < deadline, "readyz never noticed the stopped consumer"
                    await asyncio.sleep(0.5)
                wanted = {"RedisStreamBacklog", "RedisStreamPendingHigh"}
                while {n for n, s in (await _alert_states(prometheus)).items() if s == "firing"} < wanted:
                    assert loop.time() < deadline, await _alert_states(prometheus)
                    await asyncio.sleep(0.5)
                queries = [q for path in sorted(DASHBOARDS.glob("*.json")) for q in _panels(path)]
                while empty := await _empty_queries(prometheus, queries):
                    assert loop.time() < deadline, "\n".join(empty)
                    await asyncio.sleep(0.5)
        finally:
            await asyncio.to_thread(server.__exit__, None, None, None)


def _panels(path: Path) -> list[tuple[str, str]]:
    return dashboard_queries(json.loads(path.read_text(encoding="utf-8")))
