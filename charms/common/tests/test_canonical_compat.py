# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Both charms declare what Canonical's charms declare, so `juju refresh --switch` keeps it.

Juju keeps an application's relations only when the new charm has the same endpoints with the
same interfaces, and keeps a config value only when the new charm has the option with the same
type (other values are dropped). The facts below are those of Canonical's
`charms/planner-operator/charmcraft.yaml` and `charms/webhook-gateway-operator/charmcraft.yaml`
in `canonical/github-runner-operators`, with what their `go-framework` extension adds: the
`app` container and `app-image` resource, the `secret-storage` peer relation, `ingress`,
`logging`, `metrics-endpoint`, `grafana-dashboard`, and the `app-port`, `metrics-port`,
`metrics-path`, `app-secret-key` and `app-secret-key-id` options.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

CHARMS = pathlib.Path(__file__).parents[2]

FRAMEWORK = {
    "containers": {"app": "app-image"},
    "peers": {"secret-storage": "secret-storage"},
    "requires": {"ingress": "ingress", "logging": "loki_push_api"},
    "provides": {
        "metrics-endpoint": "prometheus_scrape",
        "grafana-dashboard": "grafana_dashboard",
    },
    "options": {
        "app-port": ("int", 8080),
        "metrics-port": ("int", 8080),
        "metrics-path": ("string", "/metrics"),
        "app-secret-key": ("string", None),
        "app-secret-key-id": ("secret", None),
    },
}
CANONICAL = {
    "planner": {
        "name": "github-runner-planner",
        "requires": {
            "rabbitmq": "rabbitmq",
            "tracing": "tracing",
            "postgresql": "postgresql_client",
        },
        "provides": {"planner": "github_runner_planner_v0"},
        "options": {"admin-token": ("secret", None)},
        "actions": {"enable-flavor", "disable-flavor"},
    },
    "webhook-gateway": {
        "name": "github-runner-webhook-gateway",
        "requires": {"rabbitmq": "rabbitmq", "tracing": "tracing"},
        "provides": {},
        "options": {
            "github-app-id": ("int", None),
            "github-app-installation-id": ("int", None),
            "github-app-private-key": ("secret", None),
            "github-path": ("string", None),
            "redelivery-interval": ("int", 600),
            "webhook-id": ("int", None),
            "webhook-secret": ("secret", None),
        },
        "actions": set(),
    },
}
# Canonical's options our charms leave out: the services have no use for an application secret
# key (charms/README.md says so); Juju drops their values on the switch.
NOT_CARRIED = {"app-secret-key", "app-secret-key-id"}
# Defaults that differ, and why (charms/README.md): 8080 is also app-port's default, and the
# services serve metrics on a listener of their own, so Canonical's deployments set it.
OUR_DEFAULTS = {"metrics-port": 9464}


def metadata(charm_dir: str) -> dict:
    return yaml.safe_load((CHARMS / charm_dir / "charmcraft.yaml").read_text())


@pytest.fixture(params=sorted(CANONICAL))
def charm_dir(request) -> str:
    return request.param


def test_charm_name(charm_dir):
    assert metadata(charm_dir)["name"] == CANONICAL[charm_dir]["name"]


def test_containers_and_resources(charm_dir):
    ours = metadata(charm_dir)
    for container, resource in FRAMEWORK["containers"].items():
        assert ours["containers"] == {container: {"resource": resource}}
        assert ours["resources"][resource]["type"] == "oci-image"


@pytest.mark.parametrize("kind", ["peers", "requires", "provides"])
def test_every_canonical_endpoint_with_its_interface(charm_dir, kind):
    ours = {name: spec["interface"] for name, spec in metadata(charm_dir).get(kind, {}).items()}
    theirs = {**FRAMEWORK.get(kind, {}), **CANONICAL[charm_dir].get(kind, {})}
    assert theirs
    for endpoint, interface in theirs.items():
        assert ours.get(endpoint) == interface, f"{kind}.{endpoint}"


def test_every_canonical_option_with_its_type_and_default(charm_dir):
    ours = metadata(charm_dir)["config"]["options"]
    theirs = {**FRAMEWORK["options"], **CANONICAL[charm_dir]["options"]}
    for option, (kind, default) in theirs.items():
        if option in NOT_CARRIED:
            assert option not in ours
            continue
        assert option in ours, option
        assert ours[option]["type"] == kind, option
        assert ours[option].get("default") == OUR_DEFAULTS.get(option, default), option


def test_options_left_out_are_documented():
    readme = (CHARMS / "README.md").read_text()
    for option in NOT_CARRIED:
        assert f"`{option}`" in readme


def test_every_canonical_action(charm_dir):
    ours = set(metadata(charm_dir).get("actions") or {})
    assert CANONICAL[charm_dir]["actions"] <= ours
