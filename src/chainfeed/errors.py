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
    └── UnavailableError       PostgreSQL or Redis cannot be reached (HTTP 503)

The web layer maps them to answers in one place (``chainfeed.web.errors``).
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ChainFeedError",
    "ConfigError",
    "ConflictError",
    "NotFoundError",
    "RateLimitedError",
    "TokenExpired",
    "UnavailableError",
    "ValidationError",
]


class ChainFeedError(Exception):
    """Root of every error ChainFeed raises on purpose."""


class ConfigError(ChainFeedError):
    """A setting is missing or malformed; ``variable`` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
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
