"""``chainfeed serve --workers 2``: /metrics reports the sum over every worker, whichever answers."""

from __future__ import annotations

from pathlib import Path

import httpx

from chainfeed.config import Settings
from tests.observability_support import sample, serve

REQUESTS = 24


async def test_metrics_sum_over_workers(settings: Settings, tmp_path: Path) -> None:
    """Webhooks spread over two workers (one connection each) are all counted, in every scrape."""
    async with serve(settings, tmp_path / "serve.log", "--workers", "2") as (_, base_url):
        for _ in range(REQUESTS):
            # A fresh connection per request, so the kernel spreads them over both workers.
            async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
                response = await http.post(
                    "/webhooks/alchemy", content=b"{}", headers={"X-Alchemy-Signature": "0"}
                )
                assert response.status_code == 401
        seen: set[float | None] = set()
        pids: set[float | None] = set()
        for _ in range(10):
            async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
                text = (await http.get("/metrics")).text
            seen.add(sample(text, "webhook_requests_total", outcome="bad_signature"))
            seen.add(sample(text, "http_requests_total", path="/webhooks/alchemy"))
            pids.add(sample(text, "websocket_active_connections"))
        assert seen == {float(REQUESTS)}, seen
        assert pids == {0.0}, pids
    log = (tmp_path / "serve.log").read_text()
    assert log.count("Started server process") == 2, log
