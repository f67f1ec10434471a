"""Connection limits for Guardian's HTTP listeners, against slowloris and fd exhaustion.

aiohttp has no header-read timeout and no connection cap: 1,100 half-sent requests used up
every fd. `GuardedFactory` wraps aiohttp's protocol factory (`runner.server`) and

- refuses a connection past `max_total` open ones, or past `max_per_ip` from one address,
  with a 503 written straight to the socket (nothing is parsed);
- closes a connection whose first request has not finished its headers within
  `header_timeout_s` (later requests on a kept-alive connection are bounded by aiohttp's
  keep-alive timeout, and bodies by `body_timeout_middleware`).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


@dataclass(frozen=True)
class Limits:
    max_total: int = 768
    max_per_ip: int = 256  # local clients all share 127.0.0.1: this is not a per-user cap
    header_timeout_s: float = 10.0


def _busy_response(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return _BUSY % (len(body), body)


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's RequestHandler once the connection is admitted."""

    def __init__(self, factory: GuardedFactory, inner: asyncio.Protocol) -> None:
        self._factory = factory
        self._inner = inner
        self._ip: str | None = None
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio subclass
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._ip = peer[0] if isinstance(peer, tuple) else "unix"
        refusal = self._factory.admit(self._ip)
        if refusal is not None:
            transport.write(_busy_response(refusal))
            transport.close()
            return
        self._admitted = True
        self._timer = asyncio.get_running_loop().call_later(
            self._factory.limits.header_timeout_s, self._headers_too_slow
        )
        self._inner.connection_made(transport)

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._factory.timed_out += 1
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        if self._admitted:
            self._admitted = False
            self._factory.release(self._ip or "")
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedFactory:
    """Protocol factory for loop.create_server: counts connections, owns the counts."""

    def __init__(self, server: web.Server, limits: Limits) -> None:
        self._server = server
        self.limits = limits
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._server())

    def admit(self, ip: str) -> str | None:
        if self.total >= self.limits.max_total:
            self.refused += 1
            return f"too many connections ({self.limits.max_total} open); retry shortly"
        if self.per_ip[ip] >= self.limits.max_per_ip:
            self.refused += 1
            return f"too many connections from {ip} ({self.limits.max_per_ip} open); retry shortly"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


def body_timeout_middleware(
    timeout_s: float, error: Callable[[web.Request, int, str], web.StreamResponse]
) -> Middleware:
    """Read the whole body within `timeout_s` (408 otherwise); handlers then get it cached
    from request.read(). `error(request, status, message)` shapes the answer."""

    @web.middleware
    async def read_body_in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                await asyncio.wait_for(request.read(), timeout_s)
            except TimeoutError:
                return error(
                    request, 408, f"request body not received within {timeout_s:g} s; send it at once"
                )
        return await handler(request)

    return read_body_in_time


async def serve(
    runner: web.AppRunner, host: str, port: int, limits: Limits, backlog: int = 128
) -> tuple[asyncio.Server, GuardedFactory]:
    """Listen with the guard in front of `runner` (set up already)."""
    assert runner.server is not None
    factory = GuardedFactory(runner.server, limits)
    server = await asyncio.get_running_loop().create_server(factory, host, port, backlog=backlog)
    return server, factory
