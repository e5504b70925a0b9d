# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Dashboards and alert rules only use the metrics the services export.

The names are those of `gateway/src/metrics.rs` and `planner/src/metrics.rs`; the Rust test
`tests/tests/observability.rs` checks the same files against a running system's `/metrics`.
"""

from __future__ import annotations

import json
import pathlib
import re

import yaml

SRC = pathlib.Path(__file__).parents[2] / "src"
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
    "github_runner_webhook_gateway_http_requests_total",
    "github_runner_planner_http_requests_total",
    # issue 9: redelivery (gateway) and reconciliation (planner)
    "github_runner_webhook_gateway_redeliveries_total",
    "github_runner_webhook_gateway_redelivery_failures_total",
    "github_runner_planner_reconcile_checked_total",
    "github_runner_planner_reconcile_corrected_total",
    "github_runner_planner_reconcile_errors_total",
    *(
        f"{histogram}_{suffix}"
        for histogram in (
            "github_runner_webhook_gateway_publish_confirm_seconds",
            "github_runner_webhook_gateway_http_request_duration_seconds",
            "github_runner_planner_webhook_job_waiting_seconds",
            "github_runner_planner_webhook_job_running_seconds",
            "github_runner_planner_job_waiting_seconds",
            "github_runner_planner_webhook_processing_seconds",
            "github_runner_planner_http_request_duration_seconds",
        )
        for suffix in ("bucket", "sum", "count")
    ),
}
METRIC_RE = re.compile(r"github_runner_[a-z_]+")


def expressions() -> list[str]:
    exprs = []
    for path in (SRC / "prometheus_alert_rules").glob("*.rule"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            exprs += [rule["expr"] for rule in group["rules"]]
    for path in (SRC / "grafana_dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def test_files_exist():
    assert list((SRC / "prometheus_alert_rules").glob("*.rule"))
    assert list((SRC / "grafana_dashboards").glob("*.json"))


def test_only_exported_metrics_are_used():
    used = {m for expr in expressions() for m in METRIC_RE.findall(expr)}
    assert used
    assert used <= METRICS, used - METRICS


def test_dashboards_use_the_cos_datasource_variable():
    for path in (SRC / "grafana_dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == "${prometheusds}"
