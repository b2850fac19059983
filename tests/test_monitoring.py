"""Monitoring and deployment files: alert rules, their unit tests, Prometheus, Grafana, compose.

The rules and the configuration are checked by Prometheus' own ``promtool``, the compose file by
``docker-compose config``, the proxy by ``nginx -t`` (all installed by scripts/install-test-deps).
Every query of a dashboard panel or an alert may name only metrics the app exports, and every
metric the app defines must be on the dashboard.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from chainfeed.devtools.embedded import free_port
from tests.prometheus_harness import (
    ALERT_TESTS,
    ALERTS,
    COMPOSE_FILE,
    DASHBOARDS,
    GRAFANA,
    PROMETHEUS_CONFIG,
    REPO,
    alert_rules,
    app_metric_families,
    dashboard_queries,
    exported_metric_names,
    family_sample_names,
    grafana_to_promql,
    load_yaml,
    metric_names,
    prometheus_server,
    render_local_config,
    require_tool,
    run,
    wait_until,
)

#: The SPEC's alerts, each with a fragment of its expression and its threshold.
SPEC_ALERTS = {
    "TooManyWebSocketConnections": ("sum(websocket_active_connections)", "> 10000"),
    "HighWebSocketAuthFailure": ('rate(websocket_errors_total{type="auth"}[5m])', "> 10"),
    "RedisStreamBacklog": ('redis_stream_length{stream="feed:stream"}', "> 10000"),
    "RedisStreamPendingHigh": ("redis_stream_pending", "> 1000"),
    "RedisStreamConsumerLag": ("redis_stream_consumer_lag_seconds", "> 60"),
}
#: The issue's further alerts.
MORE_ALERTS = {
    "ChainFeedInstanceDown",
    "NoActiveStreamConsumer",
    "DeadLettersGrowing",
    "WebhookSignatureFailures",
    "WebhookUnavailable",
    "OutboxBacklog",
    "DeliveryLatencyHigh",
}
DASHBOARD_ROWS = ["WebSocket", "Stream", "Ingest", "Latency", "HTTP", "Process"]
SPEC_ENV = {
    "CHAINFEED_DATABASE_URL",
    "CHAINFEED_REDIS_URL",
    "CHAINFEED_JWT_SECRET",
    "CHAINFEED_ALCHEMY_SIGNING_KEYS",
}
COMPOSE_SECRETS = {"CHAINFEED_JWT_SECRET": "j" * 40, "CHAINFEED_ALCHEMY_SIGNING_KEYS": "whsec_a,whsec_b"}


def _one_line(expr: str) -> str:
    return " ".join(expr.split())


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARDS.glob("*.json"))]


def _all_queries() -> list[tuple[str, str]]:
    """(where, expression) of every alert and every dashboard panel query."""
    queries = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for dashboard in _dashboards():
        queries += [(f"panel {title!r}", expr) for title, expr in dashboard_queries(dashboard)]
    return queries


def _compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with exactly ``env`` as the variables (no .env file read)."""
    binary = require_tool("docker-compose")
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()), encoding="utf-8")
    return run(
        [
            binary,
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
        ],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)},
    )


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as docker-compose resolves it, with the secrets set."""
    result = _compose_config(tmp_path_factory.mktemp("compose"), COMPOSE_SECRETS)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


# --- alert rules ---------------------------------------------------------------------------------
def test_alert_rules_pass_promtool_check() -> None:
    """``promtool check rules`` accepts monitoring/alerts.yml."""
    result = run([require_tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    """``promtool test rules``: every alert fires past its threshold after ``for`` and not below."""
    result = run([require_tool("promtool"), "test", "rules", str(ALERT_TESTS)], cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_spec_and_issue_alerts_exist_with_spec_thresholds() -> None:
    """The SPEC's five alerts (with its thresholds) and the issue's further ones are all defined."""
    rules = {rule["alert"]: _one_line(rule["expr"]) for rule in alert_rules()}
    assert set(SPEC_ALERTS) | MORE_ALERTS <= set(rules)
    for name, (fragment, threshold) in SPEC_ALERTS.items():
        assert fragment in rules[name], name
        assert rules[name].endswith(threshold), name


def test_every_alert_has_for_severity_and_on_call_annotations() -> None:
    """Each alert waits (``for``), says how bad it is, and tells the on-call what to do first."""
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"].get(key, "").strip()) > 20, f"{name}: {key}"
        assert ":" in rule["annotations"]["summary"], f"{name}: summary should say what to do"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """alerts.test.yml covers each alert both ways: expected to fire, and expected to stay quiet."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


# --- Prometheus configuration --------------------------------------------------------------------
def test_prometheus_config_passes_promtool_as_compose_mounts_it(
    tmp_path: Path, compose: dict[str, Any]
) -> None:
    """prometheus.yml is valid and finds its rules where docker-compose.yml mounts them."""
    prometheus = compose["services"]["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    root = tmp_path / "container"
    for volume in prometheus["volumes"]:
        source, target = _bind(volume)
        if source is not None and source.is_file():
            destination = root / target.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
    config = root / "etc/prometheus/prometheus.yml"
    assert config.is_file(), "compose does not mount prometheus.yml at /etc/prometheus/prometheus.yml"
    result = run([require_tool("promtool"), "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_every_app_replica_through_dns() -> None:
    """The app job discovers replicas by the compose service name (A records), port 8000."""
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "chainfeed"]
    assert job["dns_sd_configs"] == [{"names": ["app"], "type": "A", "port": 8000, "refresh_interval": "15s"}]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]


def test_local_config_scrapes_a_static_target_with_short_for(tmp_path: Path) -> None:
    """The live-check rendering: a static 127.0.0.1 target, the same rules with ``for: 5s``."""
    config_path = render_local_config(tmp_path, target="127.0.0.1:18000")
    result = run([require_tool("promtool"), "check", "config", str(config_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(config_path)
    assert config["scrape_configs"] == [
        {
            "job_name": "chainfeed",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["127.0.0.1:18000"]}],
        }
    ]
    rendered = alert_rules(load_yaml(tmp_path / "alerts.yml"))
    assert {rule["alert"] for rule in rendered} == {rule["alert"] for rule in alert_rules()}
    assert {rule["for"] for rule in rendered} == {"5s"}


def test_prometheus_server_loads_every_alert_and_accepts_every_query(tmp_path: Path) -> None:
    """Debian's prometheus runs the rendered config: all alerts loaded, all panel queries valid."""
    port, target = free_port(), f"127.0.0.1:{free_port()}"
    config = render_local_config(tmp_path, target=target)
    with prometheus_server(config, port=port) as base, httpx.Client(base_url=base, timeout=10) as client:
        groups = client.get("/api/v1/rules").json()["data"]["groups"]
        loaded = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
        assert loaded == {rule["alert"] for rule in alert_rules()}
        targets = wait_until(
            lambda: client.get("/api/v1/targets").json()["data"]["activeTargets"],
            timeout=15,
            what="the static target discovered",
        )
        assert [(t["labels"]["job"], t["scrapeUrl"]) for t in targets] == [
            ("chainfeed", f"http://{target}/metrics")
        ]
        for where, expr in _all_queries():
            answer = client.get("/api/v1/query", params={"query": grafana_to_promql(expr)})
            assert answer.status_code == 200, f"{where}: {answer.text}"


# --- metric names in queries ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (type) (rate(websocket_errors_total{type="auth"}[5m])) > 10', {"websocket_errors_total"}),
        (
            "histogram_quantile(0.99, sum by (stage, le) (rate(x_bucket[$__rate_interval])))",
            {"x_bucket"},
        ),
        (
            'a / on (instance) group_left (job) b offset 5m and bool c{le="+Inf"} unless absent(d)',
            {"a", "b", "c", "d"},
        ),
        ('label_replace(up{job="x"}, "dst", "$1", "src", "(.*)") * 1e3 + 0x1f - Inf', {"up"}),
        ("time() - (max(ts_seconds) > 0)", {"ts_seconds"}),
        ("sum(rate(m_total[5m:1m])) without (instance)", {"m_total"}),
    ],
)
def test_metric_names_finds_the_metrics_a_query_reads(expr: str, names: set[str]) -> None:
    """The tokenizer keeps metric names and drops functions, keywords, labels, strings, numbers."""
    assert metric_names(expr) == names


def test_exported_names_cover_the_spec_metrics() -> None:
    """The exported set is derived from the app's registry and holds the SPEC's names."""
    exported = exported_metric_names()
    assert {
        "websocket_active_connections",
        "websocket_messages_sent_total",
        "websocket_connection_duration_seconds_bucket",
        "websocket_errors_total",
        "redis_stream_length",
        "redis_stream_pending",
        "redis_stream_consumer_lag_seconds",
        "redis_stream_retry_count_total",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "up",
    } <= exported


def test_alerts_and_panels_name_only_exported_metrics() -> None:
    """A renamed or misspelt metric in a rule or a panel fails here, not silently in production."""
    exported = exported_metric_names()
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in _all_queries()}
    assert {where: names for where, names in unknown.items() if names} == {}
    assert all(metric_names(expr) for _, expr in _all_queries()), "a query that reads no metric"


def test_every_app_metric_is_on_the_dashboard() -> None:
    """Each metric chainfeed.observability.metrics defines is shown by at least one panel."""
    shown = {
        name
        for dashboard in _dashboards()
        for _, expr in dashboard_queries(dashboard)
        for name in metric_names(expr)
    }
    missing = [
        name for name, kind in app_metric_families().items() if not family_sample_names(name, kind) & shown
    ]
    assert missing == []


# --- Grafana ---------------------------------------------------------------------------------------
def test_grafana_datasource_points_at_compose_prometheus() -> None:
    """The provisioned datasource is the compose Prometheus, with the uid the panels use."""
    (source,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")


def test_grafana_provider_loads_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    """The dashboard provider reads the folder compose mounts monitoring/grafana/dashboards on."""
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/provider.yml")["providers"]
    mounts = dict(_bind(volume) for volume in compose["services"]["grafana"]["volumes"] if _bind(volume)[0])
    by_source = {source.resolve(): target for source, target in mounts.items() if source is not None}
    assert by_source[DASHBOARDS.resolve()] == provider["options"]["path"]
    assert by_source[(GRAFANA / "provisioning").resolve()] == "/etc/grafana/provisioning"


def test_dashboard_is_tidy_with_the_expected_rows() -> None:
    """Stable uid, unique panel ids, the six rows in order, every query on the provisioned datasource."""
    (dashboard,) = _dashboards()
    assert dashboard["uid"] == "chainfeed-overview"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert [panel["title"] for panel in panels if panel["type"] == "row"] == DASHBOARD_ROWS
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"]["uid"] == "prometheus" for target in panel["targets"])
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]


def test_dashboard_rows_show_their_stage() -> None:
    """Each row's panels read the metrics of its stage (WebSocket panels read websocket_*, ...)."""
    (dashboard,) = _dashboards()
    prefixes = {
        "WebSocket": ("websocket_",),
        "Stream": ("redis_stream_",),
        "Ingest": ("webhook_", "feed_items_", "outbox_", "alchemy_sync_"),
        "Latency": ("chainfeed_stage_duration_seconds", "chainfeed_delivery_latency_seconds"),
        "HTTP": ("http_", "auth_"),
        "Process": ("process_", "up"),
    }
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            for name in metric_names(target["expr"]):
                assert name.startswith(prefixes[row]), f"{row} / {panel['title']}: {name}"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (as a recording rule), Grafana variables substituted."""
    rules = [
        {"record": f"panel:query_{index}", "expr": grafana_to_promql(expr)}
        for index, (_, expr) in enumerate(q for d in _dashboards() for q in dashboard_queries(d))
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8")
    result = run([require_tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- docker compose ------------------------------------------------------------------------------
def test_compose_file_validates_with_the_example_env(tmp_path: Path) -> None:
    """``docker-compose config`` accepts the file with .env.example's values."""
    values = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    result = _compose_config(tmp_path, values)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    """No default secret: without CHAINFEED_JWT_SECRET compose stops with a line naming it."""
    result = _compose_config(tmp_path, {"CHAINFEED_ALCHEMY_SIGNING_KEYS": "k"})
    assert result.returncode != 0
    assert "CHAINFEED_JWT_SECRET" in result.stderr


def test_compose_app_uses_the_spec_settings(compose: dict[str, Any]) -> None:
    """The app gets the SPEC's variables, pointing at the compose PostgreSQL and Redis."""
    env = compose["services"]["app"]["environment"]
    assert set(env) >= SPEC_ENV
    assert env["CHAINFEED_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["CHAINFEED_DATABASE_URL"]
    assert env["CHAINFEED_REDIS_URL"] == "redis://redis:6379/0"
    assert env["CHAINFEED_JWT_SECRET"] == COMPOSE_SECRETS["CHAINFEED_JWT_SECRET"]
    known = set(re.findall(r'"(CHAINFEED_[A-Z_]+)"', (REPO / "src/chainfeed/config.py").read_text()))
    assert {name for name in env if name.startswith("CHAINFEED_")} <= known


def test_compose_runs_every_part_and_scales_the_app(compose: dict[str, Any]) -> None:
    """app (scalable), proxy, Redis with AOF, PostgreSQL, Prometheus with rules, Grafana provisioned."""
    services = compose["services"]
    assert {"app", "proxy", "redis", "postgres", "prometheus", "grafana"} <= set(services)
    app = services["app"]
    assert "container_name" not in app
    assert "ports" not in app, "a fixed host port prevents --scale app=3"
    assert services["proxy"]["depends_on"]["app"]["condition"] == "service_healthy"
    assert services["app"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(_bind(v)[1] == "/data" for v in redis["volumes"])
    assert services["postgres"]["image"].startswith("postgres:15")
    assert any(_bind(v)[1] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"])
    prometheus_mounts = {_bind(v)[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= prometheus_mounts
    proxy_mounts = dict(_bind(v) for v in services["proxy"]["volumes"])
    assert proxy_mounts[(REPO / "deploy/nginx.conf")] == "/etc/nginx/conf.d/default.conf"
    for name, service in services.items():
        assert "container_name" not in service, name
        if name != "app":  # the app's healthcheck is the image's HEALTHCHECK (Dockerfile)
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name


def _bind(volume: Any) -> tuple[Path | None, str]:
    """(host path or None for a named volume, container path) of a resolved compose volume."""
    if isinstance(volume, dict):
        source = volume.get("source")
        is_bind = volume.get("type") == "bind"
        return (Path(source) if is_bind and source else None), volume["target"]
    parts = str(volume).split(":")
    host = parts[0] if len(parts) > 1 else None
    target = parts[1] if len(parts) > 1 else parts[0]
    return (Path(host) if host and host.startswith(("/", ".")) else None), target


# --- image and proxy -----------------------------------------------------------------------------
def test_dockerfile_is_slim_non_root_locked_and_health_checked() -> None:
    """python:3.11-slim, uv from the lock file, a non-root user, /healthz checked, ``chainfeed serve``."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert all(
        line.split()[1].startswith("python:3.11-slim")
        for line in text.splitlines()
        if line.startswith("FROM ")
    )
    assert "uv sync --frozen --no-dev" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users, "no USER"
    assert not users[-1].startswith(("root", "0")), users[-1]
    healthcheck = text.split("HEALTHCHECK", 1)[1].splitlines()[:3]
    assert any("/healthz" in line for line in healthcheck)
    assert text.rstrip().splitlines()[-1] == 'CMD ["chainfeed", "serve"]'
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", ".chainfeed", ".env"} <= set(ignored)


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    """``nginx -t`` accepts deploy/nginx.conf inside an http block, as the nginx image includes it."""
    nginx = require_tool("nginx")
    main = tmp_path / "nginx.conf"
    temp = f"client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; fastcgi_temp_path {tmp_path};"
    temp += f" uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n{temp}\ninclude {REPO / 'deploy/nginx.conf'};\n}}\n",
        encoding="utf-8",
    )
    result = run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)])
    assert result.returncode == 0, result.stderr


def test_nginx_spreads_over_replicas_upgrades_websockets_and_logs_no_token() -> None:
    """Docker DNS resolved per request, WebSocket upgrade headers, no query string in the log."""
    text = (REPO / "deploy/nginx.conf").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert re.search(r"resolver\s+127\.0\.0\.11\b", code)
    assert re.search(r"set\s+\$\w+\s+http://app:8000;", code)
    proxy_targets = re.findall(r"proxy_pass\s+([^;]+);", code)
    assert proxy_targets
    assert all(target.startswith("$") for target in proxy_targets), "a variable makes nginx re-resolve `app`"
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", code)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", code)
    log_format = code.split("log_format", 1)[1].split(";", 1)[0]
    for leaky in ("$request ", '$request"', "$request_uri", "$args", "$query_string", "$arg_"):
        assert leaky not in log_format
    assert re.search(r"access_log\s+\S+\s+chainfeed;", code)
