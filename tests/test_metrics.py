"""Every pipeline stage is timed: one webhook that reaches a tab observes each stage once or more."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.conftest import AppFactory
from tests.delivery_support import client, eventually, ready, recv_frames
from tests.ingest_support import activity, address, post_webhook, watch, webhook

STAGES = ("ingest", "db_write", "publish", "consume", "fanout", "push")


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_every_stage_and_the_end_to_end_latency_are_observed(app_factory: AppFactory) -> None:
    """chainfeed_stage_duration_seconds{stage} for all six stages, and the end-to-end histogram."""
    app = await app_factory()
    user = await app.register()
    watched = address(0x3E7)
    await watch(app, user["access_token"], watched)
    before = {stage: _count("chainfeed_stage_duration_seconds_count", stage=stage) for stage in STAGES}
    latency = _count("chainfeed_delivery_latency_seconds_count")
    async with client(app, user["access_token"]) as ws:
        await ready(ws)
        response = await post_webhook(app, webhook(activity("external", frm=address(2), to=watched)))
        assert response.status_code == 200
        await recv_frames(ws, 1)
        await eventually(lambda: _count("chainfeed_delivery_latency_seconds_count") > latency)

    def grown() -> set[str]:
        return {s for s in STAGES if _count("chainfeed_stage_duration_seconds_count", stage=s) > before[s]}

    # The relay observes "publish" after its COMMIT, which may come after the push itself.
    await eventually(lambda: grown() == set(STAGES))
