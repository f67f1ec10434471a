"""Relay a request to a llama-server and its answer back, chunk by chunk as it arrives.

Nothing here buffers a stream: `pipe` writes each chunk the moment aiohttp has it (the
Ollama routes translate theirs in `ollama_http.upstream`). A client that disconnects cancels the
handler (handler_cancellation=True), which closes the upstream request.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from guardian_proxy import metrics
from guardian_proxy.client_stream import ClientStream
from guardian_proxy.loading import Progress, acquire_reporting
from guardian_proxy.supervisor_link import Lease, SupervisorLink

JSON_HEADERS = {"Content-Type": "application/json"}
# llama-server (cpp-httplib) closes the connection after a streamed answer without saying so,
# and a pooled copy of it makes the next request fail ("Can not write request body"). Asking
# for the close up front keeps such connections out of the pool.
STREAM_REQUEST_HEADERS = {"Content-Type": "application/json", "Connection": "close"}
STREAM_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class UpstreamError(Exception):
    """llama-server could not be reached or broke off; `status` is what the client should get."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@asynccontextmanager
async def leased(
    link: SupervisorLink,
    model: str,
    *,
    ctx: int | None = None,
    keep_alive: Any = None,
    progress: Progress | None = None,
) -> AsyncIterator[Lease]:
    """Hold a lease on `model` for the duration of the block; always released. With
    `progress`, a wait for a load is reported on it (guardian_proxy.loading)."""
    t0 = time.perf_counter()
    lease = await acquire_reporting(link, model, progress, ctx=ctx, keep_alive=keep_alive)
    if (stats := metrics.current()) is not None:
        stats.model, stats.waited_s = lease.model, lease.waited_s
        stats.acquire_s += time.perf_counter() - t0
    try:
        yield lease
    finally:
        link.release(lease.id)


@asynccontextmanager
async def upstream(
    session: aiohttp.ClientSession, lease: Lease, path: str, body: bytes, *, stream: bool = False
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST to the lease's llama-server; the response is open (headers read) inside the block.

    Failing to connect or to send becomes UpstreamError. A pooled connection the server had
    already closed (the request never reached it) is retried once on a fresh one.
    """
    timeout = aiohttp.ClientTimeout(total=lease.timeout_s)
    headers = {**(STREAM_REQUEST_HEADERS if stream else JSON_HEADERS), **lease.auth}
    resp: aiohttp.ClientResponse | None = None
    t0 = time.perf_counter()
    for attempt in (1, 2):
        try:
            resp = await session.post(lease.url + path, data=body, headers=headers, timeout=timeout)
            break
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            if attempt == 2:
                raise UpstreamError(f"llama-server for '{lease.model}' is not reachable: {e}") from e
        except aiohttp.ClientConnectionError as e:
            raise UpstreamError(f"llama-server for '{lease.model}' is not reachable: {e}") from e
        except TimeoutError as e:
            raise UpstreamError(
                f"llama-server for '{lease.model}' did not answer within {lease.timeout_s:g} s", 504
            ) from e
    assert resp is not None
    try:
        yield resp
    finally:
        resp.release()
        if (stats := metrics.current()) is not None:
            stats.upstream_s += time.perf_counter() - t0


SSE_DONE = b"data: [DONE]\n\n"  # an OpenAI stream's last event


async def write_quietly(resp: web.StreamResponse, data: bytes) -> None:
    """A last in-band message: the client may be gone too, and then there is nobody to tell."""
    with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
        await resp.write(data)


def sse_error_event(message: str, status: int = 500) -> bytes:
    err = {"error": {"code": status, "message": message, "type": "server_error"}}
    return b"data: " + json.dumps(err).encode() + b"\n\n"


class StreamFilter(Protocol):
    """Rewrites a relayed stream read by read (see openai_chat.SseUsageRewriter)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


async def pipe(
    request: web.Request,
    up: aiohttp.ClientResponse,
    model: str,
    resp: web.StreamResponse | None = None,
    *,
    body_filter: Callable[[bytes], bytes] | None = None,
    stream_filter: StreamFilter | None = None,
) -> web.StreamResponse:
    """Answer with llama-server's response: streams chunk by chunk, JSON as one body.

    `resp`: a stream already started (loading progress); an error answer then goes in-band.
    `body_filter` rewrites a whole 200 JSON answer; `stream_filter` each read of a stream.
    """
    ctype = up.headers.get("Content-Type", "application/json")
    if resp is not None and (up.status != 200 or not ctype.startswith("text/event-stream")):
        await write_quietly(
            resp, sse_error_event(upstream_error_message(await up.read(), up.status), up.status)
        )
        await resp.write_eof()
        return resp
    if not ctype.startswith("text/event-stream"):
        body = await up.read()
        if up.status == 200:
            metrics.note_usage_in_json_tail(body)  # once per answer, only its last object
            if body_filter is not None:
                body = body_filter(body)
        return web.Response(body=body, status=up.status, headers={"Content-Type": ctype})
    if resp is None:
        resp = ClientStream(status=up.status, headers=STREAM_HEADERS)
        await resp.prepare(request)
    # The final event (timings/usage) is in the last reads: keep two, look at them once at the end.
    prev = last = b""
    try:
        async for chunk in up.content.iter_any():
            if not last:
                metrics.note_first_byte()
            prev, last = last, chunk
            if stream_filter is not None:
                chunk = stream_filter.feed(chunk)
                if not chunk:
                    continue
            await resp.write(chunk)
            if chunk.endswith(SSE_DONE):
                metrics.note_delivered()
        if stream_filter is not None and (rest := stream_filter.close()):
            await resp.write(rest)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
        # llama-server died or stalled mid-stream: tell the client in-band, the status is sent.
        await write_quietly(
            resp, sse_error_event(f"llama-server for '{model}' broke off the stream: {type(e).__name__}")
        )
    metrics.note_usage_in_sse_tail(prev[-4096:] + last)
    await resp.write_eof()
    return resp


def upstream_error_message(raw: bytes, status: int) -> str:
    """The message of llama-server's error answer ({"error": {"message"}} or {"error": "..."}),
    else its text (first 500 characters), else the status."""
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str) and err:
        return err
    return raw.decode(errors="replace").strip()[:500] or f"llama-server answered {status}"
