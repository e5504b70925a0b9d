# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Fixtures: the import path and a fake gateway HTTP server (only /health and /ready)."""

from __future__ import annotations

import http.server
import pathlib
import sys

import pytest

# The fixtures both charms' tests share; pytest finds them among this module's names.
from runner_testing import closed_port, fast_ready_polling, serving  # noqa: F401

CHARM_ROOT = pathlib.Path(__file__).parents[2]
# The charm's own modules; runner_common is the installed charms/common package (test.sh).
sys.path[:0] = [str(CHARM_ROOT / "src")]


class FakeGateway(http.server.ThreadingHTTPServer):
    """Answers /ready with ``ready_status`` and records the paths it served."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ready_status = 200
        self.requests: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeGateway

    def do_GET(self):
        self.server.requests.append(self.path)
        status = {"/ready": self.server.ready_status, "/health": 200}.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def gateway():
    with serving(FakeGateway()) as server:
        yield server
