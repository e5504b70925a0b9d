# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""The base class of both charms: what they wire the same way.

Both charms run one service of this repository under Pebble and converge on one desired state
from every event (config, secrets, Pebble, relations): they publish what related applications
need, turn the config into the service's environment, report what is missing, write the Pebble
layer, open the ports and wait for ``GET /ready``. The options both charms have (``app-port``,
``metrics-port``, ``metrics-path``, ``request-timeout``, ``log-level``) become the variables
both services read (``APP_PORT``, ``OTEL_EXPORTER_PROMETHEUS_*``, ``APP_METRICS_PATH``,
``APP_REQUEST_TIMEOUT``, ``RUST_LOG``, and the ``OTEL_*`` exporter variables). A charm supplies
its own names (class attributes) and its own config (``service_environment``), and may add
relations
(``extra_relations``, ``connection_strings``, ``publish_relation_data``) and steps before the
service starts (``before_start``, the planner's migration) or once it is ready
(``after_ready``).
"""

from __future__ import annotations

import inspect
import logging
import pathlib
import typing

import ops
from charmlibs.interfaces.tracing import TracingEndpointRequirer

from runner_common import http, workload
from runner_common.config import ConfigError, duration_option, int_option, url_path_option
from runner_common.ingress import IngressRequirer
from runner_common.observability import (
    GrafanaDashboardProvider,
    LogForwarder,
    MetricsEndpointProvider,
)
from runner_common.rabbitmq import RabbitMQRequirer

logger = logging.getLogger(__name__)

# Relations both charms have; every event on them triggers a reconciliation.
COMMON_RELATIONS = ("rabbitmq", "ingress", "metrics-endpoint", "grafana-dashboard", "logging")


def _join_and(names: list[str]) -> str:
    return " and ".join(names)


class WorkloadCharm(ops.CharmBase):
    """A sidecar charm running one service under Pebble, related to RabbitMQ and COS."""

    # The workload container and its image resource are named as in Canonical's charms (the
    # go-framework extension): `app` and `app-image`.
    container_name: typing.ClassVar[str] = "app"
    # The Pebble service (also how status messages name the workload), its command and the
    # layer summary.
    service_name: typing.ClassVar[str]
    command: typing.ClassVar[str]
    summary: typing.ClassVar[str]
    # Relations besides COMMON_RELATIONS whose events trigger a reconciliation.
    extra_relations: typing.ClassVar[tuple[str, ...]] = ()
    # Relations without which the service cannot start (Blocked).
    required_relations: typing.ClassVar[tuple[str, ...]] = ("rabbitmq",)

    def __init__(self, framework: ops.Framework):
        """Set up the shared relations and observe every event that can change the state.

        Args:
            framework: the ops framework.
        """
        super().__init__(framework)
        src = pathlib.Path(inspect.getfile(type(self))).parent
        self.rabbitmq = RabbitMQRequirer(self, "rabbitmq", username=self.app.name)
        self.ingress = IngressRequirer(self, "ingress")
        self.tracing = TracingEndpointRequirer(
            self, relation_name="tracing", protocols=[workload.TRACING_PROTOCOL]
        )
        self.metrics = MetricsEndpointProvider(
            self, "metrics-endpoint", src / "prometheus_alert_rules"
        )
        self.dashboards = GrafanaDashboardProvider(
            self, "grafana-dashboard", src / "grafana_dashboards"
        )
        self.logging = LogForwarder(self, "logging")

        observe = framework.observe
        container = self.on[self.container_name]
        for event in (
            self.on.config_changed,
            self.on.leader_elected,
            self.on.update_status,
            self.on.secret_changed,
            container.pebble_ready,
            # The ready check (GET /ready) changing state, e.g. the broker connection is lost.
            container.pebble_check_failed,
            container.pebble_check_recovered,
            self.tracing.on.endpoint_changed,
            self.tracing.on.endpoint_removed,
        ):
            observe(event, self._reconcile)
        observe(self.on.upgrade_charm, self._on_upgrade_charm)
        for relation in (*COMMON_RELATIONS, *self.extra_relations):
            observe(self.on[relation].relation_joined, self._reconcile)
            observe(self.on[relation].relation_changed, self._reconcile)
            observe(self.on[relation].relation_departed, self._reconcile)
            observe(self.on[relation].relation_broken, self._reconcile)

    # --- what a charm adds ------------------------------------------------------------

    def service_environment(self) -> dict[str, str]:
        """The service's own variables from its own config options.

        Returns:
            environment variables.

        Raises:
            ConfigError: a config option is missing or invalid.
        """
        raise NotImplementedError

    def connection_strings(self) -> dict[str, tuple[str, str | None]]:
        """The connection strings the service needs, once the providers have answered.

        Returns:
            for each relation: the variable and its value (None while the provider has not
            answered yet).
        """
        return {"rabbitmq": ("RABBITMQ_CONNECT_STRING", self.rabbitmq.connect_string())}

    def publish_relation_data(self) -> None:
        """Data we owe related applications; none of it depends on the workload."""
        self.rabbitmq.request_access()
        self.ingress.publish(int(self.config["app-port"]))
        self.metrics.publish(int(self.config["metrics-port"]), self._metrics_path())
        self.dashboards.publish()

    def before_start(self, container: ops.Container, env: dict[str, str]) -> ops.StatusBase | None:
        """Work before the service may (re)start with ``env``.

        Args:
            container: the workload container.
            env: the full environment of the service.

        Returns:
            a status to report when the service must not start yet, else None.
        """
        return None

    def after_ready(self) -> ops.StatusBase:
        """Work once the service answers ``GET /ready``.

        Returns:
            the unit status.
        """
        return ops.ActiveStatus()

    def on_upgrade(self) -> None:
        """Work when a new charm revision is installed, before the reconciliation."""

    # --- shared -----------------------------------------------------------------------

    def workload_url(self) -> str:
        """The service's HTTP URL from inside the unit.

        Returns:
            e.g. ``http://127.0.0.1:8080``.

        Raises:
            ConfigError: the app-port option is out of range.
        """
        return f"http://127.0.0.1:{int_option(self, 'app-port', minimum=1, maximum=65535)}"

    def environment(self) -> dict[str, str]:
        """The service's environment from config (connection strings are added later).

        Returns:
            environment variables: the shared ones and the charm's own.

        Raises:
            ConfigError: a config option is missing or invalid.
        """
        port = int_option(self, "app-port", minimum=1, maximum=65535)
        metrics_port = int_option(self, "metrics-port", minimum=1, maximum=65535)
        if metrics_port == port:
            # The services serve metrics on a listener of their own.
            raise ConfigError("metrics-port must differ from app-port")
        env = {"APP_PORT": str(port), "APP_METRICS_PATH": url_path_option(self, "metrics-path")}
        env.update(self.service_environment())
        env["APP_REQUEST_TIMEOUT"] = duration_option(self, "request-timeout")
        env["RUST_LOG"] = str(self.config["log-level"]).strip() or "info"
        env.update(workload.otel_env(workload.tracing_endpoint(self.tracing), metrics_port))
        return env

    def _metrics_path(self) -> str:
        """The scrape path: ``metrics-path``, or the default while it is invalid (Blocked)."""
        try:
            return url_path_option(self, "metrics-path")
        except ConfigError:
            return "/metrics"

    def _on_upgrade_charm(self, event: ops.UpgradeCharmEvent) -> None:
        self.on_upgrade()
        self._reconcile(event)

    def _reconcile(self, _: ops.EventBase) -> None:
        """Converge on the desired state and set the unit status."""
        self.unit.status = self._converge()

    def _converge(self) -> ops.StatusBase:
        try:
            self.publish_relation_data()
        except (ValueError, ops.ModelError) as exc:  # bad int config is reported below
            logger.warning("could not publish relation data: %s", exc)

        container = self.unit.get_container(self.container_name)
        if not container.can_connect():
            return ops.WaitingStatus(f"waiting for Pebble in the {self.container_name} container")

        blocked = []
        env: dict[str, str] = {}
        try:
            env = self.environment()
        except ConfigError as exc:
            blocked.append(str(exc))
        missing = [name for name in self.required_relations if not self.model.get_relation(name)]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            blocked.append(f"missing {_join_and(missing)} relation{plural}")
        if blocked:
            return ops.BlockedStatus("; ".join(blocked))

        strings = self.connection_strings()
        waiting = [name for name, (_, value) in strings.items() if not value]
        if waiting:
            return ops.WaitingStatus(f"waiting for {_join_and(waiting)} credentials")
        env.update({variable: str(value) for variable, value in strings.values()})

        status = self.before_start(container, env)
        if status is not None:
            return status

        port = int(env["APP_PORT"])
        layer = workload.build_layer(
            service=self.service_name,
            summary=self.summary,
            command=self.command,
            environment=env,
            port=port,
            log_targets=self.logging.log_targets(container.get_plan().log_targets),
        )
        workload.apply_layer(container, self.service_name, layer)
        self.unit.set_ports(port, int(env["OTEL_EXPORTER_PROMETHEUS_PORT"]))

        if not http.wait_ready(f"http://127.0.0.1:{port}/ready"):
            return ops.WaitingStatus(
                f"waiting for the {self.service_name} to be ready (GET /ready)"
            )
        return self.after_ready()
