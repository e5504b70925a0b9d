# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""State-transition tests of the webhook-gateway charm."""

from __future__ import annotations

import dataclasses
import json

import cosl
import pytest
from ops import pebble, testing

from charm import WebhookGatewayCharm

# The application (and charm) name, Canonical's: relations and config survive a switch.
APP = "github-runner-webhook-gateway"
SECRET = testing.Secret({"value": "s3cret"})
PREVIOUS = testing.Secret({"value": "old-s3cret"})
# Not a real key: the charm only checks the PEM markers, the gateway parses the key.
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIBfake\n-----END RSA PRIVATE KEY-----\n"
APP_KEY = testing.Secret({"value": PEM})
GITHUB_APP = {
    "github-app-id": 4711,
    "github-app-installation-id": 4242,
    "github-app-private-key": APP_KEY.id,
}
REDELIVERY = {"github-path": "octo-org/hooks.repo", "webhook-id": 77}


def rabbitmq_k8s(**kwargs) -> testing.Relation:
    return testing.Relation(
        "rabbitmq",
        remote_app_name="rabbitmq",
        remote_app_data={"hostname": "rabbitmq.model.svc", "password": "p@ss/word"},
        **kwargs,
    )


def state(port: int, *, leader=True, config=None, relations=(), secrets=(SECRET,), **kwargs):
    cfg = {"webhook-secret": SECRET.id, "app-port": port}
    cfg.update(config or {})
    return testing.State(
        leader=leader,
        config={k: v for k, v in cfg.items() if v is not None},
        relations=list(relations),
        secrets=list(secrets),
        containers=[testing.Container("app", can_connect=True)],
        **kwargs,
    )


@pytest.fixture
def ctx():
    return testing.Context(WebhookGatewayCharm)


def env_of(out: testing.State) -> dict:
    plan = out.get_container("app").plan
    return plan.services["gateway"].environment


def test_waits_for_pebble(ctx, gateway):
    st = testing.State(
        leader=True,
        config={"webhook-secret": SECRET.id},
        secrets=[SECRET],
        containers=[testing.Container("app", can_connect=False)],
    )
    out = ctx.run(ctx.on.config_changed(), st)
    assert out.unit_status == testing.WaitingStatus("waiting for Pebble in the app container")


def test_blocked_names_every_missing_piece(ctx, gateway):
    out = ctx.run(ctx.on.config_changed(), state(gateway.port, config={"webhook-secret": None}))
    assert out.unit_status == testing.BlockedStatus(
        "missing webhook-secret config (a Juju secret id); missing rabbitmq relation"
    )


def test_blocked_without_rabbitmq_relation(ctx, gateway):
    out = ctx.run(ctx.on.config_changed(), state(gateway.port))
    assert out.unit_status == testing.BlockedStatus("missing rabbitmq relation")
    assert out.get_container("app").plan.services == {}


def test_blocked_when_secret_not_granted(ctx, gateway):
    out = ctx.run(
        ctx.on.config_changed(), state(gateway.port, relations=[rabbitmq_k8s()], secrets=())
    )
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "webhook-secret: secret not found or not granted" in out.unit_status.message


def test_blocked_when_secret_has_no_value_key(ctx, gateway):
    bad = testing.Secret({"token": "x"})
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            gateway.port,
            config={"webhook-secret": bad.id},
            relations=[rabbitmq_k8s()],
            secrets=[bad],
        ),
    )
    assert out.unit_status == testing.BlockedStatus("webhook-secret: secret has no 'value' key")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"max-body-bytes": 0}, "invalid max-body-bytes config: 0 not in [1, 1073741824]"),
        ({"publish-timeout": "soon"}, "invalid publish-timeout config: 'soon' is not a duration"),
        ({"metrics-port": "same"}, "metrics-port must differ from app-port"),
        ({"app-port": 70000}, "invalid app-port config: 70000 not in [1, 65535]"),
        ({"max-in-flight": 0}, "invalid max-in-flight config: 0 not in [1, 1048576]"),
        ({"max-in-flight": 1 << 21}, "invalid max-in-flight config: 2097152 not in [1, 1048576]"),
        ({"request-timeout": "10"}, "invalid request-timeout config: '10' is not a duration"),
        (
            {"request-timeout": "0s"},
            "invalid request-timeout config: '0s' must be greater than zero",
        ),
        (
            {"redelivery-interval": -5},
            "invalid redelivery-interval config: -5 not in [1, 31536000]",
        ),
        (
            {"github-api-url": "ftp://github.example"},
            "invalid github-api-url config: 'ftp://github.example' is not an http(s) URL",
        ),
        ({"github-api-url": "https://"}, "invalid github-api-url config: 'https://'"),
    ],
)
def test_blocked_on_invalid_config(ctx, gateway, config, message):
    if config.get("metrics-port") == "same":
        config = {"metrics-port": gateway.port}
    out = ctx.run(
        ctx.on.config_changed(), state(gateway.port, config=config, relations=[rabbitmq_k8s()])
    )
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(message)


def test_rabbitmq_joined_requests_access_and_waits_for_credentials(ctx, gateway):
    rel = testing.Relation("rabbitmq", remote_app_name="rabbitmq")
    out = ctx.run(ctx.on.relation_joined(rel), state(gateway.port, relations=[rel]))
    rel_out = out.get_relation(rel.id)
    assert rel_out.local_app_data == {"username": APP, "vhost": "/"}
    assert rel_out.local_unit_data["username"] == APP
    assert out.unit_status == testing.WaitingStatus("waiting for rabbitmq credentials")


def test_non_leader_does_not_write_app_data(ctx, gateway):
    rel = testing.Relation("rabbitmq", remote_app_name="rabbitmq")
    out = ctx.run(ctx.on.relation_joined(rel), state(gateway.port, leader=False, relations=[rel]))
    rel_out = out.get_relation(rel.id)
    assert rel_out.local_app_data == {}
    assert rel_out.local_unit_data["vhost"] == "/"


def test_active_with_full_environment(ctx, gateway):
    rel = rabbitmq_k8s()
    out = ctx.run(ctx.on.relation_changed(rel), state(gateway.port, relations=[rel]))
    assert out.unit_status == testing.ActiveStatus("")
    assert env_of(out) == {
        "APP_PORT": str(gateway.port),
        "APP_METRICS_PATH": "/metrics",
        "APP_MAX_BODY_BYTES": "1048576",
        "APP_PUBLISH_TIMEOUT": "5s",
        "APP_MAX_IN_FLIGHT": "1024",
        "APP_REQUEST_TIMEOUT": "10s",
        "APP_WEBHOOK_SECRET_VALUE": "s3cret",
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "9464",
        "OTEL_TRACES_EXPORTER": "none",
        "RABBITMQ_CONNECT_STRING": f"amqp://{APP}:p%40ss%2Fword@rabbitmq.model.svc:5672/%2F",
        "RUST_LOG": "info",
    }
    assert not [name for name in env_of(out) if name.startswith("APP_GITHUB_")]
    container = out.get_container("app")
    assert container.plan.services["gateway"].command == "/usr/local/bin/gateway"
    assert container.service_statuses["gateway"] == pebble.ServiceStatus.ACTIVE
    checks = container.plan.checks
    assert checks["gateway-ready"].http == {"url": f"http://localhost:{gateway.port}/ready"}
    assert checks["gateway-alive"].level == pebble.CheckLevel.ALIVE
    assert {p.port for p in out.opened_ports} == {gateway.port, 9464}
    assert "/ready" in gateway.requests


def test_config_options_reach_the_environment(ctx, gateway):
    config = {
        "max-body-bytes": 2048,
        "publish-timeout": "2s",
        "metrics-port": 9000,
        "log-level": "gateway=debug",
        "previous-webhook-secret": PREVIOUS.id,
        "max-in-flight": 64,
        "request-timeout": "1500ms",
    }
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, PREVIOUS]),
    )
    env = env_of(out)
    assert env["APP_MAX_BODY_BYTES"] == "2048"
    assert env["APP_PUBLISH_TIMEOUT"] == "2s"
    assert env["OTEL_EXPORTER_PROMETHEUS_PORT"] == "9000"
    assert env["RUST_LOG"] == "gateway=debug"
    assert env["APP_WEBHOOK_SECRET_PREVIOUS_VALUE"] == "old-s3cret"
    assert env["APP_MAX_IN_FLIGHT"] == "64"
    assert env["APP_REQUEST_TIMEOUT"] == "1500ms"
    assert out.unit_status == testing.ActiveStatus("")


def test_secret_rotation_updates_environment(ctx, gateway):
    secret = testing.Secret({"value": "v1"}, latest_content={"value": "v2"})
    st = state(
        gateway.port,
        config={"webhook-secret": secret.id},
        relations=[rabbitmq_k8s()],
        secrets=[secret],
    )
    out = ctx.run(ctx.on.secret_changed(secret), st)
    assert env_of(out)["APP_WEBHOOK_SECRET_VALUE"] == "v2"


def test_machine_rabbitmq_unit_data(ctx, gateway):
    rel = testing.Relation(
        "rabbitmq",
        remote_app_name="rabbitmq-server",
        remote_units_data={0: {"hostname": "10.1.2.3", "password": "pw"}},
    )
    out = ctx.run(ctx.on.relation_changed(rel), state(gateway.port, relations=[rel]))
    assert env_of(out)["RABBITMQ_CONNECT_STRING"] == f"amqp://{APP}:pw@10.1.2.3:5672/%2F"


def test_waiting_while_not_ready(ctx, gateway):
    gateway.ready_status = 503
    out = ctx.run(ctx.on.update_status(), state(gateway.port, relations=[rabbitmq_k8s()]))
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the gateway to be ready (GET /ready)"
    )


def test_waiting_while_workload_unreachable(ctx, closed_port):
    out = ctx.run(
        ctx.on.pebble_ready(testing.Container("app", can_connect=True)),
        state(closed_port, relations=[rabbitmq_k8s()]),
    )
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the gateway to be ready (GET /ready)"
    )


def test_rabbitmq_broken_blocks(ctx, gateway):
    rel = rabbitmq_k8s()
    out = ctx.run(ctx.on.relation_broken(rel), state(gateway.port, relations=[rel]))
    assert out.unit_status == testing.BlockedStatus("missing rabbitmq relation")


def test_tracing_endpoint(ctx, gateway):
    tracing = testing.Relation(
        "tracing",
        remote_app_name="tempo",
        remote_app_data={
            "receivers": json.dumps(
                [{"protocol": {"name": "otlp_http", "type": "http"}, "url": "http://tempo:4318/"}]
            )
        },
    )
    out = ctx.run(
        ctx.on.relation_changed(tracing),
        state(gateway.port, relations=[rabbitmq_k8s(), tracing]),
    )
    env = env_of(out)
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://tempo:4318/v1/traces"
    # As Canonical's charm sets them.
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    requested = out.get_relation(tracing.id).local_app_data["receivers"]
    assert json.loads(requested) == ["otlp_http"]


def test_tracing_removed(ctx, gateway):
    tracing = testing.Relation("tracing", remote_app_name="tempo")
    out = ctx.run(
        ctx.on.relation_broken(tracing), state(gateway.port, relations=[rabbitmq_k8s(), tracing])
    )
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env_of(out)
    assert env_of(out)["OTEL_TRACES_EXPORTER"] == "none"


def test_ingress(ctx, gateway):
    ingress = testing.Relation(
        "ingress",
        remote_app_name="traefik",
        remote_app_data={"ingress": json.dumps({"url": "https://hooks.example.com/m-gw/"})},
    )
    out = ctx.run(
        ctx.on.relation_changed(ingress), state(gateway.port, relations=[rabbitmq_k8s(), ingress])
    )
    app_data = out.get_relation(ingress.id).local_app_data
    assert json.loads(app_data["port"]) == gateway.port
    assert json.loads(app_data["name"]) == APP
    assert json.loads(app_data["strip-prefix"]) is True
    assert "host" in out.get_relation(ingress.id).local_unit_data
    assert out.unit_status == testing.ActiveStatus(
        "webhook URL: https://hooks.example.com/m-gw/webhook"
    )


def test_metrics_endpoint_publishes_jobs_and_alert_rules(ctx, gateway):
    rel = testing.Relation("metrics-endpoint", remote_app_name="prometheus")
    out = ctx.run(ctx.on.relation_joined(rel), state(gateway.port, relations=[rel]))
    rel_out = out.get_relation(rel.id)
    jobs = json.loads(rel_out.local_app_data["scrape_jobs"])
    assert jobs == [{"metrics_path": "/metrics", "static_configs": [{"targets": ["*:9464"]}]}]
    meta = json.loads(rel_out.local_app_data["scrape_metadata"])
    assert meta["application"] == APP
    groups = json.loads(rel_out.local_app_data["alert_rules"])["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {"GatewayBrokerDisconnected", "GatewayTargetDown"} <= alerts
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["juju_application"] == APP
    assert rel_out.local_unit_data["prometheus_scrape_unit_name"] == f"{APP}/0"


def test_grafana_dashboard_published(ctx, gateway):
    rel = testing.Relation("grafana-dashboard", remote_app_name="grafana")
    out = ctx.run(ctx.on.relation_joined(rel), state(gateway.port, relations=[rel]))
    data = json.loads(out.get_relation(rel.id).local_app_data["dashboards"])
    assert data["templates"]
    for template in data["templates"].values():
        dashboard = json.loads(cosl.LZMABase64.decompress(template["content"]))
        exprs = json.dumps(dashboard)
        assert "github_runner_webhook_gateway_inbound_total" in exprs
        assert template["charm"] == APP


def test_grafana_dashboard_not_published_by_non_leader(ctx, gateway):
    rel = testing.Relation("grafana-dashboard", remote_app_name="grafana")
    out = ctx.run(ctx.on.relation_joined(rel), state(gateway.port, leader=False, relations=[rel]))
    assert "dashboards" not in out.get_relation(rel.id).local_app_data


def test_logging_adds_and_disables_pebble_log_target(ctx, gateway):
    loki = testing.Relation(
        "logging",
        remote_app_name="loki",
        remote_units_data={
            0: {"endpoint": json.dumps({"url": "http://loki:3100/loki/api/v1/push"})}
        },
    )
    out = ctx.run(
        ctx.on.relation_changed(loki), state(gateway.port, relations=[rabbitmq_k8s(), loki])
    )
    targets = out.get_container("app").plan.log_targets
    assert targets["loki-loki-0"].location == "http://loki:3100/loki/api/v1/push"
    assert targets["loki-loki-0"].services == ["all"]

    # The relation goes away: the target is disabled rather than left forwarding.
    gone = testing.Relation("logging", remote_app_name="loki", id=loki.id)
    st = testing.State(
        leader=True,
        config={"webhook-secret": SECRET.id, "app-port": gateway.port},
        secrets=[SECRET],
        relations=[rabbitmq_k8s(), gone],
        containers=[out.get_container("app")],
    )
    out2 = ctx.run(ctx.on.relation_broken(gone), st)
    services = out2.get_container("app").plan.log_targets["loki-loki-0"].services
    assert services[-1] == "-all"

    # Later hooks leave the disabled target as it is.
    out3 = ctx.run(ctx.on.update_status(), out2)
    assert out3.get_container("app").plan.log_targets["loki-loki-0"].services == services


def test_blocked_when_previous_secret_not_granted(ctx, gateway):
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            gateway.port,
            config={"previous-webhook-secret": PREVIOUS.id},
            relations=[rabbitmq_k8s()],
        ),
    )
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(
        "previous-webhook-secret: secret not found or not granted"
    )


def test_upgrade_charm_replans(ctx, gateway):
    out = ctx.run(ctx.on.upgrade_charm(), state(gateway.port, relations=[rabbitmq_k8s()]))
    assert out.unit_status == testing.ActiveStatus("")
    assert "gateway" in out.get_container("app").plan.services


def test_ready_check_events_refresh_status(ctx, gateway):
    out = ctx.run(ctx.on.config_changed(), state(gateway.port, relations=[rabbitmq_k8s()]))
    check = testing.CheckInfo("gateway-ready", level=pebble.CheckLevel.READY)
    container = dataclasses.replace(out.get_container("app"), check_infos={check})
    st = dataclasses.replace(out, containers=[container])
    gateway.ready_status = 503
    gateway.requests.clear()
    out = ctx.run(ctx.on.pebble_check_failed(container, check), st)
    assert out.unit_status.name == "waiting"
    # Polled several times before giving up.
    assert gateway.requests.count("/ready") == 5
    gateway.ready_status = 200
    out = ctx.run(ctx.on.pebble_check_recovered(out.get_container("app"), check), out)
    assert out.unit_status == testing.ActiveStatus("")


def test_redelivery_environment_with_github_app(ctx, gateway):
    config = {
        **GITHUB_APP,
        **REDELIVERY,
        "github-api-url": "https://ghe.example.com/api/v3",
        "redelivery-interval": 300,
    }
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, APP_KEY]),
    )
    assert out.unit_status == testing.ActiveStatus("")
    env = env_of(out)
    assert {k: v for k, v in env.items() if k.startswith(("APP_GITHUB", "APP_WEBHOOK_ID"))} == {
        "APP_GITHUB_APP_ID": "4711",
        "APP_GITHUB_APP_INSTALLATION_ID": "4242",
        "APP_GITHUB_APP_PRIVATE_KEY_VALUE": PEM,
        "APP_GITHUB_API_URL": "https://ghe.example.com/api/v3",
        "APP_GITHUB_PATH": "octo-org/hooks.repo",
        "APP_WEBHOOK_ID": "77",
    }
    assert env["APP_REDELIVERY_INTERVAL"] == "300"


def test_redelivery_defaults(ctx, gateway):
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            gateway.port,
            config={**GITHUB_APP, "github-path": "octo-org", "webhook-id": 1},
            relations=[rabbitmq_k8s()],
            secrets=[SECRET, APP_KEY],
        ),
    )
    env = env_of(out)
    assert env["APP_GITHUB_PATH"] == "octo-org"
    assert env["APP_GITHUB_API_URL"] == "https://api.github.com"
    assert env["APP_REDELIVERY_INTERVAL"] == "600"


def test_redelivery_interval_only_with_redelivery(ctx, gateway):
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config={"redelivery-interval": 300}, relations=[rabbitmq_k8s()]),
    )
    assert out.unit_status == testing.ActiveStatus("")
    assert "APP_REDELIVERY_INTERVAL" not in env_of(out)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"github-app-id": 123},
            "incomplete GitHub App config: missing github-app-installation-id"
            " and github-app-private-key",
        ),
        (
            {"github-app-installation-id": 5, "github-app-private-key": APP_KEY.id},
            "incomplete GitHub App config: missing github-app-id",
        ),
        (
            {"github-app-id": 123, "github-app-private-key": APP_KEY.id},
            "incomplete GitHub App config: missing github-app-installation-id",
        ),
        (
            {"github-app-private-key": APP_KEY.id},
            "incomplete GitHub App config: missing github-app-id and github-app-installation-id",
        ),
    ],
)
def test_blocked_on_partial_github_app(ctx, gateway, config, message):
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            gateway.port,
            config={**config, **REDELIVERY},
            relations=[rabbitmq_k8s()],
            secrets=[SECRET, APP_KEY],
        ),
    )
    assert out.unit_status == testing.BlockedStatus(message)
    assert out.get_container("app").plan.services == {}


@pytest.mark.parametrize(
    "config, message",
    [
        (
            REDELIVERY,
            "incomplete redelivery config: missing the GitHub App"
            " (github-app-id, github-app-installation-id, github-app-private-key)",
        ),
        (
            {"github-path": "octo-org", "webhook-id": 0},
            "incomplete redelivery config: missing webhook-id and the GitHub App"
            " (github-app-id, github-app-installation-id, github-app-private-key)",
        ),
        (
            {**GITHUB_APP, "github-path": "octo"},
            "incomplete redelivery config: missing webhook-id",
        ),
        ({**GITHUB_APP, "webhook-id": 9}, "incomplete redelivery config: missing github-path"),
        # The gateway uses the App only for redelivery and refuses it without the hook.
        (GITHUB_APP, "incomplete redelivery config: missing github-path and webhook-id"),
        (
            {**GITHUB_APP, **REDELIVERY, "github-path": "a/b/c"},
            "invalid github-path config: 'a/b/c' is not an organization (org)"
            " or a repository (owner/repo)",
        ),
        (
            {**GITHUB_APP, **REDELIVERY, "github-path": "../etc"},
            "invalid github-path config: '../etc'",
        ),
        (
            {**GITHUB_APP, **REDELIVERY, "webhook-id": -3},
            "invalid webhook-id config: -3 not in [1, ",
        ),
        (
            {**GITHUB_APP, **REDELIVERY, "github-app-id": None, "github-app-client-id": "12 3"},
            "invalid github-app-client-id config: '12 3' is not a client id",
        ),
        (
            {**GITHUB_APP, **REDELIVERY, "github-app-installation-id": -1},
            "invalid github-app-installation-id config: -1 not in [1, ",
        ),
        (
            {**GITHUB_APP, **REDELIVERY, "redelivery-interval": 0},
            "invalid redelivery-interval config: 0 not in [1, 31536000]",
        ),
    ],
)
def test_blocked_on_invalid_redelivery(ctx, gateway, config, message):
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, APP_KEY]),
    )
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(message)
    assert out.get_container("app").plan.services == {}


def test_blocked_when_private_key_not_granted(ctx, gateway):
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config={**GITHUB_APP, **REDELIVERY}, relations=[rabbitmq_k8s()]),
    )
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(
        "github-app-private-key: secret not found or not granted"
    )


def test_private_key_that_is_not_pem_is_not_shown(ctx, gateway):
    bad = testing.Secret({"value": "hunter2-not-a-key"})
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            gateway.port,
            config={**GITHUB_APP, **REDELIVERY, "github-app-private-key": bad.id},
            relations=[rabbitmq_k8s()],
            secrets=[SECRET, bad],
        ),
    )
    assert out.unit_status == testing.BlockedStatus(
        "github-app-private-key: secret value is not a PEM private key"
    )
    assert "hunter2" not in out.unit_status.message


def test_private_key_rotation_updates_environment(ctx, gateway):
    new = PEM.replace("MIIBfake", "MIIBnew")
    key = testing.Secret({"value": PEM}, latest_content={"value": new})
    st = state(
        gateway.port,
        config={**GITHUB_APP, **REDELIVERY, "github-app-private-key": key.id},
        relations=[rabbitmq_k8s()],
        secrets=[SECRET, key],
    )
    out = ctx.run(ctx.on.secret_changed(key), st)
    assert env_of(out)["APP_GITHUB_APP_PRIVATE_KEY_VALUE"] == new


def test_metrics_path_reaches_environment_and_scrape_job(ctx, gateway):
    metrics = testing.Relation("metrics-endpoint", remote_app_name="prometheus")
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            gateway.port,
            config={"metrics-path": "/internal/metrics", "metrics-port": 9101},
            relations=[rabbitmq_k8s(), metrics],
        ),
    )
    assert out.unit_status == testing.ActiveStatus("")
    assert env_of(out)["APP_METRICS_PATH"] == "/internal/metrics"
    assert env_of(out)["OTEL_EXPORTER_PROMETHEUS_PORT"] == "9101"
    jobs = json.loads(out.get_relation(metrics.id).local_app_data["scrape_jobs"])
    assert jobs == [
        {"metrics_path": "/internal/metrics", "static_configs": [{"targets": ["*:9101"]}]}
    ]


@pytest.mark.parametrize("path", ["metrics", "/has space", "", "/a?b"])
def test_blocked_on_invalid_metrics_path(ctx, gateway, path):
    metrics = testing.Relation("metrics-endpoint", remote_app_name="prometheus")
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config={"metrics-path": path}, relations=[rabbitmq_k8s(), metrics]),
    )
    assert out.unit_status == testing.BlockedStatus(
        f"invalid metrics-path config: {path.strip()!r} is not an absolute path like /metrics"
    )
    # Scraped at the default path meanwhile.
    jobs = json.loads(out.get_relation(metrics.id).local_app_data["scrape_jobs"])
    assert jobs[0]["metrics_path"] == "/metrics"


def test_app_port_reaches_environment_checks_ingress_and_ports(ctx, gateway):
    ingress = testing.Relation("ingress", remote_app_name="traefik")
    out = ctx.run(
        ctx.on.config_changed(), state(gateway.port, relations=[rabbitmq_k8s(), ingress])
    )
    assert env_of(out)["APP_PORT"] == str(gateway.port)
    checks = out.get_container("app").plan.checks
    assert checks["gateway-alive"].http == {"url": f"http://localhost:{gateway.port}/health"}
    assert json.loads(out.get_relation(ingress.id).local_app_data["port"]) == gateway.port
    assert gateway.port in {p.port for p in out.opened_ports}
    assert "/ready" in gateway.requests


def test_github_app_client_id_in_place_of_the_id(ctx, gateway):
    config = {**GITHUB_APP, **REDELIVERY, "github-app-id": None, "github-app-client-id": "Iv1abc"}
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, APP_KEY]),
    )
    assert out.unit_status == testing.ActiveStatus("")
    assert env_of(out)["APP_GITHUB_APP_ID"] == "Iv1abc"


def test_blocked_when_both_github_app_id_and_client_id(ctx, gateway):
    config = {**GITHUB_APP, **REDELIVERY, "github-app-client-id": "Iv1abc"}
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, APP_KEY]),
    )
    assert out.unit_status == testing.BlockedStatus(
        "github-app-id and github-app-client-id are both set: set the App's id or its client id,"
        " not both"
    )
    assert out.get_container("app").plan.services == {}


@pytest.mark.parametrize("interval", [1, 600, 31536000])
def test_redelivery_interval_is_whole_seconds(ctx, gateway, interval):
    config = {**GITHUB_APP, **REDELIVERY, "redelivery-interval": interval}
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, APP_KEY]),
    )
    assert out.unit_status == testing.ActiveStatus("")
    # A bare number: the gateway reads it as seconds, as Canonical's gateway does.
    assert env_of(out)["APP_REDELIVERY_INTERVAL"] == str(interval)


def test_redelivery_interval_above_a_year_blocks(ctx, gateway):
    config = {**GITHUB_APP, **REDELIVERY, "redelivery-interval": 31536001}
    out = ctx.run(
        ctx.on.config_changed(),
        state(gateway.port, config=config, relations=[rabbitmq_k8s()], secrets=[SECRET, APP_KEY]),
    )
    assert out.unit_status == testing.BlockedStatus(
        "invalid redelivery-interval config: 31536001 not in [1, 31536000]"
    )


def test_canonical_configuration_carries_over(ctx, gateway):
    """The options a Canonical deployment sets, with their values, as they are after a switch."""
    config = {
        "app-port": gateway.port,
        "metrics-port": 9464,
        "metrics-path": "/metrics",
        "webhook-secret": SECRET.id,
        "github-app-id": 12345,
        "github-app-installation-id": 678,
        "github-app-private-key": APP_KEY.id,
        "github-path": "canonical",
        "webhook-id": 424242,
        "redelivery-interval": 900,
    }
    st = testing.State(
        leader=True,
        config=config,
        relations=[rabbitmq_k8s(), testing.PeerRelation("secret-storage")],
        secrets=[SECRET, APP_KEY],
        containers=[testing.Container("app", can_connect=True)],
    )
    out = ctx.run(ctx.on.upgrade_charm(), st)
    assert out.unit_status == testing.ActiveStatus("")
    env = env_of(out)
    assert {k: env[k] for k in env if k.startswith(("APP_", "OTEL_EXPORTER_PROMETHEUS_"))} == {
        "APP_PORT": str(gateway.port),
        "APP_METRICS_PATH": "/metrics",
        "APP_WEBHOOK_SECRET_VALUE": "s3cret",
        "APP_MAX_BODY_BYTES": "1048576",
        "APP_PUBLISH_TIMEOUT": "5s",
        "APP_MAX_IN_FLIGHT": "1024",
        "APP_REQUEST_TIMEOUT": "10s",
        "APP_GITHUB_APP_ID": "12345",
        "APP_GITHUB_APP_INSTALLATION_ID": "678",
        "APP_GITHUB_APP_PRIVATE_KEY_VALUE": PEM,
        "APP_GITHUB_API_URL": "https://api.github.com",
        "APP_GITHUB_PATH": "canonical",
        "APP_WEBHOOK_ID": "424242",
        "APP_REDELIVERY_INTERVAL": "900",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "9464",
    }
