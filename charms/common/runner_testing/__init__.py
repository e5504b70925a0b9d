# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Fixtures the charms' unit tests share; each charm's conftest.py imports them.

Not packed into the charms: their ``runner-common`` part stages ``runner_common`` only.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def serving(server: http.server.HTTPServer) -> Iterator[http.server.HTTPServer]:
    """Serve ``server`` from a thread while the block runs, then shut it down.

    Args:
        server: a bound server, not serving yet.

    Yields:
        the server.
    """
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
