#!/usr/bin/env python3
# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Kubernetes sidecar charm for the runner-planner planner."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import ops

from planner_client import ConflictError, NotFoundError, PlannerClient, PlannerError
from planner_relation import (
    TOKEN_PREFIX,
    FlavorRequest,
    RelationDataError,
    token_name,
)
from postgresql import PostgreSQLRequirer
from runner_common.charm import WorkloadCharm
from runner_common.config import (
    ConfigError,
    duration_option,
    github_app_env,
    int_option,
    read_secret_value,
)

logger = logging.getLogger(__name__)

BINARY = "/usr/local/bin/planner"
# The peer relation is named as in Canonical's charm, so that `juju refresh --switch` keeps it.
PEER = "secret-storage"
PLANNER_RELATION = "planner"
ADMIN_TOKEN_RE = re.compile(r"^planner_v0_[A-Za-z0-9_-]{20}$")
# Peer application databag keys (written by the leader).
MIGRATED_KEY = "migrated"  # fingerprint of the database the leader last migrated
MANAGED_KEY = "managed-flavors"  # JSON {token name: flavor name} of relation-managed flavors
MIGRATION_TIMEOUT = 300


class PlannerCharm(WorkloadCharm):
    """Run the planner under Pebble; manage flavors and tokens of related runner managers."""

    service_name = "planner"
    command = f"{BINARY} serve"
    summary = "runner-planner planner"
    extra_relations = ("postgresql", PLANNER_RELATION, PEER)
    required_relations = ("rabbitmq", "postgresql")

    def __init__(self, framework: ops.Framework):
        """Set up the PostgreSQL relation and the actions.

        Args:
            framework: the ops framework.
        """
        super().__init__(framework)
        # The database named after the application, as Canonical's charm requests it.
        self.postgresql = PostgreSQLRequirer(self, "postgresql", database=self.app.name)
        observe = framework.observe
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
        return PlannerClient(self.workload_url(), self._admin_token())

    def _endpoint(self) -> str:
        """The API URL runner managers should use: the ingress URL, else the K8s service."""
        url = self.ingress.url
        if url:
            return url
        port = int(self.config["app-port"])
        return f"http://{self.app.name}.{self.model.name}.svc.cluster.local:{port}"

    # --- the workload -----------------------------------------------------------------

    def service_environment(self) -> dict[str, str]:
        """The planner's own variables: admin token, matching, stream, consumer, pool.

        Returns:
            environment variables.

        Raises:
            ConfigError: a config option is missing or invalid.
        """
        labels = [x.strip() for x in str(self.config["ignored-labels"]).split(",") if x.strip()]
        env = {
            "APP_ADMIN_TOKEN_VALUE": self._admin_token(),
            "APP_IGNORED_LABELS": ",".join(labels),
            "APP_JOB_MAX_AGE": duration_option(self, "job-max-age"),
            "APP_STREAM_HEARTBEAT": duration_option(self, "stream-heartbeat"),
            "APP_CONSUMER_PREFETCH": str(
                int_option(self, "consumer-prefetch", minimum=1, maximum=65535)
            ),
            "APP_DB_POOL_SIZE": str(int_option(self, "db-pool-size", minimum=1, maximum=100)),
            "APP_RECONCILE_AFTER": duration_option(self, "reconcile-after"),
            "APP_RECONCILE_INTERVAL": duration_option(self, "reconcile-interval"),
            "APP_RECONCILE_BATCH": str(
                int_option(self, "reconcile-batch", minimum=1, maximum=1000)
            ),
        }
        # Optional: with a GitHub App the planner reconciles stale jobs with GitHub's API.
        env.update(github_app_env(self))
        return env

    def connection_strings(self) -> dict[str, tuple[str, str | None]]:
        """RabbitMQ's and PostgreSQL's connection strings.

        Returns:
            for each relation: the variable and its value, None until the provider answered.
        """
        return {
            **super().connection_strings(),
            "postgresql": ("POSTGRESQL_DB_CONNECT_STRING", self.postgresql.connect_string()),
        }

    def publish_relation_data(self) -> None:
        """The shared relation data, and the database request."""
        super().publish_relation_data()
        self.postgresql.request_database()

    def on_upgrade(self) -> None:
        """A new charm (and usually a new image): run the migrations again."""
        peer = self._peer_data
        if self.unit.is_leader() and peer is not None:
            peer.pop(MIGRATED_KEY, None)

    def before_start(self, container: ops.Container, env: dict[str, str]) -> ops.StatusBase | None:
        """Run ``planner migrate`` once per database (leader); others wait for it.

        Args:
            container: the workload container.
            env: the full workload environment.

        Returns:
            a status to report while the planner must not start yet, else None.
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

    def after_ready(self) -> ops.StatusBase:
        """The leader syncs the ``planner`` relations with the running planner.

        Returns:
            the unit status.
        """
        if self.unit.is_leader():
            try:
                problems = self._reconcile_planner_relations()
            except (PlannerError, ConfigError) as exc:
                logger.error("planner relation sync failed: %s", exc)
                return ops.WaitingStatus(f"planner relation sync failed, will retry: {exc}")
            if problems:
                return ops.ActiveStatus(f"invalid flavor data: {'; '.join(problems)}")
        return ops.ActiveStatus()

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
