"""The HTTP server: uvicorn with limits on what a slow or hostile client can hold.

uvicorn closes an idle connection only after a response (keep-alive timeout); a connection
that sends half its headers, or a body shorter than its Content-Length, it would hold forever.
``GuardedHttpProtocol`` (uvicorn's httptools protocol, extended) adds:

- ``header_timeout``: from a request's first byte (or the connection's opening, counted as
  keep-alive idle time) to the end of its headers; past it, 408 and the connection is closed;
- ``body_timeout``: from the end of the headers to the end of the body; past it, 408 and close;
- ``keep_alive_timeout``: idle time between requests, and before the first one;
- ``limit_concurrency``: open connections and requests in flight per worker; a connection or
  request past it is answered 503 and closed.

Every answer given here (408, 503) is counted in ``SERVER_ANSWERS``, which ``/metrics`` exports
beside the application's own responses.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import ServerLimits

# (status, reason) -> count, for this process: answers the application never saw
SERVER_ANSWERS: Counter[tuple[str, str]] = Counter()


def _plain(status: int, reason: str, message: str) -> bytes:
    body = (f'{{"detail":"{message}"}}').encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


async def _over_limit(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The answer to a request past the concurrency limit."""
    SERVER_ANSWERS[("503", "over_concurrency_limit")] += 1
    body = b'{"detail":"over the concurrency limit: retry later"}'
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.limit_concurrency = None  # enforced below, so that refusals are counted
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.limit_concurrency:
            SERVER_ANSWERS[("503", "over_connection_limit")] += 1
            transport.write(_plain(503, "Service Unavailable", "too many open connections: retry later"))
            transport.close()
            return
        # silence before the first request is idle time, as between requests
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.limits.header_timeout, "header_timeout")

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_timeout, "body_timeout")
        over = len(self.connections) > self.limits.limit_concurrency or len(self.tasks) >= self.limits.limit_concurrency
        if not over:
            return super().on_headers_complete()
        app, self.app = self.app, _over_limit
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._timed_out, reason)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self, reason: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        SERVER_ANSWERS[("408", reason)] += 1
        # headers late: no application runs for this request; body late: it waits for the body,
        # and sees a disconnect once the connection is closed
        if reason == "header_timeout" or self.cycle is None or not self.cycle.response_started:
            self.transport.write(_plain(408, "Request Timeout", f"request not received in time ({reason})"))
        self.transport.close()


def protocol(limits: ServerLimits) -> Any:
    """What ``uvicorn.run(http=...)`` takes: picklable, so ``--workers N`` processes get it too."""
    return functools.partial(GuardedHttpProtocol, limits=limits)


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    return {"http": protocol(limits), "timeout_keep_alive": limits.keep_alive_timeout}
