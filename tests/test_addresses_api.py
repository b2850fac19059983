"""The watch list API: validation, lower-casing, idempotent add, limit, delete."""

from __future__ import annotations

import asyncpg

from tests.conftest import AppFactory, RunningApp

ADDRESS = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"


async def test_add_list_delete(app: RunningApp, db: asyncpg.Connection) -> None:
    token = (await app.register())["access_token"]
    headers = app.auth(token)
    created = await app.http.post(
        "/api/addresses", json={"address": ADDRESS, "label": "hot"}, headers=headers
    )
    assert created.status_code == 201
    assert created.json()["address"] == ADDRESS.lower()
    assert created.json()["label"] == "hot"
    again = await app.http.post("/api/addresses", json={"address": ADDRESS.lower()}, headers=headers)
    assert again.status_code == 200
    assert again.json()["label"] == "hot"
    listed = await app.http.get("/api/addresses", headers=headers)
    assert [entry["address"] for entry in listed.json()] == [ADDRESS.lower()]
    assert await db.fetchval("SELECT count(*) FROM watched_addresses") == 1
    deleted = await app.http.delete(f"/api/addresses/{ADDRESS}", headers=headers)
    assert deleted.status_code == 204
    missing = await app.http.delete(f"/api/addresses/{ADDRESS}", headers=headers)
    assert missing.status_code == 404
    assert (await app.http.get("/api/addresses", headers=headers)).json() == []


async def test_watch_lists_are_per_user(app: RunningApp) -> None:
    alice, bob = (await app.register())["access_token"], (await app.register())["access_token"]
    await app.http.post("/api/addresses", json={"address": ADDRESS}, headers=app.auth(alice))
    assert (await app.http.get("/api/addresses", headers=app.auth(bob))).json() == []
    assert (await app.http.delete(f"/api/addresses/{ADDRESS}", headers=app.auth(bob))).status_code == 404


async def test_invalid_addresses_are_400(app: RunningApp) -> None:
    headers = app.auth((await app.register())["access_token"])
    for bad in ("0x123", "hello", "0x" + "z" * 40, ADDRESS[2:]):
        response = await app.http.post("/api/addresses", json={"address": bad}, headers=headers)
        assert response.status_code == 400, bad
        assert "address" in response.json()["error"]
    assert (await app.http.delete("/api/addresses/nonsense", headers=headers)).status_code == 400
    no_body = await app.http.post("/api/addresses", content=b"{", headers=headers)
    assert no_body.status_code == 400


async def test_per_user_limit_is_409(app_factory: AppFactory) -> None:
    app = await app_factory(max_addresses_per_user=2)
    headers = app.auth((await app.register())["access_token"])
    for i in range(2):
        response = await app.http.post("/api/addresses", json={"address": f"0x{i:040x}"}, headers=headers)
        assert response.status_code == 201
    over = await app.http.post("/api/addresses", json={"address": f"0x{9:040x}"}, headers=headers)
    assert over.status_code == 409
    # Re-adding a watched address is not "over the limit".
    assert (
        await app.http.post("/api/addresses", json={"address": f"0x{1:040x}"}, headers=headers)
    ).status_code == 200


async def test_requires_a_token(app: RunningApp) -> None:
    assert (await app.http.get("/api/addresses")).status_code == 401
    assert (await app.http.post("/api/addresses", json={"address": ADDRESS})).status_code == 401


async def test_a_label_with_a_nul_or_control_character_is_400_not_500(app: RunningApp) -> None:
    session = await app.register()
    headers = {"Authorization": f"Bearer {session['access_token']}"}
    for label in ("ho\u0000t", "line\nbreak", "\u007f"):
        response = await app.http.post(
            "/api/addresses", json={"address": ADDRESS, "label": label}, headers=headers
        )
        assert response.status_code == 400, (label, response.text)
        assert response.json() == {"error": "label must not contain control characters"}
    listed = await app.http.get("/api/addresses", headers=headers)
    assert listed.json() == []
