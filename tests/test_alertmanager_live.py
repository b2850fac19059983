"""A real alert of monitoring/alerts.yml reaches a person through the committed Alertmanager routing.

Debian's ``prometheus`` scrapes a running ChainFeed (the harness' local rendering of
``monitoring/prometheus/prometheus.yml``, rules at ``for: 2s``) and sends to Debian's
``prometheus-alertmanager``, which runs a copy of ``monitoring/alertmanager/alertmanager.yml``
with shorter grouping waits and every receiver pointed at an HTTP server of this test on
127.0.0.1: the committed webhook, plus the PagerDuty and Slack examples of the file's comments
(with the notification template), so those are exercised as documented.

Two real faults: unsigned webhooks (WebhookSignatureFailures, warning: the tickets receiver) and
then the app stopped (ChainFeedDown, critical: the pager, while ChainFeedInstanceDown is inhibited).
The inhibition rules are also checked with hand-made alerts. Skipped when prometheus or
alertmanager is missing, unless CI is set (then it fails); scripts/install-test-deps installs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, AsyncExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from chainfeed.devtools.embedded import free_port
from tests.conftest import AppFactory
from tests.ingest_support import activity, address, post_webhook, webhook
from tests.prometheus_harness import (
    MONITORING,
    alert_rules,
    load_yaml,
    prometheus_server,
    render_local_config,
    require_tool,
    stop_process,
)

ALERTMANAGER = MONITORING / "alertmanager"
ALERTMANAGER_CONFIG = ALERTMANAGER / "alertmanager.yml"
#: Unsigned webhooks in the burst: the rule wants more than 0.1/s over 5 minutes, i.e. > 30.
BAD_SIGNATURES = 60
DEADLINE = 60.0
PAGERDUTY_KEY = "test-routing-key"

T = TypeVar("T")


# --- configuration -------------------------------------------------------------------------------
def commented_receivers(text: str | None = None) -> list[dict[str, Any]]:
    """The receivers shown in alertmanager.yml's comments (PagerDuty, Slack), parsed.

    A block starts at a ``#   - name: ...`` line and runs while lines are ``#     ...``.
    """
    lines = (text if text is not None else ALERTMANAGER_CONFIG.read_text(encoding="utf-8")).splitlines()
    found: list[dict[str, Any]] = []
    index = 0
    while index < len(lines):
        if re.fullmatch(r"#   - name: \S+", lines[index]):
            block = [lines[index][4:]]
            index += 1
            while index < len(lines) and lines[index].startswith("#     "):
                block.append(lines[index][4:])
                index += 1
            found.extend(yaml.safe_load("\n".join(block)))
        else:
            index += 1
    return found


def render_alertmanager_config(directory: Path, *, receiver_url: str, wait: str = "1s") -> Path:
    """Write a copy of alertmanager.yml (and its templates) into ``directory`` for a local run.

    Routing, inhibition and templates are the committed ones; ``group_wait`` and
    ``group_interval`` become ``wait`` on every route. Each receiver's webhook posts to
    ``{receiver_url}/{receiver}/webhook``, and the commented example for that receiver is added
    beside it: PagerDuty posting to ``.../pagerduty``, Slack to ``.../slack`` (their secret files
    written here).
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = load_yaml(ALERTMANAGER_CONFIG)

    def shorten(route: dict[str, Any], *, root: bool) -> None:
        for key in ("group_wait", "group_interval"):
            if root or key in route:
                route[key] = wait
        for child in route.get("routes", []):
            shorten(child, root=False)

    shorten(config["route"], root=True)
    examples = {example["name"]: example for example in commented_receivers()}
    for receiver in config["receivers"]:
        name = receiver["name"]
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{receiver_url}/{name}/webhook"
        for key, integrations in copy.deepcopy(examples.get(name, {})).items():
            if key == "name":
                continue
            for integration in integrations:
                if "routing_key_file" in integration:
                    secret = directory / f"{name}-pagerduty-key"
                    secret.write_text(PAGERDUTY_KEY, encoding="utf-8")
                    integration["routing_key_file"] = str(secret)
                    integration["url"] = f"{receiver_url}/{name}/pagerduty"
                if "api_url_file" in integration:
                    secret = directory / f"{name}-slack-url"
                    secret.write_text(f"{receiver_url}/{name}/slack", encoding="utf-8")
                    integration["api_url_file"] = str(secret)
            receiver[key] = integrations
    shutil.copytree(ALERTMANAGER / "templates", directory / "templates", dirs_exist_ok=True)
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def send_alerts_to(prometheus_config: Path, alertmanager: str) -> None:
    """Point a rendered prometheus.yml's ``alerting:`` (the compose one) at ``alertmanager``."""
    config = load_yaml(prometheus_config)
    (manager,) = config["alerting"]["alertmanagers"]
    manager["static_configs"] = [{"targets": [alertmanager]}]
    prometheus_config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


# --- processes -----------------------------------------------------------------------------------
def alertmanager_binary() -> str:
    """Upstream's ``alertmanager`` or Debian's ``prometheus-alertmanager``."""
    return shutil.which("alertmanager") or require_tool("prometheus-alertmanager")


@contextlib.contextmanager
def alertmanager_server(config: Path, *, port: int, ready_timeout: float = 30.0) -> Iterator[str]:
    """Run Alertmanager on ``config`` at 127.0.0.1:``port`` (no cluster); yields its base URL."""
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="chainfeed-alertmanager-") as scratch:
        log_path = Path(scratch) / "alertmanager.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    alertmanager_binary(),
                    f"--config.file={config}",
                    f"--storage.path={scratch}/data",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"alertmanager exited with {process.returncode}:\n{log_path.read_text()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/-/ready", timeout=1.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"alertmanager not ready after {ready_timeout} s:\n{log_path.read_text()}"
                    )
                time.sleep(0.1)
            yield base
        finally:
            stop_process(process)


class NotificationSink:
    """An HTTP server on 127.0.0.1 that records every POST: (path, decoded JSON body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink._lock:
                    sink.posts.append((self.path, json.loads(body)))
                # PagerDuty's Events API answers 202; Slack and webhooks take any 2xx.
                answer = b'{"status": "success"}'
                self.send_response(202 if self.path.endswith("/pagerduty") else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="sink", daemon=True)

    def __enter__(self) -> NotificationSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def received(self, path: str) -> list[Any]:
        """The bodies posted to ``path`` so far."""
        with self._lock:
            return [body for where, body in self.posts if where == path]

    def firing(self, path: str, alertname: str) -> list[dict[str, Any]]:
        """Firing alerts named ``alertname`` in the webhook notifications posted to ``path``."""
        return [
            alert
            for body in self.received(path)
            for alert in body["alerts"]
            if alert["labels"]["alertname"] == alertname and alert["status"] == "firing"
        ]


# --- helpers -------------------------------------------------------------------------------------
def _rule(name: str) -> dict[str, Any]:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == name]
    return rule


def _runbook(name: str) -> str:
    return " ".join(_rule(name)["annotations"]["runbook"].split())


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _in_thread(stack: AsyncExitStack, manager: AbstractContextManager[T]) -> T:
    """Enter a blocking context manager off the loop (which serves the app meanwhile)."""
    value = await asyncio.to_thread(manager.__enter__)
    stack.push_async_callback(asyncio.to_thread, manager.__exit__, None, None, None)
    return value


async def _until(check: Callable[[], Awaitable[T | None]], *, deadline: float, what: str) -> T:
    loop = asyncio.get_running_loop()
    while True:
        result = await check()
        if result:
            return result
        assert loop.time() < deadline, f"{what}: not before the deadline"
        await asyncio.sleep(0.2)


async def _active(alertmanager: httpx.AsyncClient, alertname: str) -> list[dict[str, Any]]:
    """Alertmanager's alerts named ``alertname``, with their status (active, suppressed)."""
    answer = await alertmanager.get("/api/v2/alerts", params={"filter": f'alertname="{alertname}"'})
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()
    return alerts


# --- the live check ------------------------------------------------------------------------------
async def test_real_alerts_reach_their_receivers_with_summary_and_runbook(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    """Warning -> tickets, critical -> pager, each with its summary and runbook; one page when down."""
    require_tool("prometheus")
    alertmanager_binary()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    async with AsyncExitStack() as stack:
        sink = stack.enter_context(NotificationSink())
        app = await app_factory()
        am_port = free_port()
        am_config = render_alertmanager_config(tmp_path / "alertmanager", receiver_url=sink.url)
        prometheus_config = render_local_config(
            _mkdir(tmp_path / "prometheus"), target=f"127.0.0.1:{app.port}", rule_for="2s"
        )
        send_alerts_to(prometheus_config, f"127.0.0.1:{am_port}")
        am_base = await _in_thread(stack, alertmanager_server(am_config, port=am_port))
        prometheus_base = await _in_thread(stack, prometheus_server(prometheus_config, port=free_port()))
        prometheus = await stack.enter_async_context(httpx.AsyncClient(base_url=prometheus_base, timeout=5))
        alertmanager = await stack.enter_async_context(httpx.AsyncClient(base_url=am_base, timeout=5))

        async def query(expr: str) -> list[dict[str, Any]]:
            answer = (await prometheus.get("/api/v1/query", params={"query": expr})).json()
            result: list[dict[str, Any]] = answer["data"]["result"]
            return result

        async def scraped() -> bool:
            up = await query('up{job="chainfeed"} == 1')
            return bool(up) and not await _active(alertmanager, "ChainFeedDown")

        # A quiet start: the app is scraped, and no "down" from before the first scrape lingers.
        await _until(scraped, deadline=deadline, what="the app scraped")

        # Fault 1: forged webhooks. The series exists before the burst, so all of it is a rate.
        unsigned = webhook(activity("external", frm=address(1), to=address(2)))
        assert (await post_webhook(app, unsigned, key=None)).status_code == 401

        async def series() -> list[dict[str, Any]]:
            return await query('webhook_requests_total{outcome="bad_signature"}')

        await _until(series, deadline=deadline, what="bad_signature scraped")
        for _ in range(BAD_SIGNATURES):
            assert (await post_webhook(app, unsigned, key=None)).status_code == 401

        async def ticket() -> list[dict[str, Any]]:
            return sink.firing("/tickets/webhook", "WebhookSignatureFailures")

        (alert, *_) = await _until(ticket, deadline=deadline, what="WebhookSignatureFailures at tickets")
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["service"] == "chainfeed"
        summary = alert["annotations"]["summary"]
        assert "bad signature" in summary
        assert " ".join(alert["annotations"]["runbook"].split()) == _runbook("WebhookSignatureFailures")
        # The receiver's integrations are notified in parallel: Slack's post may come a little later.

        async def slacked() -> list[Any]:
            return sink.received("/tickets/slack")

        (slack, *_) = await _until(slacked, deadline=deadline, what="the Slack message")
        (attachment,) = slack["attachments"]
        assert attachment["title"].startswith("[FIRING:1] WebhookSignatureFailures (warning)")
        text = " ".join(attachment["text"].split())
        assert f"Summary: {' '.join(summary.split())}" in text
        assert f"Runbook: {_runbook('WebhookSignatureFailures')}" in text

        # Fault 2: the only instance stops. ChainFeedDown pages; ChainFeedInstanceDown is inhibited.
        await app.stop()

        async def page() -> list[dict[str, Any]]:
            return sink.firing("/pager/webhook", "ChainFeedDown")

        (down, *_) = await _until(page, deadline=deadline, what="ChainFeedDown at the pager")
        assert down["labels"]["severity"] == "critical"
        assert " ".join(down["annotations"]["runbook"].split()) == _runbook("ChainFeedDown")

        async def triggered() -> list[dict[str, Any]]:
            return [e for e in sink.received("/pager/pagerduty") if e["event_action"] == "trigger"]

        events = await _until(triggered, deadline=deadline, what="the PagerDuty event")
        assert events[0]["routing_key"] == PAGERDUTY_KEY
        assert events[0]["payload"]["summary"].startswith("[FIRING:1] ChainFeedDown (critical)")
        details = " ".join(events[0]["payload"]["custom_details"]["alerts"].split())
        assert "FIRING: ChainFeedDown" in details
        assert f"Runbook: {_runbook('ChainFeedDown')}" in details

        async def inhibited() -> list[dict[str, Any]]:
            alerts = await _active(alertmanager, "ChainFeedInstanceDown")
            return [a for a in alerts if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]]

        await _until(inhibited, deadline=deadline, what="ChainFeedInstanceDown inhibited")
        assert sink.firing("/tickets/webhook", "ChainFeedInstanceDown") == []
        assert sink.firing("/pager/webhook", "WebhookSignatureFailures") == []


def test_inhibition_silences_what_the_outage_explains_and_nothing_else(tmp_path: Path) -> None:
    """One instance down hides alerts of that instance only; the whole service down hides the rest."""
    config = render_alertmanager_config(tmp_path, receiver_url="http://127.0.0.1:9")
    with (
        alertmanager_server(config, port=free_port()) as base,
        httpx.Client(base_url=base, timeout=5) as client,
    ):

        def post(*alerts: dict[str, str]) -> None:
            body = [{"labels": {"service": "chainfeed", **labels}} for labels in alerts]
            client.post("/api/v2/alerts", json=body).raise_for_status()

        def states() -> dict[tuple[str, str], str]:
            return {
                (alert["labels"]["alertname"], alert["labels"].get("instance", "")): alert["status"]["state"]
                for alert in client.get("/api/v2/alerts").json()
            }

        down = "10.0.0.5:8000"
        post(
            {"alertname": "ChainFeedInstanceDown", "severity": "warning", "instance": down},
            # A per-instance alert (none of today's rules, which aggregate): on the down instance
            # and on a healthy one.
            {"alertname": "InstanceStageAlert", "severity": "warning", "instance": down},
            {"alertname": "InstanceStageAlert", "severity": "warning", "instance": "10.0.0.6:8000"},
            {"alertname": "RedisStreamBacklog", "severity": "critical", "stream": "feed:stream"},
        )
        assert states() == {
            ("ChainFeedInstanceDown", down): "active",
            ("InstanceStageAlert", down): "suppressed",
            ("InstanceStageAlert", "10.0.0.6:8000"): "active",
            ("RedisStreamBacklog", ""): "active",  # a service-wide backlog is not explained by one instance
        }
        post({"alertname": "ChainFeedDown", "severity": "critical"})
        assert states() == {
            ("ChainFeedDown", ""): "active",
            ("ChainFeedInstanceDown", down): "suppressed",
            ("InstanceStageAlert", down): "suppressed",
            ("InstanceStageAlert", "10.0.0.6:8000"): "suppressed",
            ("RedisStreamBacklog", ""): "suppressed",
        }
