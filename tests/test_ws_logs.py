"""The token never appears in any log line, even at debug level, on a real ``chainfeed serve``."""

from __future__ import annotations

from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from chainfeed.config import Settings
from chainfeed.domain.tokens import issue_token
from tests.conftest import JWT_SECRET
from tests.delivery_support import closed_with, ready, served_in_subprocess


async def test_the_token_appears_in_no_log_line(settings: Settings, tmp_path: Path) -> None:
    """Everything the process prints is captured: uvicorn's handshake lines, websockets' debug
    lines with the request path, and ours. Valid, expired and forged tokens are all masked."""
    log_path = tmp_path / "server.log"
    async with served_in_subprocess(settings, log_path, CHAINFEED_LOG_LEVEL="debug") as (_, base_url):
        async with httpx.AsyncClient(base_url=base_url) as http:
            body = (
                await http.post("/api/auth/register", json={"username": "lee", "password": "pw-pw-pw-pw"})
            ).json()
            token = body["access_token"]
            assert (
                await http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            ).status_code == 200
        expired = issue_token(body["user"]["id"], secret=JWT_SECRET, ttl_seconds=60, now=1_000_000)
        forged = issue_token(body["user"]["id"], secret="not-the-secret-" + "z" * 40, ttl_seconds=60)
        ws_url = base_url.replace("http://", "ws://") + "/ws"
        async with connect(f"{ws_url}?token={token}&since=0") as ws:
            await ready(ws)
        for refused in (expired, forged):
            async with connect(f"{ws_url}?since=0&token={refused}") as ws:
                assert (await closed_with(ws))[0] == 4401
    output = log_path.read_text()
    assert "websocket client connected" in output  # the capture really holds the session
    assert "token=[redacted]" in output  # and the handshake line, masked
    for secret in (token, expired, forged):
        assert secret not in output
        assert secret.rsplit(".", 1)[1] not in output  # not even the signature alone
