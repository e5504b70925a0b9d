# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""The ``github_runner_planner_v0`` interface, provider side.

Requirer (runner manager) application databag:

* ``flavor``: the flavor name; without it no flavor is managed for the relation;
* ``labels``: JSON list or comma-separated string (default ``["self-hosted"]``);
* ``priority``: integer (default 50);
* ``minimum-pressure``: integer (default 0);
* ``platform``: (default ``github``).

The ``flavor-`` prefixed spellings (``flavor-labels``, ``flavor-priority``,
``flavor-minimum-pressure``, ``flavor-platform``) are accepted too.

Provider (planner) application databag: ``endpoint`` (the API base URL) and ``token`` (the id
of a Juju secret granted to the relation, whose content is ``{"token": "..."}``).
"""

from __future__ import annotations

import dataclasses
import json
import typing

from planner_client import Flavor

DEFAULT_PLATFORM = "github"
DEFAULT_LABELS = ("self-hosted",)
DEFAULT_PRIORITY = 50
DEFAULT_MINIMUM_PRESSURE = 0
TOKEN_PREFIX = "relation-"


class RelationDataError(ValueError):
    """The requirer published unusable flavor data."""


def token_name(relation_id: int) -> str:
    """The auth token (and Juju secret label) name of a relation.

    Args:
        relation_id: the relation id.

    Returns:
        ``relation-<id>``.
    """
    return f"{TOKEN_PREFIX}{relation_id}"


def normalise_labels(labels: typing.Iterable[str]) -> tuple[str, ...]:
    """Labels compared case-insensitively and without order or duplicates.

    Args:
        labels: labels.

    Returns:
        the sorted, lower-cased, de-duplicated labels.
    """
    return tuple(sorted({label.strip().lower() for label in labels if label.strip()}))


def parse_labels(raw: str | None) -> list[str]:
    """Parse labels given as a JSON list or a comma-separated string.

    Args:
        raw: the databag value.

    Returns:
        the labels, defaulting to ``["self-hosted"]``.

    Raises:
        RelationDataError: the value is JSON but not a list of strings.
    """
    if raw is None or not raw.strip():
        return list(DEFAULT_LABELS)
    text = raw.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RelationDataError(f"invalid labels {raw!r}: {exc}") from exc
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise RelationDataError(f"invalid labels {raw!r}: expected a list of strings")
        labels = [x.strip() for x in parsed if x.strip()]
    else:
        labels = [x.strip() for x in text.split(",") if x.strip()]
    return labels or list(DEFAULT_LABELS)


def _int(data: typing.Mapping[str, str], key: str, default: int) -> int:
    raw = data.get(key)
    if raw is None:
        raw = data.get(f"flavor-{key}")
    if raw is None or not str(raw).strip():
        return default
    try:
        value = int(str(raw).strip())
    except ValueError as exc:
        raise RelationDataError(f"invalid {key} {raw!r}: not an integer") from exc
    if value < 0:
        raise RelationDataError(f"invalid {key} {raw!r}: must not be negative")
    return value


@dataclasses.dataclass(frozen=True)
class FlavorRequest:
    """The flavor a related runner application asks for."""

    name: str
    platform: str
    labels: list[str]
    priority: int
    minimum_pressure: int

    @classmethod
    def from_databag(cls, data: typing.Mapping[str, str]) -> FlavorRequest | None:
        """Read the request from the requirer's application databag.

        Args:
            data: the databag.

        Returns:
            the request, or None when no flavor is named.

        Raises:
            RelationDataError: a field is unusable.
        """
        name = (data.get("flavor") or "").strip()
        if not name:
            return None
        labels_raw = data.get("labels")
        if labels_raw is None:
            labels_raw = data.get("flavor-labels")
        platform = (data.get("platform") or data.get("flavor-platform") or "").strip()
        return cls(
            name=name,
            platform=platform or DEFAULT_PLATFORM,
            labels=parse_labels(labels_raw),
            priority=_int(data, "priority", DEFAULT_PRIORITY),
            minimum_pressure=_int(data, "minimum-pressure", DEFAULT_MINIMUM_PRESSURE),
        )

    def differences(self, current: Flavor) -> dict[str, typing.Any]:
        """The PATCH body that makes ``current`` match this request (labels case-insensitive).

        Args:
            current: the flavor as the planner has it.

        Returns:
            changed fields; empty when nothing needs updating.
        """
        changes: dict[str, typing.Any] = {}
        if normalise_labels(current.labels) != normalise_labels(self.labels):
            changes["labels"] = self.labels
        if current.priority != self.priority:
            changes["priority"] = self.priority
        if current.minimum_pressure != self.minimum_pressure:
            changes["minimum_pressure"] = self.minimum_pressure
        return changes
