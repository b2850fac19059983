"""The page and its modules are served with the right types and a strict Content-Security-Policy."""

from __future__ import annotations

from tests.conftest import RunningApp


async def test_feed_page_and_modules_are_served(app: RunningApp) -> None:
    page = await app.http.get("/feed")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/feed.js">' in page.text
    for name in ("feed.js", "chainfeed-client.js"):
        module = await app.http.get(f"/static/{name}")
        assert module.status_code == 200
        assert "javascript" in module.headers["content-type"]
    client = (await app.http.get("/static/chainfeed-client.js")).text
    assert 'TOKEN_KEY = "auth_token"' in client
    assert "4401" in client
    assert (await app.http.get("/static/../config.py")).status_code == 404
