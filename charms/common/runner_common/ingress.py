# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Requirer side of the ``ingress`` interface, version 2 (per-application ingress).

Protocol (every value is JSON encoded, as traefik-k8s and nginx-ingress-integrator expect):

* requirer application databag (leader): ``model``, ``name``, ``port``, ``strip-prefix``,
  ``redirect-https``, ``scheme``;
* requirer unit databag: ``host`` (the unit's FQDN) and ``ip``;
* provider application databag: ``ingress`` = ``{"url": "https://..."}``.
"""

from __future__ import annotations

import json
import logging
import socket

import ops

logger = logging.getLogger(__name__)


class IngressRequirer:
    """Minimal per-app ingress requirer."""

    def __init__(self, charm: ops.CharmBase, relation_name: str = "ingress"):
        """Create the requirer.

        Args:
            charm: the charm.
            relation_name: the endpoint name in charmcraft.yaml.
        """
        self._charm = charm
        self.relation_name = relation_name

    @property
    def relation(self) -> ops.Relation | None:
        """The relation, if any."""
        return self._charm.model.get_relation(self.relation_name)

    def publish(self, port: int) -> None:
        """Ask the ingress provider to route to ``port`` of this application.

        Args:
            port: the workload's HTTP port.
        """
        relation = self.relation
        if relation is None:
            return
        if self._charm.unit.is_leader():
            app_data = {
                "model": self._charm.model.name,
                "name": self._charm.app.name,
                "port": port,
                "strip-prefix": True,
                "redirect-https": False,
                "scheme": "http",
            }
            relation.data[self._charm.app].update({k: json.dumps(v) for k, v in app_data.items()})
        unit_data = {"host": socket.getfqdn()}
        binding = self._charm.model.get_binding(relation)
        if binding is not None and binding.network.bind_address is not None:
            unit_data["ip"] = str(binding.network.bind_address)
        relation.data[self._charm.unit].update({k: json.dumps(v) for k, v in unit_data.items()})

    @property
    def url(self) -> str | None:
        """The URL the provider published, if any."""
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        raw = relation.data[relation.app].get("ingress")
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            logger.warning("ignoring malformed ingress data %r", raw)
            return None
        if isinstance(data, str):  # tolerate a second level of encoding
            try:
                data = json.loads(data)
            except json.JSONDecodeError:
                return None
        url = data.get("url") if isinstance(data, dict) else None
        return url.rstrip("/") if isinstance(url, str) and url else None
