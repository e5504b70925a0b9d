# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""State-transition tests of the planner charm: config, relations, status and migrations."""

from __future__ import annotations

import json

import cosl
import pytest
from ops import pebble, testing

from charm import PlannerCharm

from .conftest import ADMIN_TOKEN

# The application (and charm) name, Canonical's: relations and config survive a switch.
APP = "github-runner-planner"
ADMIN = testing.Secret({"value": ADMIN_TOKEN})
MIGRATE = testing.Exec(["/usr/local/bin/planner", "migrate"])
DB_URI = "postgresql://planner-user:pw%3Ax@pg-primary.model.svc:5432/planner"
# Not a real key: the charm only checks the PEM markers, the planner parses the key.
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n"
APP_KEY = testing.Secret({"value": PEM})
GITHUB_APP = {
    "github-app-id": 123456,
    "github-app-installation-id": 987,
    "github-app-private-key": APP_KEY.id,
}


def rabbitmq() -> testing.Relation:
    return testing.Relation(
        "rabbitmq",
        remote_app_name="rabbitmq",
        remote_app_data={"hostname": "rabbitmq.model.svc", "password": "rpw"},
    )


def postgresql(**data) -> testing.Relation:
    app_data = {
        "endpoints": "pg-primary.model.svc:5432,pg-replica.model.svc:5432",
        "username": "planner-user",
        "password": "pw:x",
        "database": "planner",
    }
    app_data.update(data)
    return testing.Relation(
        "postgresql", remote_app_name="postgresql-k8s", remote_app_data=app_data
    )


def state(
    port: int,
    *,
    leader=True,
    config=None,
    relations=None,
    secrets=(ADMIN,),
    execs=(MIGRATE,),
    peer_data=None,
    **kwargs,
) -> testing.State:
    cfg = {"admin-token": ADMIN.id, "app-port": port}
    cfg.update(config or {})
    if relations is None:
        relations = [rabbitmq(), postgresql()]
    peer = testing.PeerRelation("secret-storage", local_app_data=peer_data or {})
    return testing.State(
        leader=leader,
        config={k: v for k, v in cfg.items() if v is not None},
        relations=[*relations, peer],
        secrets=list(secrets),
        containers=[testing.Container("app", can_connect=True, execs=set(execs))],
        **kwargs,
    )


def env_of(out: testing.State) -> dict:
    return out.get_container("app").plan.services["planner"].environment


def peer_of(out: testing.State) -> dict:
    (peer,) = [r for r in out.relations if r.endpoint == "secret-storage"]
    return peer.local_app_data


@pytest.fixture
def ctx():
    return testing.Context(PlannerCharm)


def test_waits_for_pebble(ctx):
    st = testing.State(containers=[testing.Container("app", can_connect=False)])
    out = ctx.run(ctx.on.update_status(), st)
    assert out.unit_status == testing.WaitingStatus("waiting for Pebble in the app container")


def test_blocked_names_every_missing_piece(ctx, planner):
    out = ctx.run(
        ctx.on.config_changed(), state(planner.port, config={"admin-token": None}, relations=[])
    )
    assert out.unit_status == testing.BlockedStatus(
        "missing admin-token config (a Juju secret id); missing rabbitmq and postgresql relations"
    )


def test_blocked_without_postgresql(ctx, planner):
    out = ctx.run(ctx.on.config_changed(), state(planner.port, relations=[rabbitmq()]))
    assert out.unit_status == testing.BlockedStatus("missing postgresql relation")


def test_blocked_on_malformed_admin_token(ctx, planner):
    bad = testing.Secret({"value": "not-a-planner-token"})
    out = ctx.run(
        ctx.on.config_changed(),
        state(planner.port, config={"admin-token": bad.id}, secrets=[bad]),
    )
    assert out.unit_status == testing.BlockedStatus(
        "admin-token: value must match ^planner_v0_[A-Za-z0-9_-]{20}$"
    )


def test_blocked_when_admin_token_not_granted(ctx, planner):
    out = ctx.run(ctx.on.config_changed(), state(planner.port, secrets=()))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith("admin-token: secret not found or not granted")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"job-max-age": "5 days"}, "invalid job-max-age config: '5 days' is not a duration"),
        ({"stream-heartbeat": ""}, "invalid stream-heartbeat config: '' is not a duration"),
        ({"metrics-port": 0}, "invalid metrics-port config: 0 not in [1, 65535]"),
        ({"request-timeout": "soon"}, "invalid request-timeout config: 'soon' is not a duration"),
        ({"request-timeout": "0ms"}, "invalid request-timeout config: '0ms' must be greater"),
        ({"consumer-prefetch": 0}, "invalid consumer-prefetch config: 0 not in [1, 65535]"),
        (
            {"consumer-prefetch": 65536},
            "invalid consumer-prefetch config: 65536 not in [1, 65535]",
        ),
        ({"db-pool-size": 0}, "invalid db-pool-size config: 0 not in [1, 100]"),
        ({"db-pool-size": 101}, "invalid db-pool-size config: 101 not in [1, 100]"),
        ({"reconcile-after": "15"}, "invalid reconcile-after config: '15' is not a duration"),
        ({"reconcile-interval": "0s"}, "invalid reconcile-interval config: '0s' must be greater"),
        ({"reconcile-batch": 0}, "invalid reconcile-batch config: 0 not in [1, 1000]"),
        ({"reconcile-batch": 1001}, "invalid reconcile-batch config: 1001 not in [1, 1000]"),
        ({"github-api-url": "api.github.com"}, "invalid github-api-url config: 'api.github.com'"),
        (
            {**GITHUB_APP, "github-app-id": None, "github-app-client-id": "app-1"},
            "invalid github-app-client-id config: 'app-1' is not a client id",
        ),
        (
            {**GITHUB_APP, "github-app-installation-id": -2},
            "invalid github-app-installation-id config: -2 not in [1, ",
        ),
    ],
)
def test_blocked_on_invalid_config(ctx, planner, config, message):
    out = ctx.run(
        ctx.on.config_changed(), state(planner.port, config=config, secrets=[ADMIN, APP_KEY])
    )
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(message)


def test_requests_database_and_broker_then_waits(ctx, planner):
    rmq = testing.Relation("rabbitmq", remote_app_name="rabbitmq")
    pg = testing.Relation("postgresql", remote_app_name="postgresql-k8s")
    out = ctx.run(ctx.on.relation_joined(pg), state(planner.port, relations=[rmq, pg]))
    assert out.unit_status == testing.WaitingStatus(
        "waiting for rabbitmq and postgresql credentials"
    )
    pg_data = out.get_relation(pg.id).local_app_data
    # The database Canonical's charm requests: the application name, hyphens and all.
    assert pg_data["database"] == APP
    assert "password" in json.loads(pg_data["requested-secrets"])
    assert out.get_relation(rmq.id).local_app_data == {"username": APP, "vhost": "/"}


def test_postgresql_credentials_from_secret(ctx, planner):
    user = testing.Secret({"username": "relation-7", "password": "s3"})
    pg = testing.Relation(
        "postgresql",
        remote_app_name="postgresql-k8s",
        remote_app_data={"endpoints": "pg:5432", "secret-user": user.id, "database": "planner"},
    )
    out = ctx.run(
        ctx.on.relation_changed(pg),
        state(planner.port, relations=[rabbitmq(), pg], secrets=[ADMIN, user]),
    )
    assert (
        env_of(out)["POSTGRESQL_DB_CONNECT_STRING"] == "postgresql://relation-7:s3@pg:5432/planner"
    )


def test_leader_migrates_then_serves(ctx, planner):
    out = ctx.run(ctx.on.config_changed(), state(planner.port))
    assert [e.command for e in ctx.exec_history["app"]] == [["/usr/local/bin/planner", "migrate"]]
    migrate_env = ctx.exec_history["app"][0].environment
    assert migrate_env["POSTGRESQL_DB_CONNECT_STRING"] == DB_URI
    assert peer_of(out)["migrated"]
    assert out.unit_status == testing.ActiveStatus()
    assert env_of(out) == {
        "APP_PORT": str(planner.port),
        "APP_METRICS_PATH": "/metrics",
        "APP_ADMIN_TOKEN_VALUE": ADMIN_TOKEN,
        "APP_IGNORED_LABELS": "self-hosted,linux",
        "APP_JOB_MAX_AGE": "120h",
        "APP_STREAM_HEARTBEAT": "30s",
        "APP_REQUEST_TIMEOUT": "10s",
        "APP_CONSUMER_PREFETCH": "256",
        "APP_DB_POOL_SIZE": "10",
        "APP_RECONCILE_AFTER": "15m",
        "APP_RECONCILE_INTERVAL": "1m",
        "APP_RECONCILE_BATCH": "50",
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "9464",
        "OTEL_TRACES_EXPORTER": "none",
        "POSTGRESQL_DB_CONNECT_STRING": DB_URI,
        "RABBITMQ_CONNECT_STRING": f"amqp://{APP}:rpw@rabbitmq.model.svc:5672/%2F",
        "RUST_LOG": "info",
    }
    assert not [name for name in env_of(out) if name.startswith("APP_GITHUB_")]
    container = out.get_container("app")
    assert container.plan.services["planner"].command == "/usr/local/bin/planner serve"
    assert container.service_statuses["planner"] == pebble.ServiceStatus.ACTIVE
    assert container.plan.checks["planner-ready"].level == pebble.CheckLevel.READY
    assert {p.port for p in out.opened_ports} == {planner.port, 9464}

    # Already migrated for this database: no second migration.
    ctx2 = testing.Context(PlannerCharm)
    ctx2.run(ctx2.on.update_status(), out)
    assert ctx2.exec_history.get("app", []) == []


def test_migration_failure_waits_and_does_not_start(ctx, planner):
    failing = testing.Exec(
        ["/usr/local/bin/planner", "migrate"], return_code=1, stderr="error: connection refused\n"
    )
    out = ctx.run(ctx.on.config_changed(), state(planner.port, execs=[failing]))
    assert out.unit_status == testing.WaitingStatus(
        "database migration failed, will retry: error: connection refused"
    )
    assert "migrated" not in peer_of(out)
    assert out.get_container("app").plan.services == {}


def test_non_leader_waits_for_leader_migration(ctx, planner):
    out = ctx.run(ctx.on.config_changed(), state(planner.port, leader=False))
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the leader to migrate the database"
    )
    assert ctx.exec_history.get("app", []) == []


def test_non_leader_serves_once_migrated_and_leaves_relations_alone(ctx, planner):
    leader_out = testing.Context(PlannerCharm).run(
        testing.Context(PlannerCharm).on.config_changed(), state(planner.port)
    )
    runner = testing.Relation(
        "planner", remote_app_name="github-runner", remote_app_data={"flavor": "small"}
    )
    st = state(planner.port, leader=False, peer_data=peer_of(leader_out))
    st = testing.State(**{**st.__dict__, "relations": [*st.relations, runner]})
    planner.calls.clear()
    out = ctx.run(ctx.on.relation_changed(runner), st)
    assert out.unit_status == testing.ActiveStatus()
    assert ctx.exec_history.get("app", []) == []
    assert planner.api_calls() == []
    assert out.get_relation(runner.id).local_app_data == {}


def test_upgrade_reruns_migrations(ctx, planner):
    out = ctx.run(ctx.on.config_changed(), state(planner.port))
    ctx2 = testing.Context(PlannerCharm)
    ctx2.run(ctx2.on.upgrade_charm(), out)
    assert len(ctx2.exec_history["app"]) == 1


def test_waits_for_peer_relation(ctx, planner):
    st = state(planner.port)
    st = testing.State(
        **{**st.__dict__, "relations": [r for r in st.relations if r.endpoint != "secret-storage"]}
    )
    out = ctx.run(ctx.on.config_changed(), st)
    assert out.unit_status == testing.WaitingStatus("waiting for the peer relation")


def test_waiting_while_not_ready(ctx, planner):
    planner.ready_status = 503
    out = ctx.run(ctx.on.update_status(), state(planner.port))
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the planner to be ready (GET /ready)"
    )


def test_config_reaches_environment(ctx, planner):
    config = {
        "ignored-labels": " self-hosted , linux,X64 ",
        "job-max-age": "48h",
        "stream-heartbeat": "1m30s",
        "log-level": "planner=debug",
        "metrics-port": 9100,
        "request-timeout": "3s",
        "consumer-prefetch": 64,
        "db-pool-size": 20,
        "reconcile-after": "1h",
        "reconcile-interval": "30s",
        "reconcile-batch": 200,
    }
    out = ctx.run(ctx.on.config_changed(), state(planner.port, config=config))
    env = env_of(out)
    assert env["APP_REQUEST_TIMEOUT"] == "3s"
    assert env["APP_CONSUMER_PREFETCH"] == "64"
    assert env["APP_DB_POOL_SIZE"] == "20"
    assert env["APP_RECONCILE_AFTER"] == "1h"
    assert env["APP_RECONCILE_INTERVAL"] == "30s"
    assert env["APP_RECONCILE_BATCH"] == "200"
    assert env["APP_IGNORED_LABELS"] == "self-hosted,linux,X64"
    assert env["APP_JOB_MAX_AGE"] == "48h"
    assert env["APP_STREAM_HEARTBEAT"] == "1m30s"
    assert env["RUST_LOG"] == "planner=debug"
    assert env["OTEL_EXPORTER_PROMETHEUS_PORT"] == "9100"


def test_tracing_endpoint(ctx, planner):
    tracing = testing.Relation(
        "tracing",
        remote_app_name="tempo",
        remote_app_data={
            "receivers": json.dumps(
                [{"protocol": {"name": "otlp_http", "type": "http"}, "url": "http://tempo:4318"}]
            )
        },
    )
    out = ctx.run(
        ctx.on.relation_changed(tracing),
        state(planner.port, relations=[rabbitmq(), postgresql(), tracing]),
    )
    env = env_of(out)
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://tempo:4318/v1/traces"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"


def test_metrics_endpoint_and_alert_rules(ctx, planner):
    rel = testing.Relation("metrics-endpoint", remote_app_name="prometheus")
    out = ctx.run(ctx.on.relation_joined(rel), state(planner.port, relations=[rel]))
    data = out.get_relation(rel.id).local_app_data
    groups = json.loads(data["alert_rules"])["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {
        "PlannerNoWebhookForAnHour",
        "PlannerDeadLettersGrowing",
        "PlannerBrokerDisconnected",
    } <= alerts
    assert json.loads(data["scrape_jobs"])[0]["static_configs"] == [{"targets": ["*:9464"]}]


def test_grafana_dashboard(ctx, planner):
    rel = testing.Relation("grafana-dashboard", remote_app_name="grafana")
    out = ctx.run(ctx.on.relation_joined(rel), state(planner.port, relations=[rel]))
    data = json.loads(out.get_relation(rel.id).local_app_data["dashboards"])
    (template,) = data["templates"].values()
    dashboard = json.loads(cosl.LZMABase64.decompress(template["content"]))
    assert "github_runner_planner_flavor_pressure" in json.dumps(dashboard)


def test_logging_target(ctx, planner):
    loki = testing.Relation(
        "logging",
        remote_app_name="loki",
        remote_units_data={1: {"endpoint": json.dumps({"url": "http://loki-1:3100/push"})}},
    )
    out = ctx.run(
        ctx.on.relation_changed(loki),
        state(planner.port, relations=[rabbitmq(), postgresql(), loki]),
    )
    target = out.get_container("app").plan.log_targets["loki-loki-1"]
    assert target.location == "http://loki-1:3100/push"
    assert target.labels["juju_application"] == APP


def test_postgresql_broken_blocks(ctx, planner):
    pg = postgresql()
    out = ctx.run(ctx.on.relation_broken(pg), state(planner.port, relations=[rabbitmq(), pg]))
    assert out.unit_status == testing.BlockedStatus("missing postgresql relation")


def test_admin_token_rotation_updates_environment(ctx, planner):
    new_token = "planner_v0_ZYXWVUTSRQ9876543210"
    secret = testing.Secret({"value": ADMIN_TOKEN}, latest_content={"value": new_token})
    st = state(planner.port, config={"admin-token": secret.id}, secrets=[secret])
    out = ctx.run(ctx.on.secret_changed(secret), st)
    assert env_of(out)["APP_ADMIN_TOKEN_VALUE"] == new_token


def test_ingress_requested_with_api_port(ctx, planner):
    ingress = testing.Relation("ingress", remote_app_name="traefik")
    out = ctx.run(
        ctx.on.relation_joined(ingress),
        state(planner.port, relations=[rabbitmq(), postgresql(), ingress]),
    )
    data = out.get_relation(ingress.id).local_app_data
    assert json.loads(data["port"]) == planner.port
    assert json.loads(data["name"]) == APP


def test_non_leader_does_not_request_database(ctx, planner):
    pg = testing.Relation("postgresql", remote_app_name="postgresql-k8s")
    out = ctx.run(
        ctx.on.relation_joined(pg), state(planner.port, leader=False, relations=[rabbitmq(), pg])
    )
    assert out.get_relation(pg.id).local_app_data == {}


def test_github_app_reaches_environment(ctx, planner):
    config = {**GITHUB_APP, "github-api-url": "https://ghe.example.com/api/v3/"}
    out = ctx.run(
        ctx.on.config_changed(), state(planner.port, config=config, secrets=[ADMIN, APP_KEY])
    )
    assert out.unit_status == testing.ActiveStatus()
    assert {k: v for k, v in env_of(out).items() if k.startswith("APP_GITHUB_")} == {
        "APP_GITHUB_APP_ID": "123456",
        "APP_GITHUB_APP_INSTALLATION_ID": "987",
        "APP_GITHUB_APP_PRIVATE_KEY_VALUE": PEM,
        "APP_GITHUB_API_URL": "https://ghe.example.com/api/v3/",
    }
    # The migration gets the same environment.
    migrate_env = ctx.exec_history["app"][0].environment
    assert migrate_env["APP_GITHUB_APP_PRIVATE_KEY_VALUE"] == PEM


def test_github_api_url_alone_is_not_emitted(ctx, planner):
    config = {"github-api-url": "https://ghe.example.com/api/v3"}
    out = ctx.run(ctx.on.config_changed(), state(planner.port, config=config))
    assert out.unit_status == testing.ActiveStatus()
    assert not [name for name in env_of(out) if name.startswith("APP_GITHUB_")]


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"github-app-id": 123456},
            "incomplete GitHub App config: missing github-app-installation-id"
            " and github-app-private-key",
        ),
        (
            {"github-app-installation-id": 987},
            "incomplete GitHub App config: missing github-app-id and github-app-private-key",
        ),
        (
            {"github-app-id": 123456, "github-app-installation-id": 987},
            "incomplete GitHub App config: missing github-app-private-key",
        ),
        (
            {"github-app-installation-id": 987, "github-app-private-key": APP_KEY.id},
            "incomplete GitHub App config: missing github-app-id",
        ),
    ],
)
def test_blocked_on_partial_github_app(ctx, planner, config, message):
    out = ctx.run(
        ctx.on.config_changed(), state(planner.port, config=config, secrets=[ADMIN, APP_KEY])
    )
    assert out.unit_status == testing.BlockedStatus(message)
    assert out.get_container("app").plan.services == {}


def test_blocked_on_unusable_private_key(ctx, planner):
    out = ctx.run(ctx.on.config_changed(), state(planner.port, config=GITHUB_APP))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(
        "github-app-private-key: secret not found or not granted"
    )
    empty = testing.Secret({"key": PEM})
    out = ctx.run(
        ctx.on.config_changed(),
        state(
            planner.port,
            config={**GITHUB_APP, "github-app-private-key": empty.id},
            secrets=[ADMIN, empty],
        ),
    )
    assert out.unit_status == testing.BlockedStatus(
        "github-app-private-key: secret has no 'value' key"
    )
    assert "PRIVATE KEY" not in out.unit_status.message


def test_metrics_path_and_port_reach_environment_and_scrape_job(ctx, planner):
    rel = testing.Relation("metrics-endpoint", remote_app_name="prometheus")
    config = {"metrics-path": "/prom", "metrics-port": 9200}
    out = ctx.run(
        ctx.on.config_changed(),
        state(planner.port, config=config, relations=[rabbitmq(), postgresql(), rel]),
    )
    assert out.unit_status == testing.ActiveStatus()
    assert env_of(out)["APP_METRICS_PATH"] == "/prom"
    assert env_of(out)["OTEL_EXPORTER_PROMETHEUS_PORT"] == "9200"
    jobs = json.loads(out.get_relation(rel.id).local_app_data["scrape_jobs"])
    assert jobs == [{"metrics_path": "/prom", "static_configs": [{"targets": ["*:9200"]}]}]
    assert {p.port for p in out.opened_ports} == {planner.port, 9200}


def test_blocked_when_metrics_port_is_app_port(ctx, planner):
    out = ctx.run(
        ctx.on.config_changed(), state(planner.port, config={"metrics-port": planner.port})
    )
    assert out.unit_status == testing.BlockedStatus("metrics-port must differ from app-port")


def test_github_app_client_id_in_place_of_the_id(ctx, planner):
    config = {**GITHUB_APP, "github-app-id": None, "github-app-client-id": "Iv23abc"}
    out = ctx.run(
        ctx.on.config_changed(), state(planner.port, config=config, secrets=[ADMIN, APP_KEY])
    )
    assert out.unit_status == testing.ActiveStatus()
    assert env_of(out)["APP_GITHUB_APP_ID"] == "Iv23abc"


def test_canonical_configuration_and_peer_data_carry_over(ctx, planner):
    """A Canonical deployment's options and its `secret-storage` peer relation, after a switch.

    Canonical's charm keeps its own key in the peer databag; ours adds its bookkeeping beside it.
    """
    peer = testing.PeerRelation("secret-storage", local_app_data={"secret_key": "kept"})
    st = testing.State(
        leader=True,
        config={"app-port": planner.port, "metrics-port": 9464, "admin-token": ADMIN.id},
        relations=[rabbitmq(), postgresql(), peer],
        secrets=[ADMIN],
        containers=[testing.Container("app", can_connect=True, execs={MIGRATE})],
    )
    out = ctx.run(ctx.on.upgrade_charm(), st)
    assert out.unit_status == testing.ActiveStatus()
    env = env_of(out)
    assert env["APP_PORT"] == str(planner.port)
    assert env["APP_ADMIN_TOKEN_VALUE"] == ADMIN_TOKEN
    assert env["OTEL_EXPORTER_PROMETHEUS_PORT"] == "9464"
    # The new charm migrates the database it took over, once.
    assert [e.command for e in ctx.exec_history["app"]] == [["/usr/local/bin/planner", "migrate"]]
    data = out.get_relation(peer.id).local_app_data
    assert data["secret_key"] == "kept"
    assert data["migrated"]


@pytest.mark.parametrize(
    "tls, suffix", [("True", "?sslmode=require"), ("false", "?sslmode=disable"), (None, "")]
)
def test_postgresql_tls_becomes_sslmode(ctx, planner, tls, suffix):
    pg = postgresql() if tls is None else postgresql(tls=tls)
    out = ctx.run(ctx.on.relation_changed(pg), state(planner.port, relations=[rabbitmq(), pg]))
    assert env_of(out)["POSTGRESQL_DB_CONNECT_STRING"] == DB_URI + suffix


def test_postgresql_tls_from_secret(ctx, planner):
    user = testing.Secret({"username": "u", "password": "p"})
    tls = testing.Secret({"tls": "true", "tls-ca": "-----BEGIN CERTIFICATE-----"})
    pg = testing.Relation(
        "postgresql",
        remote_app_name="postgresql-k8s",
        remote_app_data={
            "endpoints": "pg:5432",
            "secret-user": user.id,
            "secret-tls": tls.id,
            "database": APP,
        },
    )
    out = ctx.run(
        ctx.on.relation_changed(pg),
        state(planner.port, relations=[rabbitmq(), pg], secrets=[ADMIN, user, tls]),
    )
    assert env_of(out)["POSTGRESQL_DB_CONNECT_STRING"] == (
        "postgresql://u:p@pg:5432/github-runner-planner?sslmode=require"
    )
