"""What Guardian adds to a relayed /v1/chat/completions, as pure functions.

Going up: `reasoning_effort` and `reasoning.effort` (OpenAI's two spellings, `none` included)
become the think controls llama-server reads (`ollama.fields.think_params`). Coming back:
`usage.prompt_tokens_details.cached_tokens` is filled in where the backend leaves it out
(ik builds of mid-2026 and older), from `timings`. `SseUsageRewriter` does that on a stream
chunk by chunk: only a line that carries `usage` is decoded, everything else passes as bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from guardian_proxy.ollama.fields import think_from_effort, think_params


def apply_reasoning(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request with its reasoning effort mapped, or None when it names none.

    `reasoning.effort` wins over `reasoning_effort` (as Ollama reads them). Keys the client
    set in its own `chat_template_kwargs` win over the mapped ones. Raises ValueError for an
    effort that is not on the scale.
    """
    reasoning = payload.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, Mapping):
        raise ValueError('\'reasoning\' must be an object like {"effort": "high"}')
    if reasoning is None and "reasoning_effort" not in payload:
        return None
    effort = reasoning.get("effort") if reasoning is not None else None
    if effort is None:
        effort = payload.get("reasoning_effort")
    think = think_from_effort(effort)
    out = {k: v for k, v in payload.items() if k not in ("reasoning", "reasoning_effort")}
    params = think_params(think)
    own = out.get("chat_template_kwargs")
    if isinstance(own, Mapping) and "chat_template_kwargs" in params:
        params["chat_template_kwargs"] = {**params["chat_template_kwargs"], **own}
    out.update({k: v for k, v in params.items() if k not in out or k == "chat_template_kwargs"})
    return out


def cached_tokens(usage: Mapping[str, Any], timings: Mapping[str, Any] | None) -> int | None:
    """Prompt tokens served from the KV cache: timings.cache_n (upstream), else the prompt
    tokens timings.prompt_n did not evaluate (ik counts only new tokens there)."""
    if not isinstance(timings, Mapping):
        return None
    cache_n = timings.get("cache_n")
    if isinstance(cache_n, int) and not isinstance(cache_n, bool):
        return cache_n
    prompt_tokens, prompt_n = usage.get("prompt_tokens"), timings.get("prompt_n")
    if isinstance(prompt_tokens, int) and isinstance(prompt_n, int):
        return max(prompt_tokens - prompt_n, 0)
    return None


def add_cached_tokens(obj: dict[str, Any]) -> bool:
    """Fill `usage.prompt_tokens_details.cached_tokens` in a response or chunk; True if changed."""
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return False
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping) and "cached_tokens" in details:
        return False
    cached = cached_tokens(usage, obj.get("timings"))
    if cached is None:
        return False
    usage["prompt_tokens_details"] = {
        **(details if isinstance(details, Mapping) else {}),
        "cached_tokens": cached,
    }
    return True


def rewrite_body(body: bytes) -> bytes:
    """A whole JSON answer with cached_tokens filled in; anything unparsable passes unchanged."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if isinstance(obj, dict) and add_cached_tokens(obj):
        return json.dumps(obj, ensure_ascii=False).encode()
    return body


class SseUsageRewriter:
    """Fills cached_tokens into the `usage` events of an SSE stream, one network read at a time.

    `feed` returns every complete line at once (so no token waits on the next read); only an
    incomplete last line is held until its end arrives, because a `usage` event split across
    two reads could not be recognised otherwise. `close` returns what is left.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        out = data[:cut]
        if b'"usage"' not in out:
            return out
        return b"\n".join(self._line(line) for line in out.split(b"\n"))

    def close(self) -> bytes:
        tail, self._tail = self._tail, b""
        return self._line(tail) if tail else b""

    @staticmethod
    def _line(line: bytes) -> bytes:
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return line
        try:
            obj = json.loads(line[5:])
        except ValueError:
            return line
        if isinstance(obj, dict) and add_cached_tokens(obj):
            return b"data: " + json.dumps(obj, ensure_ascii=False).encode()
        return line
