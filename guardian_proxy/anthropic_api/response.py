"""llama-server chat completions → Anthropic Messages answers, whole or event by event.

`MessageStream` is fed each decoded SSE chunk and returns the Anthropic events it makes
(`(name, data)` pairs; `sse_event` encodes one): message_start and a ping first, then a
content block per kind as the deltas arrive (thinking → text → tool_use, each closed when
the next kind starts), and at the end message_delta (stop_reason, usage) and message_stop.
`message_from_openai` converts a non-streaming completion.

usage: `input_tokens` counts only the prompt tokens that were evaluated; the ones served
from llama-server's prompt cache are `cache_read_input_tokens` (Anthropic's meaning).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from guardian_proxy.anthropic_api.errors import AnthropicError
from guardian_proxy.openai_chat import cached_tokens

Event = tuple[str, dict[str, Any]]

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def stop_reason(finish_reason: object) -> str:
    return _STOP_REASONS.get(str(finish_reason), "end_turn")


def usage_from_openai(usage: Mapping[str, Any] | None, timings: Mapping[str, Any] | None) -> dict[str, int]:
    """OpenAI usage (+ timings) → Anthropic usage, the cached part split out of input_tokens."""
    usage = usage or {}
    prompt = usage.get("prompt_tokens")
    prompt = prompt if isinstance(prompt, int) else 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    if not isinstance(cached, int):
        cached = cached_tokens(usage, timings) or 0
    cached = min(max(cached, 0), prompt)
    output = usage.get("completion_tokens")
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output if isinstance(output, int) else 0,
    }


def _tool_input(name: str, arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError as e:
        raise AnthropicError(
            500, f'llama-server returned invalid tool call arguments for "{name}": {e}'
        ) from None
    if not isinstance(value, dict):
        raise AnthropicError(
            500, f'llama-server returned tool call arguments for "{name}" that are not an object'
        )
    return value


def _upstream_error(chunk: Mapping[str, Any]) -> AnthropicError:
    err = chunk.get("error")
    message = err.get("message") if isinstance(err, Mapping) else err
    return AnthropicError(500, str(message or "llama-server reported an error"))


def message_from_openai(resp: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A non-streaming chat completion → the Anthropic message object."""
    if "error" in resp:
        raise _upstream_error(resp)
    choices = resp.get("choices") or [{}]
    choice = choices[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        name = str(fn.get("name", ""))
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                "name": name,
                "input": _tool_input(name, fn.get("arguments") or ""),
            }
        )
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": usage_from_openai(resp.get("usage"), resp.get("timings")),
    }


def sse_event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


class MessageStream:
    """Streamed chat completion chunks → Anthropic stream events, one chunk at a time."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.finish_reason: object = None
        self._index = -1  # the open content block's index; -1 before the first
        self._kind: str | None = None  # "thinking" | "text" | "tool_use" | None (none open)
        self._tool_index: int | None = None  # the OpenAI tool-call index of the open tool_use block
        self._usage: Mapping[str, Any] | None = None
        self._timings: Mapping[str, Any] | None = None

    def start(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": new_message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Not known before llama-server's last chunk; message_delta carries the real figures.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message}), ("ping", {"type": "ping"})]

    def progress(self, text: str, first: bool) -> list[Event]:
        """Loading progress as a thinking block at index 0, opened (after message_start) on
        the first tick; the answer then continues the same message (guardian_proxy.loading)."""
        out: list[Event] = self.start() if first else []
        if first:
            self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
        self._delta({"type": "thinking_delta", "thinking": text}, out)
        return out

    def _open(self, kind: str, block: dict[str, Any], out: list[Event]) -> None:
        self._close(out)
        self._index += 1
        self._kind = kind
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )

    def _close(self, out: list[Event]) -> None:
        if self._kind is not None:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": self._index}))
            self._kind = None
            self._tool_index = None

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        out.append(
            ("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})
        )

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """One decoded chunk → events; raises AnthropicError for an `{"error": …}` chunk."""
        if "error" in chunk:
            raise _upstream_error(chunk)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        if chunk.get("timings"):
            self._timings = chunk["timings"]
        out: list[Event] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if reasoning := delta.get("reasoning_content"):
                if self._kind != "thinking":
                    self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
                self._delta({"type": "thinking_delta", "thinking": reasoning}, out)
            if text := delta.get("content"):
                if self._kind != "text":
                    self._open("text", {"type": "text", "text": ""}, out)
                self._delta({"type": "text_delta", "text": text}, out)
            for position, call in enumerate(delta.get("tool_calls") or []):
                self._tool_call(call, position, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def _tool_call(self, call: Mapping[str, Any], position: int, out: list[Event]) -> None:
        index = call.get("index", position)
        fn = call.get("function") or {}
        if self._kind != "tool_use" or index != self._tool_index:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                "name": fn.get("name") or "",
                "input": {},
            }
            self._open("tool_use", block, out)
            self._tool_index = index
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            self._delta({"type": "input_json_delta", "partial_json": args}, out)

    def finish(self) -> list[Event]:
        """The closing events; raises AnthropicError when the upstream never said it finished."""
        if self.finish_reason is None:
            raise AnthropicError(500, "llama-server ended the response before it was complete")
        out: list[Event] = []
        self._close(out)
        usage = usage_from_openai(self._usage, self._timings)
        out.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish_reason), "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        out.append(("message_stop", {"type": "message_stop"}))
        return out
