# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Requirer side of the ``postgresql_client`` interface (data-platform ``database`` protocol).

Protocol, as postgresql-k8s implements it:

* the requirer's leader writes ``database`` (the database to create) and ``requested-secrets``
  (JSON list) to its application databag;
* the provider answers in its application databag with ``endpoints`` (``host:port,...``) and
  either ``secret-user`` (the id of a Juju secret holding ``username`` and ``password``,
  when secrets were requested) or plain ``username``/``password`` fields (older providers);
  likewise ``tls`` (``"true"`` when the server requires TLS) in the ``secret-tls`` secret or
  as a plain field.

As in Canonical's charm, ``tls`` becomes the URI's ``sslmode``: ``require`` or ``disable``.
"""

from __future__ import annotations

import json
import logging
import urllib.parse

import ops

logger = logging.getLogger(__name__)

REQUESTED_SECRETS = ["username", "password", "tls", "tls-ca", "uris"]
SSLMODE = {"true": "require", "false": "disable"}


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

    def _secret_fields(self, data: ops.RelationDataContent, secret: str) -> dict[str, str]:
        """The fields of the provider's ``secret-<name>`` secret, or the plain fields."""
        secret_id = data.get(f"secret-{secret}")
        if not secret_id:
            return dict(data)
        try:
            return dict(self._charm.model.get_secret(id=secret_id).get_content(refresh=True))
        except (ops.SecretNotFoundError, ops.ModelError) as exc:
            logger.warning("postgresql %s secret unavailable: %s", secret, exc)
            return {}

    def _credentials(self, data: ops.RelationDataContent) -> tuple[str, str] | None:
        fields = self._secret_fields(data, "user")
        username, password = fields.get("username"), fields.get("password")
        if username and password:
            return username, password
        return None

    def connect_string(self) -> str | None:
        """The PostgreSQL URI once the provider has answered, else None.

        Returns:
            e.g. ``postgresql://user:pw@host:5432/planner?sslmode=require``.
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
        uri = f"postgresql://{user}:{password}@{endpoints[0]}/{database}"
        tls = str(self._secret_fields(data, "tls").get("tls") or "").strip().lower()
        if tls in SSLMODE:
            uri += f"?sslmode={SSLMODE[tls]}"
        elif tls:
            logger.warning("ignoring postgresql tls value %r (neither true nor false)", tls)
        return uri
