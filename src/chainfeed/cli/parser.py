"""Every ``chainfeed`` sub-command and its options, in one help style.

Handlers are named as ``"module:function"`` and imported only when their command runs, so
``chainfeed --help`` or ``chainfeed stream info`` does not pay for importing the web app, uvicorn
and every client library.
"""

from __future__ import annotations

import argparse

__all__ = ["build_parser", "positive_rate"]

_COMMANDS = "chainfeed.cli.commands"


def positive_rate(raw: str) -> float:
    """argparse type: a rate above zero."""
    value = float(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser for every sub-command; ``args.handler`` names the function to run."""
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
        "--simulate", type=positive_rate, default=None, metavar="RATE",
        help="also send RATE synthetic webhooks per second",
    )  # fmt: skip
    dev.set_defaults(handler=f"{_COMMANDS}:dev")

    serve = sub.add_parser("serve", help="run the service against external PostgreSQL and Redis (production)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    serve.set_defaults(handler=f"{_COMMANDS}:serve")

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(handler=f"{_COMMANDS}:migrate")

    token = sub.add_parser("token", help="print an access token for USERNAME")
    token.add_argument("username")
    token.add_argument(
        "--ttl", type=int, default=None, help="lifetime in seconds (default CHAINFEED_JWT_TTL_SECONDS)"
    )
    token.set_defaults(handler=f"{_COMMANDS}:token")

    _simulate(sub)
    _stream(sub)
    _quarantine(sub)
    _alchemy(sub)
    return parser


def _simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("simulate", help="send signed synthetic Alchemy webhooks to a running app")
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the app (or its webhook URL); default http://127.0.0.1:8000",
    )
    parser.add_argument("--rate", type=positive_rate, default=5.0, help="webhooks per second (default 5)")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds to run; 0 runs until Ctrl-C (default 30)"
    )
    parser.add_argument(
        "--activities",
        type=int,
        default=2,
        help="activities per webhook (default 2; Alchemy batches a block)",
    )
    parser.add_argument(
        "--addresses",
        default=None,
        help="comma-separated addresses (default: the watch lists in the database)",
    )
    parser.add_argument(
        "--data-dir",
        default=".chainfeed",
        help="where `chainfeed dev` keeps its signing key (default ./.chainfeed)",
    )
    parser.set_defaults(handler="chainfeed.cli.simulate:simulate_command")


def _stream(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ops = "chainfeed.cli.stream_ops"
    stream = sub.add_parser("stream", help="inspect the feed stream and its consumer group")
    stream_actions = stream.add_subparsers(dest="stream_command", required=True, metavar="ACTION")
    info = stream_actions.add_parser("info", help="length, groups, consumers, pending and lag")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=f"{ops}:info_command")

    dlq = sub.add_parser("dlq", help="dead letters: list, replay onto the stream, purge")
    dlq_actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = dlq_actions.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(handler=f"{ops}:list_command")
    replay = dlq_actions.add_parser("replay", help="put dead letters back onto the stream")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id", action="append", dest="ids", metavar="ID", help="a dead letter id (repeatable)"
    )
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.set_defaults(handler=f"{ops}:replay_command")
    purge = dlq_actions.add_parser("purge", help="delete every dead letter")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=f"{ops}:purge_command")


def _quarantine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ops = "chainfeed.cli.quarantine"
    quarantine = sub.add_parser(
        "quarantine", help="Alchemy activities the parser could not use: list, replay"
    )
    actions = quarantine.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show quarantined activities, oldest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="print JSON (with the raw activity)")
    listing.set_defaults(handler=f"{ops}:list_command")
    replay = actions.add_parser("replay", help="run the current parser on them again; store what is usable")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID", type=int,
                       help="a quarantined activity's id from `list` (repeatable)")  # fmt: skip
    which.add_argument("--all", action="store_true", help="every quarantined activity")
    replay.set_defaults(handler=f"{ops}:replay_command")


def _alchemy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alchemy = sub.add_parser("alchemy", help="keep the Alchemy webhook's address list in sync")
    actions = alchemy.add_subparsers(dest="alchemy_command", required=True, metavar="ACTION")
    sync = actions.add_parser(
        "sync", help="send pending watch-list changes now (--full: replace the whole list)"
    )
    sync.add_argument(
        "--full", action="store_true", help="replace the webhook's list with every watched address"
    )
    sync.set_defaults(handler="chainfeed.cli.alchemy:sync_command")
