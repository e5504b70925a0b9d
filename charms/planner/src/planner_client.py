# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Client for the planner's REST API (``/api/v1``), as the charm uses it."""

from __future__ import annotations

import contextlib
import dataclasses
import typing
import urllib.parse

from runner_common import http


class PlannerError(Exception):
    """The planner API could not be reached or answered unexpectedly."""


class NotFoundError(PlannerError):
    """The flavor or token does not exist (HTTP 404)."""


class ConflictError(PlannerError):
    """The flavor or token already exists (HTTP 409)."""


@dataclasses.dataclass(frozen=True)
class Flavor:
    """A runner flavor as the planner stores it."""

    name: str
    platform: str
    labels: list[str]
    priority: int
    minimum_pressure: int
    is_disabled: bool = False

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> Flavor:
        """Build a flavor from the API's JSON object.

        Args:
            data: one element of ``GET /api/v1/flavors``.

        Returns:
            the flavor.
        """
        return cls(
            name=str(data["name"]),
            platform=str(data.get("platform", "")),
            labels=[str(label) for label in data.get("labels") or []],
            priority=int(data.get("priority", 0)),
            minimum_pressure=int(data.get("minimum_pressure", 0)),
            is_disabled=bool(data.get("is_disabled", False)),
        )

    def to_json(self) -> dict[str, typing.Any]:
        """The JSON object the API returns for this flavor.

        Returns:
            the JSON-serialisable mapping.
        """
        return dataclasses.asdict(self)


class PlannerClient:
    """Thin wrapper over the planner REST API; every call is authenticated with a token."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0):
        """Create the client.

        Args:
            base_url: e.g. ``http://127.0.0.1:8080``.
            token: admin (or flavor) token sent as ``Authorization: Bearer``.
            timeout: seconds per request.
        """
        self._base = base_url.rstrip("/") + "/api/v1"
        self._token = token
        self._timeout = timeout

    def _call(
        self, method: str, path: str, payload: typing.Any = None, expect: tuple[int, ...] = (200,)
    ) -> http.Response:
        url = self._base + path
        try:
            resp = http.request(
                method, url, token=self._token, payload=payload, timeout=self._timeout
            )
        except http.TransportError as exc:
            raise PlannerError(f"planner API unreachable: {exc}") from exc
        if resp.status in expect:
            return resp
        detail = resp.body.decode(errors="replace").strip()[:200]
        message = f"{method} {path} -> HTTP {resp.status}" + (f": {detail}" if detail else "")
        if resp.status == 404:
            raise NotFoundError(message)
        if resp.status == 409:
            raise ConflictError(message)
        raise PlannerError(message)

    @staticmethod
    def _quote(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    # --- flavors ----------------------------------------------------------------------

    def list_flavors(self) -> list[Flavor]:
        """All flavors (needs the admin token).

        Returns:
            the flavors.
        """
        data = self._call("GET", "/flavors").json() or []
        return [Flavor.from_json(item) for item in data]

    def get_flavor(self, name: str) -> Flavor | None:
        """One flavor, or None when it does not exist.

        Args:
            name: flavor name.

        Returns:
            the flavor or None.
        """
        try:
            return Flavor.from_json(self._call("GET", f"/flavors/{self._quote(name)}").json())
        except NotFoundError:
            return None

    def create_flavor(
        self,
        name: str,
        *,
        platform: str,
        labels: list[str],
        priority: int,
        minimum_pressure: int,
        is_disabled: bool = False,
    ) -> None:
        """Create a flavor (raises ConflictError when it exists).

        Args:
            name: flavor name.
            platform: e.g. ``github``.
            labels: runner labels.
            priority: flavor priority.
            minimum_pressure: pressure kept even without jobs.
            is_disabled: create it disabled.
        """
        payload = {
            "platform": platform,
            "labels": labels,
            "priority": priority,
            "is_disabled": is_disabled,
            "minimum_pressure": minimum_pressure,
        }
        self._call("POST", f"/flavors/{self._quote(name)}", payload, expect=(200, 201))

    def update_flavor(self, name: str, **fields: typing.Any) -> None:
        """Patch a flavor: any of ``is_disabled``, ``labels``, ``priority``, ``minimum_pressure``.

        Args:
            name: flavor name.
            fields: the fields to change.
        """
        self._call("PATCH", f"/flavors/{self._quote(name)}", fields, expect=(200, 204))

    def delete_flavor(self, name: str) -> None:
        """Delete a flavor; one that does not exist is no error (the planner answers 200).

        Args:
            name: flavor name.
        """
        # Earlier planners answered 404 for a flavor that did not exist.
        with contextlib.suppress(NotFoundError):
            self._call("DELETE", f"/flavors/{self._quote(name)}", expect=(200, 204))

    # --- auth tokens (admin only) -----------------------------------------------------

    def list_tokens(self) -> list[str]:
        """Names of all auth tokens.

        Returns:
            the names.
        """
        data = self._call("GET", "/auth/token").json() or {}
        return [str(name) for name in data.get("names", [])]

    def create_token(self, name: str) -> str:
        """Create a token (raises ConflictError when the name is taken).

        Args:
            name: token name.

        Returns:
            the token value (only ever returned here).
        """
        data = self._call("POST", f"/auth/token/{self._quote(name)}", expect=(200, 201)).json()
        return str(data["token"])

    def delete_token(self, name: str) -> None:
        """Delete a token; one that does not exist is no error (the planner answers 204).

        Args:
            name: token name.
        """
        # Earlier planners answered 404 for a token that did not exist.
        with contextlib.suppress(NotFoundError):
            self._call("DELETE", f"/auth/token/{self._quote(name)}", expect=(200, 204))
