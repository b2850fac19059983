"""``chainfeed``: the command line of the service and its operators.

Every command loads settings once; a bad setting or an unreachable PostgreSQL/Redis ends the
command with one clear line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError

from chainfeed.cli import alchemy, commands, simulate, stream_ops
from chainfeed.errors import ChainFeedError
from chainfeed.storage.pool import POSTGRES_DOWN

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser for every sub-command (one help style for all)."""
    parser = argparse.ArgumentParser(
        prog="chainfeed",
        description="ChainFeed: real-time push of on-chain activity for the addresses users follow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser(
        "dev", help="run everything locally on embedded PostgreSQL and Redis (./.chainfeed/)"
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    dev.add_argument(
        "--data-dir", default=".chainfeed", help="where embedded data lives (default ./.chainfeed)"
    )
    dev.add_argument(
        "--simulate",
        type=simulate.positive_rate,
        default=None,
        metavar="RATE",
        help="also send RATE synthetic webhooks per second",
    )
    dev.set_defaults(func=commands.dev)

    serve = sub.add_parser("serve", help="run the service against external PostgreSQL and Redis (production)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    serve.set_defaults(func=commands.serve)

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(func=commands.migrate)

    token = sub.add_parser("token", help="print an access token for USERNAME")
    token.add_argument("username")
    token.add_argument(
        "--ttl", type=int, default=None, help="lifetime in seconds (default CHAINFEED_JWT_TTL_SECONDS)"
    )
    token.set_defaults(func=commands.token)

    alchemy.add_parser(sub)
    stream_ops.add_parsers(sub)
    simulate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ChainFeedError as exc:
        print(f"chainfeed: {exc}", file=sys.stderr)
        return 1
    except POSTGRES_DOWN as exc:
        print(f"chainfeed: cannot reach PostgreSQL: {exc}", file=sys.stderr)
        return 1
    except RedisConnectionError as exc:
        print(f"chainfeed: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result
