# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Edge cases of the shared runner_common code, driven through the gateway charm."""

from __future__ import annotations

import json

import pytest
from ops import testing

from charm import WebhookGatewayCharm
from runner_common import http

from .test_charm import rabbitmq_k8s, state


@pytest.fixture
def ctx():
    return testing.Context(WebhookGatewayCharm)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("not json", ""),
        (json.dumps({"nourl": 1}), ""),
        (
            json.dumps(json.dumps({"url": "https://x.example/gw"})),
            "webhook URL: https://x.example/gw/webhook",
        ),
    ],
)
def test_ingress_data_variants(ctx, gateway, raw, expected):
    ingress = testing.Relation(
        "ingress", remote_app_name="traefik", remote_app_data={"ingress": raw}
    )
    out = ctx.run(
        ctx.on.relation_changed(ingress), state(gateway.port, relations=[rabbitmq_k8s(), ingress])
    )
    assert out.unit_status == testing.ActiveStatus(expected)


def test_malformed_loki_endpoint_ignored(ctx, gateway):
    loki = testing.Relation(
        "logging", remote_app_name="loki", remote_units_data={0: {"endpoint": "{broken"}}
    )
    out = ctx.run(
        ctx.on.relation_changed(loki), state(gateway.port, relations=[rabbitmq_k8s(), loki])
    )
    assert out.get_container("app").plan.log_targets == {}


def test_tracing_without_receivers_sets_no_endpoint(ctx, gateway):
    tracing = testing.Relation(
        "tracing", remote_app_name="tempo", remote_app_data={"receivers": "[]"}
    )
    out = ctx.run(
        ctx.on.relation_changed(tracing), state(gateway.port, relations=[rabbitmq_k8s(), tracing])
    )
    env = out.get_container("app").plan.services["gateway"].environment
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env


def test_http_request_transport_error(closed_port):
    with pytest.raises(http.TransportError):
        http.request("GET", f"http://127.0.0.1:{closed_port}/ready", timeout=1)


def test_http_request_returns_error_statuses(gateway):
    resp = http.request("GET", f"http://127.0.0.1:{gateway.port}/nope")
    assert resp.status == 404
    assert resp.json() is None
