"""Loading progress: while a streamed request waits for its model, tell the client so.

Off by default (Ollama itself sends nothing while it loads); `proxy.loading_progress: true`
turns it on. The stream response is prepared only when the first tick is due (a model that
is already resident answers exactly as before), and the relay then continues on it. The
text goes out where a client shows it without mistaking it for the answer: a
`reasoning_content` delta on /v1/chat/completions, `thinking` on /api/chat.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from guardian_proxy.client_stream import ClientStream
from guardian_proxy.supervisor_link import Lease, SupervisorLink

TICK_S = 1.0  # the first message after a second of waiting, then one a second


def progress_text(model: str, waited_s: float) -> str:
    return f"Loading model '{model}'… {waited_s:.0f} s\n"


def openai_progress_chunk(model: str, text: str) -> bytes:
    chunk = {
        "id": "chatcmpl-loading",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def ollama_progress_line(model: str, text: str, created_at: str) -> bytes:
    line = {
        "model": model,
        "created_at": created_at,
        "message": {"role": "assistant", "content": "", "thinking": text},
        "done": False,
    }
    return json.dumps(line).encode() + b"\n"


class Progress:
    """The response a waiting request's progress is written to, prepared on first use."""

    def __init__(self, request: web.Request, headers: dict[str, str], render: Callable[[str], bytes]) -> None:
        self.request = request
        self.headers = headers
        self.render = render
        self.resp: web.StreamResponse | None = None

    async def tick(self, text: str) -> None:
        if self.resp is None:
            self.resp = ClientStream(headers=self.headers)
            await self.resp.prepare(self.request)
        await self.resp.write(self.render(text))


async def acquire_reporting(link: SupervisorLink, model: str, progress: Progress | None, **kw: Any) -> Lease:
    """link.acquire, ticking `progress` every TICK_S while it waits (never when None)."""
    if progress is None:
        return await link.acquire(model, **kw)
    task = asyncio.ensure_future(link.acquire(model, **kw))
    t0 = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=TICK_S)
            if done:
                return task.result()
            await progress.tick(progress_text(model, time.monotonic() - t0))
    finally:
        task.cancel()  # a no-op once done; a grant after we left is released by the link
