"""Monitoring and deployment files: alert rules, their unit tests, Prometheus, Alertmanager,
Grafana, compose.

The rules and the configuration are checked by Prometheus' own ``promtool``, the Alertmanager
routing by ``amtool``, the compose file by ``docker-compose config``, the proxy by ``nginx -t``
(all installed by scripts/install-test-deps).
Every query of a dashboard panel or an alert may name only metrics the app exports, and every
metric the app defines must be on the dashboard.
"""

from __future__ import annotations

import ipaddress
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
from tests.test_alertmanager_live import ALERTMANAGER, ALERTMANAGER_CONFIG, commented_receivers

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
COMPOSE_SECRETS = {
    "CHAINFEED_JWT_SECRET": "j" * 40,
    "CHAINFEED_ALCHEMY_SIGNING_KEYS": "whsec_a,whsec_b",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-password",
}
#: severity label -> the Alertmanager receiver it must reach, and how often it repeats.
RECEIVERS = {"critical": ("pager", "1h"), "warning": ("tickets", "12h")}


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


# --- Alertmanager ----------------------------------------------------------------------------------
def _amtool_check(config: Path) -> subprocess.CompletedProcess[str]:
    return run([require_tool("amtool"), "check-config", str(config)])


def test_alertmanager_config_passes_amtool_check() -> None:
    """``amtool check-config`` accepts monitoring/alertmanager/alertmanager.yml, templates included."""
    result = _amtool_check(ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert " - 0 templates" not in result.stdout, "templates/*.tmpl not found next to the config"


def test_alertmanager_config_passes_amtool_as_compose_mounts_it(
    tmp_path: Path, compose: dict[str, Any]
) -> None:
    """Mounted as compose does, the config finds its templates (``templates/*.tmpl``, relative)."""
    service = compose["services"]["alertmanager"]
    root = tmp_path / "container"
    for volume in service["volumes"]:
        source, target = _bind(volume)
        if source is None:
            continue
        destination = root / target.lstrip("/")
        if source.is_dir():
            destination.mkdir(parents=True)
            for file in source.iterdir():
                (destination / file.name).write_bytes(file.read_bytes())
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
    result = _amtool_check(root / "etc/alertmanager/alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    templates = len(list((ALERTMANAGER / "templates").glob("*.tmpl")))
    assert templates >= 1
    assert f" - {templates} templates" in result.stdout, result.stdout


def test_every_alert_reaches_the_receiver_of_its_severity() -> None:
    """``amtool config routes test`` with each rule's labels: critical pages, warning is a ticket."""
    amtool = require_tool("amtool")
    for rule in alert_rules():
        labels = {"alertname": rule["alert"], "service": "chainfeed", **rule["labels"]}
        receiver, _ = RECEIVERS[labels["severity"]]
        result = run(
            [
                amtool,
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_CONFIG}",
                f"--verify.receivers={receiver}",
                *(f"{key}={value}" for key, value in labels.items()),
            ]
        )
        assert result.returncode == 0, f"{rule['alert']}: {result.stdout}{result.stderr}"
        assert result.stdout.split() == [receiver], rule["alert"]


def test_alertmanager_routes_repeat_and_group_as_documented() -> None:
    """Pager every hour, tickets every 12 hours; grouped by alert and its stage labels, not instance."""
    route = load_yaml(ALERTMANAGER_CONFIG)["route"]
    by_severity = {}
    for child in route["routes"]:
        (matcher,) = child["matchers"]
        severity = re.fullmatch(r'severity="(\w+)"', matcher)
        assert severity, matcher
        by_severity[severity.group(1)] = (
            child["receiver"],
            child.get("repeat_interval", route["repeat_interval"]),
        )
    assert by_severity == RECEIVERS
    assert "alertname" in route["group_by"]
    assert "instance" not in route["group_by"]
    assert route["group_wait"]
    assert route["group_interval"]


_AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|group|stddev|stdvar|count|count_values|bottomk|topk|quantile|absent)\s*(by|without|\()"
)


def test_inhibition_names_real_alerts_and_labels_they_carry() -> None:
    """Each inhibit rule's source is an alert of alerts.yml, and its ``equal`` labels are labels that
    alert carries (its own, Prometheus' external ones, or the target's when nothing aggregates them
    away): a renamed alert or label would silently turn the rule off."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    external = set(load_yaml(PROMETHEUS_CONFIG)["global"]["external_labels"])
    sources = {}
    for inhibit in load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        (matcher,) = inhibit["source_matchers"]
        name = re.fullmatch(r'alertname="(\w+)"', matcher)
        assert name, matcher
        assert name.group(1) in rules, matcher
        alert = rules[name.group(1)]
        carried = set(alert["labels"]) | external
        if not _AGGREGATION.search(alert["expr"]):
            carried |= {"instance", "job"}
        assert set(inhibit["equal"]) <= carried, (name.group(1), inhibit["equal"], carried)
        sources[name.group(1)] = inhibit
    assert sources["ChainFeedInstanceDown"]["equal"] == ["instance"]
    assert sources["ChainFeedDown"]["equal"] == ["service"]


def test_notification_template_carries_summary_and_runbook() -> None:
    """The template renders (amtool) and puts each alert's summary and runbook in its text."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in (ALERTMANAGER / "templates").glob("*.tmpl"))
    body = text.split('define "chainfeed.text"', 1)[1].split("{{ end -}}\n{{- end }}", 1)[0]
    assert "range .Alerts" in body
    assert ".Annotations.summary" in body
    assert ".Annotations.runbook" in body
    result = run(
        [
            require_tool("amtool"),
            "template",
            "render",
            f"--template.glob={ALERTMANAGER / 'templates'}/*.tmpl",
            '--template.text={{ template "chainfeed.title" . }}\n{{ template "chainfeed.text" . }}',
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "Summary:" in result.stdout
    assert "Runbook:" in result.stdout


def test_receivers_are_marked_placeholders_and_the_examples_are_valid(tmp_path: Path) -> None:
    """The committed webhooks never reach anyone by accident (``.invalid``); the PagerDuty and Slack
    examples in the comments, swapped in, pass ``amtool check-config`` with the same templates."""
    config = load_yaml(ALERTMANAGER_CONFIG)
    names = {receiver["name"] for receiver in config["receivers"]}
    assert names == {receiver for receiver, _ in RECEIVERS.values()}
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert httpx.URL(hook["url"]).host.endswith(".invalid"), hook["url"]
    examples = commented_receivers()
    assert {key for example in examples for key in example if key != "name"} == {
        "pagerduty_configs",
        "slack_configs",
    }
    assert {example["name"] for example in examples} == names
    uses = [json.dumps(example) for example in examples]
    assert all('template \\"chainfeed.' in use for use in uses), "examples should use the template"
    config["receivers"] = examples
    (tmp_path / "templates").mkdir()
    for path in (ALERTMANAGER / "templates").glob("*.tmpl"):
        (tmp_path / "templates" / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    swapped = tmp_path / "alertmanager.yml"
    swapped.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _amtool_check(swapped)
    assert result.returncode == 0, result.stdout + result.stderr


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
def _example_env() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )


def test_compose_file_validates_with_the_example_env(tmp_path: Path) -> None:
    """``docker-compose config`` accepts the file with .env.example's values once the Grafana
    password (empty there on purpose) is chosen."""
    values = _example_env()
    assert values["GRAFANA_ADMIN_PASSWORD"] == "", ".env.example must not suggest a Grafana password"
    result = _compose_config(tmp_path, {**values, "GRAFANA_ADMIN_PASSWORD": "chosen-by-the-operator"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_start_without_the_grafana_password(tmp_path: Path, how: str) -> None:
    """No default admin password: unset or empty (as in .env.example), compose stops naming it."""
    env = {key: value for key, value in COMPOSE_SECRETS.items() if key != "GRAFANA_ADMIN_PASSWORD"}
    if how == "empty":
        env["GRAFANA_ADMIN_PASSWORD"] = ""
    result = _compose_config(tmp_path, env)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_grafana_gets_the_chosen_password(compose: dict[str, Any]) -> None:
    """The password reaches Grafana as set, and compose.yml carries no fallback value for it."""
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == COMPOSE_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert re.search(r"GF_SECURITY_ADMIN_PASSWORD: \$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", text)


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


def test_compose_app_trusts_forwarded_for_only_from_the_proxy(compose: dict[str, Any]) -> None:
    """FORWARDED_ALLOW_IPS is the proxy's fixed address, inside the network's subnet and outside
    the range Docker hands out to other containers (which could otherwise claim it)."""
    services = compose["services"]
    trusted = services["app"]["environment"]["FORWARDED_ALLOW_IPS"]
    assert trusted != "*"
    proxy_address = ipaddress.ip_address(services["proxy"]["networks"]["default"]["ipv4_address"])
    assert [ipaddress.ip_address(host.strip()) for host in trusted.split(",")] == [proxy_address]
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    assert proxy_address in ipaddress.ip_network(pool["subnet"])
    assert proxy_address not in ipaddress.ip_network(pool["ip_range"])
    for name, service in services.items():
        assert set(service.get("networks", {"default": None})) == {"default"}, name


def test_compose_runs_alertmanager_and_prometheus_sends_to_it(compose: dict[str, Any]) -> None:
    """A pinned Alertmanager with the committed config and templates; Prometheus' alerting points
    at it; its UI is published on 127.0.0.1 only."""
    service = compose["services"]["alertmanager"]
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", service["image"]), service["image"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in service["command"]
    mounts = dict(_bind(volume) for volume in service["volumes"])
    assert mounts[ALERTMANAGER_CONFIG] == "/etc/alertmanager/alertmanager.yml"
    assert mounts[ALERTMANAGER / "templates"] == "/etc/alertmanager/templates"
    assert [_host_ip(port) for port in service["ports"]] == ["127.0.0.1"]
    (manager,) = load_yaml(PROMETHEUS_CONFIG)["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]


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


def _host_ip(port: Any) -> str:
    """The host address a resolved compose port is published on ("" for all of them)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    parts = str(port).split(":")
    return parts[0] if len(parts) == 3 else ""


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


def test_nginx_forwards_the_peer_address_and_hides_internal_endpoints() -> None:
    """X-Forwarded-For is replaced by the peer's address (never appended to); /metrics and /readyz
    are refused (tests/test_proxy.py checks both against a running nginx)."""
    text = (REPO / "deploy/nginx.conf").read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert re.findall(r"proxy_set_header\s+X-Forwarded-For\s+([^;]+);", code) == ["$remote_addr"]
    assert "$proxy_add_x_forwarded_for" not in code
    for path in ("/metrics", "/readyz"):
        block = re.search(r"location\s+(?:\^~|=)\s+" + re.escape(path) + r"\s*\{([^}]*)\}", code)
        assert block, f"no location for {path}"
        assert re.fullmatch(r"\s*return\s+40[34];\s*", block.group(1)), block.group(1)
