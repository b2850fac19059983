"""Settings are read once, with SPEC defaults, and a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from chainfeed.config import load
from chainfeed.errors import ConfigError
from chainfeed.web.server import uvicorn_config

GOOD = {"CHAINFEED_JWT_SECRET": "s" * 32, "CHAINFEED_ALCHEMY_SIGNING_KEYS": "k1, k2"}


def test_defaults_follow_the_spec() -> None:
    settings = load(GOOD)
    assert settings.stream == "feed:stream"
    assert settings.consumer_group == "feed:consumers"
    assert settings.dead_letter_stream == "feed:stream:dead"
    assert (settings.stream_batch, settings.stream_block_ms) == (10, 1000)
    assert (settings.claim_idle_ms, settings.max_deliveries, settings.stream_maxlen) == (30000, 3, 10000)
    assert (settings.ws_max_per_user, settings.ws_max_total, settings.ws_send_queue) == (5, 20000, 256)
    assert (settings.ws_ping_interval, settings.ws_pong_timeout) == (54, 60)
    assert settings.jwt_ttl_seconds == 86400
    assert settings.alchemy_signing_keys == ("k1", "k2")
    assert settings.ws_allowed_origins is None
    assert settings.log_format == "json"
    assert settings.listen_backlog == 4096


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHAINFEED_STREAM_BATCH", "ten"),
        ("CHAINFEED_STREAM_BATCH", "0"),
        ("CHAINFEED_WS_PING_INTERVAL", "-1"),
        ("CHAINFEED_DATABASE_URL", "mysql://x"),
        ("CHAINFEED_REDIS_URL", "http://x"),
        ("CHAINFEED_LOG_FORMAT", "xml"),
        ("CHAINFEED_LOG_LEVEL", "loud"),
        ("CHAINFEED_JWT_SECRET", "short"),
        ("CHAINFEED_LISTEN_BACKLOG", "0"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**GOOD, variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


@pytest.mark.parametrize("missing", ["CHAINFEED_JWT_SECRET", "CHAINFEED_ALCHEMY_SIGNING_KEYS"])
def test_serve_requires_its_secrets(missing: str) -> None:
    env = dict(GOOD)
    del env[missing]
    with pytest.raises(ConfigError) as info:
        load(env)
    assert info.value.variable == missing


def test_dev_makes_do_without_secrets_and_logs_to_the_console() -> None:
    settings = load({}, dev=True)
    assert settings.jwt_secret == ""
    assert settings.log_format == "console"


def test_secrets_stay_out_of_repr() -> None:
    assert "s" * 32 not in repr(load(GOOD))


def test_the_listen_backlog_reaches_uvicorn() -> None:
    """A reconnect storm overflowed uvicorn's default accept queue (2048): ours is a setting."""
    assert uvicorn_config("x:app", load(GOOD), host="127.0.0.1", port=1).backlog == 4096
    settings = load({**GOOD, "CHAINFEED_LISTEN_BACKLOG": "8192"})
    assert uvicorn_config("x:app", settings, host="127.0.0.1", port=1).backlog == 8192


def test_every_problem_is_listed_at_once_without_secrets_or_passwords() -> None:
    env = {
        "CHAINFEED_DATABASE_URL": "mysql://u:s3cretpw@h/db",
        "CHAINFEED_JWT_SECRET": "short-secret-value",
        "CHAINFEED_WS_MAX_TOTAL": "lots",
    }
    with pytest.raises(ConfigError) as info:
        load(env)
    message = str(info.value)
    assert [name for name, _ in info.value.problems] == [
        "CHAINFEED_DATABASE_URL",
        "CHAINFEED_WS_MAX_TOTAL",
        "CHAINFEED_JWT_SECRET",
        "CHAINFEED_ALCHEMY_SIGNING_KEYS",
    ]
    assert len(message.splitlines()) == 4
    assert "s3cretpw" not in message
    assert "short-secret-value" not in message
    assert "mysql://u:***@h/db" in message  # what was wrong is still visible


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHAINFEED_JWT_SECRET", "replace-me-with-at-least-32-random-bytes-0123456789"),
        ("CHAINFEED_ALCHEMY_SIGNING_KEYS", "whsec_replace_me"),
    ],
)
def test_the_env_example_placeholders_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({**GOOD, variable: value})
    assert info.value.variable == variable
    assert "placeholder" in str(info.value)


def test_the_shipped_env_example_does_not_start() -> None:
    example = {}
    for line in (Path(__file__).parents[1] / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            example[name.strip()] = value.strip()
    with pytest.raises(ConfigError) as info:
        load(example)
    assert {name for name, _ in info.value.problems} >= {
        "CHAINFEED_JWT_SECRET",
        "CHAINFEED_ALCHEMY_SIGNING_KEYS",
    }


def test_a_misspelled_variable_is_reported_with_the_likely_name() -> None:
    settings = load({**GOOD, "CHAINFEED_WS_MAX_PER_USR": "9", "CHAINFEED_DEV": "0"})
    assert settings.unknown_variables == (("CHAINFEED_WS_MAX_PER_USR", "CHAINFEED_WS_MAX_PER_USER"),)
    assert settings.ws_max_per_user == 5
