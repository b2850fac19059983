"""Keeps the Alchemy webhook's address list equal to the set of addresses users watch.

The watch-list API records each change durably (``storage.alchemy_sync``) and returns at once;
this worker sends the changes in batches of at most 500 per list, retrying 429/5xx/network errors
with exponential back-off. A 401/403 is logged as an error and pauses sync in this process
until restart (the rows stay dirty, so nothing is lost once the token is fixed).

When sync is not configured the runtime holds :class:`SyncOff` instead, so the watch-list API
calls ``wake()`` either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import structlog

from chainfeed.alchemy_api import AlchemyApi
from chainfeed.config import Settings
from chainfeed.domain.alchemy_sync import MAX_ADDRESSES_PER_CALL, SYNC_BACKOFF, Outcome, classify, patches
from chainfeed.errors import UpstreamError
from chainfeed.observability import metrics
from chainfeed.storage import alchemy_sync as store
from chainfeed.storage.pool import Pool
from chainfeed.workers import supervise

__all__ = ["AddressSync", "AlchemySync", "SyncOff", "full_sync", "sync_settings_summary"]

log = structlog.get_logger(__name__)
#: Delay before retrying rows that Alchemy refused as malformed (an operator should look first).
REJECTED_DELAY = 600.0


class AddressSync(Protocol):
    """What the watch-list API needs of the sync: a nudge after each committed change."""

    def wake(self) -> None:
        """Ask for a round now."""


class SyncOff:
    """Sync is not configured: changes stay recorded (``alchemy sync`` sends them later)."""

    def wake(self) -> None:
        """Nothing to wake."""


class AlchemySync:
    """One process's sync worker; several instances share the work through row leases."""

    def __init__(self, pool: Pool, api: AlchemyApi, *, poll_seconds: float = 1.0) -> None:
        self._pool = pool
        self._api = api
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self.paused_reason: str | None = None

    def wake(self) -> None:
        """Ask for a round now (the watch-list API calls this after a commit)."""
        self._wake.set()

    async def run(self) -> None:
        """Worker: a round on every wake-up and at least every poll interval, until cancelled.

        After an authorisation failure rounds do nothing until restart (see the module).
        """
        log.info("alchemy sync started", webhook_id=self._api.webhook_id)
        try:
            await supervise("alchemy-sync", self._round, idle=self._sleep)
        finally:
            await self._api.aclose()

    async def _round(self) -> None:
        if self.paused_reason is not None:
            return
        while await self.sync_once():
            pass
        metrics.ALCHEMY_SYNC_PENDING.set(await store.pending_count(self._pool))

    async def _sleep(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
        self._wake.clear()

    async def sync_once(self) -> bool:
        """Send one claimed batch; True when there was something to send (call again)."""
        claim = await store.claim_dirty(self._pool, limit=2 * MAX_ADDRESSES_PER_CALL)
        if not claim.add and not claim.remove:
            return False
        for patch in patches(claim.add, claim.remove):
            status, detail = await self._api.update_addresses(patch.add, patch.remove)
            outcome = classify(status)
            metrics.ALCHEMY_SYNC_REQUESTS.labels(outcome=outcome.value).inc()
            changed = [*patch.add, *patch.remove]
            if outcome is Outcome.OK:
                await store.mark_synced(self._pool, added=list(patch.add), removed=list(patch.remove))
                metrics.ALCHEMY_SYNC_LAST_SUCCESS.set(time.time())
                log.info("alchemy webhook addresses updated", added=len(patch.add), removed=len(patch.remove))
                continue
            error = f"HTTP {status}: {detail}" if status is not None else detail
            if outcome is Outcome.UNAUTHORIZED:
                await store.mark_failed(self._pool, changed, error=error, delay_seconds=0)
                self.paused_reason = error
                log.error(
                    "alchemy sync unauthorized: check CHAINFEED_ALCHEMY_AUTH_TOKEN; paused until restart",
                    status=status,
                    pending=len(changed),
                )
                return False
            attempts = await store.max_attempts(self._pool, changed)
            delay = REJECTED_DELAY if outcome is Outcome.REJECTED else SYNC_BACKOFF.delay(attempts + 1)
            await store.mark_failed(self._pool, changed, error=error, delay_seconds=delay)
            log.warning("alchemy sync failed; will retry", status=status, retry_in_s=round(delay, 1),
                        attempts=attempts + 1, error=error)  # fmt: skip
        return True


async def full_sync(pool: Pool, api: AlchemyApi) -> int:
    """Replace the webhook's whole list with every watched address; returns how many were sent.

    ``PUT`` replaces the list with the first 500; the rest go in ``PATCH`` calls of 500. Raises
    UpstreamError with Alchemy's answer when a call fails (an operator runs this by hand).
    """
    addresses = await store.watched_addresses(pool)
    first, rest = addresses[:MAX_ADDRESSES_PER_CALL], addresses[MAX_ADDRESSES_PER_CALL:]
    status, detail = await api.replace_addresses(first)
    if classify(status) is not Outcome.OK:
        raise UpstreamError(f"Alchemy refused the replacement: HTTP {status}: {detail}")
    for patch in patches(rest, []):
        status, detail = await api.update_addresses(patch.add, ())
        if classify(status) is not Outcome.OK:
            raise UpstreamError(f"Alchemy refused an update: HTTP {status}: {detail}")
    await store.mark_replaced(pool, addresses)
    metrics.ALCHEMY_SYNC_LAST_SUCCESS.set(time.time())
    return len(addresses)


def sync_settings_summary(settings: Settings) -> str:
    """One line for the start-up log saying whether sync is on."""
    if settings.alchemy_sync_enabled:
        return f"alchemy sync on for webhook {settings.alchemy_webhook_id}"
    return "alchemy sync off: set CHAINFEED_ALCHEMY_AUTH_TOKEN and CHAINFEED_ALCHEMY_WEBHOOK_ID to enable"
