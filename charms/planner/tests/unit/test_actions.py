# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Tests of the planner charm's actions."""

from __future__ import annotations

import json

import pytest
from ops import testing

from charm import PlannerCharm

from .conftest import ADMIN_TOKEN
from .test_charm import state


@pytest.fixture
def ctx():
    return testing.Context(PlannerCharm)


@pytest.mark.parametrize(
    "action, initially, expected",
    [("enable-flavor", True, False), ("disable-flavor", False, True)],
)
def test_enable_disable_flavor(ctx, planner, action, initially, expected):
    planner.add_flavor("small", is_disabled=initially)
    ctx.run(ctx.on.action(action, params={"flavor": "small"}), state(planner.port))
    assert planner.flavors["small"]["is_disabled"] is expected
    word = "disabled" if expected else "enabled"
    assert ctx.action_results == {"message": f"flavor 'small' {word}"}
    assert planner.api_calls("PATCH") == [("PATCH", "/api/v1/flavors/small")]


@pytest.mark.parametrize("action", ["enable-flavor", "disable-flavor"])
def test_flavor_action_unknown_flavor(ctx, planner, action):
    with pytest.raises(testing.ActionFailed, match="flavor 'nope' not found"):
        ctx.run(ctx.on.action(action, params={"flavor": "nope"}), state(planner.port))


def test_create_token(ctx, planner):
    ctx.run(ctx.on.action("create-token", params={"name": "ci-bot"}), state(planner.port))
    assert ctx.action_results == {"name": "ci-bot", "token": planner.tokens["ci-bot"]}


def test_create_token_conflict(ctx, planner):
    planner.tokens["ci-bot"] = "planner_v0_existing"
    with pytest.raises(testing.ActionFailed, match="token 'ci-bot' already exists"):
        ctx.run(ctx.on.action("create-token", params={"name": "ci-bot"}), state(planner.port))


def test_create_token_reserved_prefix(ctx, planner):
    with pytest.raises(testing.ActionFailed, match="reserved for relations"):
        ctx.run(ctx.on.action("create-token", params={"name": "relation-3"}), state(planner.port))
    assert planner.tokens == {}


def test_create_token_empty_name(ctx, planner):
    with pytest.raises(testing.ActionFailed, match="must not be empty"):
        ctx.run(ctx.on.action("create-token", params={"name": " "}), state(planner.port))


def test_list_flavors(ctx, planner):
    planner.add_flavor("small", labels=["self-hosted", "x64"], priority=10, minimum_pressure=1)
    ctx.run(ctx.on.action("list-flavors"), state(planner.port))
    assert ctx.action_results["count"] == 1
    assert json.loads(ctx.action_results["flavors"]) == [
        {
            "name": "small",
            "platform": "github",
            "labels": ["self-hosted", "x64"],
            "priority": 10,
            "minimum_pressure": 1,
            "is_disabled": False,
        }
    ]


def test_actions_send_the_admin_token(ctx, planner):
    # The fake answers 401 to any other bearer token; a success proves the header.
    ctx.run(ctx.on.action("list-flavors"), state(planner.port))
    assert ADMIN_TOKEN.startswith("planner_v0_")
    assert planner.api_calls() == [("GET", "/api/v1/flavors")]


def test_action_fails_without_admin_token(ctx, planner):
    with pytest.raises(testing.ActionFailed, match="missing admin-token config"):
        ctx.run(ctx.on.action("list-flavors"), state(planner.port, config={"admin-token": None}))


def test_action_fails_when_planner_unreachable(ctx, closed_port):
    with pytest.raises(testing.ActionFailed, match="planner API unreachable"):
        ctx.run(ctx.on.action("disable-flavor", params={"flavor": "small"}), state(closed_port))


def test_action_reports_api_errors(ctx, planner):
    planner.fail_with = 500
    with pytest.raises(testing.ActionFailed, match="HTTP 500"):
        ctx.run(ctx.on.action("create-token", params={"name": "ci"}), state(planner.port))
