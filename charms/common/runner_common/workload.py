# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Pebble layer and environment shared by both workloads."""

from __future__ import annotations

import logging

import ops
from charmlibs.interfaces.tracing import TracingEndpointRequirer, TracingError

logger = logging.getLogger(__name__)

TRACING_PROTOCOL = "otlp_http"


def tracing_endpoint(tracing: TracingEndpointRequirer) -> str | None:
    """The OTLP/HTTP traces URL offered by the tracing relation, if any.

    Args:
        tracing: the tracing requirer.

    Returns:
        e.g. ``http://tempo:4318/v1/traces``, or None.
    """
    if not tracing.relations:
        return None
    try:
        if not tracing.is_ready():
            return None
        endpoint = tracing.get_endpoint(TRACING_PROTOCOL)
    except TracingError as exc:
        logger.warning("tracing endpoint unavailable: %s", exc)
        return None
    if not endpoint:
        return None
    return endpoint.rstrip("/") + "/v1/traces"


def otel_env(traces_endpoint: str | None, metrics_port: int) -> dict[str, str]:
    """The OpenTelemetry variables both services read, as Canonical's charms set them.

    Metrics: the Prometheus exporter on every interface at ``metrics_port``. Traces: OTLP over
    HTTP (protobuf) to ``traces_endpoint``, or no trace exporter without a tracing relation.

    Args:
        traces_endpoint: OTLP/HTTP traces URL, if tracing is related.
        metrics_port: the Prometheus exporter port.

    Returns:
        environment variables.
    """
    env = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
        "OTEL_TRACES_EXPORTER": "none",
    }
    if traces_endpoint:
        env["OTEL_TRACES_EXPORTER"] = "otlp"
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = traces_endpoint
        env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
    return env


def build_layer(
    *,
    service: str,
    summary: str,
    command: str,
    environment: dict[str, str],
    port: int,
    log_targets: dict | None = None,
) -> ops.pebble.LayerDict:
    """A Pebble layer running ``command`` with health and readiness checks.

    Args:
        service: the Pebble service name.
        summary: layer summary.
        command: the command line.
        environment: the service environment.
        port: the HTTP port serving ``/health`` and ``/ready``.
        log_targets: Pebble log targets.

    Returns:
        the layer.
    """
    layer: dict = {
        "summary": summary,
        "services": {
            service: {
                "override": "replace",
                "summary": summary,
                "command": command,
                "startup": "enabled",
                "environment": dict(sorted(environment.items())),
                "on-check-failure": {f"{service}-alive": "restart"},
            }
        },
        "checks": {
            f"{service}-alive": {
                "override": "replace",
                "level": "alive",
                "period": "10s",
                "threshold": 3,
                "http": {"url": f"http://localhost:{port}/health"},
            },
            f"{service}-ready": {
                "override": "replace",
                "level": "ready",
                "period": "10s",
                "threshold": 3,
                "http": {"url": f"http://localhost:{port}/ready"},
            },
        },
    }
    if log_targets:
        layer["log-targets"] = log_targets
    return layer  # type: ignore[return-value]


def apply_layer(container: ops.Container, name: str, layer: ops.pebble.LayerDict) -> None:
    """Add (or replace) the layer and replan; Pebble restarts services whose config changed.

    Args:
        container: the workload container.
        name: the layer label.
        layer: the layer.
    """
    container.add_layer(name, layer, combine=True)
    container.replan()
