"""Token refresh (SPEC "Token refresh"): a fresh token of the same user keeps an open connection
past its first token's expiry; anything else closes it with 4401 and counts as an auth error;
``POST /api/auth/refresh`` answers like login. Tokens never reach the log."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from chainfeed.domain.tokens import issue_token
from tests.conftest import JWT_SECRET, RunningApp
from tests.delivery_support import client, closed_with, ready, recv_json
from tests.ingest_support import metric


async def test_a_fresh_token_keeps_the_connection_open_past_the_first_ones_expiry(app: RunningApp) -> None:
    user = (await app.register())["user"]
    async with client(app, issue_token(user["id"], secret=JWT_SECRET, ttl_seconds=2)) as ws:
        await ready(ws)
        fresh = issue_token(user["id"], secret=JWT_SECRET, ttl_seconds=60)
        await ws.send(json.dumps({"type": "auth", "token": fresh}))
        answer = await recv_json(ws)
        assert answer["type"] == "auth_ok"
        assert abs(answer["expires_at"] - (time.time() + 60)) < 5
        await asyncio.sleep(3)  # past the first token's expiry
        await ready(ws)  # still served


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("another user's", "invalid token"),
        ("expired", "token expired"),
        ("forged", "invalid token"),
        ("not a string", "missing token"),
    ],
)
async def test_a_bad_refresh_closes_the_connection_with_4401(app: RunningApp, kind: str, reason: str) -> None:
    me, other = (await app.register())["user"], (await app.register())["user"]
    tokens = {
        "another user's": issue_token(other["id"], secret=JWT_SECRET, ttl_seconds=60),
        "expired": issue_token(me["id"], secret=JWT_SECRET, ttl_seconds=-10),
        "forged": issue_token(me["id"], secret="not-" + JWT_SECRET, ttl_seconds=60),
        "not a string": 12345,
    }
    before = metric("websocket_errors_total", type="auth")
    async with client(app, issue_token(me["id"], secret=JWT_SECRET, ttl_seconds=60)) as ws:
        await ready(ws)
        await ws.send(json.dumps({"type": "auth", "token": tokens[kind]}))
        assert await closed_with(ws) == (4401, reason)
    assert metric("websocket_errors_total", type="auth") == before + 1


async def test_post_auth_refresh_answers_like_login_with_a_new_token(app: RunningApp) -> None:
    session = await app.register()
    await asyncio.sleep(1.1)  # a second later: a token with a later iat/exp
    response = await app.http.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {session['access_token']}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.keys() == session.keys()
    assert body["user"] == session["user"]
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    old = jwt.decode(session["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["exp"] > old["exp"]) == (old["sub"], True)
    assert (await app.http.post("/api/auth/refresh")).status_code == 401
    bad = await app.http.post("/api/auth/refresh", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
