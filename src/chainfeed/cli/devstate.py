"""A running ``chainfeed dev`` as the other commands find it: its lock and its state file.

``dev`` keeps two files in its data folder (``./.chainfeed`` unless ``--data-dir`` or
CHAINFEED_DEV_DIR says otherwise), both removed when it stops:

``dev.pid``
    its pid and URL, locked (``flock``) for as long as it runs. A second ``dev`` on the same
    folder finds the lock taken and refuses to start, naming the first, instead of stopping the
    first one's servers as leftovers. The kernel drops the lock when its holder dies, so a file
    left by a run that was killed is simply taken over.
``dev-state.json`` (mode 0600)
    what the other commands need to talk to that instance: the PostgreSQL and Redis URLs, the
    JWT secret, the signing keys, the stream names (as the environment variables that carry
    them), the app's URL, its pid and the pid's start time.

:func:`parse_args` is how ``chainfeed.cli.main`` reads its command line. Every command but
``dev`` and ``serve`` that finds a live instance's state takes its values as defaults: each
variable the environment lacks is set from the state file; a variable the user set wins.
``simulate`` also aims at the instance's URL unless ``--url`` is given. ``dev`` never reads the
state (it must not adopt a stale or foreign instance's servers) and neither does ``serve``
(production is configured explicitly, never by the folder it happens to start in).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chainfeed.errors import ChainFeedError

if TYPE_CHECKING:
    from chainfeed.config import Settings

__all__ = [
    "DEFAULT_DEV_DIR",
    "DEV_DIR_VARIABLE",
    "LOCK_FILE",
    "STATE_FILE",
    "DevAlreadyRunning",
    "DevState",
    "app_url",
    "apply_environment",
    "environment_of",
    "find_running",
    "hold_lock",
    "parse_args",
    "published",
]

#: Where the other commands look for a running ``dev`` (and where ``dev`` keeps its data by default).
DEV_DIR_VARIABLE = "CHAINFEED_DEV_DIR"
DEFAULT_DEV_DIR = ".chainfeed"
LOCK_FILE = "dev.pid"
STATE_FILE = "dev-state.json"
#: Commands that never take a running dev's values (see the module's text).
_OWN_SETTINGS = frozenset({"dev", "serve"})


class DevAlreadyRunning(ChainFeedError):
    """Another ``chainfeed dev`` holds the data folder; ``pid`` and ``url`` say which (None: unknown)."""

    def __init__(self, root: Path, pid: int | None, url: str | None) -> None:
        who = ", ".join(part for part in (f"pid {pid}" if pid else "", url or "") if part)
        super().__init__(
            f"chainfeed dev is already running on {root} ({who or 'pid unknown'}); stop it first,"
            " or give this one a folder of its own with --data-dir"
        )
        self.pid = pid
        self.url = url


def app_url(host: str, port: int) -> str:
    """The URL a local client reaches an app listening on ``host``:``port`` at."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a comparison
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- the lock ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_lock(root: Path, *, url: str) -> Iterator[None]:
    """Hold ``root/dev.pid`` (with our pid and ``url`` in it) for the block; removed afterwards.

    Raises :class:`DevAlreadyRunning` at once when another process holds it.
    """
    path = root / LOCK_FILE
    fd = _lock(path)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "url": url}).encode(), 0)
        yield
    finally:
        # Removed while still locked: a process that opened the old file meanwhile sees it is gone.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def _lock(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, url = _holder(fd)
            os.close(fd)
            raise DevAlreadyRunning(path.parent, pid, url) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)  # the holder removed this file as we locked it: lock the one at ``path`` now


def _holder(fd: int) -> tuple[int | None, str | None]:
    """The pid and URL the lock's holder wrote (it writes them right after locking: wait a moment)."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            raw = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            raw = None
        if isinstance(raw, dict):
            pid, url = raw.get("pid"), raw.get("url")
            return (pid if isinstance(pid, int) else None), (url if isinstance(url, str) else None)
        if time.monotonic() > deadline:
            return None, None
        time.sleep(0.05)


# -- the state file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevState:
    """What ``dev-state.json`` says about a running instance."""

    pid: int
    url: str
    data_dir: str
    #: Environment variable -> value: what the other commands take as defaults.
    environment: dict[str, str]
    #: When the pid started (Linux clock ticks since boot): a reused pid is not mistaken for dev.
    started: int | None = None

    def alive(self) -> bool:
        """Whether the process that wrote the state still runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, as another user
        if self.started is None:
            return True
        started = _process_start(self.pid)
        return started is None or started == self.started

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started": self.started,
            "url": self.url,
            "data_dir": self.data_dir,
            "environment": self.environment,
        }

    @classmethod
    def from_json(cls, raw: Any) -> DevState | None:
        """The state in ``raw`` (parsed JSON), or None when it is not one."""
        try:
            environment = raw["environment"]
            started = raw.get("started")
            return cls(
                pid=int(raw["pid"]),
                url=str(raw["url"]),
                data_dir=str(raw.get("data_dir", "")),
                environment={str(k): str(v) for k, v in environment.items()},
                started=None if started is None else int(started),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            return None


def environment_of(settings: Settings) -> dict[str, str]:
    """The variables that make another command talk to the same PostgreSQL, Redis and streams."""
    values = {
        "CHAINFEED_DATABASE_URL": settings.database_url or "",
        "CHAINFEED_REDIS_URL": settings.redis_url or "",
        "CHAINFEED_JWT_SECRET": settings.jwt_secret,
        "CHAINFEED_ALCHEMY_SIGNING_KEYS": ",".join(settings.alchemy_signing_keys),
        "CHAINFEED_STREAM": settings.stream,
        "CHAINFEED_DEAD_LETTER_STREAM": settings.dead_letter_stream,
        "CHAINFEED_CONSUMER_GROUP": settings.consumer_group,
    }
    return {name: value for name, value in values.items() if value}


@contextlib.contextmanager
def published(root: Path, *, url: str, environment: Mapping[str, str]) -> Iterator[Path]:
    """Write ``root/dev-state.json`` (mode 0600) for the block; removed afterwards."""
    pid = os.getpid()
    state = DevState(pid=pid, url=url, data_dir=str(root), environment=dict(environment),
                     started=_process_start(pid))  # fmt: skip
    path = root / STATE_FILE
    tmp = root / f".{STATE_FILE}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # also when a leftover temporary file had another mode
        json.dump(state.as_json(), out, indent=2)
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def find_running(root: Path) -> DevState | None:
    """The state of the ``dev`` running on ``root``; None when there is none (or its process is gone)."""
    try:
        raw = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    state = DevState.from_json(raw)
    return state if state is not None and state.alive() else None


def apply_environment(state: DevState, environ: MutableMapping[str, str]) -> list[str]:
    """Set each of the state's variables that ``environ`` lacks (or has blank); returns their names."""
    applied = []
    for name, value in state.environment.items():
        if not environ.get(name, "").strip():
            environ[name] = value
            applied.append(name)
    return applied


def _process_start(pid: int) -> int | None:
    """The start time of ``pid`` from /proc (field 22 of its stat line); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


# -- the hook in main() -----------------------------------------------------------------------------


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with a running dev's values as defaults (see the module's text).

    CHAINFEED_DEV_DIR, when set, is the default ``--data-dir`` of ``dev`` and ``simulate`` and
    the folder every command looks in; otherwise ``./.chainfeed`` (``simulate --data-dir``: there).
    """
    env = os.environ if environ is None else environ
    commands = _commands(parser)
    configured = env.get(DEV_DIR_VARIABLE, "").strip()
    if configured:
        for name in ("dev", "simulate"):
            if name in commands:
                commands[name].set_defaults(data_dir=configured)
    simulate = commands.get("simulate")
    default_url = simulate.get_default("url") if simulate else None
    if simulate:
        simulate.set_defaults(url=None)  # None after parsing: --url was not given
    args = parser.parse_args(argv)
    state = None
    if getattr(args, "command", None) not in _OWN_SETTINGS:
        state = find_running(Path(getattr(args, "data_dir", None) or configured or DEFAULT_DEV_DIR))
        if state is not None:
            apply_environment(state, env)
    if getattr(args, "command", None) == "simulate" and args.url is None:
        args.url = state.url if state else default_url
    return args


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to reach the sub-parsers.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
