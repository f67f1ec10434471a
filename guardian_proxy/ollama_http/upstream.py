"""Talking to a leased llama-server for the Ollama routes: JSON calls and NDJSON relays."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from guardian_proxy import metrics
from guardian_proxy.catalog import Entry
from guardian_proxy.client_stream import ClientStream
from guardian_proxy.context import ProxyContext
from guardian_proxy.ollama import OllamaError, error_line, json_bytes, ndjson_line, upstream_error
from guardian_proxy.ollama_http.common import NDJSON_HEADERS
from guardian_proxy.relay import leased, upstream, write_quietly
from guardian_proxy.supervisor_link import Lease

Feed = Callable[[Mapping[str, Any]], list[dict[str, Any]]]
Finish = Callable[[], Awaitable[list[dict[str, Any]]]]

# What a dying or stalled llama-server looks like from here, mid-stream.
BROKEN_STREAM = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError, ValueError)


open_upstream = upstream  # one opener for both APIs (relay.upstream)


async def check_status(up: aiohttp.ClientResponse) -> None:
    """llama-server's error answer as Ollama's error (its status and message)."""
    if up.status != 200:
        raise upstream_error(up.status, await up.read())


async def read_json(up: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = json.loads(await up.read())
    except ValueError as e:
        raise OllamaError(502, f"llama-server sent an answer that is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise OllamaError(502, "llama-server sent an answer that is not a JSON object")
    metrics.note_usage(data)
    return data


async def post_json(pc: ProxyContext, lease: Lease, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST a JSON body to the leased llama-server and return its JSON object answer."""
    async with open_upstream(pc.session, lease, path, json_bytes(body)) as up:
        await check_status(up)
        return await read_json(up)


async def load_only(pc: ProxyContext, entry: Entry, ctx: int | None, keep_alive: float | None) -> None:
    """Ollama's "load": wait until the model is ready (with that context and keep_alive)."""
    async with leased(pc.link, entry.name, ctx=ctx, keep_alive=keep_alive):
        pass


async def unload(pc: ProxyContext, entry: Entry) -> None:
    """Ollama's keep_alive 0 with nothing to do: stop the model once in-flight requests end."""
    await pc.link.call("models.unload", {"model": entry.name})


async def sse_batches(up: aiohttp.ClientResponse) -> AsyncIterator[list[dict[str, Any]]]:
    """The decoded `data:` events of an SSE stream, one list per network read, until `[DONE]`.

    Reading whatever has arrived (not line by line) costs one await per read instead of two
    per event; when the relay falls behind, the events that piled up go out together.
    """
    tail = b""
    async for chunk in up.content.iter_any():
        lines = (tail + chunk if tail else chunk).split(b"\n")
        tail = lines.pop()  # an incomplete last line waits for the next read
        events: list[dict[str, Any]] = []
        for line in lines:
            if line.startswith(b"data:"):  # skips blank separators, comments, event: lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    yield events
                    return
                if data:
                    events.append(json.loads(data))
        if events:
            yield events
    if tail.startswith(b"data:") and tail[5:].strip() not in (b"", b"[DONE]"):
        yield [json.loads(tail[5:])]


async def relay_ndjson(
    request: web.Request,
    up: aiohttp.ClientResponse,
    model: str,
    feed: Feed,
    finish: Finish,
    resp: web.StreamResponse | None = None,
) -> web.StreamResponse:
    """Translate llama-server's SSE into NDJSON, writing what each network read brought at once.

    The status is sent with the first byte, so anything that breaks later becomes a final
    `{"error": ...}` line: an `{"error"}` event, a stream that ends before it finished, or a
    llama-server that died or stalled.
    """
    if resp is None:  # else: already started by loading progress (guardian_proxy.loading)
        resp = ClientStream(headers=NDJSON_HEADERS)
        await resp.prepare(request)
    write = resp.write
    last: list[dict[str, Any]] = []
    try:
        async for events in sse_batches(up):
            lines = [ndjson_line(obj) for event in events for obj in feed(event)]
            if lines:
                if not last:
                    metrics.note_first_byte()
                await write(lines[0] if len(lines) == 1 else b"".join(lines))
            if events:
                last = events
        for event in reversed(last):  # the final event carries timings/usage
            if "timings" in event or "usage" in event:
                metrics.note_usage(event)
                break
        await write(b"".join(map(ndjson_line, await finish())))
    except OllamaError as e:
        await write_quietly(resp, error_line(e.message))
    except BROKEN_STREAM as e:
        await write_quietly(
            resp, error_line(f"llama-server for '{model}' broke off the stream: {type(e).__name__}")
        )
    with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
        await resp.write_eof()
    return resp
