"""``chainfeed dev``: the whole service on one machine, with nothing installed but this package.

Starts embedded PostgreSQL and Redis under ``./.chainfeed/`` (unless CHAINFEED_DATABASE_URL /
CHAINFEED_REDIS_URL point elsewhere), applies migrations, makes a demo user with a watched
address, prints how to log in, and serves the app. Secrets made here are kept in
``.chainfeed/dev-secrets.json`` so tokens stay valid across restarts. Ctrl-C, SIGTERM and SIGHUP
stop what it started; the data stays for the next run.

One ``dev`` per data folder: it holds ``dev.pid`` there, and a second one refuses to start. A busy
port is refused before anything starts. While it serves, ``dev-state.json`` says how to reach it,
and the other commands run in the same folder use it without any exported variable
(:mod:`chainfeed.cli.devstate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from chainfeed import config
from chainfeed.cli import devstate
from chainfeed.cli import simulate as simulator
from chainfeed.config import Settings
from chainfeed.devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from chainfeed.domain.passwords import hash_password
from chainfeed.domain.tokens import issue_token
from chainfeed.errors import ChainFeedError
from chainfeed.observability.logging import configure_logging
from chainfeed.storage import migrate
from chainfeed.storage.pool import short_pool
from chainfeed.storage.users import ensure_watcher
from chainfeed.web import create_app
from chainfeed.web.server import run_server

__all__ = ["DEMO_ADDRESS", "DEMO_PASSWORD", "DEMO_USER", "run_dev"]

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a published local-only demo login
#: A well-known, busy mainnet address, so simulated and real activity look familiar.
DEMO_ADDRESS = "0xd8da6bf26964af9d7eed9e10e41856af7f5f8c8e"


#: Signals that stop ``dev`` as Ctrl-C does: an IDE's stop button or ``timeout`` (TERM), a closed
#: terminal (HUP).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def run_dev(*, host: str, port: int, data_dir: str, simulate: float | None = None) -> int:
    """Start everything, serve until Ctrl-C (or SIGTERM, SIGHUP), stop what was started.

    With ``simulate`` (webhooks per second), signed synthetic Alchemy webhooks about the watched
    addresses flow in from a background thread, so the feed moves without a real Alchemy.
    Returns 0, or 128 + the signal's number when SIGTERM or SIGHUP stopped it (Ctrl-C ends in
    KeyboardInterrupt, which ``main`` turns into 130).
    """
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    url = devstate.app_url(host, port)
    with devstate.hold_lock(root, url=url), _stop_like_ctrl_c() as stop:
        _check_port(host, port)
        try:
            _run(root, host=host, port=port, url=url, simulate=simulate)
        except KeyboardInterrupt:
            if stop.signum is None:
                raise
            return 128 + stop.signum
    return 0


def _run(root: Path, *, host: str, port: int, url: str, simulate: float | None) -> None:
    settings = _with_dev_secrets(config.load(dev=True), root)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    with _services(settings, root) as settings:
        assert settings.database_url is not None
        asyncio.run(migrate(settings.database_url))
        user_id = asyncio.run(_ensure_demo_user(settings.database_url))
        token = issue_token(user_id, secret=settings.jwt_secret, ttl_seconds=settings.jwt_ttl_seconds)
        with devstate.published(root, url=url, environment=devstate.environment_of(settings)):
            _banner(settings, host=host, port=port, token=token, root=root)
            stop_simulator = None
            if simulate:
                stop_simulator = simulator.run_in_background(
                    url=url,
                    rate=simulate,
                    signing_key=settings.alchemy_signing_keys[0],
                    database_url=settings.database_url,
                )
            try:
                run_server(create_app(settings), settings, host=host, port=port)
            finally:
                if stop_simulator is not None:
                    stop_simulator.set()


def _check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on before anything starts (uvicorn would say it late)."""
    problem = _bind_problem(host, port)
    if problem is None:
        return
    if problem.errno == errno.EADDRINUSE:
        candidates = range(port + 1, min(port + 100, 65536))
        free = next((p for p in candidates if _bind_problem(host, p) is None), None)
        hint = f" (--port {free} is free)" if free else ""
        raise ChainFeedError(f"port {port} on {host} is already in use; choose another with --port{hint}")
    raise ChainFeedError(
        f"cannot listen on {host}:{port}: {problem.strerror}; choose another --host or --port"
    )


def _bind_problem(host: str, port: int) -> OSError | None:
    """Why binding ``host``:``port`` fails as uvicorn binds it (SO_REUSEADDR); None when it works."""
    if not 0 <= port <= 65535:
        return OSError(errno.EINVAL, "the port must be between 0 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc
    return None


@dataclass
class _Stop:
    """Which of :data:`_STOP_SIGNALS` arrived (None: none did)."""

    signum: int | None = None


@contextlib.contextmanager
def _stop_like_ctrl_c() -> Iterator[_Stop]:
    """SIGTERM and SIGHUP do what Ctrl-C does, and the servers are stopped in order.

    Whatever handles Ctrl-C at that moment handles them too: uvicorn's handler (a graceful
    shutdown; uvicorn raises the signal again once done) or asyncio's (the running step is
    cancelled); else KeyboardInterrupt is raised here. Without this, TERM or HUP ended the process
    on the spot and left both embedded servers running.
    """
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.signum = signum
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
            on_interrupt(signum, frame)
            return
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, handle) for signum in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _with_dev_secrets(settings: Settings, root: Path) -> Settings:
    """Fill in a JWT secret and a signing key, made once and kept under ``root``."""
    path = root / "dev-secrets.json"
    if path.exists():
        saved = json.loads(path.read_text())
    else:
        saved = {"jwt_secret": secrets.token_urlsafe(48), "signing_key": "whsec_" + secrets.token_urlsafe(24)}
        path.write_text(json.dumps(saved))
        path.chmod(0o600)
    return replace(
        settings,
        jwt_secret=settings.jwt_secret or saved["jwt_secret"],
        alchemy_signing_keys=settings.alchemy_signing_keys or (saved["signing_key"],),
    )


@contextlib.contextmanager
def _services(settings: Settings, root: Path) -> Iterator[Settings]:
    """Embedded servers for whichever of PostgreSQL and Redis the environment does not name."""
    postgres = None if settings.database_url else EmbeddedPostgres(root / "postgres")
    redis = None if settings.redis_url else EmbeddedRedis(root / "redis")
    try:
        database_url = postgres.start() if postgres else settings.database_url
        redis_url = redis.start() if redis else settings.redis_url
        assert database_url is not None
        assert redis_url is not None
        yield settings.with_services(database_url=database_url, redis_url=redis_url)
    finally:
        # A second Ctrl-C or SIGTERM (or a wrapper forwarding the first one again) must not strand
        # a server.
        main_thread = threading.current_thread() is threading.main_thread()
        ignored = (signal.SIGINT, *_STOP_SIGNALS) if main_thread else ()
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in ignored}
        try:
            if redis:
                redis.stop()
            if postgres:
                postgres.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


async def _ensure_demo_user(database_url: str) -> int:
    """The demo user's id, creating the user and its watched address on first run."""
    async with short_pool(database_url) as pool:
        return await ensure_watcher(
            pool, DEMO_USER, hash_password(DEMO_PASSWORD), DEMO_ADDRESS, "vitalik.eth"
        )


def _banner(settings: Settings, *, host: str, port: int, token: str, root: Path) -> None:
    base = f"http://{host}:{port}"
    shown = _shown(root)
    looked_in = Path(os.environ.get(devstate.DEV_DIR_VARIABLE, "").strip() or devstate.DEFAULT_DEV_DIR)
    found_here = looked_in.resolve() == root
    lines = [
        "",
        "ChainFeed dev is starting",
        f"  app        {base}   (live feed page: {base}/feed)",
        f"  login      {DEMO_USER} / {DEMO_PASSWORD}   (watching {DEMO_ADDRESS})",
        f"  token      {token}",
        f"  try        curl -H 'Authorization: Bearer <token>' {base}/api/me",
        f"  postgres   {settings.database_url}",
        f"  redis      {settings.redis_url}",
        f"  signing key (X-Alchemy-Signature) is in {shown / 'dev-secrets.json'}",
        "  cli        `chainfeed token demo`, `stream info`, `simulate` ... run "
        + ("in this folder use this instance" if found_here else f"with {devstate.DEV_DIR_VARIABLE}={root}")
        + f" ({shown / devstate.STATE_FILE})",
        f"  Ctrl-C stops everything; data stays in {shown}/ for the next run.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _shown(root: Path) -> Path:
    """``root`` as the user would type it: ./-relative when it is under the current folder."""
    try:
        return Path(".") / root.relative_to(Path.cwd().resolve())
    except ValueError:
        return root
