"""Settings from the environment, validated once at start-up.

This is the only module that reads ``os.environ`` (through :func:`load`); everything else gets a
frozen :class:`Settings` passed down as an argument. Bad or missing values raise one
:class:`~chainfeed.errors.ConfigError` listing every problem (one line each, naming the variable),
never a secret's value and never a URL's password; the example placeholders of ``.env.example``
are refused. ``CHAINFEED_`` variables that mean nothing are kept in ``unknown_variables`` (with
the name they were probably meant to be), for the start-up log to warn about.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from chainfeed.errors import ConfigError
from chainfeed.names import DEFAULT_CONSUMER_GROUP, DEFAULT_DEAD_LETTER_STREAM, DEFAULT_STREAM

__all__ = ["Settings", "load"]

LogFormat = Literal["json", "console"]
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_N = TypeVar("_N", int, float)


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
    #: log2 of scrypt's N for new password hashes (OWASP: 17); older hashes are replaced at login.
    password_work: int = 17
    #: Registrations one client IP may make per hour (each costs a password hash).
    registrations_per_ip_hour: int = 20
    #: Feed items one user may get per minute; past it, transfers are stored but make no item.
    feed_items_per_user_minute: int = 600
    webhook_max_bytes: int = 1024 * 1024
    alchemy_api_url: str = "https://dashboard.alchemy.com/api"
    alchemy_auth_token: str = field(default="", repr=False)
    alchemy_webhook_id: str = ""
    #: OTEL_EXPORTER_OTLP_ENDPOINT: export spans over OTLP/HTTP to it; unset, nothing is exported.
    otlp_endpoint: str | None = None
    #: ``CHAINFEED_`` variables in the environment that no setting reads, each with a likely meant
    #: name (or ""): a typo otherwise silently keeps the default.
    unknown_variables: tuple[tuple[str, str], ...] = ()

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


def load(environ: Mapping[str, str] | None = None, *, dev: bool | None = False) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``).

    A variable that is unset or blank keeps the field's default (written once, on
    :class:`Settings`). With ``dev`` the JWT secret and signing keys may be absent (``chainfeed
    dev`` makes them) and logs default to the console format; otherwise both secrets are
    required. ``dev=None`` takes it from CHAINFEED_DEV=1 (how a uvicorn worker process learns it).
    """
    env = os.environ if environ is None else environ
    if dev is None:
        dev = env.get("CHAINFEED_DEV") == "1"
    values: dict[str, object] = {"log_format": "console"} if dev else {}
    problems: list[tuple[str, str]] = []
    for field_name, (variable, parse) in _VARIABLES.items():
        raw = env.get(variable)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[field_name] = parse(raw.strip())
        except ValueError as exc:
            problems.append((variable, f"{exc}{_shown(variable, raw.strip())}"))
    values["unknown_variables"] = _unknown(env)
    settings = Settings(**values)  # type: ignore[arg-type]  # each parser returns its field's type
    problems += _secret_problems(settings, required=not dev)
    if problems:
        (variable, problem), *more = problems
        raise ConfigError(variable, problem, more=tuple(more))
    return settings


#: What .env.example ships in its secrets: a deployment that copied it unchanged is refused.
_PLACEHOLDER_MARKS = ("replace-me", "replace_me", "changeme", "change-me")


def _secret_problems(settings: Settings, *, required: bool) -> list[tuple[str, str]]:
    problems = []
    secret = settings.jwt_secret
    if not secret and required:
        problems.append(("CHAINFEED_JWT_SECRET", "is required (an HS256 secret of at least 32 bytes)"))
    elif secret and len(secret.encode()) < 32:
        problems.append(("CHAINFEED_JWT_SECRET", "must be at least 32 bytes long"))
    elif _placeholder(secret):
        problems.append(("CHAINFEED_JWT_SECRET", "is the example placeholder: set a random secret"))
    if not settings.alchemy_signing_keys and required:
        problems.append(("CHAINFEED_ALCHEMY_SIGNING_KEYS", "is required (comma-separated signing keys)"))
    elif any(_placeholder(key) for key in settings.alchemy_signing_keys):
        problems.append(
            ("CHAINFEED_ALCHEMY_SIGNING_KEYS", "holds the example placeholder: set Alchemy's key")
        )
    return problems


def _placeholder(value: str) -> bool:
    return any(mark in value.lower() for mark in _PLACEHOLDER_MARKS)


#: Variables whose value is never shown in an error, not even in part.
_SECRET_VARIABLES = frozenset(
    {"CHAINFEED_JWT_SECRET", "CHAINFEED_ALCHEMY_SIGNING_KEYS", "CHAINFEED_ALCHEMY_AUTH_TOKEN"}
)


def _shown(variable: str, raw: str) -> str:
    """`` (got ...)`` for an error message: nothing for secrets, a URL without its password."""
    if variable in _SECRET_VARIABLES:
        return ""
    try:
        parts = urlsplit(raw)
    except ValueError:
        return ""
    if parts.password:
        user = f"{parts.username}:***@" if parts.username else "***@"
        raw = parts._replace(netloc=user + parts.netloc.rpartition("@")[2]).geturl()
    return f" (got {raw[:80]!r})"


#: CHAINFEED_ variables read elsewhere (the dev instance, the test suite, the benchmarks).
_OTHER_VARIABLES = frozenset(
    {
        "CHAINFEED_DEV",
        "CHAINFEED_DEV_DIR",
        "CHAINFEED_PROXY_PORT",
        "CHAINFEED_TEST_DATABASE_URL",
        "CHAINFEED_TEST_REDIS_URL",
        "CHAINFEED_CHAOS_LONG",
        "CHAINFEED_INTERLEAVING_SEEDS",
        "CHAINFEED_INTERLEAVING_STEPS",
        "CHAINFEED_FUZZ_EXAMPLES",
    }
)


def _unknown(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    known = {variable for variable, _ in _VARIABLES.values()} | _OTHER_VARIABLES
    unknown = sorted(name for name in env if name.startswith("CHAINFEED_") and name not in known)
    return tuple((name, next(iter(difflib.get_close_matches(name, known, n=1)), "")) for name in unknown)


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw.startswith(schemes):
            raise ValueError(f"must start with one of {', '.join(schemes)}")
        return raw

    return parse


def _positive(kind: Callable[[str], _N], what: str) -> Callable[[str], _N]:
    """A parser of numbers above zero; ``what`` says in the error what was expected."""

    def parse(raw: str) -> _N:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"must be {what}") from None
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    return parse


_positive_int = _positive(int, "a whole number")
_positive_float = _positive(float, "a number of seconds")


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


#: Settings field -> (environment variable, parser). Defaults live on :class:`Settings` alone.
_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "database_url": ("CHAINFEED_DATABASE_URL", _url("postgres://", "postgresql://")),
    "redis_url": ("CHAINFEED_REDIS_URL", _url("redis://", "rediss://", "unix://")),
    "jwt_secret": ("CHAINFEED_JWT_SECRET", str),
    "jwt_ttl_seconds": ("CHAINFEED_JWT_TTL_SECONDS", _positive_int),
    "alchemy_signing_keys": ("CHAINFEED_ALCHEMY_SIGNING_KEYS", _csv),
    "stream": ("CHAINFEED_STREAM", _non_empty),
    "consumer_group": ("CHAINFEED_CONSUMER_GROUP", _non_empty),
    "consumer_name": ("CHAINFEED_CONSUMER_NAME", _non_empty),
    "stream_batch": ("CHAINFEED_STREAM_BATCH", _positive_int),
    "stream_block_ms": ("CHAINFEED_STREAM_BLOCK_MS", _positive_int),
    "claim_idle_ms": ("CHAINFEED_CLAIM_IDLE_MS", _positive_int),
    "max_deliveries": ("CHAINFEED_MAX_DELIVERIES", _positive_int),
    "dead_letter_stream": ("CHAINFEED_DEAD_LETTER_STREAM", _non_empty),
    "stream_maxlen": ("CHAINFEED_STREAM_MAXLEN", _positive_int),
    "ws_max_per_user": ("CHAINFEED_WS_MAX_PER_USER", _positive_int),
    "ws_max_total": ("CHAINFEED_WS_MAX_TOTAL", _positive_int),
    "ws_send_queue": ("CHAINFEED_WS_SEND_QUEUE", _positive_int),
    "ws_ping_interval": ("CHAINFEED_WS_PING_INTERVAL", _positive_float),
    "ws_pong_timeout": ("CHAINFEED_WS_PONG_TIMEOUT", _positive_float),
    "ws_allowed_origins": ("CHAINFEED_WS_ALLOWED_ORIGINS", _csv),
    "listen_backlog": ("CHAINFEED_LISTEN_BACKLOG", _positive_int),
    "log_format": ("CHAINFEED_LOG_FORMAT", _log_format),
    "password_work": ("CHAINFEED_PASSWORD_WORK", _positive_int),
    "registrations_per_ip_hour": ("CHAINFEED_REGISTRATIONS_PER_IP_HOUR", _positive_int),
    "feed_items_per_user_minute": ("CHAINFEED_FEED_ITEMS_PER_USER_MINUTE", _positive_int),
    "log_level": ("CHAINFEED_LOG_LEVEL", _log_level),
    "alchemy_api_url": ("CHAINFEED_ALCHEMY_API_URL", _url("https://", "http://")),
    "alchemy_auth_token": ("CHAINFEED_ALCHEMY_AUTH_TOKEN", str),
    "alchemy_webhook_id": ("CHAINFEED_ALCHEMY_WEBHOOK_ID", str),
    "otlp_endpoint": ("OTEL_EXPORTER_OTLP_ENDPOINT", _url("https://", "http://")),
}
