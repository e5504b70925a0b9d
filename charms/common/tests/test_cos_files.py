# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Both charms' dashboards and alert rules only use the metrics the services export.

The names are those of `gateway/src/metrics.rs` and `planner/src/metrics.rs`; the Rust test
`tests/tests/observability.rs` checks the same files against a running system's `/metrics`.
Dashboards select each metric of the charm that exports it by `juju_charm`, the charm names
being Canonical's (so Canonical's dashboards select our services too).
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import yaml

CHARMS = pathlib.Path(__file__).parents[2]
CHARM_DIRS = ["webhook-gateway", "planner"]
METRICS = {
    "github_runner_webhook_gateway_inbound_total",
    "github_runner_webhook_gateway_inbound_errors_total",
    "github_runner_webhook_gateway_rejected_total",
    "github_runner_webhook_gateway_ignored_total",
    "github_runner_webhook_gateway_outbound_total",
    "github_runner_webhook_gateway_outbound_errors_total",
    "github_runner_webhook_gateway_broker_connected",
    "github_runner_planner_flavor_pressure",
    "github_runner_planner_webhook_consumed_total",
    "github_runner_planner_webhook_errors_total",
    "github_runner_planner_webhook_discarded_total",
    "github_runner_planner_webhook_duplicates_total",
    "github_runner_planner_webhook_dead_lettered_total",
    "github_runner_planner_broker_connected",
    "github_runner_planner_broker_connect_attempts_total",
    "github_runner_planner_database_reachable",
    "github_runner_planner_stream_subscribers",
    "github_runner_planner_queue_messages",
    # redelivery (gateway) and reconciliation (planner)
    "github_runner_webhook_redelivery_count_total",
    "github_runner_webhook_redelivery_errors_total",
    "github_runner_planner_reconcile_checked_total",
    "github_runner_planner_reconcile_corrected_total",
    "github_runner_planner_reconcile_errors_total",
    *(
        f"{histogram}_{suffix}"
        for histogram in (
            "github_runner_webhook_gateway_publish_confirm_seconds",
            # OpenTelemetry's HTTP server metric, exported by both services.
            "http_server_request_duration_seconds",
            "github_runner_planner_webhook_job_waiting_seconds",
            "github_runner_planner_webhook_job_running_seconds",
            "github_runner_planner_job_waiting_seconds",
            "github_runner_planner_webhook_processing_seconds",
        )
        for suffix in ("bucket", "sum", "count")
    ),
}
METRIC_RE = re.compile(r"(?:github_runner|http_server)_[a-z_]+")
# A metric selector and its label matchers, if any: `name{a="b", ...}`.
SELECTOR_RE = re.compile(r"\b((?:github_runner|http_server)_[a-z_]+|up)\b(?!\()(\{[^}]*\})?")


def charm_name(charm_dir: str) -> str:
    return yaml.safe_load((CHARMS / charm_dir / "charmcraft.yaml").read_text())["name"]


def exporting_charm(metric: str, dashboard_charm: str) -> str:
    """The charm whose service exports ``metric`` (``up``: the dashboard's own)."""
    if metric.startswith("github_runner_planner_"):
        return charm_name("planner")
    if metric.startswith("github_runner_webhook_"):
        return charm_name("webhook-gateway")
    return dashboard_charm


def dashboard_expressions(src: pathlib.Path) -> list[str]:
    exprs = []
    for path in (src / "grafana_dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def expressions(src: pathlib.Path) -> list[str]:
    exprs = []
    for path in (src / "prometheus_alert_rules").glob("*.rule"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            exprs += [rule["expr"] for rule in group["rules"]]
    return exprs + dashboard_expressions(src)


@pytest.fixture(params=CHARM_DIRS)
def charm_dir(request) -> str:
    return request.param


@pytest.fixture
def src(charm_dir) -> pathlib.Path:
    return CHARMS / charm_dir / "src"


def test_files_exist(src):
    assert list((src / "prometheus_alert_rules").glob("*.rule"))
    assert list((src / "grafana_dashboards").glob("*.json"))


def test_only_exported_metrics_are_used(src):
    used = {m for expr in expressions(src) for m in METRIC_RE.findall(expr)}
    assert used
    assert used <= METRICS, used - METRICS


def test_dashboards_use_the_cos_datasource_variable(src):
    for path in (src / "grafana_dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == "${prometheusds}"


def test_charm_names_are_canonicals():
    assert [charm_name(c) for c in CHARM_DIRS] == [
        "github-runner-webhook-gateway",
        "github-runner-planner",
    ]


def test_dashboards_select_each_metric_by_its_charm(charm_dir, src):
    own = charm_name(charm_dir)
    selectors = [m for e in dashboard_expressions(src) for m in SELECTOR_RE.finditer(e)]
    assert selectors
    for selector in selectors:
        metric, matchers = selector.group(1), selector.group(2) or ""
        want = f'juju_charm="{exporting_charm(metric, own)}"'
        assert want in matchers, f"{selector.group(0)}: want {want}"


def test_juju_charm_filters_name_our_charms(src):
    names = {charm_name(c) for c in CHARM_DIRS}
    filters = {
        f for e in dashboard_expressions(src) for f in re.findall(r'juju_charm=~?"([^"]*)"', e)
    }
    assert filters
    assert filters <= names, filters - names
