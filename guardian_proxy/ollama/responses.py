"""Whole Ollama answers: load/unload acknowledgements and non-streaming conversions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from guardian_proxy.ollama.encoding import now_rfc3339
from guardian_proxy.ollama.stream import ChatStreamTranslator, GenerateStreamTranslator, Upstream

LoadReason = Literal["load", "unload"]


def chat_load_response(model: str, done_reason: LoadReason) -> dict[str, Any]:
    """/api/chat with no messages: `done_reason` "load", or "unload" with keep_alive 0."""
    return {
        "model": model,
        "created_at": now_rfc3339(),
        "message": {"role": "assistant", "content": ""},
        "done_reason": done_reason,
        "done": True,
    }


def generate_load_response(model: str, done_reason: LoadReason) -> dict[str, Any]:
    """/api/generate with an empty prompt: `done_reason` "load", or "unload" with keep_alive 0."""
    return {
        "model": model,
        "created_at": now_rfc3339(),
        "response": "",
        "done": True,
        "done_reason": done_reason,
    }


def chat_response_from_openai(
    response: Mapping[str, Any],
    *,
    model: str,
    total_duration: float = 0,
    load_duration: float = 0,
    include_top_logprobs: bool = False,
) -> dict[str, Any]:
    """A non-streaming llama-server chat completion → the /api/chat `stream:false` object."""
    t = ChatStreamTranslator(model, emit=False, include_top_logprobs=include_top_logprobs)
    t.feed(response)
    return t.result(total_duration=total_duration, load_duration=load_duration)


def generate_response_from_llama(
    response: Mapping[str, Any],
    *,
    model: str,
    upstream: Upstream = "native",
    total_duration: float = 0,
    load_duration: float = 0,
    context: list[int] | None = None,
    include_top_logprobs: bool = False,
) -> dict[str, Any]:
    """A non-streaming llama-server answer (/completion, /infill, or chat) → the /api/generate object."""
    t = GenerateStreamTranslator(
        model, upstream=upstream, emit=False, include_top_logprobs=include_top_logprobs
    )
    t.feed(response)
    return t.result(total_duration=total_duration, load_duration=load_duration, context=context)
