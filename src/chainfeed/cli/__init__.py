"""``chainfeed``: the command line of the service and its operators.

Every command loads settings once; a bad setting or an unreachable PostgreSQL/Redis ends the
command with one clear line on stderr and exit code 1.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from chainfeed.cli.devstate import parse_args
from chainfeed.cli.parser import build_parser
from chainfeed.errors import ChainFeedError

__all__ = ["build_parser", "main"]


def _handler(name: str) -> Callable[[Any], int]:
    module, _, function = name.partition(":")
    handler: Callable[[Any], int] = getattr(importlib.import_module(module), function)
    return handler


def _unreachable(exc: Exception) -> str | None:
    """The one line for a backing service that cannot be reached (None: not such an error)."""
    if "redis" in sys.modules:
        from chainfeed.broker.client import REDIS_DOWN  # noqa: PLC0415 - redis is loaded already

        if isinstance(exc, REDIS_DOWN):
            return f"cannot reach Redis: {exc}"
    if "asyncpg" in sys.modules:
        from chainfeed.storage.pool import POSTGRES_DOWN  # noqa: PLC0415 - asyncpg is loaded already

        if isinstance(exc, POSTGRES_DOWN):
            return f"cannot reach PostgreSQL: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    # The hook before any handler runs: a `chainfeed dev` running on this folder supplies, as
    # defaults, the settings the environment lacks (chainfeed.cli.devstate).
    args = parse_args(build_parser(), argv)
    try:
        return _handler(args.handler)(args)
    except ChainFeedError as exc:
        print(f"chainfeed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _unreachable(exc)
        if message is None:
            raise
        print(f"chainfeed: {message}", file=sys.stderr)
        return 1
