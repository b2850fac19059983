"""A Redis that stops answering without closing its connections (a black hole, not an outage):
new tabs are told to come back (1013) within seconds instead of being accepted and left silent,
and once Redis answers again new tabs are served."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

from chainfeed.config import Settings
from tests.conftest import AppFactory
from tests.delivery_support import client, closed_with, ready
from tests.ingest_support import TcpProxy, eventually


async def test_new_tabs_get_1013_quickly_while_redis_is_a_black_hole(
    app_factory: AppFactory, settings: Settings
) -> None:
    assert settings.redis_url is not None
    parts = urlsplit(settings.redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    port = await proxy.start()
    app = await app_factory(redis_url=urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}")))
    first, second = await app.register(), await app.register()
    async with client(app, first["access_token"]) as ws:
        await ready(ws)  # the first user's channel is subscribed, the registry answers
        proxy.freeze()
        for session in (first, second):  # a subscribed user, and one whose channel is new
            started = time.monotonic()
            async with client(app, session["access_token"]) as stuck:
                code, reason = await closed_with(stuck, within=10)
            assert (code, reason) == (1013, "try again later")
            assert time.monotonic() - started < 8
        proxy.thaw()

        async def served() -> bool:
            try:
                async with client(app, second["access_token"]) as fresh:
                    await ready(fresh)
            except (AssertionError, TimeoutError, OSError):
                return False
            return True

        await eventually(served, within=20, what="a new tab is served once Redis answers")
    await proxy.cut()
