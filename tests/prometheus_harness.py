"""Drive Prometheus' own tools against ``monitoring/``: promtool, a local config, a real server.

Used by ``test_monitoring.py`` and meant for the live check (a real Prometheus scraping a running
ChainFeed): :func:`render_local_config` turns the compose configuration into one that scrapes a
static ``127.0.0.1:<port>`` target with shortened ``for:`` on every rule, and
:func:`prometheus_server` runs Debian's ``prometheus`` on it. The PromQL helpers extract the metric
names a query reads, and list every name the app exports.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector

from chainfeed.observability import metrics as app_metrics

__all__ = [
    "ALERTS",
    "ALERT_TESTS",
    "COMPOSE_FILE",
    "DASHBOARDS",
    "GRAFANA",
    "HTTP_METRIC_FAMILIES",
    "MONITORING",
    "PROMETHEUS_CONFIG",
    "REPO",
    "alert_rules",
    "app_metric_families",
    "dashboard_queries",
    "exported_metric_names",
    "family_sample_names",
    "grafana_to_promql",
    "load_yaml",
    "metric_names",
    "prometheus_server",
    "render_local_config",
    "require_tool",
    "run",
    "wait_until",
]

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "tests" / "alerts.test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
COMPOSE_FILE = REPO / "docker-compose.yml"

#: The scrape job of the app in prometheus.yml (alerts select ``up{job="chainfeed"}``).
APP_JOB = "chainfeed"

#: Litestar's Prometheus middleware, configured with ``prefix="http"`` in ``chainfeed.web.app``:
#: (family name, type) as prometheus-client reports them (a counter's family drops ``_total``).
HTTP_METRIC_FAMILIES: tuple[tuple[str, str], ...] = (
    ("http_requests", "counter"),
    ("http_request_duration_seconds", "histogram"),
    ("http_requests_in_progress", "gauge"),
    ("http_requests_error", "counter"),
)

#: Series Prometheus itself attaches to every target.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


# --- tools -------------------------------------------------------------------------------------
def require_tool(name: str) -> str:
    """The path of a system tool; skips the test when it is missing, fails under CI.

    ``scripts/install-test-deps`` installs them (``.ci/run`` calls it), so in CI a missing tool is
    a broken install step, not a reason to skip.
    """
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )
    if found:
        return found
    message = f"{name} is not installed: run scripts/install-test-deps"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text (never raises on exit codes)."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def load_yaml(path: Path) -> Any:
    """A YAML file as plain Python data."""
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# --- rules and dashboards --------------------------------------------------------------------
def alert_rules(rules: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every alerting rule of ``monitoring/alerts.yml`` (or of the given rules document)."""
    document = rules if rules is not None else load_yaml(ALERTS)
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every query target, rows' nested panels included."""
    found: list[tuple[str, str]] = []

    def visit(panels: Iterable[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend((panel["title"], target["expr"]) for target in panel.get("targets", []))
            visit(panel.get("panels", []))

    visit(dashboard["panels"])
    return found


def grafana_to_promql(expr: str, *, rate_interval: str = "1m") -> str:
    """A panel query with Grafana's interval variables replaced, ready for Prometheus' API."""
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, rate_interval)
    return expr


# --- PromQL metric names ---------------------------------------------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads.

    A tokenizer, not a parser (``promtool`` checks the syntax): strings, Grafana variables, label
    matchers, ranges and grouping label lists are removed; of the identifiers left, those followed
    by ``(`` are functions or aggregations and the rest, keywords aside, are metric names.
    ``{__name__="x"}`` selectors are not supported (ChainFeed's queries do not use them).
    """
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1m", text)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)  # `sum by (le) (x)`: the aggregation is then followed by `(`
    return {
        match.group(1)
        for match in _IDENTIFIER.finditer(text)
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS
    }


def family_sample_names(name: str, kind: str) -> set[str]:
    """The sample names a metric family of ``kind`` exposes (prometheus-client's conventions)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }.get(kind, ("",))
    return {name + suffix for suffix in suffixes}


def app_metric_families() -> dict[str, str]:
    """{family name: type} of every metric defined in ``chainfeed.observability.metrics``."""
    families: dict[str, str] = {}
    for value in vars(app_metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                families[family.name] = family.type
    return families


def exported_metric_names() -> set[str]:
    """Every sample name a scrape of ChainFeed can return, plus Prometheus' own ``up``."""
    families = dict(app_metric_families())
    families.update(HTTP_METRIC_FAMILIES)
    families.update((family.name, family.type) for family in ProcessCollector(registry=None).collect())
    names = set(PROMETHEUS_SERIES)
    for name, kind in families.items():
        names |= family_sample_names(name, kind)
    return names


# --- a local Prometheus ----------------------------------------------------------------------
def render_local_config(
    directory: Path,
    *,
    target: str,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    rule_for: str | None = "5s",
) -> Path:
    """Write ``prometheus.yml`` + ``alerts.yml`` into ``directory`` for a run on this machine.

    The ``chainfeed`` job scrapes the static ``target`` (``host:port``) instead of Docker's DNS;
    every other setting, and the rules, are the committed ones, except that each rule's ``for:``
    becomes ``rule_for`` (None keeps them) so an induced fault fires within seconds.
    """
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["scrape_timeout"] = scrape_interval
    config["global"]["evaluation_interval"] = evaluation_interval
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    app_job = jobs[APP_JOB]
    for key in [key for key in app_job if key.endswith("_sd_configs")]:
        del app_job[key]
    app_job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [app_job]  # nothing listens on the compose Prometheus' own port here

    rules = copy.deepcopy(load_yaml(ALERTS))
    if rule_for is not None:
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = rule_for
    (directory / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def prometheus_server(config: Path, *, port: int, ready_timeout: float = 30.0) -> Iterator[str]:
    """Run Debian's ``prometheus`` on ``config`` at 127.0.0.1:``port``; yields its base URL.

    Storage is a temporary folder; the server is stopped (SIGTERM, then SIGKILL) on exit. Its log
    is attached to the error when it does not become ready in time.
    """
    binary = require_tool("prometheus")
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="chainfeed-prometheus-") as scratch:
        log_path = Path(scratch) / "prometheus.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={scratch}/data",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            _wait_ready(f"{base}/-/ready", process, ready_timeout, log_path)
            yield base
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s: a server a test started is gone when it returns."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"prometheus not ready after {timeout} s:\n{log_path.read_text()}")
