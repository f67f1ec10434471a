"""Did a restore take? llama-server can report a slot restore as done while its next request
re-reads the whole prompt (ggml-org/llama.cpp#25913, #26676), so every restore is checked twice:

1. right after it, the reply's `n_restored` must be the manifest's token count and GET /slots
   must show that count in the slot: "verified" only when both agree. A fresh upstream
   server lists no count for a slot that has not run a task, and ik_llama.cpp lists none at
   all: then the reply alone speaks, "unknown";
2. when the first request has used the slot (its task id changed), llama-server's counter
   `llamacpp:prompt_tokens_cached_total` must have grown since the restore, i.e. the request
   found cached tokens (its `timings.cache_n` > 0).

Either failure is a warning in the log; requests are never failed for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from guardian_supervisor.models.runtime import ModelRuntime, State
from guardian_supervisor.sessions.slots import SlotClient, SlotError, SlotState
from guardian_supervisor.sessions.store import Manifest

log = structlog.get_logger("sessions")

CACHED_METRIC = "llamacpp:prompt_tokens_cached_total"
WATCH_FOR_S = 900.0  # give up waiting for the first request after a restore after this long
SLOT_ERRORS = (SlotError, aiohttp.ClientError, TimeoutError)


@dataclass
class Restored:
    """A slot restored into the running server, until the model stops."""

    manifest: Manifest
    n_tokens: int
    id_task: int | None  # the slot's last task right after the restore
    cached_before: float | None  # CACHED_METRIC right before the restore
    verdict: str | None = None  # "reused", "not_used" or "unknown" once a request used the slot


def restore_check(n_restored: int, n_saved: int, slot_tokens: int | None) -> str:
    """ "verified" when the reply and the slot both hold what was saved; "unknown" when the
    server lists no slot count (ik never does); else "mismatch"."""
    if n_restored != n_saved or (slot_tokens is not None and slot_tokens != n_restored):
        return "mismatch"
    return "unknown" if slot_tokens is None else "verified"


async def restore_checked(
    client: SlotClient, model: str, m: Manifest, slot: int
) -> tuple[Restored, dict[str, Any]]:
    """Restore `m` into `slot` and check the slot at once; SlotError if llama-server refuses."""
    before = await client.metrics()
    reply = await client.action(slot, "restore", m.stem + ".bin", nbytes=m.bytes)
    n = int(reply.get("n_restored", 0))
    state = next((s for s in await client.slots() if s.id == slot), None)
    shown = state.n_tokens if state is not None else None
    check = restore_check(n, m.n_tokens, shown)
    if check == "mismatch":
        log.warning(
            "session_restore_unverified",
            model=model,
            session=m.name,
            slot=slot,
            n_restored=n,
            slot_tokens=shown,
            hint="llama-server reported the restore but the slot does not hold the tokens; "
            "the next request will likely read its whole prompt again",
        )
    restored = Restored(m, n, state.id_task if state else None, (before or {}).get(CACHED_METRIC))
    ms = (reply.get("timings") or {}).get("restore_ms")
    return restored, {"slot": slot, "n_restored": n, "restore_ms": ms, "check": check}


async def judge_first_use(
    model: str, client: SlotClient, slots: list[SlotState], restored: dict[int, Restored]
) -> None:
    """For each restored slot a request has used since, log whether it found cached tokens."""
    for s in slots:
        r = restored.get(s.id)
        if r is None or r.verdict is not None or s.processing or s.id_task == r.id_task:
            continue
        now = (await client.metrics() or {}).get(CACHED_METRIC)
        fields = {"model": model, "session": r.manifest.name, "slot": s.id, "n_restored": r.n_tokens}
        if now is None or r.cached_before is None:
            r.verdict = "unknown"
            log.info("session_cache_unchecked", **fields)
        elif now > r.cached_before:
            r.verdict = "reused"
            log.info("session_cache_reused", **fields, cache_n=int(now - r.cached_before))
        else:
            r.verdict = "not_used"
            log.warning(
                "session_cache_not_used",
                **fields,
                hint="the first request after the restore found no cached tokens: a different "
                "conversation, or llama-server's restore did not take (ggml-org/llama.cpp#25913)",
            )


async def watch_first_use(
    rt: ModelRuntime, client: SlotClient, restored: Callable[[], dict[int, Restored]]
) -> None:
    """Poll /slots (backing off to once a second) until every restored slot has been judged."""
    port, delay = rt.port, 0.05
    deadline = time.monotonic() + WATCH_FOR_S
    while time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 1.0)
        current = restored()
        if (
            rt.state not in (State.STARTING, State.READY)
            or rt.port != port
            or all(r.verdict for r in current.values())
        ):
            return
        try:
            await judge_first_use(rt.name, client, await client.slots(), current)
        except SLOT_ERRORS:
            continue
