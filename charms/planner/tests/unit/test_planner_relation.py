# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""State-transition tests of the ``planner`` relation (github_runner_planner_v0)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from ops import testing

from charm import PlannerCharm
from planner_relation import FlavorRequest, RelationDataError, parse_labels

from .test_charm import postgresql, rabbitmq, state


@pytest.fixture
def ctx():
    return testing.Context(PlannerCharm)


def runner(rel_id=None, app="github-runner", **data) -> testing.Relation:
    kwargs = {"id": rel_id} if rel_id is not None else {}
    return testing.Relation(
        "planner",
        remote_app_name=app,
        remote_app_data={k.replace("_", "-"): v for k, v in data.items()},
        **kwargs,
    )


def run(ctx, planner, event_factory, relations, **kwargs):
    st = state(planner.port, relations=[rabbitmq(), postgresql(), *relations], **kwargs)
    return ctx.run(event_factory(st), st)


def with_relations(out: testing.State, *relations: testing.Relation) -> testing.State:
    """The output state with the planner relations replaced (remote changes between hooks)."""
    kept = [r for r in out.relations if r.endpoint != "planner"]
    return dataclasses.replace(out, relations=[*kept, *relations])


def managed(out: testing.State) -> dict:
    (peer,) = [r for r in out.relations if r.endpoint == "secret-storage"]
    return json.loads(peer.local_app_data.get("managed-flavors", "{}"))


def test_new_relation_gets_token_secret_endpoint_and_flavor(ctx, planner):
    rel = runner(flavor="small", labels='["self-hosted", "x64", "Large"]')
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])

    name = f"relation-{rel.id}"
    assert list(planner.tokens) == [name]
    secret = out.get_secret(label=name)
    assert secret.tracked_content == {"token": planner.tokens[name]}
    assert secret.remote_grants == {rel.id: {"github-runner"}}
    app_data = out.get_relation(rel.id).local_app_data
    assert app_data["token"] == secret.id
    assert (
        app_data["endpoint"]
        == f"http://github-runner-planner.{out.model.name}.svc.cluster.local:{planner.port}"
    )
    assert planner.flavors == {
        "small": {
            "name": "small",
            "platform": "github",
            "labels": ["self-hosted", "x64", "Large"],
            "priority": 50,
            "minimum_pressure": 0,
            "is_disabled": False,
        }
    }
    assert managed(out) == {name: "small"}
    assert out.unit_status == testing.ActiveStatus()


def test_comma_separated_labels_and_numbers(ctx, planner):
    rel = runner(
        flavor="large", labels="self-hosted, arm64 ,", priority="80", minimum_pressure="2"
    )
    run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    flavor = planner.flavors["large"]
    assert flavor["labels"] == ["self-hosted", "arm64"]
    assert (flavor["priority"], flavor["minimum_pressure"]) == (80, 2)


def test_relation_without_flavor_gets_only_a_token(ctx, planner):
    rel = runner()
    out = run(ctx, planner, lambda st: ctx.on.relation_joined(rel), [rel])
    assert planner.flavors == {}
    assert f"relation-{rel.id}" in planner.tokens
    assert out.get_relation(rel.id).local_app_data["token"]


def test_labels_compared_case_insensitively(ctx, planner):
    planner.add_flavor("small", labels=["Self-Hosted", "X64"], priority=50)
    rel = runner(flavor="small", labels="x64,self-hosted")
    run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    assert planner.api_calls("PATCH") == []
    assert planner.api_calls("POST") == [("POST", f"/api/v1/auth/token/relation-{rel.id}")]
    assert planner.api_calls("DELETE") == []


def test_changed_fields_are_patched_and_disabled_state_kept(ctx, planner):
    planner.add_flavor("small", labels=["self-hosted"], priority=50, is_disabled=True)
    rel = runner(flavor="small", labels="self-hosted,x64", priority="70")
    run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    assert planner.api_calls("PATCH") == [("PATCH", "/api/v1/flavors/small")]
    flavor = planner.flavors["small"]
    assert flavor["labels"] == ["self-hosted", "x64"]
    assert flavor["priority"] == 70
    assert flavor["is_disabled"] is True


def test_platform_change_recreates_flavor(ctx, planner):
    planner.add_flavor("small", platform="gitea")
    rel = runner(flavor="small")
    run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    assert planner.flavors["small"]["platform"] == "github"
    assert ("DELETE", "/api/v1/flavors/small") in planner.api_calls()


def test_second_hook_is_a_no_op(ctx, planner):
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    token = dict(planner.tokens)
    planner.calls.clear()
    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.update_status(), out)
    assert planner.tokens == token
    assert [c[0] for c in planner.api_calls()] == ["GET", "GET"]  # list tokens, get flavor
    assert out2.get_relation(rel.id).local_app_data == out.get_relation(rel.id).local_app_data


def test_renamed_flavor_replaces_the_old_one(ctx, planner):
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    renamed = dataclasses.replace(out.get_relation(rel.id), remote_app_data={"flavor": "medium"})
    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.relation_changed(renamed), with_relations(out, renamed))
    assert set(planner.flavors) == {"medium"}
    assert managed(out2) == {f"relation-{rel.id}": "medium"}


def test_flavor_dropped_from_data_is_deleted(ctx, planner):
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    emptied = dataclasses.replace(out.get_relation(rel.id), remote_app_data={})
    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.relation_changed(emptied), with_relations(out, emptied))
    assert planner.flavors == {}
    assert managed(out2) == {f"relation-{rel.id}": ""}
    assert f"relation-{rel.id}" in planner.tokens


def test_departed_relation_is_cleaned_up(ctx, planner):
    keep = runner(flavor="shared", app="runner-a")
    gone = runner(flavor="only-gone", app="runner-b")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(gone), [keep, gone])
    assert set(planner.flavors) == {"shared", "only-gone"}
    assert len(planner.tokens) == 2

    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.relation_broken(out.get_relation(gone.id)), out)
    assert set(planner.flavors) == {"shared"}
    assert list(planner.tokens) == [f"relation-{keep.id}"]
    assert managed(out2) == {f"relation-{keep.id}": "shared"}
    labels = {s.label for s in out2.secrets}
    assert f"relation-{gone.id}" not in labels
    assert f"relation-{keep.id}" in labels


def test_shared_flavor_survives_departure_of_one_relation(ctx, planner):
    a = runner(flavor="shared", app="runner-a")
    b = runner(flavor="shared", app="runner-b")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(a), [a, b])
    ctx2 = testing.Context(PlannerCharm)
    ctx2.run(ctx2.on.relation_broken(out.get_relation(b.id)), out)
    assert set(planner.flavors) == {"shared"}


def test_orphan_relation_tokens_removed_other_tokens_kept(ctx, planner):
    planner.tokens.update({"relation-99": "planner_v0_x", "ci-bot": "planner_v0_y"})
    rel = runner(flavor="small")
    run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    assert set(planner.tokens) == {f"relation-{rel.id}", "ci-bot"}


def test_token_recreated_when_planner_lost_it(ctx, planner):
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    name = f"relation-{rel.id}"
    first = planner.tokens.pop(name)
    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.update_status(), out)
    assert planner.tokens[name] != first
    secret = out2.get_secret(label=name)
    assert secret.latest_content == {"token": planner.tokens[name]}
    assert out2.get_relation(rel.id).local_app_data["token"] == secret.id


def test_token_recreated_when_secret_lost(ctx, planner):
    rel = runner(flavor="small")
    planner.tokens[f"relation-{rel.id}"] = "planner_v0_stale"
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    name = f"relation-{rel.id}"
    assert planner.tokens[name] != "planner_v0_stale"
    assert out.get_secret(label=name).tracked_content == {"token": planner.tokens[name]}


def test_invalid_data_reported_and_existing_flavor_kept(ctx, planner):
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    broken = dataclasses.replace(
        out.get_relation(rel.id), remote_app_data={"flavor": "small", "priority": "high"}
    )
    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.relation_changed(broken), with_relations(out, broken))
    assert "small" in planner.flavors
    assert out2.unit_status == testing.ActiveStatus(
        f"invalid flavor data: github-runner (relation-{rel.id}): invalid priority 'high': "
        "not an integer"
    )
    assert managed(out2) == {f"relation-{rel.id}": "small"}


def test_endpoint_uses_ingress_url(ctx, planner):
    ingress = testing.Relation(
        "ingress",
        remote_app_name="traefik",
        remote_app_data={"ingress": json.dumps({"url": "https://planner.example.com/"})},
    )
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel, ingress])
    assert out.get_relation(rel.id).local_app_data["endpoint"] == "https://planner.example.com"


def test_api_failure_waits_and_retries(ctx, planner):
    planner.fail_with = 500
    rel = runner(flavor="small")
    out = run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    assert out.unit_status.name == "waiting"
    assert out.unit_status.message.startswith("planner relation sync failed, will retry:")
    planner.fail_with = None
    ctx2 = testing.Context(PlannerCharm)
    out2 = ctx2.run(ctx2.on.update_status(), out)
    assert out2.unit_status == testing.ActiveStatus()
    assert "small" in planner.flavors


def test_workload_not_ready_defers_relation_work(ctx, planner):
    planner.ready_status = 503
    rel = runner(flavor="small")
    run(ctx, planner, lambda st: ctx.on.relation_changed(rel), [rel])
    assert planner.api_calls() == []


# --- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, ["self-hosted"]),
        ("", ["self-hosted"]),
        ('["a", "B"]', ["a", "B"]),
        ("a, b,,c ", ["a", "b", "c"]),
        ("[]", ["self-hosted"]),
    ],
)
def test_parse_labels(raw, expected):
    assert parse_labels(raw) == expected


@pytest.mark.parametrize("raw", ['["a", 1]', "[not json"])
def test_parse_labels_rejects_bad_json(raw):
    with pytest.raises(RelationDataError):
        parse_labels(raw)


def test_flavor_request_accepts_prefixed_keys():
    req = FlavorRequest.from_databag(
        {
            "flavor": "f",
            "flavor-labels": "a,b",
            "flavor-priority": "7",
            "flavor-minimum-pressure": "3",
            "flavor-platform": "github",
        }
    )
    assert req == FlavorRequest("f", "github", ["a", "b"], 7, 3)


def test_flavor_request_rejects_negative_numbers():
    with pytest.raises(RelationDataError, match="must not be negative"):
        FlavorRequest.from_databag({"flavor": "f", "minimum-pressure": "-1"})
