"""Is a stream consumer alive? Its instance's heartbeat says, on every Redis version: a healthy
consumer of a quiet stream is live (before 7.2, XINFO's idle grows from the last delivery), a
stopped one is marked stopped, and one that stops with nothing pending leaves the group."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from tests.conftest import AppFactory
from tests.ingest_support import eventually, metric

GROUP = "feed:consumers"


async def _stream_info(redis_url: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINFEED_")}
    env["CHAINFEED_REDIS_URL"] = redis_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chainfeed", "stream", "info", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    info: dict[str, object] = json.loads(out)
    return info


async def test_quiet_consumers_stay_live_and_a_stopped_one_leaves(app_factory: AppFactory) -> None:
    # A short claim window: the old rule (XINFO idle < claim_idle_ms) called these two dead.
    first = await app_factory(consumer_name="inst-a", claim_idle_ms=300)
    second = await app_factory(consumer_name="inst-b", claim_idle_ms=300)
    assert first.settings.redis_url is not None

    async def both_counted() -> bool:
        return metric("redis_stream_consumers", group=GROUP) == 2

    await asyncio.sleep(1)  # quiet: nothing delivered to either
    await eventually(both_counted, within=15, what="two live consumers counted on a quiet stream")
    info = await _stream_info(first.settings.redis_url)
    (group,) = info["groups"]  # type: ignore[misc]
    assert {(c["name"], c["live"]) for c in group["consumers"]} == {("inst-a", True), ("inst-b", True)}

    await second.stop()  # nothing pending: it leaves the group
    info = await _stream_info(first.settings.redis_url)
    (group,) = info["groups"]  # type: ignore[misc]
    assert [(c["name"], c["live"]) for c in group["consumers"]] == [("inst-a", True)]
