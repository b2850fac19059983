"""The private parts of uvicorn that ``chainfeed.web.wsprotocol`` builds on are still there.

uvicorn is pinned below its next minor (pyproject.toml). Before the pin is raised these tests
must pass on the new version: each names the attribute or method that changed, so a reviewer
knows where wsprotocol.py has to follow. Real uvicorn code is read (its source and signatures)
and its protocol is built the way uvicorn builds it; nothing here is served.
"""

from __future__ import annotations

import asyncio
import inspect
import re

import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from chainfeed.web.wsprotocol import WebSocketProtocol

_WHY = (
    "uvicorn changed a private attribute chainfeed.web.wsprotocol relies on;"
    " review wsprotocol.py before raising the pin"
)

#: Methods wsprotocol overrides or calls, with the parameters it passes.
_METHODS = {
    "handle_connect": ["self", "event"],
    "start_keepalive": ["self"],
    "stop_keepalive": ["self"],
    "keepalive_timeout": ["self"],
    "shutdown": ["self"],
    "data_received": ["self", "data"],
}
#: Attributes uvicorn's protocol assigns and uses that wsprotocol replaces or reads.
_ATTRIBUTES = [
    "queue",  # replaced by a LeanQueue: put_nowait / get
    "writable",  # replaced by a lean event: set / clear / wait / is_set
    "conn",  # websockets' ServerProtocol, rebuilt with our deflate factory
    "close_sent",
    "handshake_complete",
    "close_timer",
    "transport",
    "scope",
    "loop",
    "config",
    "response",
]


@pytest.mark.parametrize(("name", "parameters"), sorted(_METHODS.items()))
def test_overridden_methods_keep_their_signatures(name: str, parameters: list[str]) -> None:
    """A renamed method, or one called with other arguments, would silently stop our override."""
    method = getattr(WebSocketsSansIOProtocol, name, None)
    assert method is not None, f"{_WHY}: {name}() is gone"
    assert list(inspect.signature(method).parameters) == parameters, f"{_WHY}: {name}() signature"


@pytest.mark.parametrize("attribute", _ATTRIBUTES)
def test_uvicorn_still_uses_the_attributes_we_replace(attribute: str) -> None:
    """uvicorn's own source still reads or assigns ``self.<attribute>``."""
    source = inspect.getsource(WebSocketsSansIOProtocol)
    assert re.search(rf"\bself\.{attribute}\b", source), f"{_WHY}: self.{attribute} is no longer used"


def test_the_queue_and_the_writable_event_are_used_only_through_what_the_lean_ones_offer() -> None:
    """Our stand-ins implement put_nowait/get/empty and set/clear/wait/is_set; uvicorn uses no more."""
    source = inspect.getsource(WebSocketsSansIOProtocol)
    assert set(re.findall(r"self\.queue\.(\w+)", source)) <= {"put_nowait", "get", "empty"}, _WHY
    assert set(re.findall(r"self\.writable\.(\w+)", source)) <= {"set", "clear", "wait", "is_set"}, _WHY


async def test_our_protocol_builds_as_uvicorn_builds_it() -> None:
    """uvicorn's loaded config constructs the protocol class with the arguments it always passes,
    and our stand-ins and deflate factory take the places uvicorn's own primitives had."""
    config = uvicorn.Config(app=_app, ws=WebSocketProtocol, ws_per_message_deflate=True, lifespan="off")
    config.load()
    assert config.ws_protocol_class is WebSocketProtocol
    server_state = uvicorn.server.ServerState()
    protocol = WebSocketProtocol(
        config=config, server_state=server_state, app_state={}, _loop=asyncio.get_running_loop()
    )
    assert hasattr(protocol.queue, "put_nowait"), _WHY
    assert protocol.writable.is_set(), _WHY
    assert type(protocol.conn).__name__ == "ServerProtocol", _WHY
    extensions = protocol.conn.available_extensions
    assert [type(e).__name__ for e in extensions] == ["_DeflateFactory"], _WHY


async def _app(scope: object, receive: object, send: object) -> None:
    """Never called: the protocol is only constructed."""
