"""Streams to clients that cannot hold Guardian hostage by not reading.

A client that stops reading fills its socket and then aiohttp's write buffer, and the next
`write` waits for room for ever: the handler holds its lease on the model, which blocks a
swap, `guardianctl unload` and shutdown. `ClientStream.write` bounds that wait by
`proxy.write_timeout_s`, then aborts the connection, so the handler unwinds and its lease
is released. The common case costs one buffer-size check: a write that fits below the
transport's high-water mark never waits, so it is not timed.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

log = structlog.get_logger("proxy")

WRITE_TIMEOUT_KEY = web.AppKey("write_timeout_s", float)
DEFAULT_WRITE_TIMEOUT_S = 30.0


class ClientStalled(ConnectionResetError):
    """The client took no bytes for the write timeout; its connection was aborted."""


class ClientStream(web.StreamResponse):
    _transport: asyncio.Transport | None = None
    _room = 0
    _timeout_s = DEFAULT_WRITE_TIMEOUT_S

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        transport = request.transport  # uvloop's transports are not asyncio.WriteTransport subclasses
        if transport is not None:
            self._transport = transport
            self._room = transport.get_write_buffer_limits()[1]
        self._timeout_s = (
            request.app.get(WRITE_TIMEOUT_KEY, DEFAULT_WRITE_TIMEOUT_S)
            if isinstance(request, web.Request)
            else DEFAULT_WRITE_TIMEOUT_S
        )
        return writer

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        t = self._transport
        if t is None or t.is_closing() or t.get_write_buffer_size() + len(data) <= self._room:
            await super().write(data)
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await super().write(data)
        except TimeoutError:
            log.warning("client_stalled", buffered=t.get_write_buffer_size(), timeout_s=self._timeout_s)
            t.abort()
            raise ClientStalled(
                f"the client read nothing for {self._timeout_s:g} s (proxy.write_timeout_s); connection closed"
            ) from None
