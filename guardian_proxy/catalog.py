"""The proxy's copy of the supervisor's model catalog (`catalog.tags`), refreshed in the background.

Both APIs resolve model names here. Chat and generate look a model up on every request
(capabilities are checked before any upstream call), so the lookup is a dict access; the listing is re-fetched at most every
`ttl_s` seconds, and a stale copy keeps answering while the refresh runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from guardian_proxy.supervisor_link import SupervisorLink
from shared.config import canonical_name


@dataclass(frozen=True)
class Entry:
    """One configured model as the routes need it."""

    name: str
    aliases: tuple[str, ...]
    context: int
    embeddings: bool
    reranking: bool
    flavor: str
    """The backend's flavor: "ik" (ik_llama.cpp) or "upstream" (llama.cpp)."""
    capabilities: tuple[str, ...]
    """Ollama capability names: completion, tools, insert, vision, thinking, embedding."""
    has_template: bool
    tag: dict[str, Any] = field(hash=False, compare=False)
    """The /api/tags entry (name:tag, model, modified_at, size, digest, details)."""

    @classmethod
    def from_rpc(cls, e: dict[str, Any]) -> Entry:
        return cls(
            name=e["name"],
            aliases=tuple(e.get("aliases") or ()),
            context=int(e.get("context") or 0),
            embeddings=bool(e.get("embeddings")),
            reranking=bool(e.get("reranking")),
            flavor=str(e.get("flavor") or "upstream"),
            capabilities=tuple(e.get("capabilities") or ()),
            has_template=bool(e.get("has_template")),
            tag=e["tag"],
        )


class Catalog:
    def __init__(self, link: SupervisorLink, ttl_s: float = 2.0) -> None:
        self._link = link
        self._ttl = ttl_s
        self._entries: list[Entry] = []
        self._index: dict[str, Entry] = {}
        self._loaded_at = float("-inf")
        self._task: asyncio.Task[None] | None = None

    async def entries(self) -> list[Entry]:
        """Every configured model; fresh within ttl_s (waits for the supervisor if older)."""
        if time.monotonic() - self._loaded_at >= self._ttl:
            await self._refreshed()
        return self._entries

    async def find(self, name: str) -> Entry | None:
        """The model `name` stands for, like the supervisor's resolve_model; None if unknown."""
        if time.monotonic() - self._loaded_at >= self._ttl:
            if not self._index:
                await self._refreshed()
            else:
                self._refresh()  # answer from the stale copy; the next request sees the new one
        hit = self._lookup(name)
        if hit is None and self._task is not None and not self._task.done():
            await self._refreshed()  # maybe a model added by a reload moments ago
            hit = self._lookup(name)
        return hit

    def _lookup(self, name: str) -> Entry | None:
        return self._index.get(name) or self._index.get(canonical_name(name))

    def _refresh(self) -> asyncio.Task[None]:
        """One refresh at a time, shared by every request that needs it."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._load())
            self._task.add_done_callback(_consume)
        return self._task

    async def _refreshed(self) -> None:
        # shield: a request that gives up must not cancel the refresh others wait for.
        await asyncio.shield(self._refresh())

    async def _load(self) -> None:
        listing = await self._link.call("catalog.tags")
        entries = [Entry.from_rpc(e) for e in listing]
        index: dict[str, Entry] = {}
        for e in entries:
            for n in (e.name, *e.aliases):
                index.setdefault(canonical_name(n), e)
        for e in entries:  # exact names win over canonical forms (as resolve_model does)
            for n in (e.name, *e.aliases):
                index[n] = e
        self._entries, self._index, self._loaded_at = entries, index, time.monotonic()


def _consume(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()  # a failed background refresh is retried by the next request
