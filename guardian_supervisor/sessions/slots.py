"""llama-server's slot API as Guardian uses it: GET /slots, POST /slots/{id}?action=..., /metrics.

Both forks answer these, with different slot fields (reference §1): upstream build 11434
reports `n_prompt_tokens` (the tokens the slot's cache holds; 0 after an erase) and
`is_processing`; older and ik builds may report `n_past`, `state` or the token lists. The
helpers below read whichever is there and say "unknown" rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from guardian_supervisor.memory.estimate import kv_layer_bytes, recurrent_state_bytes
from guardian_supervisor.memory.gguf_info import ModelInfo

# Saving or restoring a slot file runs at disk speed: seconds for GiB. ik's server can lose the
# reply to a slot action (it queues the task before it awaits the reply; the action itself
# runs), so the wait is bounded by the file's size, not minutes, and the action is asked once
# more: save, restore and erase are idempotent, and the second reply is seldom lost too.
SLOT_IO_BASE_S = 1.5
SLOT_IO_ATTEMPTS = 2
SLOT_IO_BYTES_PER_S = 50 * 2**20  # a slow disk; page-cache writes run far faster
# A save's file size is unknown before it is written: bound it from the model's KV rows
# (`save_bound`), or, when the GGUF cannot say, at a KV size per token no model Guardian runs
# exceeds (a 70B f16 cache is ~0.3 MiB a token).
SAVE_BYTES_PER_TOKEN = 2**20
QUICK_TIMEOUT = aiohttp.ClientTimeout(total=10)

log = structlog.get_logger("sessions")


class SlotError(Exception):
    """llama-server refused or failed a slot action; the message is its own."""


def save_bound(info: ModelInfo | None, kv_type: str, flavor: str, n_tokens: int) -> int:
    """An upper bound on the file a slot holding `n_tokens` saves: every layer's K and V rows
    per token (as if none were windowed), the recurrent state and the token ids, doubled."""
    if info is None:
        return n_tokens * SAVE_BYTES_PER_TOKEN
    try:
        row = sum(kv_layer_bytes(info, il, 1, kv_type, kv_type, flavor, True) for il in range(info.n_layer))
    except ValueError:  # a KV type the estimator does not know
        return n_tokens * SAVE_BYTES_PER_TOKEN
    state = sum(recurrent_state_bytes(info, 1))
    return 2 * (n_tokens * (row + 8) + state) + 2**20


def slot_io_timeout(nbytes: int) -> aiohttp.ClientTimeout:
    """How long a save or restore of a slot file of `nbytes` may take before Guardian gives up."""
    return aiohttp.ClientTimeout(total=SLOT_IO_BASE_S + max(nbytes, 0) / SLOT_IO_BYTES_PER_S)


@dataclass(frozen=True)
class SlotState:
    id: int
    n_tokens: int | None  # tokens held in the slot's cache; None when the build does not say
    processing: bool
    id_task: int | None  # the last task the slot ran; changes when a request uses it


def parse_slot(raw: dict[str, Any]) -> SlotState:
    n_tokens: int | None = None
    for key in ("n_prompt_tokens", "n_past", "n_tokens"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            n_tokens = value
            break
    else:
        for key in ("cache_tokens", "tokens"):
            if isinstance(raw.get(key), list):
                n_tokens = len(raw[key])
                break
    if "is_processing" in raw:
        processing = bool(raw["is_processing"])
    else:
        processing = raw.get("state", 0) not in (0, "idle", None)
    id_task = raw.get("id_task")
    return SlotState(
        id=int(raw.get("id", 0)),
        n_tokens=n_tokens,
        processing=processing,
        id_task=id_task if isinstance(id_task, int) and id_task >= 0 else None,
    )


def holds_conversation(s: SlotState) -> bool:
    """Worth saving: tokens in its cache (or a build that does not say, and has run a task)."""
    if s.n_tokens is not None:
        return s.n_tokens > 0
    return s.id_task is not None


def pick_slot(slots: list[SlotState]) -> SlotState | None:
    """The conversation to save when none is named: the slot that ran the latest task."""
    held = [s for s in slots if holds_conversation(s)]
    return max(held, key=lambda s: (s.id_task or -1, -s.id), default=None)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {name: value} for the `llamacpp:*` counters."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value.strip())
        except ValueError:
            continue
    return out


class SlotClient:
    """One running llama-server's slot endpoints."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.http = session
        self.base = base_url

    async def slots(self) -> list[SlotState]:
        async with self.http.get(self.base + "/slots", timeout=QUICK_TIMEOUT) as r:
            body = await _json(r)
        if not isinstance(body, list):
            raise SlotError(f"GET /slots answered {str(body)[:200]}")
        return [parse_slot(s) for s in body if isinstance(s, dict)]

    async def action(
        self, slot: int, action: str, filename: str | None = None, nbytes: int = 0
    ) -> dict[str, Any]:
        """POST /slots/{slot}?action=save|restore|erase; the reply, or SlotError with its message.

        `nbytes` is the slot file's size (or a bound on it): the reply must come within
        `slot_io_timeout(nbytes)`, else TimeoutError."""
        payload = {"filename": filename} if filename is not None else {}
        timeout = slot_io_timeout(nbytes)
        for attempt in range(1, SLOT_IO_ATTEMPTS + 1):
            try:
                async with self.http.post(
                    f"{self.base}/slots/{slot}", params={"action": action}, json=payload, timeout=timeout
                ) as r:
                    body = await _json(r)
                break
            except TimeoutError:
                if attempt == SLOT_IO_ATTEMPTS:
                    raise
                log.warning(
                    "slot_reply_lost",
                    url=self.base,
                    slot=slot,
                    action=action,
                    waited_s=timeout.total,
                    hint="no reply in time (ik_llama.cpp can lose it); asking once more",
                )
        if not isinstance(body, dict):
            raise SlotError(f"{action} answered {str(body)[:200]}")
        return body

    async def metrics(self) -> dict[str, float] | None:
        """llama-server's counters (it runs with --metrics), or None if it has none."""
        try:
            async with self.http.get(self.base + "/metrics", timeout=QUICK_TIMEOUT) as r:
                if r.status != 200:
                    return None
                return parse_metrics(await r.text())
        except (aiohttp.ClientError, TimeoutError):
            return None


async def _json(r: aiohttp.ClientResponse) -> Any:
    try:
        body = await r.json(content_type=None)
    except ValueError as e:
        raise SlotError(f"HTTP {r.status}: the reply is not JSON") from e
    if r.status != 200:
        err = body.get("error") if isinstance(body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err
        raise SlotError(f"HTTP {r.status}: {msg or body}")
    return body
