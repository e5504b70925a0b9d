# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Requirer side of the ``postgresql_client`` interface (data-platform ``database`` protocol).

Protocol, as postgresql-k8s implements it:

* the requirer's leader writes ``database`` (the database to create) and ``requested-secrets``
  (JSON list) to its application databag;
* the provider answers in its application databag with ``endpoints`` (``host:port,...``) and
  either ``secret-user`` (the id of a Juju secret holding ``username`` and ``password``,
  when secrets were requested) or plain ``username``/``password`` fields (older providers).
"""

from __future__ import annotations

import json
import logging
import urllib.parse

import ops

logger = logging.getLogger(__name__)

REQUESTED_SECRETS = ["username", "password", "tls", "tls-ca", "uris"]


class PostgreSQLRequirer:
    """Minimal ``postgresql_client`` requirer: requests a database, builds the URI."""

    def __init__(self, charm: ops.CharmBase, relation_name: str, database: str):
        """Create the requirer.

        Args:
            charm: the charm.
            relation_name: the endpoint name in charmcraft.yaml.
            database: the database to request.
        """
        self._charm = charm
        self.relation_name = relation_name
        self.database = database

    @property
    def relation(self) -> ops.Relation | None:
        """The relation, if any."""
        return self._charm.model.get_relation(self.relation_name)

    def request_database(self) -> None:
        """Ask the provider for our database (leader only)."""
        relation = self.relation
        if relation is None or not self._charm.unit.is_leader():
            return
        relation.data[self._charm.app].update(
            {"database": self.database, "requested-secrets": json.dumps(REQUESTED_SECRETS)}
        )

    def _credentials(self, data: ops.RelationDataContent) -> tuple[str, str] | None:
        secret_id = data.get("secret-user")
        if secret_id:
            try:
                content = self._charm.model.get_secret(id=secret_id).get_content(refresh=True)
            except (ops.SecretNotFoundError, ops.ModelError) as exc:
                logger.warning("postgresql user secret unavailable: %s", exc)
                return None
            username, password = content.get("username"), content.get("password")
        else:
            username, password = data.get("username"), data.get("password")
        if username and password:
            return username, password
        return None

    def connect_string(self) -> str | None:
        """The PostgreSQL URI once the provider has answered, else None.

        Returns:
            e.g. ``postgresql://user:pw@host:5432/planner``.
        """
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        data = relation.data[relation.app]
        endpoints = [e.strip() for e in data.get("endpoints", "").split(",") if e.strip()]
        creds = self._credentials(data)
        if not endpoints or creds is None:
            return None
        user = urllib.parse.quote(creds[0], safe="")
        password = urllib.parse.quote(creds[1], safe="")
        database = urllib.parse.quote(data.get("database") or self.database, safe="")
        return f"postgresql://{user}:{password}@{endpoints[0]}/{database}"
