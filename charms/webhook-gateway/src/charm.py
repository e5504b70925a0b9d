#!/usr/bin/env python3
# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Kubernetes sidecar charm for the runner-planner webhook gateway."""

from __future__ import annotations

import logging
import pathlib
import re

import ops
from charmlibs.interfaces.tracing import TracingEndpointRequirer

from runner_common import http, workload
from runner_common.config import (
    GITHUB_APP_OPTIONS,
    MAX_ID,
    ConfigError,
    duration_option,
    github_app_env,
    int_option,
    read_secret_value,
    require_together,
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
CONTAINER = "gateway"
SERVICE = "gateway"
COMMAND = "/usr/local/bin/gateway"
# APP_GITHUB_PATH as gateway/src/redelivery.rs parses it: `org` or `owner/repo`.
_NAME = r"(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+"
GITHUB_PATH_RE = re.compile(rf"^{_NAME}(?:/{_NAME})?$")


class WebhookGatewayCharm(ops.CharmBase):
    """Run the gateway under Pebble and wire it to RabbitMQ and COS."""

    def __init__(self, framework: ops.Framework):
        """Set up relations and observe every event that can change the desired state.

        Args:
            framework: the ops framework.
        """
        super().__init__(framework)
        self.rabbitmq = RabbitMQRequirer(self, "rabbitmq", username=self.app.name)
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
            self.on.upgrade_charm,
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
        for relation in (
            "rabbitmq",
            "ingress",
            "metrics-endpoint",
            "grafana-dashboard",
            "logging",
        ):
            observe(self.on[relation].relation_joined, self._reconcile)
            observe(self.on[relation].relation_changed, self._reconcile)
            observe(self.on[relation].relation_departed, self._reconcile)
            observe(self.on[relation].relation_broken, self._reconcile)

    # --- desired state -----------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        """The gateway's environment from config (the broker URI is added later).

        Returns:
            environment variables.

        Raises:
            ConfigError: a config option is missing or invalid.
        """
        secret = read_secret_value(self, "webhook-secret", required=True)
        previous = read_secret_value(self, "previous-webhook-secret", required=False)
        port = int_option(self, "port", minimum=1, maximum=65535)
        metrics_port = int_option(self, "metrics-port", minimum=1, maximum=65535)
        if metrics_port == port:
            raise ConfigError("metrics-port must differ from port")
        env = {
            "APP_PORT": str(port),
            "APP_WEBHOOK_SECRET_VALUE": str(secret),
            "APP_MAX_BODY_BYTES": str(
                int_option(self, "max-body-bytes", minimum=1, maximum=1 << 30)
            ),
            "APP_PUBLISH_TIMEOUT": duration_option(self, "publish-timeout"),
            "APP_MAX_IN_FLIGHT": str(
                int_option(self, "max-in-flight", minimum=1, maximum=1 << 20)
            ),
            "APP_REQUEST_TIMEOUT": duration_option(self, "request-timeout"),
            "RUST_LOG": str(self.config["log-level"]).strip() or "info",
        }
        if previous:
            env["APP_WEBHOOK_SECRET_PREVIOUS_VALUE"] = previous
        env.update(self._redelivery_environment())
        env.update(workload.otel_env(workload.tracing_endpoint(self.tracing), metrics_port))
        return env

    def _redelivery_environment(self) -> dict[str, str]:
        """The GitHub App and redelivery variables; empty when neither is configured.

        The gateway uses the GitHub App only to redeliver failed webhooks, so the App,
        ``github-path`` and ``webhook-id`` are required together (as the gateway requires).

        Returns:
            environment variables.

        Raises:
            ConfigError: the App or the hook is partly configured, or a value is invalid.
        """
        app_env = github_app_env(self)
        interval = duration_option(self, "redelivery-interval")
        path = str(self.config.get("github-path") or "").strip()
        webhook_id = int(self.config.get("webhook-id") or 0)
        present = {
            "github-path": bool(path),
            "webhook-id": webhook_id != 0,
            f"the GitHub App ({', '.join(GITHUB_APP_OPTIONS)})": bool(app_env),
        }
        if not require_together("redelivery", present):
            return {}
        if not GITHUB_PATH_RE.match(path):
            raise ConfigError(
                f"invalid github-path config: {path!r} is not an organization (org)"
                " or a repository (owner/repo)"
            )
        webhook_id = int_option(self, "webhook-id", minimum=1, maximum=MAX_ID)
        return {
            **app_env,
            "APP_GITHUB_PATH": path,
            "APP_WEBHOOK_ID": str(webhook_id),
            "APP_REDELIVERY_INTERVAL": interval,
        }

    def _publish_relation_data(self) -> None:
        """Data we owe related applications; none of it depends on the workload."""
        port = int(self.config["port"])
        self.rabbitmq.request_access()
        self.ingress.publish(port)
        self.metrics.publish(int(self.config["metrics-port"]))
        self.dashboards.publish()

    def _reconcile(self, _: ops.EventBase) -> None:
        """Converge on the desired state and set the unit status."""
        self.unit.status = self._converge()

    def _converge(self) -> ops.StatusBase:
        try:
            self._publish_relation_data()
        except (ValueError, ops.ModelError) as exc:  # bad int config is caught below
            logger.warning("could not publish relation data: %s", exc)

        container = self.unit.get_container(CONTAINER)
        if not container.can_connect():
            return ops.WaitingStatus("waiting for Pebble in the gateway container")

        blocked = []
        env: dict[str, str] = {}
        try:
            env = self._environment()
        except ConfigError as exc:
            blocked.append(str(exc))
        if self.model.get_relation("rabbitmq") is None:
            blocked.append("missing rabbitmq relation")
        if blocked:
            return ops.BlockedStatus("; ".join(blocked))
        rabbitmq_uri = self.rabbitmq.connect_string()
        if rabbitmq_uri is None:
            return ops.WaitingStatus("waiting for rabbitmq credentials")
        env["RABBITMQ_CONNECT_STRING"] = rabbitmq_uri

        port = int(env["APP_PORT"])
        existing = container.get_plan().log_targets
        layer = workload.build_layer(
            service=SERVICE,
            summary="runner-planner webhook gateway",
            command=COMMAND,
            environment=env,
            port=port,
            log_targets=self.logging.log_targets(existing),
        )
        workload.apply_layer(container, "webhook-gateway", layer)
        self.unit.set_ports(port, int(env["OTEL_EXPORTER_PROMETHEUS_PORT"]))

        if not http.wait_ready(f"http://127.0.0.1:{port}/ready"):
            return ops.WaitingStatus("waiting for the gateway to be ready (GET /ready)")
        url = self.ingress.url
        return ops.ActiveStatus(f"webhook URL: {url}/webhook" if url else "")


if __name__ == "__main__":  # pragma: nocover
    ops.main(WebhookGatewayCharm)
