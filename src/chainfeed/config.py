"""Settings from the environment, validated once at start-up.

This is the only module that reads ``os.environ`` (through :func:`load`); everything else gets a
frozen :class:`Settings` passed down as an argument. A bad or missing value raises
:class:`~chainfeed.errors.ConfigError` naming the variable, which the CLI prints as one line.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from chainfeed.errors import ConfigError
from chainfeed.names import DEFAULT_CONSUMER_GROUP, DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM

__all__ = ["Settings", "load"]

LogFormat = Literal["json", "console"]
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything ChainFeed can be told from outside. Defaults follow ../shared/SPEC.md."""

    database_url: str | None = None
    redis_url: str | None = None
    jwt_secret: str = field(default="", repr=False)
    jwt_ttl_seconds: int = 86400
    alchemy_signing_keys: tuple[str, ...] = field(default=(), repr=False)
    stream: str = DEFAULT_STREAM
    consumer_group: str = DEFAULT_CONSUMER_GROUP
    consumer_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    stream_batch: int = 10
    stream_block_ms: int = 1000
    claim_idle_ms: int = 30000
    max_deliveries: int = 3
    dead_letter_stream: str = DEFAULT_DEAD_LETTER_STREAM
    stream_maxlen: int = 10000
    ws_max_per_user: int = 5
    ws_max_total: int = 20000
    ws_send_queue: int = 256
    ws_ping_interval: float = 54.0
    ws_pong_timeout: float = 60.0
    ws_allowed_origins: tuple[str, ...] | None = None
    #: The listening socket's accept queue (``listen()`` backlog); Linux caps it at net.core.somaxconn.
    listen_backlog: int = 4096
    log_format: LogFormat = "json"
    log_level: str = "info"
    max_addresses_per_user: int = 100
    webhook_max_bytes: int = 1024 * 1024
    alchemy_api_url: str = "https://dashboard.alchemy.com/api"
    alchemy_auth_token: str = field(default="", repr=False)
    alchemy_webhook_id: str = ""
    #: OTEL_EXPORTER_OTLP_ENDPOINT: export spans over OTLP/HTTP to it; unset, nothing is exported.
    otlp_endpoint: str | None = None

    @property
    def alchemy_sync_enabled(self) -> bool:
        """Sync the watch list to Alchemy only when both the token and the webhook id are set."""
        return bool(self.alchemy_auth_token and self.alchemy_webhook_id)

    def with_services(self, *, database_url: str, redis_url: str) -> Settings:
        """A copy pointing at the given PostgreSQL and Redis (used by ``dev`` and the tests)."""
        return replace(self, database_url=database_url, redis_url=redis_url)

    def require_services(self) -> tuple[str, str]:
        """The database and Redis URLs, or a ConfigError naming the one that is missing."""
        if not self.database_url:
            raise ConfigError("CHAINFEED_DATABASE_URL", "is required")
        if not self.redis_url:
            raise ConfigError("CHAINFEED_REDIS_URL", "is required")
        return self.database_url, self.redis_url


def load(environ: Mapping[str, str] | None = None, *, dev: bool = False) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``).

    With ``dev`` the JWT secret and signing keys may be absent (``chainfeed dev`` makes them)
    and logs default to the console format; otherwise both secrets are required.
    """
    env = os.environ if environ is None else environ
    reader = _Reader(env)
    settings = Settings(
        database_url=reader.url("CHAINFEED_DATABASE_URL", ("postgres://", "postgresql://")),
        redis_url=reader.url("CHAINFEED_REDIS_URL", ("redis://", "rediss://", "unix://")),
        jwt_secret=reader.get("CHAINFEED_JWT_SECRET", "", str),
        jwt_ttl_seconds=reader.get("CHAINFEED_JWT_TTL_SECONDS", 86400, _positive_int),
        alchemy_signing_keys=reader.get("CHAINFEED_ALCHEMY_SIGNING_KEYS", (), _csv),
        stream=reader.get("CHAINFEED_STREAM", DEFAULT_STREAM, _non_empty),
        consumer_group=reader.get("CHAINFEED_CONSUMER_GROUP", DEFAULT_CONSUMER_GROUP, _non_empty),
        consumer_name=reader.get(
            "CHAINFEED_CONSUMER_NAME", f"{socket.gethostname()}-{os.getpid()}", _non_empty
        ),
        stream_batch=reader.get("CHAINFEED_STREAM_BATCH", 10, _positive_int),
        stream_block_ms=reader.get("CHAINFEED_STREAM_BLOCK_MS", 1000, _positive_int),
        claim_idle_ms=reader.get("CHAINFEED_CLAIM_IDLE_MS", 30000, _positive_int),
        max_deliveries=reader.get("CHAINFEED_MAX_DELIVERIES", 3, _positive_int),
        dead_letter_stream=reader.get("CHAINFEED_DEAD_LETTER_STREAM", DEFAULT_DEAD_LETTER_STREAM, _non_empty),
        stream_maxlen=reader.get("CHAINFEED_STREAM_MAXLEN", 10000, _positive_int),
        ws_max_per_user=reader.get("CHAINFEED_WS_MAX_PER_USER", 5, _positive_int),
        ws_max_total=reader.get("CHAINFEED_WS_MAX_TOTAL", 20000, _positive_int),
        ws_send_queue=reader.get("CHAINFEED_WS_SEND_QUEUE", 256, _positive_int),
        ws_ping_interval=reader.get("CHAINFEED_WS_PING_INTERVAL", 54.0, _positive_float),
        ws_pong_timeout=reader.get("CHAINFEED_WS_PONG_TIMEOUT", 60.0, _positive_float),
        ws_allowed_origins=reader.get("CHAINFEED_WS_ALLOWED_ORIGINS", None, _csv),
        listen_backlog=reader.get("CHAINFEED_LISTEN_BACKLOG", 4096, _positive_int),
        log_format=reader.get("CHAINFEED_LOG_FORMAT", "console" if dev else "json", _log_format),
        log_level=reader.get("CHAINFEED_LOG_LEVEL", "info", _log_level),
        alchemy_api_url=reader.url("CHAINFEED_ALCHEMY_API_URL", ("https://", "http://"))
        or "https://dashboard.alchemy.com/api",
        alchemy_auth_token=reader.get("CHAINFEED_ALCHEMY_AUTH_TOKEN", "", str),
        alchemy_webhook_id=reader.get("CHAINFEED_ALCHEMY_WEBHOOK_ID", "", str),
        otlp_endpoint=reader.url("OTEL_EXPORTER_OTLP_ENDPOINT", ("https://", "http://")),
    )
    if not dev:
        _require_secrets(settings)
    elif settings.jwt_secret:
        _check_secret(settings.jwt_secret)
    return settings


def _require_secrets(settings: Settings) -> None:
    if not settings.jwt_secret:
        raise ConfigError("CHAINFEED_JWT_SECRET", "is required (an HS256 secret of at least 32 bytes)")
    _check_secret(settings.jwt_secret)
    if not settings.alchemy_signing_keys:
        raise ConfigError("CHAINFEED_ALCHEMY_SIGNING_KEYS", "is required (comma-separated signing keys)")


def _check_secret(secret: str) -> None:
    if len(secret.encode()) < 32:
        raise ConfigError("CHAINFEED_JWT_SECRET", "must be at least 32 bytes long")


class _Reader:
    """Reads one variable at a time and turns a parse failure into a ConfigError naming it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, default: _T, parse: Callable[[str], _T]) -> _T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(name, f"{exc} (got {raw!r})") from None

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        def parse(raw: str) -> str:
            if not raw.startswith(schemes):
                raise ValueError(f"must start with one of {', '.join(schemes)}")
            return raw

        return self.get(name, None, parse)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_empty(raw: str) -> str:
    return raw


def _csv(raw: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not items:
        raise ValueError("must list at least one value")
    return items


def _log_format(raw: str) -> LogFormat:
    if raw == "json":
        return "json"
    if raw == "console":
        return "console"
    raise ValueError("must be json or console")


def _log_level(raw: str) -> str:
    if raw.lower() not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)}")
    return raw.lower()
