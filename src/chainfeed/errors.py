"""The one exception root of ChainFeed.

::

    ChainFeedError
    ├── ConfigError            a setting is missing or malformed (start-up stops)
    ├── ValidationError        client input is malformed (HTTP 400)
    ├── AuthError              credentials or token refused (HTTP 401 / WS 4401)
    │   └── TokenExpired
    ├── ConflictError          uniqueness or limit violated (HTTP 409)
    ├── NotFoundError          the thing does not exist (HTTP 404)
    ├── RateLimitedError       too many failed attempts (HTTP 429 with Retry-After)
    ├── UnavailableError       PostgreSQL or Redis cannot be reached (HTTP 503)
    ├── UpstreamError          Alchemy refused a call an operator made (the CLI says why)
    ├── PoisonEntry            a stream entry can never be delivered (retried, then dead-lettered)
    ├── ClientGone             a WebSocket client closed or dropped its connection (an event)
    └── EmbeddedError          an embedded dev/test server would not start (devtools only)

The web layer maps them to answers in one place (``chainfeed.web.errors``); the CLI prints any
of them as one line. Redis and PostgreSQL failures below the adapters stay the client libraries'
own (``chainfeed.broker.client.REDIS_FAILURES``, ``chainfeed.storage.pool.POSTGRES_FAILURES``):
the adapters' callers wait them out (``chainfeed.workers``) or answer 503.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ChainFeedError",
    "ClientGone",
    "ConfigError",
    "ConflictError",
    "EmbeddedError",
    "NotFoundError",
    "PoisonEntry",
    "RateLimitedError",
    "TokenExpired",
    "UnavailableError",
    "UpstreamError",
    "ValidationError",
]


class ChainFeedError(Exception):
    """Root of every error ChainFeed raises on purpose."""


class ConfigError(ChainFeedError):
    """A setting is missing or malformed; ``variable`` names it (the first, when there are more:
    ``problems`` lists every ``(variable, problem)``, one per line of the message)."""

    def __init__(self, variable: str, problem: str, *, more: tuple[tuple[str, str], ...] = ()) -> None:
        self.problems = ((variable, problem), *more)
        super().__init__("\n".join(f"{name}: {what}" for name, what in self.problems))
        self.variable = variable
        self.problem = problem


class ValidationError(ChainFeedError):
    """Client input does not have the required shape."""


class AuthError(ChainFeedError):
    """Credentials or a token were refused. ``reason`` is safe to show to the client."""

    def __init__(self, reason: str = "invalid token") -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpired(AuthError):
    """The token was valid but its ``exp`` has passed."""

    def __init__(self) -> None:
        super().__init__("token expired")


class ConflictError(ChainFeedError):
    """A uniqueness rule or a limit forbids the change."""


class NotFoundError(ChainFeedError):
    """The addressed resource does not exist for this user."""


class RateLimitedError(ChainFeedError):
    """Too many failed attempts; ``retry_after`` is how many seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many attempts; try again later")
        self.retry_after = retry_after


class UnavailableError(ChainFeedError):
    """A backing service (``part``: "postgres" or "redis") cannot be reached right now."""

    def __init__(self, part: str, detail: str = "") -> None:
        super().__init__(f"{part} unavailable" + (f": {detail}" if detail else ""))
        self.part = part


class UpstreamError(ChainFeedError):
    """Alchemy answered a call with a refusal; the message carries its status and answer."""


class PoisonEntry(ChainFeedError):  # named for what the entry is, as in the SPEC
    """The entry can never be delivered as it is: ``reason`` says why (it ends up in ``error``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClientGone(ChainFeedError):  # an event, not a fault of ours
    """The client closed or dropped the connection; ``code`` is the close code seen."""

    def __init__(self, code: int) -> None:
        super().__init__(f"client gone ({code})")
        self.code = code


class EmbeddedError(ChainFeedError):
    """An embedded server could not be started; the message says why and what to do."""
