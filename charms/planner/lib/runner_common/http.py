# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Tiny HTTP helpers (standard library only) used to talk to the workload."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing
import urllib.error
import urllib.request

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
# After a (re)start the workload needs a moment before /ready answers: poll a few times.
READY_ATTEMPTS = 5
READY_DELAY = 1.0


@dataclasses.dataclass(frozen=True)
class Response:
    """An HTTP response: status code and raw body."""

    status: int
    body: bytes

    def json(self) -> typing.Any:
        """Decode the body as JSON.

        Returns:
            The decoded document, or None for an empty body.
        """
        if not self.body:
            return None
        return json.loads(self.body)


class TransportError(Exception):
    """The server could not be reached (connection refused, timeout, ...)."""


def request(
    method: str,
    url: str,
    *,
    token: str | None = None,
    payload: typing.Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Send one HTTP request; HTTP error statuses are returned, not raised.

    Args:
        method: HTTP method.
        url: absolute URL.
        token: bearer token for the Authorization header.
        payload: JSON-serialisable body, if any.
        timeout: seconds before giving up.

    Returns:
        The response.

    Raises:
        TransportError: the server could not be reached.
    """
    headers = {"Accept": "application/json"}
    data = None
    if payload is not None:
        data = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp else b""
        return Response(exc.code, body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise TransportError(f"{method} {url}: {exc}") from exc


def is_ready(url: str, timeout: float = 2.0) -> bool:
    """Tell whether the workload's readiness endpoint answers 2xx.

    Args:
        url: the readiness URL, e.g. ``http://127.0.0.1:8080/ready``.
        timeout: seconds before giving up.

    Returns:
        True when the endpoint answered with a 2xx status.
    """
    try:
        resp = request("GET", url, timeout=timeout)
    except TransportError as exc:
        logger.info("workload not ready: %s", exc)
        return False
    if 200 <= resp.status < 300:
        return True
    logger.info("workload not ready: GET %s -> %s", url, resp.status)
    return False


def wait_ready(url: str, attempts: int | None = None, delay: float | None = None) -> bool:
    """Poll the readiness endpoint a few times.

    Args:
        url: the readiness URL.
        attempts: how many times to ask (default ``READY_ATTEMPTS``).
        delay: seconds between attempts (default ``READY_DELAY``).

    Returns:
        True as soon as the endpoint answers 2xx, False when it never did.
    """
    attempts = READY_ATTEMPTS if attempts is None else attempts
    delay = READY_DELAY if delay is None else delay
    for attempt in range(max(attempts, 1)):
        if attempt:
            time.sleep(delay)
        if is_ready(url):
            return True
    return False
