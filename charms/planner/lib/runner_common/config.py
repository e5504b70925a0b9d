# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Helpers to read and validate charm configuration."""

from __future__ import annotations

import re

import ops

# Durations as the services parse them: one or more <number><unit>, e.g. "5s", "120h", "1h30m".
DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d))+$")

SECRET_VALUE_KEY = "value"


class ConfigError(Exception):
    """The configuration is missing or invalid; the message is shown in the unit status."""


def read_secret_value(charm: ops.CharmBase, option: str, *, required: bool) -> str | None:
    """Read the ``value`` key of the user secret whose id is stored in config ``option``.

    Args:
        charm: the charm.
        option: the config option holding a secret id (``secret:...``).
        required: raise when the option is unset.

    Returns:
        the secret value, or None when the option is unset and not required.

    Raises:
        ConfigError: the option is required but unset, or the secret is unusable.
    """
    secret_id = str(charm.config.get(option) or "").strip()
    if not secret_id:
        if required:
            raise ConfigError(f"missing {option} config (a Juju secret id)")
        return None
    try:
        secret = charm.model.get_secret(id=secret_id)
        content = secret.get_content(refresh=True)
    except (ops.SecretNotFoundError, ops.ModelError):
        raise ConfigError(
            f"{option}: secret not found or not granted (juju grant-secret ... {charm.app.name})"
        ) from None
    value = content.get(SECRET_VALUE_KEY, "")
    if not value:
        raise ConfigError(f"{option}: secret has no '{SECRET_VALUE_KEY}' key")
    return value


def int_option(charm: ops.CharmBase, option: str, *, minimum: int, maximum: int) -> int:
    """Read an integer option and check its range.

    Args:
        charm: the charm.
        option: option name.
        minimum: smallest accepted value.
        maximum: largest accepted value.

    Returns:
        the value.

    Raises:
        ConfigError: the value is out of range.
    """
    value = int(charm.config[option])
    if not minimum <= value <= maximum:
        raise ConfigError(f"invalid {option} config: {value} not in [{minimum}, {maximum}]")
    return value


def duration_option(charm: ops.CharmBase, option: str) -> str:
    """Read a duration option (e.g. ``30s``, ``120h``).

    Args:
        charm: the charm.
        option: option name.

    Returns:
        the value, stripped.

    Raises:
        ConfigError: the value is not a duration.
    """
    value = str(charm.config[option]).strip()
    if not DURATION_RE.match(value):
        raise ConfigError(f"invalid {option} config: {value!r} is not a duration like 30s or 120h")
    return value
