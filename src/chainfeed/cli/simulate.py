"""``chainfeed simulate --url --rate --duration``: signed synthetic webhooks against a running app.

Addresses come from ``--addresses`` or, with CHAINFEED_DATABASE_URL set, from the watch lists
(newest first, re-read every few seconds). The signing key is the first of
CHAINFEED_ALCHEMY_SIGNING_KEYS, or the one ``chainfeed dev`` keeps in ``--data-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import httpx
import structlog

from chainfeed import config
from chainfeed.config import Settings
from chainfeed.devtools.simulate import AddressSource, SimulationStats, simulate
from chainfeed.domain.addresses import normalize_address
from chainfeed.errors import ConfigError, ValidationError
from chainfeed.storage.pool import short_pool
from chainfeed.storage.watchlist import recently_watched

__all__ = ["run_in_background", "simulate_command"]

log = structlog.get_logger(__name__)
_ADDRESS_LIMIT = 1000


def simulate_command(args: argparse.Namespace) -> int:
    """Run the simulation with a progress line; exit 1 when no webhook was accepted."""
    settings = config.load(dev=True)
    _quiet_http_client()
    key = signing_key(settings, Path(args.data_dir))
    source = _address_source(settings, args.addresses)
    tty = sys.stderr.isatty()

    def show(stats: SimulationStats) -> None:
        print(("\r" if tty else "") + stats.line(), end="" if tty else "\n", file=sys.stderr, flush=True)

    stats = asyncio.run(
        simulate(
            url=args.url,
            rate=args.rate,
            duration=args.duration or None,
            signing_key=key,
            addresses=source,
            activities=max(1, args.activities),
            progress=show,
            progress_every=0.5 if tty else 5.0,
        )
    )
    if tty:
        print(file=sys.stderr)
    return 0 if stats.accepted else 1


def signing_key(settings: Settings, data_dir: Path) -> str:
    """The key to sign with: the configured one, else the key ``chainfeed dev`` made."""
    if settings.alchemy_signing_keys:
        return settings.alchemy_signing_keys[0]
    secrets_file = data_dir / "dev-secrets.json"
    if secrets_file.exists():
        key: str = json.loads(secrets_file.read_text())["signing_key"]
        return key
    raise ConfigError(
        "CHAINFEED_ALCHEMY_SIGNING_KEYS", f"is required (or run `chainfeed dev` in {data_dir.parent})"
    )


def _address_source(settings: Settings, listed: str | None) -> AddressSource:
    if listed:
        try:
            fixed = [normalize_address(part) for part in listed.split(",") if part.strip()]
        except ValidationError as exc:
            raise ConfigError("--addresses", str(exc)) from None

        async def given() -> Sequence[str]:
            return fixed

        return given
    if not settings.database_url:
        raise ConfigError("CHAINFEED_DATABASE_URL", "or --addresses is required to choose the addresses")
    return watched_addresses(settings.database_url)


def watched_addresses(database_url: str) -> AddressSource:
    """The watched addresses, newest first; refuses to start with none (nothing would be seen)."""

    async def read() -> Sequence[str]:
        async with short_pool(database_url) as pool:
            addresses = await recently_watched(pool, limit=_ADDRESS_LIMIT)
        if not addresses:
            raise ConfigError("--addresses", "nobody watches any address yet; watch one or pass --addresses")
        return addresses

    return read


def run_in_background(*, url: str, rate: float, signing_key: str, database_url: str) -> threading.Event:
    """``dev --simulate``: simulate in a daemon thread once the app answers; set the event to stop.

    Progress goes to the log every 10 s, between the app's own lines.
    """
    stop = threading.Event()
    _quiet_http_client()

    async def main() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(300):
                if stop.is_set():
                    return
                try:
                    if (await client.get(url.rstrip("/") + "/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            log.info("simulator started", rate=rate, url=url)
            await simulate(
                url=url,
                rate=rate,
                duration=None,
                signing_key=signing_key,
                addresses=watched_addresses(database_url),
                progress=lambda stats: log.info("simulator", progress=stats.line()),
                progress_every=10.0,
                should_stop=stop.is_set,
                client=client,
            )

    def run() -> None:
        try:
            asyncio.run(main())
        except Exception:
            log.exception("simulator stopped")

    threading.Thread(target=run, name="chainfeed-simulator", daemon=True).start()
    return stop


def _quiet_http_client() -> None:
    """httpx logs every request at INFO; the progress line already says what matters."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
