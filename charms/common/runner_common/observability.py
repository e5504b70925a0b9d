# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""COS relations: ``prometheus_scrape``, ``grafana_dashboard`` and ``loki_push_api``.

These implement the provider/requirer data the COS charms read, the same data the Charmhub
libraries ``prometheus_scrape``, ``grafana_dashboard`` and ``loki_push_api`` (log forwarding)
write:

* ``metrics-endpoint`` (we provide ``prometheus_scrape``): application databag
  ``scrape_metadata`` (Juju topology), ``scrape_jobs`` (jobs whose ``*`` host is expanded to
  each unit) and ``alert_rules`` (``{"groups": [...]}``); unit databag
  ``prometheus_scrape_unit_address`` and ``prometheus_scrape_unit_name``.
* ``grafana-dashboard`` (we provide ``grafana_dashboard``): application databag ``dashboards``
  = ``{"templates": {"file:<name>": {"charm", "content" (LZMA+base64), "juju_topology",
  "inject_dropdowns", "dashboard_alt_uid"}}, "uuid"}``.
* ``logging`` (we require ``loki_push_api``): each Loki unit publishes
  ``endpoint`` = ``{"url": ".../loki/api/v1/push"}``; we turn those into Pebble log targets,
  so Pebble forwards the workload's stdout/stderr to Loki.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import socket

import cosl
import ops
from cosl.rules import Rules

logger = logging.getLogger(__name__)


def _topology(charm: ops.CharmBase) -> cosl.JujuTopology:
    return cosl.JujuTopology.from_charm(charm)


@dataclasses.dataclass(eq=False)
class _Endpoint:
    """One of the charm's relation endpoints.

    Attributes:
        charm: the charm.
        relation_name: the endpoint name in charmcraft.yaml.
    """

    charm: ops.CharmBase
    relation_name: str

    @property
    def relations(self) -> list[ops.Relation]:
        """The endpoint's relations."""
        return self.charm.model.relations[self.relation_name]


@dataclasses.dataclass(eq=False)
class MetricsEndpointProvider(_Endpoint):
    """Publish scrape jobs and alert rules over ``prometheus_scrape``.

    Attributes:
        alert_rules_path: directory of ``*.rule`` files.
    """

    alert_rules_path: pathlib.Path

    def alert_rules(self) -> dict:
        """The alert rules, with Juju topology labels added.

        Returns:
            ``{"groups": [...]}``.
        """
        rules = Rules(query_type="promql", topology=_topology(self.charm))
        rules.add_path(self.alert_rules_path, recursive=True)
        return rules.as_dict()

    def publish(self, port: int, path: str = "/metrics") -> None:
        """Publish the scrape job on every ``metrics-endpoint`` relation.

        Args:
            port: the metrics port.
            path: the metrics path.
        """
        relations = self.relations
        if not relations:
            return
        topology = _topology(self.charm)
        jobs = [{"metrics_path": path, "static_configs": [{"targets": [f"*:{port}"]}]}]
        for relation in relations:
            if self.charm.unit.is_leader():
                relation.data[self.charm.app].update(
                    {
                        "scrape_metadata": json.dumps(topology.as_dict()),
                        "scrape_jobs": json.dumps(jobs),
                        "alert_rules": json.dumps(self.alert_rules()),
                    }
                )
            relation.data[self.charm.unit].update(
                {
                    "prometheus_scrape_unit_address": socket.getfqdn(),
                    "prometheus_scrape_unit_name": self.charm.unit.name,
                }
            )


@dataclasses.dataclass(eq=False)
class GrafanaDashboardProvider(_Endpoint):
    """Publish the charm's Grafana dashboards over ``grafana_dashboard``.

    Attributes:
        dashboards_path: directory of ``*.json`` dashboards.
    """

    dashboards_path: pathlib.Path

    def templates(self) -> dict:
        """The dashboard templates, keyed ``file:<name>``.

        Returns:
            the ``templates`` mapping of the ``dashboards`` field.
        """
        topology = _topology(self.charm).as_dict()
        charm_name = self.charm.meta.name
        templates = {}
        for path in sorted(self.dashboards_path.glob("*.json")):
            raw = path.read_text()
            json.loads(raw)  # fail loudly on a broken dashboard
            templates[f"file:{path.name}"] = {
                "charm": charm_name,
                "content": cosl.LZMABase64.compress(raw),
                "juju_topology": dict(topology),
                "inject_dropdowns": True,
                "dashboard_alt_uid": cosl.DashboardPath40UID.generate(charm_name, path.name),
            }
        return templates

    def publish(self) -> None:
        """Publish the dashboards (leader only)."""
        if not self.charm.unit.is_leader():
            return
        relations = self.relations
        if not relations:
            return
        templates = self.templates()
        # A stable uuid derived from the content: unchanged dashboards do not churn the databag.
        digest = hashlib.sha256(json.dumps(templates, sort_keys=True).encode()).hexdigest()
        data = json.dumps({"templates": templates, "uuid": digest[:32]})
        for relation in relations:
            relation.data[self.charm.app]["dashboards"] = data


@dataclasses.dataclass(eq=False)
class LogForwarder(_Endpoint):
    """Turn ``loki_push_api`` endpoints into Pebble log targets."""

    def endpoints(self) -> dict[str, str]:
        """Loki push URLs published by the related Loki units.

        Returns:
            mapping of a target name to the push URL.
        """
        urls: dict[str, str] = {}
        for relation in self.relations:
            for unit in sorted(relation.units, key=lambda u: u.name):
                raw = relation.data[unit].get("endpoint")
                if not raw:
                    continue
                try:
                    url = json.loads(raw).get("url")
                except (json.JSONDecodeError, AttributeError):
                    logger.warning("ignoring malformed loki endpoint %r", raw)
                    continue
                if url:
                    urls[f"loki-{unit.name.replace('/', '-')}"] = url
        return urls

    def log_targets(self, existing: dict[str, ops.pebble.LogTarget] | None = None) -> dict:
        """The ``log-targets`` section of a Pebble layer.

        Args:
            existing: log targets of the current plan; those no longer related are disabled.

        Returns:
            the log targets to put in the layer.
        """
        topology = _topology(self.charm)
        labels = {
            "product": "juju",
            "juju_model": topology.model,
            "juju_model_uuid": topology.model_uuid,
            "juju_application": topology.application,
            "juju_unit": topology.unit,
            "juju_charm": topology.charm_name,
        }
        targets: dict[str, dict] = {}
        for name, target in (existing or {}).items():
            # Disable targets of departed Loki units (a layer cannot delete a target); once
            # disabled, leave them alone so the merged service list does not keep growing.
            services = list(target.services or [])
            if name.startswith("loki-") and services and services[-1] != "-all":
                targets[name] = {"override": "merge", "services": ["-all"]}
        for name, url in self.endpoints().items():
            targets[name] = {
                "override": "replace",
                "type": "loki",
                "location": url,
                "services": ["all"],
                "labels": labels,
            }
        return targets
