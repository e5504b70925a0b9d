# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Requirer side of the ``rabbitmq`` interface (as served by rabbitmq-k8s and rabbitmq-server).

Protocol:

* the requirer's leader writes ``username`` and ``vhost`` to its application databag (they are
  also written to the unit databag, which the machine ``rabbitmq-server`` charm reads);
* the provider answers with ``hostname`` and ``password`` in its application databag
  (rabbitmq-k8s) or in its units' databags (rabbitmq-server).

The AMQP port is the standard 5672.
"""

from __future__ import annotations

import logging
import urllib.parse

import ops

logger = logging.getLogger(__name__)

AMQP_PORT = 5672


class RabbitMQRequirer:
    """Minimal ``rabbitmq`` requirer: requests access and builds the AMQP URI."""

    def __init__(self, charm: ops.CharmBase, relation_name: str, username: str, vhost: str = "/"):
        """Create the requirer.

        Args:
            charm: the charm.
            relation_name: the endpoint name in charmcraft.yaml.
            username: the user to request.
            vhost: the virtual host to request.
        """
        self._charm = charm
        self.relation_name = relation_name
        self.username = username
        self.vhost = vhost

    @property
    def relation(self) -> ops.Relation | None:
        """The relation, if any."""
        return self._charm.model.get_relation(self.relation_name)

    def request_access(self) -> None:
        """Publish the username and vhost this application wants."""
        relation = self.relation
        if relation is None:
            return
        request = {"username": self.username, "vhost": self.vhost}
        if self._charm.unit.is_leader():
            relation.data[self._charm.app].update(request)
        relation.data[self._charm.unit].update(request)

    def _credentials(self) -> tuple[str, str] | None:
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        app_data = relation.data[relation.app]
        if app_data.get("hostname") and app_data.get("password"):
            return app_data["hostname"], app_data["password"]
        for unit in sorted(relation.units, key=lambda u: u.name):
            unit_data = relation.data[unit]
            if unit_data.get("hostname") and unit_data.get("password"):
                return unit_data["hostname"], unit_data["password"]
        return None

    def connect_string(self) -> str | None:
        """The AMQP URI once the broker has answered, else None.

        Returns:
            e.g. ``amqp://app:secret@rabbitmq.model.svc:5672/%2F``.
        """
        creds = self._credentials()
        if creds is None:
            return None
        hostname, password = creds
        user = urllib.parse.quote(self.username, safe="")
        pw = urllib.parse.quote(password, safe="")
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{user}:{pw}@{hostname}:{AMQP_PORT}/{vhost}"
