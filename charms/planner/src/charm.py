#!/usr/bin/env python3
# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Kubernetes sidecar charm for the runner-planner planner."""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import re

import ops
from charmlibs.interfaces.tracing import TracingEndpointRequirer

from planner_client import ConflictError, NotFoundError, PlannerClient, PlannerError
from planner_relation import (
    TOKEN_PREFIX,
    FlavorRequest,
    RelationDataError,
    token_name,
)
from postgresql import PostgreSQLRequirer
from runner_common import http, workload
from runner_common.config import (
    ConfigError,
    duration_option,
    github_app_env,
    int_option,
    read_secret_value,
)
from runner_common.ingress import IngressRequirer
from runner_common.observability import (
    GrafanaDashboardProvider,
    LogForwarder,
    MetricsEndpointProvider,
)
from runner_common.rabbitmq import RabbitMQRequirer

logger = logging.getLogger(__name__)

SRC = pathlib.Path(__file__).parent
CONTAINER = "planner"
SERVICE = "planner"
BINARY = "/usr/local/bin/planner"
PEER = "planner-peers"
PLANNER_RELATION = "planner"
ADMIN_TOKEN_RE = re.compile(r"^planner_v0_[A-Za-z0-9_-]{20}$")
# Peer application databag keys (written by the leader).
MIGRATED_KEY = "migrated"  # fingerprint of the database the leader last migrated
MANAGED_KEY = "managed-flavors"  # JSON {token name: flavor name} of relation-managed flavors
MIGRATION_TIMEOUT = 300


class PlannerCharm(ops.CharmBase):
    """Run the planner under Pebble; manage flavors and tokens of related runner managers."""

    def __init__(self, framework: ops.Framework):
        """Set up relations, actions and observe every event that can change the state.

        Args:
            framework: the ops framework.
        """
        super().__init__(framework)
        self.rabbitmq = RabbitMQRequirer(self, "rabbitmq", username=self.app.name)
        self.postgresql = PostgreSQLRequirer(
            self, "postgresql", database=self.app.name.replace("-", "_")
        )
        self.ingress = IngressRequirer(self, "ingress")
        self.tracing = TracingEndpointRequirer(
            self, relation_name="tracing", protocols=[workload.TRACING_PROTOCOL]
        )
        self.metrics = MetricsEndpointProvider(
            self, "metrics-endpoint", SRC / "prometheus_alert_rules"
        )
        self.dashboards = GrafanaDashboardProvider(
            self, "grafana-dashboard", SRC / "grafana_dashboards"
        )
        self.logging = LogForwarder(self, "logging")

        observe = framework.observe
        for event in (
            self.on.config_changed,
            self.on.leader_elected,
            self.on.update_status,
            self.on.secret_changed,
            self.on[CONTAINER].pebble_ready,
            # The ready check (GET /ready) changing state, e.g. the broker connection is lost.
            self.on[CONTAINER].pebble_check_failed,
            self.on[CONTAINER].pebble_check_recovered,
            self.tracing.on.endpoint_changed,
            self.tracing.on.endpoint_removed,
        ):
            observe(event, self._reconcile)
        observe(self.on.upgrade_charm, self._on_upgrade_charm)
        for relation in (
            "rabbitmq",
            "postgresql",
            "ingress",
            "metrics-endpoint",
            "grafana-dashboard",
            "logging",
            PLANNER_RELATION,
            PEER,
        ):
            observe(self.on[relation].relation_joined, self._reconcile)
            observe(self.on[relation].relation_changed, self._reconcile)
            observe(self.on[relation].relation_departed, self._reconcile)
            observe(self.on[relation].relation_broken, self._reconcile)

        observe(self.on.enable_flavor_action, self._on_enable_flavor)
        observe(self.on.disable_flavor_action, self._on_disable_flavor)
        observe(self.on.create_token_action, self._on_create_token)
        observe(self.on.list_flavors_action, self._on_list_flavors)

    # --- helpers ----------------------------------------------------------------------

    @property
    def _peer_data(self) -> ops.RelationDataContent | None:
        relation = self.model.get_relation(PEER)
        return relation.data[self.app] if relation is not None else None

    def _admin_token(self) -> str:
        token = read_secret_value(self, "admin-token", required=True)
        if not ADMIN_TOKEN_RE.match(str(token)):
            raise ConfigError("admin-token: value must match ^planner_v0_[A-Za-z0-9_-]{20}$")
        return str(token)

    def _client(self) -> PlannerClient:
        port = int_option(self, "port", minimum=1, maximum=65535)
        return PlannerClient(f"http://127.0.0.1:{port}", self._admin_token())

    def _endpoint(self) -> str:
        """The API URL runner managers should use: the ingress URL, else the K8s service."""
        url = self.ingress.url
        if url:
            return url
        port = int(self.config["port"])
        return f"http://{self.app.name}.{self.model.name}.svc.cluster.local:{port}"

    def _environment(self) -> dict[str, str]:
        """The planner's environment from config (connection strings are added later).

        Returns:
            environment variables.

        Raises:
            ConfigError: a config option is missing or invalid.
        """
        port = int_option(self, "port", minimum=1, maximum=65535)
        metrics_port = int_option(self, "metrics-port", minimum=1, maximum=65535)
        if metrics_port == port:
            raise ConfigError("metrics-port must differ from port")
        labels = [x.strip() for x in str(self.config["ignored-labels"]).split(",") if x.strip()]
        env = {
            "APP_PORT": str(port),
            "APP_ADMIN_TOKEN_VALUE": self._admin_token(),
            "APP_IGNORED_LABELS": ",".join(labels),
            "APP_JOB_MAX_AGE": duration_option(self, "job-max-age"),
            "APP_STREAM_HEARTBEAT": duration_option(self, "stream-heartbeat"),
            "APP_REQUEST_TIMEOUT": duration_option(self, "request-timeout"),
            "APP_CONSUMER_PREFETCH": str(
                int_option(self, "consumer-prefetch", minimum=1, maximum=65535)
            ),
            "APP_DB_POOL_SIZE": str(int_option(self, "db-pool-size", minimum=1, maximum=100)),
            "APP_RECONCILE_AFTER": duration_option(self, "reconcile-after"),
            "APP_RECONCILE_INTERVAL": duration_option(self, "reconcile-interval"),
            "APP_RECONCILE_BATCH": str(
                int_option(self, "reconcile-batch", minimum=1, maximum=1000)
            ),
            "RUST_LOG": str(self.config["log-level"]).strip() or "info",
        }
        # Optional: with a GitHub App the planner reconciles stale jobs with GitHub's API.
        env.update(github_app_env(self))
        env.update(workload.otel_env(workload.tracing_endpoint(self.tracing), metrics_port))
        return env

    def _publish_relation_data(self) -> None:
        """Data we owe related applications; none of it depends on the workload."""
        self.rabbitmq.request_access()
        self.postgresql.request_database()
        self.ingress.publish(int(self.config["port"]))
        self.metrics.publish(int(self.config["metrics-port"]))
        self.dashboards.publish()

    # --- reconciliation ---------------------------------------------------------------

    def _on_upgrade_charm(self, event: ops.UpgradeCharmEvent) -> None:
        """A new charm (and usually a new image): run the migrations again."""
        peer = self._peer_data
        if self.unit.is_leader() and peer is not None:
            peer.pop(MIGRATED_KEY, None)
        self._reconcile(event)

    def _reconcile(self, _: ops.EventBase) -> None:
        """Converge on the desired state and set the unit status."""
        self.unit.status = self._converge()

    def _converge(self) -> ops.StatusBase:
        try:
            self._publish_relation_data()
        except ops.ModelError as exc:
            logger.warning("could not publish relation data: %s", exc)

        container = self.unit.get_container(CONTAINER)
        if not container.can_connect():
            return ops.WaitingStatus("waiting for Pebble in the planner container")

        blocked = []
        env: dict[str, str] = {}
        try:
            env = self._environment()
        except ConfigError as exc:
            blocked.append(str(exc))
        missing = [
            name for name in ("rabbitmq", "postgresql") if not self.model.get_relation(name)
        ]
        if missing:
            blocked.append(
                f"missing {' and '.join(missing)} relation{'s' if len(missing) > 1 else ''}"
            )
        if blocked:
            return ops.BlockedStatus("; ".join(blocked))

        uris = {
            "rabbitmq": self.rabbitmq.connect_string(),
            "postgresql": self.postgresql.connect_string(),
        }
        waiting = [name for name, uri in uris.items() if not uri]
        if waiting:
            return ops.WaitingStatus(f"waiting for {' and '.join(waiting)} credentials")
        env["RABBITMQ_CONNECT_STRING"] = str(uris["rabbitmq"])
        env["POSTGRESQL_DB_CONNECT_STRING"] = str(uris["postgresql"])

        status = self._migrate(container, env)
        if status is not None:
            return status

        port = int(env["APP_PORT"])
        layer = workload.build_layer(
            service=SERVICE,
            summary="runner-planner planner",
            command=f"{BINARY} serve",
            environment=env,
            port=port,
            log_targets=self.logging.log_targets(container.get_plan().log_targets),
        )
        workload.apply_layer(container, "planner", layer)
        self.unit.set_ports(port, int(env["OTEL_EXPORTER_PROMETHEUS_PORT"]))

        if not http.wait_ready(f"http://127.0.0.1:{port}/ready"):
            return ops.WaitingStatus("waiting for the planner to be ready (GET /ready)")

        if self.unit.is_leader():
            try:
                problems = self._reconcile_planner_relations()
            except (PlannerError, ConfigError) as exc:
                logger.error("planner relation sync failed: %s", exc)
                return ops.WaitingStatus(f"planner relation sync failed, will retry: {exc}")
            if problems:
                return ops.ActiveStatus(f"invalid flavor data: {'; '.join(problems)}")
        return ops.ActiveStatus()

    def _migrate(self, container: ops.Container, env: dict[str, str]) -> ops.StatusBase | None:
        """Run ``planner migrate`` once per database (leader); others wait for it.

        Args:
            container: the workload container.
            env: the full workload environment.

        Returns:
            a status to report when the workload must not start yet, else None.
        """
        peer = self._peer_data
        if peer is None:
            return ops.WaitingStatus("waiting for the peer relation")
        fingerprint = hashlib.sha256(env["POSTGRESQL_DB_CONNECT_STRING"].encode()).hexdigest()[:16]
        if peer.get(MIGRATED_KEY) == fingerprint:
            return None
        if not self.unit.is_leader():
            return ops.WaitingStatus("waiting for the leader to migrate the database")
        self.unit.status = ops.MaintenanceStatus("migrating the database")
        try:
            process = container.exec(
                [BINARY, "migrate"], environment=env, timeout=MIGRATION_TIMEOUT
            )
            process.wait_output()
        except ops.pebble.ExecError as exc:
            stderr = (exc.stderr or "").strip().splitlines()
            detail = stderr[-1] if stderr else f"exit code {exc.exit_code}"
            logger.error("planner migrate failed: %s", exc.stderr)
            return ops.WaitingStatus(f"database migration failed, will retry: {detail}")
        except (ops.pebble.ChangeError, ops.pebble.TimeoutError, ops.pebble.APIError) as exc:
            logger.error("planner migrate failed: %s", exc)
            return ops.WaitingStatus("database migration failed, will retry")
        peer[MIGRATED_KEY] = fingerprint
        logger.info("database migrated")
        return None

    # --- github_runner_planner_v0 -----------------------------------------------------

    def _managed(self) -> dict[str, str]:
        peer = self._peer_data
        if peer is None:
            return {}
        try:
            data = json.loads(peer.get(MANAGED_KEY) or "{}")
        except json.JSONDecodeError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save_managed(self, managed: dict[str, str]) -> None:
        peer = self._peer_data
        if peer is not None:
            peer[MANAGED_KEY] = json.dumps(managed, sort_keys=True)

    def _reconcile_planner_relations(self) -> list[str]:
        """Leader: make tokens, secrets and flavors match the ``planner`` relations.

        The peer databag remembers every relation set up (token name -> managed flavor name,
        or "" when the relation names no flavor), so that a departed relation's token, secret
        and flavor are removed even though its data is gone.

        Returns:
            problems with the requirers' data (reported in the status).
        """
        client = self._client()
        relations = self.model.relations[PLANNER_RELATION]
        existing_tokens = {t for t in client.list_tokens() if t.startswith(TOKEN_PREFIX)}
        managed = self._managed()
        problems: list[str] = []

        requests: dict[str, FlavorRequest | None] = {}
        invalid: set[str] = set()
        for relation in relations:
            name = token_name(relation.id)
            try:
                requests[name] = FlavorRequest.from_databag(relation.data[relation.app])
            except RelationDataError as exc:
                remote = relation.app.name if relation.app else name
                problems.append(f"{remote} ({name}): {exc}")
                invalid.add(name)
        wanted = {req.name for req in requests.values() if req is not None}
        # A flavor named by an invalid relation is kept as it is until the data is fixed.
        wanted |= {managed[name] for name in invalid if managed.get(name)}

        endpoint = self._endpoint()
        for relation in relations:
            name = token_name(relation.id)
            self._ensure_token(client, relation, name, existing_tokens)
            relation.data[self.app]["endpoint"] = endpoint
            previous = managed.get(name, "")
            if name in invalid:
                managed[name] = previous
                continue
            request = requests.get(name)
            if (
                previous
                and (request is None or previous != request.name)
                and previous not in wanted
            ):
                client.delete_flavor(previous)
            if request is not None:
                self._ensure_flavor(client, request)
            managed[name] = request.name if request is not None else ""
            self._save_managed(managed)

        # Departed relations: drop their tokens, secrets and flavors.
        active = {token_name(r.id) for r in relations}
        for name in sorted((existing_tokens | set(managed)) - active):
            if name in existing_tokens:
                client.delete_token(name)
            flavor = managed.pop(name, "")
            if flavor and flavor not in wanted:
                client.delete_flavor(flavor)
            self._remove_secret(name)
            self._save_managed(managed)
        return problems

    def _ensure_token(
        self, client: PlannerClient, relation: ops.Relation, name: str, existing: set[str]
    ) -> None:
        """Make sure the relation has a token, shared in a secret granted to it.

        Args:
            client: planner API client.
            relation: the ``planner`` relation.
            name: the token name (also the secret label).
            existing: names of the tokens the planner has.
        """
        secret: ops.Secret | None
        try:
            secret = self.model.get_secret(label=name)
        except ops.SecretNotFoundError:
            secret = None
        if secret is None or name not in existing:
            # The token value is only known at creation: (re)create it when either half is lost.
            if name in existing:
                client.delete_token(name)
            try:
                token = client.create_token(name)
            except ConflictError:
                client.delete_token(name)
                token = client.create_token(name)
            existing.add(name)
            if secret is None:
                secret = self.app.add_secret(
                    {"token": token},
                    label=name,
                    description=f"planner API token of relation {relation.id}",
                )
            else:
                secret.set_content({"token": token})
            secret.grant(relation)
            secret_id = secret.id
        else:
            secret_id = secret.id or secret.get_info().id
        relation.data[self.app]["token"] = str(secret_id)

    @staticmethod
    def _ensure_flavor(client: PlannerClient, request: FlavorRequest) -> None:
        """Create the flavor, or update the fields that differ (labels case-insensitively).

        Args:
            client: planner API client.
            request: the desired flavor.
        """
        current = client.get_flavor(request.name)
        if current is not None and current.platform != request.platform:
            # The platform cannot be patched.
            client.delete_flavor(request.name)
            current = None
        if current is None:
            logger.info("creating flavor %s", request.name)
            client.create_flavor(
                request.name,
                platform=request.platform,
                labels=request.labels,
                priority=request.priority,
                minimum_pressure=request.minimum_pressure,
            )
            return
        changes = request.differences(current)
        if changes:
            logger.info("updating flavor %s: %s", request.name, sorted(changes))
            client.update_flavor(request.name, **changes)

    def _remove_secret(self, label: str) -> None:
        try:
            secret = self.model.get_secret(label=label)
        except ops.SecretNotFoundError:
            return
        secret.remove_all_revisions()

    # --- actions ----------------------------------------------------------------------

    def _action_client(self, event: ops.ActionEvent) -> PlannerClient | None:
        try:
            return self._client()
        except ConfigError as exc:
            event.fail(str(exc))
            return None

    def _set_flavor_disabled(self, event: ops.ActionEvent, disabled: bool) -> None:
        client = self._action_client(event)
        if client is None:
            return
        flavor = str(event.params["flavor"])
        try:
            client.update_flavor(flavor, is_disabled=disabled)
        except NotFoundError:
            event.fail(f"flavor {flavor!r} not found")
            return
        except PlannerError as exc:
            event.fail(str(exc))
            return
        word = "disabled" if disabled else "enabled"
        event.set_results({"message": f"flavor {flavor!r} {word}"})

    def _on_enable_flavor(self, event: ops.ActionEvent) -> None:
        self._set_flavor_disabled(event, False)

    def _on_disable_flavor(self, event: ops.ActionEvent) -> None:
        self._set_flavor_disabled(event, True)

    def _on_create_token(self, event: ops.ActionEvent) -> None:
        name = str(event.params["name"]).strip()
        if not name:
            event.fail("name must not be empty")
            return
        if name.startswith(TOKEN_PREFIX):
            event.fail(f"token names starting with {TOKEN_PREFIX!r} are reserved for relations")
            return
        client = self._action_client(event)
        if client is None:
            return
        try:
            token = client.create_token(name)
        except ConflictError:
            event.fail(f"token {name!r} already exists")
            return
        except PlannerError as exc:
            event.fail(str(exc))
            return
        event.set_results({"name": name, "token": token})

    def _on_list_flavors(self, event: ops.ActionEvent) -> None:
        client = self._action_client(event)
        if client is None:
            return
        try:
            flavors = client.list_flavors()
        except PlannerError as exc:
            event.fail(str(exc))
            return
        event.set_results(
            {
                "count": len(flavors),
                "flavors": json.dumps([f.to_json() for f in flavors], sort_keys=True),
            }
        )


if __name__ == "__main__":  # pragma: nocover
    ops.main(PlannerCharm)
