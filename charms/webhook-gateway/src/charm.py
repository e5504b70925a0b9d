#!/usr/bin/env python3
# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Kubernetes sidecar charm for the runner-planner webhook gateway."""

from __future__ import annotations

import re

import ops

from runner_common.charm import WorkloadCharm
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

# APP_GITHUB_PATH as gateway/src/redelivery.rs parses it: `org` or `owner/repo`.
_NAME = r"(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+"
GITHUB_PATH_RE = re.compile(rf"^{_NAME}(?:/{_NAME})?$")
# Largest redelivery-interval, in seconds: a year.
MAX_INTERVAL = 365 * 24 * 3600


class WebhookGatewayCharm(WorkloadCharm):
    """Run the gateway under Pebble and wire it to RabbitMQ and COS."""

    service_name = "gateway"
    command = "/usr/local/bin/gateway"
    summary = "runner-planner webhook gateway"

    def service_environment(self) -> dict[str, str]:
        """The gateway's own variables: its secrets, limits and redelivery.

        Returns:
            environment variables.

        Raises:
            ConfigError: a config option is missing or invalid.
        """
        secret = read_secret_value(self, "webhook-secret", required=True)
        previous = read_secret_value(self, "previous-webhook-secret", required=False)
        env = {
            "APP_WEBHOOK_SECRET_VALUE": str(secret),
            "APP_MAX_BODY_BYTES": str(
                int_option(self, "max-body-bytes", minimum=1, maximum=1 << 30)
            ),
            "APP_PUBLISH_TIMEOUT": duration_option(self, "publish-timeout"),
            "APP_MAX_IN_FLIGHT": str(
                int_option(self, "max-in-flight", minimum=1, maximum=1 << 20)
            ),
        }
        if previous:
            env["APP_WEBHOOK_SECRET_PREVIOUS_VALUE"] = previous
        env.update(self._redelivery_environment())
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
        # Whole seconds, as in Canonical's charm; the gateway reads a bare number as seconds.
        interval = int_option(self, "redelivery-interval", minimum=1, maximum=MAX_INTERVAL)
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
            "APP_REDELIVERY_INTERVAL": str(interval),
        }

    def after_ready(self) -> ops.StatusBase:
        """Active; with an ingress, the status shows the URL to configure on GitHub.

        Returns:
            the unit status.
        """
        url = self.ingress.url
        return ops.ActiveStatus(f"webhook URL: {url}/webhook" if url else "")


if __name__ == "__main__":  # pragma: nocover
    ops.main(WebhookGatewayCharm)
