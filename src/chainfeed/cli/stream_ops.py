"""``chainfeed stream info`` and ``chainfeed dlq list|replay|purge``: the stream as an operator sees it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from chainfeed import config
from chainfeed.broker.admin import StreamInfo, dlq_list, dlq_purge, dlq_replay, entry_age_seconds, stream_info
from chainfeed.broker.client import Redis, operator_client
from chainfeed.config import Settings
from chainfeed.errors import ConfigError

__all__ = ["info_command", "list_command", "purge_command", "replay_command"]

_T = TypeVar("_T")


def _with_redis(work: Callable[[Redis, Settings], Awaitable[_T]]) -> _T:
    settings = config.load(dev=True)
    if not settings.redis_url:
        raise ConfigError("CHAINFEED_REDIS_URL", "is required")
    url = settings.redis_url

    async def run() -> _T:
        redis = operator_client(url)
        try:
            return await work(redis, settings)
        finally:
            await redis.aclose()

    return asyncio.run(run())


def info_command(args: argparse.Namespace) -> int:
    """Print what XINFO STREAM/GROUPS/CONSUMERS and XPENDING say, readable."""
    info = _with_redis(lambda redis, s: stream_info(redis, s.stream, s.dead_letter_stream))
    print(json.dumps(info.as_dict(), indent=2) if args.json else _render(info))
    return 0


def _age(entry_id: str | None) -> str:
    return f"{entry_id} ({entry_age_seconds(entry_id):.1f}s old)" if entry_id else "-"


def _render(info: StreamInfo) -> str:
    lines = [
        f"stream        {info.stream}",
        f"length        {info.length}",
        f"first entry   {_age(info.first_entry_id)}",
        f"last entry    {_age(info.last_entry_id)}",
        f"dead letters  {info.dead_letters}",
    ]
    if not info.groups:
        lines.append("groups        none (no consumer has started yet)")
    for group in info.groups:
        lines += [
            f"group         {group.name}",
            f"  last delivered  {group.last_delivered_id}",
            f"  pending         {group.pending}"
            + (f" (oldest {_age(group.oldest_pending_id)})" if group.oldest_pending_id else ""),
            f"  lag             {group.lag_seconds:.1f}s (age of the oldest unacknowledged entry)",
            f"  consumers       {sum(c.live for c in group.consumers)} live ({len(group.consumers)} listed)",
        ]
        lines += [
            f"    {c.name:<32} {_state(c.live)} pending {c.pending:<6} idle {_idle(c.idle_seconds)}"
            for c in group.consumers
        ]
    return "\n".join(lines)


def _state(live: bool) -> str:
    return "live   " if live else "stopped"


def _idle(seconds: float | None) -> str:
    return "- (nothing delivered yet)" if seconds is None else f"{seconds:.1f}s"


def list_command(args: argparse.Namespace) -> int:
    """Print dead letters with their original id, user, deliveries and error."""
    letters = _with_redis(lambda redis, s: dlq_list(redis, s.dead_letter_stream, limit=args.limit))
    if args.json:
        print(json.dumps([{"id": letter.id, **letter.fields} for letter in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        f = letter.fields
        print(
            f"{letter.id}  original {f.get('original_id', '?')}  user {f.get('user_id', '?')}"
            f"  type {f.get('type', '?')}  deliveries {f.get('deliveries', '?')}  error: {f.get('error', '')}"
        )
    return 0


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    print(
        f"\rreplaying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if done == total:
        print(file=sys.stderr)


def replay_command(args: argparse.Namespace) -> int:
    """Move dead letters back onto the stream, atomically one by one, with a progress bar."""
    count = _with_redis(
        lambda redis, s: dlq_replay(
            redis, s.dead_letter_stream, s.stream, ids=None if args.all else args.ids, progress=_progress
        )
    )
    print(f"replayed {count} dead letter(s) onto the stream")
    return 0


def purge_command(args: argparse.Namespace) -> int:
    """Delete every dead letter, after confirmation unless --yes."""
    if not args.yes:
        answer = (
            input("Delete every dead letter? This cannot be undone. [y/N] ") if sys.stdin.isatty() else ""
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not purged (use --yes to skip this question)", file=sys.stderr)
            return 1
    count = _with_redis(lambda redis, s: dlq_purge(redis, s.dead_letter_stream))
    print(f"purged {count} dead letter(s)")
    return 0
