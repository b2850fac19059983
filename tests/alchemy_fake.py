"""A real local HTTP server that plays Alchemy's address API for the sync tests.

It checks the ``X-Alchemy-Token`` header and the body shape like Alchemy does, records every
call, and answers from a script of statuses (then 200) so tests can inject 429/503/401.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from litestar import Litestar, Request, Response, route

from chainfeed.devtools.embedded import free_port

TOKEN = "test-alchemy-token"
WEBHOOK_ID = "wh_test123"


@dataclass
class FakeAlchemy:
    """State of the fake: calls received, statuses to answer, and the webhook's current list."""

    script: list[int] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)
    url: str = ""

    def added(self) -> list[str]:
        return [a for method, body in self.calls if method == "PATCH" for a in body["addresses_to_add"]]

    def removed(self) -> list[str]:
        return [a for method, body in self.calls if method == "PATCH" for a in body["addresses_to_remove"]]

    async def wait_for(self, condition: Any, within: float = 10.0) -> None:
        """Wait until ``condition()`` holds, or fail after ``within`` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, f"timed out; calls: {self.calls}"
            await asyncio.sleep(0.02)


def _app(fake: FakeAlchemy) -> Litestar:
    @route("/api/update-webhook-addresses", http_method=["PATCH", "PUT"])
    async def update(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        if request.headers.get("x-alchemy-token") != TOKEN:
            fake.calls.append((request.method, {}))
            return Response({"message": "Unauthenticated"}, status_code=401)
        body = await request.json()
        fake.calls.append((request.method, body))
        if fake.script:
            status = fake.script.pop(0)
            if status != 200:
                return Response({"message": "scripted failure"}, status_code=status)
        if body.get("webhook_id") != WEBHOOK_ID:
            return Response({"message": "unknown webhook"}, status_code=400)
        if request.method == "PUT":
            if len(body["addresses"]) > 500:
                return Response({"message": "too many addresses"}, status_code=400)
            fake.addresses = set(body["addresses"])
        else:
            add, remove = body["addresses_to_add"], body["addresses_to_remove"]
            if len(add) > 500 or len(remove) > 500:
                return Response({"message": "too many addresses"}, status_code=400)
            fake.addresses |= set(add)
            fake.addresses -= set(remove)
        return Response({}, status_code=200)

    return Litestar([update], logging_config=None)


class _Server(uvicorn.Server):
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


@contextlib.asynccontextmanager
async def running_fake() -> AsyncIterator[FakeAlchemy]:
    """Serve a fresh fake on a loopback port for the duration of the block."""
    fake = FakeAlchemy()
    port = free_port()
    server = _Server(
        uvicorn.Config(_app(fake), host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}/api"
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
