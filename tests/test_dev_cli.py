"""``chainfeed dev`` as a new user meets it: one instance per folder, stopped by any stop signal,
a busy port refused up front, and the other commands finding the running instance by themselves."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chainfeed.cli import devmode, devstate
from chainfeed.cli.parser import build_parser
from chainfeed.devtools.embedded import free_port
from chainfeed.domain.tokens import decode_token
from chainfeed.errors import ChainFeedError

CLI = [sys.executable, "-m", "chainfeed"]
STARTUP_TIMEOUT = 60


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINFEED_")}
    env.update(extra)
    return env


def _default_sigint() -> None:
    """SIGINT as a terminal gives it, whatever the suite inherited (see tests/test_cli.py)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Dev:
    """One ``chainfeed dev`` subprocess in ``cwd``; its output goes to a file (a pipe could fill)."""

    def __init__(self, cwd: Path, port: int, *extra: str) -> None:
        self.cwd = cwd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / f"dev-{port}-{time.monotonic_ns()}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [*CLI, "dev", "--port", str(port), *extra],
                cwd=cwd,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_sigint,  # noqa: PLW1509 - the child only resets a signal, then execs
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dev exited {self.proc.returncode}:\n{self.output()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"chainfeed dev did not answer /healthz in time:\n{self.output()}")

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chainfeed dev did not exit within {timeout}s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    """A fresh folder others may traverse (the embedded PostgreSQL runs as its own user)."""
    path = Path(tempfile.mkdtemp(prefix="chainfeed-devcli-"))
    path.chmod(0o755)
    yield path
    _stop_leftovers(path / ".chainfeed")
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def devs() -> Iterator[list[Dev]]:
    """Every dev a test starts; whatever still runs at the end is stopped (Ctrl-C, then kill)."""
    started: list[Dev] = []
    yield started
    for dev in started:
        if dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGINT)
            try:
                dev.proc.wait(30)
            except subprocess.TimeoutExpired:
                dev.kill()


def _stop_leftovers(root: Path) -> None:
    """Stop servers a failed test may have left running on ``root`` (by their own pid files)."""
    for pidfile in (root / "redis" / "redis.pid", root / "postgres" / "postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)


def _server_pids(root: Path) -> dict[str, int]:
    return {
        "redis": int((root / "redis" / "redis.pid").read_text().strip()),
        "postgres": int((root / "postgres" / "postmaster.pid").read_text().split()[0]),
    }


def _banner_value(output: str, name: str) -> str:
    """What the banner line ``  NAME   VALUE`` says."""
    return next(line.split()[1] for line in output.splitlines() if line.split()[:1] == [name])


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _run(cwd: Path, *argv: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], cwd=cwd, env=_clean_env(**env), capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


# -- 1. one dev per data folder ---------------------------------------------------------------------


def test_lock_names_its_holder_and_a_stale_pid_file_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / devstate.LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "url": "http://old"}))
    with devstate.hold_lock(tmp_path, url="http://127.0.0.1:8123"):
        assert json.loads((tmp_path / devstate.LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(devstate.DevAlreadyRunning) as refused, devstate.hold_lock(tmp_path, url="x"):
            pass
        assert f"pid {os.getpid()}" in str(refused.value)
        assert "http://127.0.0.1:8123" in str(refused.value)
    assert not (tmp_path / devstate.LOCK_FILE).exists()
    with devstate.hold_lock(tmp_path, url="again"):  # released: free again
        pass


def test_a_second_dev_in_the_same_folder_refuses_and_leaves_the_first_running(
    dev_dir: Path, devs: list[Dev]
) -> None:
    root = dev_dir / ".chainfeed"
    root.mkdir()
    # Left by a run that was killed: a pid file of a process that is gone is taken over ...
    (root / devstate.LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "url": "http://127.0.0.1:1"}))
    # ... and dev never takes a state file's values, even one that looks alive (here: our own pid).
    bogus = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    state = devstate.DevState(pid=os.getpid(), url="http://127.0.0.1:1", data_dir=str(root),
                              environment={"CHAINFEED_DATABASE_URL": bogus},
                              started=devstate._process_start(os.getpid()))  # fmt: skip
    (root / devstate.STATE_FILE).write_text(json.dumps(state.as_json()))

    first = Dev(dev_dir, free_port())
    devs.append(first)
    first.wait_healthy()
    assert bogus not in first.output()

    second = _run(dev_dir, "dev", "--port", str(free_port()))
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"pid {first.proc.pid}" in second.stderr
    assert first.url in second.stderr
    assert "ChainFeed dev is starting" not in second.stdout
    # The first one's servers were left alone: it is still ready (PostgreSQL and Redis answer).
    assert httpx.get(f"{first.url}/readyz", timeout=5).status_code == 200
    assert json.loads((root / devstate.LOCK_FILE).read_text()) == {"pid": first.proc.pid, "url": first.url}

    first.proc.send_signal(signal.SIGINT)
    assert first.wait() == 130
    assert not (root / devstate.LOCK_FILE).exists()
    assert not (root / devstate.STATE_FILE).exists()


# -- 2. SIGTERM and SIGHUP stop it as Ctrl-C does ---------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_the_embedded_servers(dev_dir: Path, devs: list[Dev], signum: int) -> None:
    dev = Dev(dev_dir, free_port())
    devs.append(dev)
    dev.wait_healthy()
    root = dev_dir / ".chainfeed"
    pids = _server_pids(root)
    ports = {name: _port_of(_banner_value(dev.output(), name)) for name in ("postgres", "redis")}
    assert all(_alive(pid) for pid in pids.values())
    assert all(_accepts(port) for port in ports.values())

    dev.proc.send_signal(signum)
    code = dev.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, pid in pids.items() if _alive(pid)], dev.output()
    assert not [name for name, port in ports.items() if _accepts(port)]
    assert not _accepts(dev.port)
    assert code == 128 + signum  # it stopped its servers and exited, as after Ctrl-C (there: 130)
    assert not (root / devstate.STATE_FILE).exists()
    assert not (root / devstate.LOCK_FILE).exists()


# -- 3. a busy port is refused before anything starts -----------------------------------------------


def test_check_port_refuses_a_busy_port_and_suggests_another() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ChainFeedError, match=rf"port {port} on 127\.0\.0\.1 is already in use.*--port"):
            devmode._check_port("127.0.0.1", port)
    devmode._check_port("127.0.0.1", free_port())


def test_dev_on_a_busy_port_refuses_before_the_banner(dev_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run(dev_dir, "dev", "--port", str(port))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ChainFeed dev is starting" not in out.stdout
    assert "Errno 98" not in out.stdout + out.stderr
    [line] = out.stderr.strip().splitlines()
    assert f"port {port}" in line
    assert "--port" in line
    # Nothing was started: no embedded server was ever initialised, no lock is left behind.
    assert not (dev_dir / ".chainfeed" / "postgres").exists()
    assert not (dev_dir / ".chainfeed" / "redis").exists()
    assert not (dev_dir / ".chainfeed" / devstate.LOCK_FILE).exists()


# -- 4. the other commands find the running dev ------------------------------------------------------


def test_commands_run_beside_dev_need_no_exported_variable(dev_dir: Path, devs: list[Dev]) -> None:
    dev = Dev(dev_dir, free_port())
    devs.append(dev)
    dev.wait_healthy()
    root = dev_dir / ".chainfeed"
    for argv in (["stream", "info"], ["dlq", "list"], ["simulate", "--rate", "2", "--duration", "5"]):
        out = _run(dev_dir, *argv)
        assert out.returncode == 0, f"{argv}: {out.stdout}{out.stderr}"
    token = _run(dev_dir, "token", "demo")
    assert token.returncode == 0, token.stderr
    secret = json.loads((root / "dev-secrets.json").read_text())["jwt_secret"]
    assert decode_token(token.stdout.strip(), secret=secret).user_id >= 1
    assert (root / devstate.STATE_FILE).stat().st_mode & 0o777 == 0o600

    # What the user exported wins over what dev says.
    elsewhere = _run(dev_dir, "stream", "info", CHAINFEED_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert elsewhere.returncode == 1
    assert "cannot reach Redis" in elsewhere.stderr

    dev.proc.send_signal(signal.SIGINT)
    assert dev.wait() == 130
    # Stopped, it is no longer found: the commands say again what they lack.
    after = _run(dev_dir, "stream", "info")
    assert after.returncode == 1
    assert "CHAINFEED_REDIS_URL" in after.stderr


def _live_state(root: Path, **environment: str) -> devstate.DevState:
    pid = os.getpid()
    state = devstate.DevState(pid=pid, url="http://127.0.0.1:9999", data_dir=str(root),
                              environment=environment, started=devstate._process_start(pid))  # fmt: skip
    (root / devstate.STATE_FILE).write_text(json.dumps(state.as_json()))
    return state


def _parse(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    return devstate.parse_args(build_parser(), argv, env)


def test_the_hook_fills_only_what_the_environment_lacks(tmp_path: Path) -> None:
    _live_state(tmp_path, CHAINFEED_REDIS_URL="redis://dev/0", CHAINFEED_JWT_SECRET="dev-secret")
    env = {devstate.DEV_DIR_VARIABLE: str(tmp_path), "CHAINFEED_REDIS_URL": "redis://mine/0"}
    _parse(["token", "demo"], env)
    assert env["CHAINFEED_REDIS_URL"] == "redis://mine/0"
    assert env["CHAINFEED_JWT_SECRET"] == "dev-secret"
    # simulate aims at the running app unless told otherwise; its --data-dir is where it looks.
    assert _parse(["simulate"], {devstate.DEV_DIR_VARIABLE: str(tmp_path)}).url == "http://127.0.0.1:9999"
    assert _parse(["simulate", "--data-dir", str(tmp_path)], {}).url == "http://127.0.0.1:9999"
    assert _parse(["simulate", "--url", "http://x:1", "--data-dir", str(tmp_path)], {}).url == "http://x:1"
    # CHAINFEED_DEV_DIR is also dev's default data folder.
    assert _parse(["dev"], {devstate.DEV_DIR_VARIABLE: str(tmp_path)}).data_dir == str(tmp_path)


@pytest.mark.parametrize("command", [["dev"], ["serve"]])
def test_dev_and_serve_never_take_a_running_devs_values(tmp_path: Path, command: list[str]) -> None:
    _live_state(tmp_path, CHAINFEED_DATABASE_URL="postgresql://dev/x")
    env = {devstate.DEV_DIR_VARIABLE: str(tmp_path)}
    _parse(command, env)
    assert "CHAINFEED_DATABASE_URL" not in env


def test_a_state_whose_process_is_gone_is_ignored(tmp_path: Path) -> None:
    state = _live_state(tmp_path, CHAINFEED_DATABASE_URL="postgresql://dev/x")
    stale = devstate.DevState(**{**state.__dict__, "pid": _dead_pid()})
    (tmp_path / devstate.STATE_FILE).write_text(json.dumps(stale.as_json()))
    env = {devstate.DEV_DIR_VARIABLE: str(tmp_path)}
    assert _parse(["simulate"], env).url == "http://127.0.0.1:8000"
    assert "CHAINFEED_DATABASE_URL" not in env
    # A live pid that started at another time is a reused pid, not that dev.
    reused = devstate.DevState(**{**state.__dict__, "started": (state.started or 0) + 1})
    (tmp_path / devstate.STATE_FILE).write_text(json.dumps(reused.as_json()))
    assert devstate.find_running(tmp_path) is None
