"""Supervised background workers: one loop shape, one outage policy, one way to log.

Every long-running loop of the service (outbox relay, stream consumer and claimer, maintenance,
the PUB/SUB subscriber, the Alchemy sync) is a *step* run again and again by :func:`supervise`.
A step that fails because Redis or PostgreSQL is unreachable pauses the worker with
:data:`~chainfeed.domain.retry.OUTAGE_BACKOFF`, logged once when the outage starts and once when
the worker resumes (not once a second); any other failure is logged with its traceback and paused
the same way. A worker never exits on an error: only cancellation (shutdown) ends it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from chainfeed.broker.client import REDIS_FAILURES
from chainfeed.domain.retry import OUTAGE_BACKOFF, Backoff
from chainfeed.storage.pool import POSTGRES_FAILURES

__all__ = ["OUTAGES", "supervise"]

log = structlog.get_logger(__name__)

#: What an outage of either server looks like to a worker: wait and retry, never give up.
OUTAGES: tuple[type[BaseException], ...] = (*REDIS_FAILURES, *POSTGRES_FAILURES)


async def supervise(
    name: str,
    step: Callable[[], Awaitable[object]],
    *,
    idle: Callable[[], Awaitable[object]] | None = None,
    backoff: Backoff = OUTAGE_BACKOFF,
) -> None:
    """Run ``step`` until cancelled; after each step that succeeded, ``await idle()`` (if given)."""
    failures = 0
    while True:
        try:
            await step()
        except OUTAGES as exc:
            failures += 1
            if failures == 1:
                log.warning("worker paused by an outage", worker=name, error=_describe(exc))
            await asyncio.sleep(backoff.delay(failures))
            continue
        except Exception:
            failures += 1
            log.exception("worker step failed; carrying on", worker=name)
            await asyncio.sleep(backoff.delay(failures))
            continue
        if failures:
            log.info("worker resumed", worker=name, failed_steps=failures)
            failures = 0
        if idle is not None:
            await idle()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
