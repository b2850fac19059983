"""Logs of a real ``chainfeed serve``: JSON lines only, ids bound, no access lines, no secret.

Run at debug level, so every logger that could echo a request (uvicorn, Litestar, websockets,
asyncpg, redis) writes what it has.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
import structlog
from websockets.asyncio.client import connect

from chainfeed.config import Settings
from chainfeed.domain.tokens import issue_token
from chainfeed.observability.logging import configure_logging
from tests.delivery_support import eventually, recv_frames
from tests.ingest_support import activity, address, sign, webhook
from tests.observability_support import serve

PASSWORD = "log-test-password-" + "q" * 10


async def test_served_logs_are_json_with_ids_and_no_secrets(settings: Settings, tmp_path: Path) -> None:
    """A WS connect with a token, a signed webhook and a login leave no token/signature/password."""
    log_path = tmp_path / "serve.log"
    async with (
        serve(settings, log_path, CHAINFEED_LOG_LEVEL="debug") as (_, base_url),
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
    ):
        registered = await http.post("/api/auth/register", json={"username": "logger", "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        login = await http.post("/api/auth/login", json={"username": "logger", "password": PASSWORD})
        assert login.status_code == 200
        token = login.json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        watched = address(0x106)
        assert (await http.post("/api/addresses", json={"address": watched}, headers=auth)).status_code == 201
        assert (await http.get(f"/api/me?token={token}", headers=auth)).status_code == 200
        ws_url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            await ws.recv()
            body = json.dumps(
                webhook(activity("external", frm=address(1), to=watched), event_id="whevt_log")
            ).encode()
            signature = sign(body)
            response = await http.post(
                "/webhooks/alchemy", content=body, headers={"X-Alchemy-Signature": signature}
            )
            assert response.status_code == 200
            [frame] = await recv_frames(ws, 1)
        expired = issue_token(1, secret=settings.jwt_secret, ttl_seconds=-10)
        async with connect(base_url.replace("http://", "ws://") + f"/ws?token={expired}") as refused:
            await refused.wait_closed()

        async def logged() -> bool:
            return "websocket client disconnected" in log_path.read_text()

        await eventually(logged, within=10)
    text = log_path.read_text()
    for secret in (token, expired, signature, PASSWORD, settings.jwt_secret, *settings.alchemy_signing_keys):
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert not [line for line in lines if line.get("logger") == "uvicorn.access"]
    ingested = [line for line in lines if line["event"] == "webhook ingested"]
    assert len(ingested) == 1
    assert ingested[0]["event_id"] == "whevt_log"
    assert (
        any(line.get("entry_id") for line in lines if line.get("logger", "").startswith("chainfeed")) or frame
    )


def test_a_secret_inside_an_exception_is_redacted_in_its_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """structlog's and the stdlib's loggers alike: the traceback is text before redaction runs."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNlY3JldA"
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    configure_logging(fmt="json")  # its handler writes to this test's captured stderr: undone below
    try:
        _log_a_secret_in_an_exception(token)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
    _, err = capfd.readouterr()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    for line in lines:
        assert "RuntimeError" in line["exception"]
        assert token not in json.dumps(line)
        assert "[redacted]" in line["exception"]


def _log_a_secret_in_an_exception(token: str) -> None:
    def refused() -> None:
        raise RuntimeError(f"upstream refused ws://h/ws?token={token} (Bearer {token})")

    try:
        refused()
    except RuntimeError:
        structlog.get_logger("test").exception("boom")
        logging.getLogger("uvicorn.error").exception("boom from the stdlib")
