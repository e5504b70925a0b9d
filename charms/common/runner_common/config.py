# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Helpers to read and validate charm configuration."""

from __future__ import annotations

import re
import urllib.parse

import ops

# Durations as the services parse them: one or more <number><unit>, e.g. "5s", "120h", "1h30m".
DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d))+$")

SECRET_VALUE_KEY = "value"

# An absolute URL path (RFC 3986 path characters), e.g. the Prometheus scrape path `/metrics`.
URL_PATH_RE = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)+$")

# The GitHub App options shared by both charms (actors/src/github.rs reads the variables);
# `github-app-client-id` may stand in for `github-app-id`.
GITHUB_APP_OPTIONS = ("github-app-id", "github-app-installation-id", "github-app-private-key")
DEFAULT_GITHUB_API_URL = "https://api.github.com"
GITHUB_APP_ID_RE = re.compile(r"^[A-Za-z0-9]+$")
# Largest value of an int64 option (Juju's int); ids on GitHub are far below it.
MAX_ID = (1 << 63) - 1


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


def _matching_option(charm: ops.CharmBase, option: str, pattern: re.Pattern, like: str) -> str:
    value = str(charm.config[option]).strip()
    if not pattern.match(value):
        raise ConfigError(f"invalid {option} config: {value!r} is not {like}")
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
    value = _matching_option(charm, option, DURATION_RE, "a duration like 30s or 120h")
    if not any(int(number) for number in re.findall(r"\d+", value)):
        # The services refuse a zero duration ("must be greater than zero") and would not start.
        raise ConfigError(f"invalid {option} config: {value!r} must be greater than zero")
    return value


def url_path_option(charm: ops.CharmBase, option: str) -> str:
    """Read an absolute URL path option (``metrics-path``, e.g. ``/metrics``).

    Raises:
        ConfigError: the value is not an absolute path.
    """
    return _matching_option(charm, option, URL_PATH_RE, "an absolute path like /metrics")


def _join(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def require_together(what: str, present: dict[str, bool]) -> bool:
    """Check options that are set together or not at all.

    Args:
        what: what they configure, for the message (``GitHub App``).
        present: each option (or group of options) and whether it is set.

    Returns:
        True when all are set, False when none is.

    Raises:
        ConfigError: only some are set; the message names the missing ones.
    """
    if not any(present.values()):
        return False
    missing = [option for option, is_set in present.items() if not is_set]
    if missing:
        raise ConfigError(f"incomplete {what} config: missing {_join(missing)}")
    return True


def github_api_url(charm: ops.CharmBase) -> str:
    """Read ``github-api-url``: an ``http(s)://`` URL with a host (default GitHub's API).

    Args:
        charm: the charm.

    Returns:
        the URL, stripped.

    Raises:
        ConfigError: the value is not an http(s) URL.
    """
    value = str(charm.config.get("github-api-url") or "").strip() or DEFAULT_GITHUB_API_URL
    try:
        url = urllib.parse.urlsplit(value)
        valid = url.scheme in ("http", "https") and bool(url.hostname)
    except ValueError:
        valid = False
    if not valid or any(c.isspace() for c in value):
        raise ConfigError(
            f"invalid github-api-url config: {value!r} is not an http(s) URL"
            " such as https://api.github.com"
        )
    return value


def github_app_env(charm: ops.CharmBase) -> dict[str, str]:
    """The optional GitHub App environment (``APP_GITHUB_*``), shared by both services.

    The App is configured by three options, set together or not at all: ``github-app-id``
    (int, as in Canonical's charms; 0 = unset) or instead ``github-app-client-id`` (string,
    letters and digits: the App's client id), ``github-app-installation-id`` (int, 0 = unset)
    and ``github-app-private-key`` (a Juju secret id, key ``value`` holding the PEM private
    key). ``github-api-url`` is always checked but only emitted with the App.

    Args:
        charm: the charm.

    Returns:
        ``APP_GITHUB_APP_ID`` (the id or the client id), ``APP_GITHUB_APP_INSTALLATION_ID``,
        ``APP_GITHUB_APP_PRIVATE_KEY_VALUE`` and ``APP_GITHUB_API_URL``; empty when the App is
        not configured.

    Raises:
        ConfigError: the App is partly configured, or an option is invalid. The message never
            holds the private key.
    """
    api_url = github_api_url(charm)
    app_id = int(charm.config.get("github-app-id") or 0)
    client_id = str(charm.config.get("github-app-client-id") or "").strip()
    installation_id = int(charm.config.get("github-app-installation-id") or 0)
    key_id = str(charm.config.get("github-app-private-key") or "").strip()
    is_set = dict(
        zip(
            GITHUB_APP_OPTIONS,
            (app_id != 0 or bool(client_id), installation_id != 0, bool(key_id)),
            strict=True,
        )
    )
    if not require_together("GitHub App", is_set):
        return {}
    if app_id and client_id:
        raise ConfigError(
            "github-app-id and github-app-client-id are both set: set the App's id or its"
            " client id, not both"
        )
    if client_id:
        if not GITHUB_APP_ID_RE.match(client_id):
            raise ConfigError(
                f"invalid github-app-client-id config: {client_id!r} is not a client id"
                " (letters and digits only)"
            )
        identity = client_id
    else:
        identity = str(int_option(charm, "github-app-id", minimum=1, maximum=MAX_ID))
    installation_id = int_option(charm, "github-app-installation-id", minimum=1, maximum=MAX_ID)
    private_key = str(read_secret_value(charm, "github-app-private-key", required=True))
    if "-----BEGIN" not in private_key or "PRIVATE KEY-----" not in private_key:
        raise ConfigError("github-app-private-key: secret value is not a PEM private key")
    return {
        "APP_GITHUB_APP_ID": identity,
        "APP_GITHUB_APP_INSTALLATION_ID": str(installation_id),
        "APP_GITHUB_APP_PRIVATE_KEY_VALUE": private_key,
        "APP_GITHUB_API_URL": api_url,
    }
