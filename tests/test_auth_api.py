"""Register, login and /api/me against a real server, including every client mistake."""

from __future__ import annotations

import time

import asyncpg
from prometheus_client import REGISTRY

from chainfeed.domain.ratelimit import DEFAULT_LOGIN_POLICY
from chainfeed.domain.tokens import issue_token
from tests.conftest import AppFactory, RunningApp


async def test_register_returns_a_working_token(app: RunningApp) -> None:
    body = await app.register("alice")
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86400
    assert body["user"]["username"] == "alice"
    me = await app.http.get("/api/me", headers=app.auth(body["access_token"]))
    assert me.status_code == 200
    assert me.json() == body["user"]


async def test_usernames_are_case_insensitive_and_unique(app: RunningApp) -> None:
    await app.register("Alice")
    again = await app.http.post("/api/auth/register", json={"username": "alice", "password": "another-one"})
    assert again.status_code == 409
    assert "taken" in again.json()["error"]


async def test_login(app: RunningApp) -> None:
    await app.register("bob", "correct-horse")
    ok = await app.http.post("/api/auth/login", json={"username": "BOB", "password": "correct-horse"})
    assert ok.status_code == 200
    assert ok.json()["user"]["username"] == "bob"
    for creds in (
        {"username": "bob", "password": "wrong-horse"},
        {"username": "nobody", "password": "whatever1"},
    ):
        refused = await app.http.post("/api/auth/login", json=creds)
        assert refused.status_code == 401
        assert refused.json() == {"error": "invalid username or password"}


def _rate_limited(scope: str) -> float:
    return REGISTRY.get_sample_value("auth_login_rate_limited_total", {"scope": scope}) or 0.0


async def test_a_rate_limited_login_is_429_and_counted_by_scope(app: RunningApp) -> None:
    """Once the account has its limit of failures, the next login is 429 and
    ``auth_login_rate_limited_total{scope="account"}`` grows by one per refusal (the IP's not)."""
    await app.register("mallory-target", "the-right-password")
    before = {scope: _rate_limited(scope) for scope in ("account", "ip")}
    for _ in range(DEFAULT_LOGIN_POLICY.per_account.attempts):
        wrong = await app.http.post(
            "/api/auth/login", json={"username": "mallory-target", "password": "guess-1234"}
        )
        assert wrong.status_code == 401
    assert _rate_limited("account") == before["account"]
    for _ in range(2):
        limited = await app.http.post(
            "/api/auth/login", json={"username": "mallory-target", "password": "the-right-password"}
        )
        assert limited.status_code == 429
        assert limited.json() == {"error": "too many attempts; try again later"}
    assert _rate_limited("account") == before["account"] + 2
    assert _rate_limited("ip") == before["ip"]


async def test_malformed_bodies_are_400_with_a_message(app: RunningApp) -> None:
    for content in (b"{bad json", b"[]", b'{"username": 1, "password": 2}', b'{"username": "x"}'):
        response = await app.http.post(
            "/api/auth/register", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, content
        assert response.json()["error"]
    weak = await app.http.post("/api/auth/register", json={"username": "carol", "password": "short"})
    assert weak.status_code == 400
    assert "password" in weak.json()["error"]


async def test_me_refuses_missing_forged_expired_and_orphaned_tokens(app: RunningApp, db: object) -> None:
    secret = app.settings.jwt_secret
    user = (await app.register())["user"]
    cases = {
        "missing": {},
        "not bearer": {"Authorization": "Basic abc"},
        "forged": app.auth(issue_token(user["id"], secret="z" * 40, ttl_seconds=60)),
        "expired": app.auth(issue_token(user["id"], secret=secret, ttl_seconds=1, now=time.time() - 10)),
        "deleted user": app.auth(issue_token(999_999, secret=secret, ttl_seconds=60)),
    }
    for name, headers in cases.items():
        response = await app.http.get("/api/me", headers=headers)
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == "Bearer"
    expired = await app.http.get("/api/me", headers=cases["expired"])
    assert expired.json() == {"error": "token expired"}


async def test_a_hash_made_with_less_work_is_replaced_at_the_next_login(
    app_factory: AppFactory, db: asyncpg.Connection
) -> None:
    """A user registered under an older, cheaper setting logs in as before, and from then on
    their stored hash has the current work factor (the old one is gone)."""
    old = await app_factory(password_work=12)
    await old.register("upgraded", "the-right-password")
    before = await db.fetchval("SELECT password_hash FROM users WHERE username = 'upgraded'")
    assert before.split("$")[1] == str(2**12)
    new = await app_factory(password_work=13)
    ok = await new.http.post(
        "/api/auth/login", json={"username": "upgraded", "password": "the-right-password"}
    )
    assert ok.status_code == 200, ok.text
    after = await db.fetchval("SELECT password_hash FROM users WHERE username = 'upgraded'")
    assert after.split("$")[1] == str(2**13)
    again = await new.http.post(
        "/api/auth/login", json={"username": "upgraded", "password": "the-right-password"}
    )
    assert again.status_code == 200
    assert await db.fetchval("SELECT password_hash FROM users WHERE username = 'upgraded'") == after
    wrong = await new.http.post(
        "/api/auth/login", json={"username": "upgraded", "password": "not-the-password"}
    )
    assert wrong.status_code == 401
