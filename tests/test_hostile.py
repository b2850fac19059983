"""Hostile input: forged tokens on REST and WebSocket, WebSocket abuse, webhook abuse, login
brute force. Each is refused with the documented answer, quickly, writes nothing, and leaves
other users and the process (tasks, connections, memory) as they were."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chainfeed.delivery.hub import Hub
from chainfeed.delivery.session import INBOUND_FRAMES_PER_SECOND
from chainfeed.domain.ratelimit import DEFAULT_LOGIN_POLICY
from chainfeed.web import webhooks
from tests.conftest import JWT_SECRET, AppFactory, RunningApp, app_runtime
from tests.delivery_support import client, closed_with, eventually, ready, recv_frames, ws_url, xadd_hand
from tests.ingest_support import activity, address, metric, sign, webhook

# --- tokens ------------------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64(data: dict[str, Any]) -> str:
    return _b64url(json.dumps(data).encode())


@functools.cache
def _rsa_key() -> tuple[Path, bytes]:
    """A freshly generated RSA key (openssl; PyJWT's RSA support would need cryptography)."""
    folder = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    private = folder / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], capture_output=True, check=True)
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout"], capture_output=True, check=True
    ).stdout
    return private, public


def _signed_rs256(claims: dict[str, Any], private: Path) -> str:
    signing_input = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(private)],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return f"{signing_input}.{_b64url(signature)}"


def _forged(kind: str, user_id: int) -> str:  # noqa: PLR0911 - one branch per forgery
    """A token an attacker could make for ``user_id``; built when the test runs."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + 600}
    if kind == "alg none":
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    if kind in ("hs/rs confusion", "rs256"):
        private, public_pem = _rsa_key()
        if kind == "rs256":  # a well-formed RS256 token under a key of the attacker's
            return _signed_rs256(claims, private)
        # The classic confusion: HS256 with the RSA public key's PEM as the HMAC secret. A
        # verifier that took "the key" from a public-key config would accept it.
        signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(mac)}"
    if kind == "wrong key":
        return jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
    if kind == "expired":
        return jwt.encode({**claims, "iat": now - 7200, "exp": now - 3600}, JWT_SECRET, algorithm="HS256")
    if kind == "nbf future":
        return jwt.encode({**claims, "nbf": now + 3600}, JWT_SECRET, algorithm="HS256")
    if kind == "iat future":
        return jwt.encode({**claims, "iat": now + 3600}, JWT_SECRET, algorithm="HS256")
    if kind == "missing sub":
        return jwt.encode({"iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256")
    if kind == "sub not decimal":
        return jwt.encode({**claims, "sub": "1 OR 1=1"}, JWT_SECRET, algorithm="HS256")
    if kind == "huge":
        # Over MAX_TOKEN_LENGTH (refused before parsing) yet a URL under 8 KiB.
        return jwt.encode({**claims, "pad": "x" * 5000}, JWT_SECRET, algorithm="HS256")
    raise AssertionError(kind)


FORGED = [
    "alg none",
    "hs/rs confusion",
    "rs256",
    "wrong key",
    "expired",
    "nbf future",
    "iat future",
    "missing sub",
    "sub not decimal",
    "huge",
]


@pytest.mark.parametrize("kind", FORGED)
async def test_forged_tokens_are_refused_on_rest_and_websocket(app: RunningApp, kind: str) -> None:
    """401 on REST, 4401 on the WebSocket (counted as an auth error), for every forgery."""
    user = (await app.register())["user"]
    token = _forged(kind, user["id"])
    rest = await app.http.get("/api/me", headers=app.auth(token))
    assert rest.status_code == 401, rest.text
    before = metric("websocket_errors_total", type="auth")
    async with connect(ws_url(app, token), open_timeout=5, max_size=None) as ws:
        code, reason = await closed_with(ws)
    assert code == 4401
    assert reason in ("invalid token", "token expired")
    assert metric("websocket_errors_total", type="auth") == before + 1


async def test_a_websocket_url_over_8_kib_is_answered_414_at_once(app: RunningApp) -> None:
    """A 100 KB token in the URL: websockets refuses the request line and the server says so at
    once (uvicorn alone left such a client hanging with its connection open)."""
    token = "x" * 100_000
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(app, token), open_timeout=5):
            pass
    assert refused.value.response.status_code == 414
    assert time.monotonic() - started < 2
    assert (await app.http.get("/healthz")).status_code == 200


async def test_token_of_a_deleted_user_is_refused(app: RunningApp, db: asyncpg.Connection) -> None:
    session = await app.register()
    await db.execute("DELETE FROM users WHERE id = $1", session["user"]["id"])
    assert (await app.http.get("/api/me", headers=app.auth(session["access_token"]))).status_code == 401
    async with client(app, session["access_token"]) as ws:
        assert await closed_with(ws) == (4401, "invalid token")


# --- WebSocket abuse ----------------------------------------------------------------------------


def _hub(app: RunningApp) -> Hub:
    hub = app_runtime(app).hub
    assert hub is not None
    return hub


async def test_a_frame_flood_is_closed_with_1008_and_other_users_are_unaffected(app: RunningApp) -> None:
    """More than INBOUND_FRAMES_PER_SECOND client frames in a second: 1008, counted as protocol."""
    attacker, victim = await app.register(), await app.register()
    before = metric("websocket_errors_total", type="protocol")
    async with client(app, victim["access_token"]) as calm, client(app, attacker["access_token"]) as noisy:
        await ready(calm)
        for _ in range(INBOUND_FRAMES_PER_SECOND * 3):
            try:
                await noisy.send('{"type":"hello"}')
            except Exception:  # the server may close mid-flood
                break
        assert await closed_with(noisy) == (1008, "too many messages")
        await xadd_hand(_redis_of(app), victim["user"]["id"])
        (frame,) = await recv_frames(calm, 1)
        assert frame["type"] == "test"
    assert metric("websocket_errors_total", type="protocol") >= before + 1


def _redis_of(app: RunningApp) -> Any:
    return app_runtime(app).redis


async def test_binary_and_invalid_json_frames_are_ignored(app: RunningApp) -> None:
    session = await app.register()
    async with client(app, session["access_token"]) as ws:
        await ws.send(b"\x00\xff" * 100)
        await ws.send("{not json")
        await ws.send('{"type": "resume", "since": "DROP TABLE"}')
        await ready(ws)  # still served


async def test_connect_disconnect_cycles_leave_no_tasks_connections_or_memory(app: RunningApp) -> None:
    """Hundreds of short-lived connections (some cut without a close frame): the hub, the task
    count and RSS come back to where they were."""
    session = await app.register()
    token = session["access_token"]
    hub = _hub(app)

    async def cycle(i: int) -> None:
        async with connect(ws_url(app, token), open_timeout=10) as ws:
            if i % 2:
                ws.transport.abort()  # a dropped network, no close handshake
            else:
                await ws.send('{"type":"ping"}')
                await ws.recv()

    # Warm up (allocator, caches), then measure.
    for batch in range(2):
        await asyncio.gather(*(cycle(i) for i in range(batch * 5, batch * 5 + 5)))
    await eventually(lambda: hub.total == 0, within=10)
    tasks_before = len(asyncio.all_tasks())
    rss_before = psutil.Process().memory_info().rss
    cycles = 500
    for start in range(0, cycles, 5):  # at most 5 at a time: the per-user cap
        await asyncio.gather(*(cycle(i) for i in range(start, start + 5)))
    await eventually(lambda: hub.total == 0, within=15)
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before, within=15)
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < 30 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over {cycles} cycles"
    assert metric("websocket_active_connections") == 0


# --- webhook abuse -------------------------------------------------------------------------------


async def _nothing_written(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT count(*) FROM webhook_events") == 0
    assert await db.fetchval("SELECT count(*) FROM transactions") == 0


async def test_webhook_abuse_is_refused_quickly_and_writes_nothing(
    app: RunningApp, db: asyncpg.Connection
) -> None:
    body = json.dumps(webhook(activity("external", frm=address(1), to=address(2)))).encode()
    cases: list[tuple[str, bytes, dict[str, str], int]] = [
        ("missing signature", body, {"Content-Type": "application/json"}, 401),
        ("wrong signature", body, {"X-Alchemy-Signature": sign(body, "not-our-key")}, 401),
        ("signature of another body", body, {"X-Alchemy-Signature": sign(body + b" ")}, 401),
        ("non-hex signature", body, {"X-Alchemy-Signature": "zz" * 32}, 401),
        ("huge body", b"{" + b" " * (2 * 2**20) + b"}", {"X-Alchemy-Signature": "00"}, 413),
    ]
    nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
    cases.append(("deeply nested JSON", nested, {"X-Alchemy-Signature": sign(nested)}, 400))
    not_json = b"\xff\xfe not json"
    cases.append(("not JSON", not_json, {"X-Alchemy-Signature": sign(not_json)}, 400))
    array = b"[]"
    cases.append(("JSON of the wrong shape", array, {"X-Alchemy-Signature": sign(array)}, 400))
    for name, content, headers, status in cases:
        started = time.monotonic()
        response = await app.http.post("/webhooks/alchemy", content=content, headers=headers)
        assert response.status_code == status, (name, response.text)
        assert time.monotonic() - started < 2, name
        assert "error" in response.json(), name
    await _nothing_written(db)


async def test_webhook_content_type_is_not_trusted_the_signature_is(app: RunningApp) -> None:
    """Alchemy always sends JSON; the body is parsed as JSON whatever the header says, and only
    after the signature matched (a wrong type with a right signature is still a delivery)."""
    body = json.dumps(webhook(activity("external", frm=address(1), to=address(2)))).encode()
    response = await app.http.post(
        "/webhooks/alchemy",
        content=body,
        headers={"Content-Type": "text/plain", "X-Alchemy-Signature": sign(body)},
    )
    assert response.status_code == 200
    forged = await app.http.post("/webhooks/alchemy", content=body, headers={"Content-Type": "text/plain"})
    assert forged.status_code == 401


async def test_a_slow_body_is_given_up_on_with_408(
    app: RunningApp, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris: headers promise a body that trickles in; the server answers 408 in bounded time."""
    monkeypatch.setattr(webhooks, "BODY_READ_TIMEOUT", 1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(
        b"POST /webhooks/alchemy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Alchemy-Signature: 00\r\nContent-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    started = time.monotonic()

    async def trickle() -> None:
        for _ in range(20):
            await asyncio.sleep(0.3)
            writer.write(b" ")
            await writer.drain()

    trickling = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(5):
            status_line = await reader.readline()
        assert status_line.split()[1] == b"408", status_line
        assert time.monotonic() - started < 3
    finally:
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        writer.close()
    await _nothing_written(db)
    # The server still serves everyone else.
    assert (await app.http.get("/healthz")).status_code == 200


# --- login brute force ---------------------------------------------------------------------------


async def test_login_brute_force_on_one_account_is_rate_limited(app: RunningApp) -> None:
    """After per_account failures the account answers 429 with Retry-After, even to the right
    password, without checking it; another account is unaffected."""
    name = "victim-account"
    await app.register(name, "the-right-password")
    other = await app.register()
    limit = DEFAULT_LOGIN_POLICY.per_account
    for _ in range(limit.attempts):
        wrong = await app.http.post("/api/auth/login", json={"username": name, "password": "guess-1234"})
        assert wrong.status_code == 401
    limited = await app.http.post(
        "/api/auth/login", json={"username": name, "password": "the-right-password"}
    )
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= limit.window_seconds
    assert limited.json() == {"error": "too many attempts; try again later"}
    fine = await app.http.post(
        "/api/auth/login", json={"username": other["user"]["username"], "password": "correct-horse"}
    )
    assert fine.status_code == 200


async def test_the_account_limit_holds_for_every_spelling_of_the_name(app: RunningApp) -> None:
    """Login normalizes the name (spaces, case); the limit counts and checks the same name, so
    "  Victim" gets no fresh guesses and no way in during the lockout."""
    await app.register("spelled", "the-right-password")
    limit = DEFAULT_LOGIN_POLICY.per_account
    spellings = ["spelled", "  spelled", "SPELLED ", "\tSpelled"]
    for i in range(limit.attempts):
        name = spellings[i % len(spellings)]
        wrong = await app.http.post("/api/auth/login", json={"username": name, "password": "guess-1234"})
        assert wrong.status_code == 401
    for name in spellings:
        right = await app.http.post(
            "/api/auth/login", json={"username": name, "password": "the-right-password"}
        )
        assert right.status_code == 429, (name, right.text)


async def test_a_right_password_clears_the_account_count(app: RunningApp) -> None:
    name = "forgetful"
    await app.register(name, "the-right-password")
    for _ in range(DEFAULT_LOGIN_POLICY.per_account.attempts - 1):
        await app.http.post("/api/auth/login", json={"username": name, "password": "wrong-password"})
    ok = await app.http.post("/api/auth/login", json={"username": name, "password": "the-right-password"})
    assert ok.status_code == 200
    again = await app.http.post("/api/auth/login", json={"username": name, "password": "wrong-password"})
    assert again.status_code == 401


async def test_login_sweep_from_one_ip_is_rate_limited(app: RunningApp) -> None:
    """Many accounts, one IP: per_ip failures, then 429 for any account from that IP."""
    limit = DEFAULT_LOGIN_POLICY.per_ip

    async def attempt(i: int) -> int:
        response = await app.http.post(
            "/api/auth/login", json={"username": f"nobody{i}", "password": "x" * 12}
        )
        return response.status_code

    statuses: list[int] = []
    for start in range(0, limit.attempts, 20):
        statuses += await asyncio.gather(*(attempt(i) for i in range(start, start + 20)))
    assert set(statuses) == {401}
    assert await attempt(limit.attempts + 1) == 429


async def test_login_fails_open_when_redis_is_down(app_factory: AppFactory) -> None:
    """The limiter cannot reach Redis: logins are answered as without it (documented choice)."""
    app = await app_factory(redis_url="redis://127.0.0.1:1/0")
    # Registration needs no Redis; a login checks the limiter first and goes on without it.
    await app.register("alone", "the-right-password")
    ok = await app.http.post("/api/auth/login", json={"username": "alone", "password": "the-right-password"})
    assert ok.status_code == 200


async def test_registrations_from_one_ip_are_rate_limited(app_factory: AppFactory) -> None:
    """Each registration costs a password hash and opens a fresh per-account limit: past the
    per-IP allowance (here 3 an hour), registering answers 429 with Retry-After, and is counted."""
    app = await app_factory(registrations_per_ip_hour=3)
    before = metric("auth_login_rate_limited_total", scope="registration")
    for i in range(3):
        await app.register(f"sybil{i}")
    refused = await app.http.post(
        "/api/auth/register", json={"username": "sybil9", "password": "correct-horse"}
    )
    assert refused.status_code == 429, refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert metric("auth_login_rate_limited_total", scope="registration") == before + 1
    login = await app.http.post("/api/auth/login", json={"username": "sybil0", "password": "correct-horse"})
    assert login.status_code == 200  # logging in is not registering
