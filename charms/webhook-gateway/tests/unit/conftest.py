# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Fixtures: the import path and a fake gateway HTTP server (only /health and /ready)."""

from __future__ import annotations

import http.server
import pathlib
import sys
import threading

import pytest

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
    server = FakeGateway()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


@pytest.fixture(autouse=True)
def fast_ready_polling(monkeypatch):
    """Do not sleep between /ready polls in tests."""
    from runner_common import http as runner_http

    monkeypatch.setattr(runner_http, "READY_DELAY", 0.0)
