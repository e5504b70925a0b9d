# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Fixtures: the import path and a fake planner speaking the planner's REST API over HTTP."""

from __future__ import annotations

import http.server
import json
import pathlib
import secrets
import sys
import threading
import urllib.parse

import pytest

# The fixtures both charms' tests share; pytest finds them among this module's names.
from runner_testing import closed_port, fast_ready_polling, serving  # noqa: F401

CHARM_ROOT = pathlib.Path(__file__).parents[2]
# The charm's own modules; runner_common is the installed charms/common package (test.sh).
sys.path[:0] = [str(CHARM_ROOT / "src")]

ADMIN_TOKEN = "planner_v0_abcdefghij0123456789"


class FakePlanner(http.server.ThreadingHTTPServer):
    """In-memory planner API: flavors, tokens, /health and /ready.

    ``calls`` records ``(method, path)`` of every request, ``ready_status`` is what
    ``GET /ready`` answers and ``fail_with`` makes every API call answer that status.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ready_status = 200
        self.fail_with: int | None = None
        self.flavors: dict[str, dict] = {}
        self.tokens: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def api_calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [
            c
            for c in self.calls
            if c[1].startswith("/api/") and (method is None or c[0] == method)
        ]

    def add_flavor(
        self,
        name,
        platform="github",
        labels=("self-hosted",),
        priority=50,
        minimum_pressure=0,
        is_disabled=False,
    ):
        self.flavors[name] = {
            "platform": platform,
            "name": name,
            "labels": list(labels),
            "priority": priority,
            "is_disabled": is_disabled,
            "minimum_pressure": minimum_pressure,
        }


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakePlanner

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def _handle(self, method: str):
        srv = self.server
        path = urllib.parse.unquote(self.path)
        srv.calls.append((method, path))
        if path == "/health":
            return self._reply(200)
        if path == "/ready":
            return self._reply(srv.ready_status)
        if not path.startswith("/api/v1/"):
            return self._reply(404)
        auth = self.headers.get("Authorization", "")
        is_admin = auth == f"Bearer {ADMIN_TOKEN}"
        if not is_admin and auth.removeprefix("Bearer ") not in srv.tokens.values():
            return self._reply(401, {"error": "unauthorized"})
        if srv.fail_with:
            return self._reply(srv.fail_with, {"error": "injected failure"})
        parts = path.removeprefix("/api/v1/").split("/")
        with srv.lock:
            if parts[0] == "flavors":
                return self._flavors(method, parts[1:], is_admin)
            if parts[:2] == ["auth", "token"]:
                if not is_admin:
                    return self._reply(403)
                return self._tokens(method, parts[2:])
        return self._reply(404)

    def _flavors(self, method, rest, is_admin):
        flavors = self.server.flavors
        if not rest:
            if method != "GET":
                return self._reply(405)
            # Listing flavors is admin only, as on the planner.
            return self._reply(200, list(flavors.values())) if is_admin else self._reply(403)
        name = rest[0]
        if method == "GET":
            return self._reply(200, flavors[name]) if name in flavors else self._reply(404)
        if method == "POST":
            if name in flavors:
                return self._reply(409, {"error": "exists"})
            body = self._body()
            self.server.add_flavor(
                name,
                body["platform"],
                body["labels"],
                body["priority"],
                body["minimum_pressure"],
                body.get("is_disabled", False),
            )
            return self._reply(201)
        if method == "PATCH":
            if name not in flavors:
                return self._reply(404)
            body = self._body()
            assert set(body) <= {"is_disabled", "labels", "priority", "minimum_pressure"}, body
            flavors[name].update(body)
            return self._reply(204)
        if method == "DELETE":
            # 200 whether it existed or not, as the planner (and Canonical's) answers.
            flavors.pop(name, None)
            return self._reply(200)
        return self._reply(405)

    def _tokens(self, method, rest):
        tokens = self.server.tokens
        if not rest:
            return (
                self._reply(200, {"names": sorted(tokens)})
                if method == "GET"
                else self._reply(405)
            )
        name = rest[0]
        if method == "POST":
            if name in tokens:
                return self._reply(409)
            tokens[name] = "planner_v0_" + secrets.token_urlsafe(15)[:20]
            return self._reply(201, {"name": name, "token": tokens[name]})
        if method == "DELETE":
            # 204 whether it existed or not, as the planner (and Canonical's) answers.
            tokens.pop(name, None)
            return self._reply(204)
        return self._reply(405)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_DELETE(self):
        self._handle("DELETE")


@pytest.fixture
def planner():
    with serving(FakePlanner()) as server:
        yield server
