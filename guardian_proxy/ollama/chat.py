"""/api/chat request → llama-server /v1/chat/completions body.

`build_chat_request` validates the whole request the way Ollama does and returns a
`ChatPlan`: what to send upstream plus what the HTTP layer must act on (load/unload,
keep_alive, load-time options, capability checks). Translating the answer back is
`stream.ChatStreamTranslator` (`plan.translator()` makes one set up for this request).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from guardian_proxy.ollama.durations import parse_keep_alive
from guardian_proxy.ollama.errors import OllamaError, require_model, type_error
from guardian_proxy.ollama.fields import (
    chat_response_format,
    logprob_params,
    parse_flag,
    parse_format,
    parse_logprobs,
    parse_stream,
    parse_think,
    think_params,
)
from guardian_proxy.ollama.images import image_part
from guardian_proxy.ollama.options import map_options, stray_root_options
from guardian_proxy.ollama.stream import ChatStreamTranslator
from guardian_proxy.ollama.tools import normalize_tools, tool_calls_to_openai

CHAT_ENDPOINT = "/v1/chat/completions"

Action = Literal["chat", "load", "unload"]


@dataclass
class ChatPlan:
    model: str
    """The name the client asked for (echoed in every answer)."""
    action: Action
    """"chat": send `body`; "load"/"unload": answer with `responses.chat_load_response` only."""
    stream: bool
    """Whether the client wants NDJSON (true unless it sent `stream: false`)."""
    keep_alive: float | None
    """Seconds, `KEEP_FOREVER` (-1.0), or None when the client did not say."""
    endpoint: str = CHAT_ENDPOINT
    body: dict[str, Any] = field(default_factory=dict)
    """The llama-server request; `body["stream"]` is what was asked upstream."""
    load_options: dict[str, Any] = field(default_factory=dict)
    ignored_options: dict[str, Any] = field(default_factory=dict)
    stray_options: dict[str, Any] = field(default_factory=dict)
    """Option keys sent at the root instead of in `options`: ignored (as Ollama), for a debug log."""
    has_tools: bool = False
    """len(tools) > 0: the caller checks the tools capability (`tools: []` does not count)."""
    think: bool | str | None = None
    """The validated `think`; truthy on a model without thinking → `unsupported_capability`."""
    has_images: bool = False
    top_logprobs: int = 0
    truncate: bool = True
    """Ollama's `truncate` (default true): drop the oldest messages when the prompt does not fit."""
    shift: bool = True
    """Ollama's `shift`: validated and kept; llama-server's own --context-shift decides (see README)."""

    def translator(self, *, emit: bool = True) -> ChatStreamTranslator:
        """A translator for this request's answer (`emit=False` to aggregate a non-stream answer)."""
        return ChatStreamTranslator(self.model, emit=emit, include_top_logprobs=self.top_logprobs > 0)


def convert_messages(
    messages: object, *, default_system: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """Ollama messages → OpenAI messages for llama-server; also says whether any has images.

    Roles are lower-cased; `content` defaults to "" (llama.cpp needs content or tool_calls);
    images become image_url parts after the text; assistant `thinking` becomes
    `reasoning_content`; tool calls get `type`, an `id` and string arguments; a tool result
    without `tool_call_id` is paired with the earlier call of the same name (else the next
    unanswered one), and `tool_name` becomes `name`.
    """
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise type_error("ChatRequest", "messages", messages, "[]api.Message")
    out: list[dict[str, Any]] = []
    has_images = False
    if default_system and (not messages or not _is_system(messages[0])):
        out.append({"role": "system", "content": default_system})
    pending: list[tuple[str, str]] = []  # (id, name) of the latest assistant calls not yet answered
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise type_error("ChatRequest", "messages", msg, "api.Message")
        role = msg.get("role")
        if role is None:
            role = ""
        if not isinstance(role, str):
            raise type_error("Message", "messages.role", role, "string")
        role = role.lower()
        content = msg.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise type_error("Message", "messages.content", content, "string")
        converted: dict[str, Any] = {"role": role}

        images = msg.get("images")
        if images:
            if not isinstance(images, list):
                raise type_error("Message", "messages.images", images, "[]api.ImageData")
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            parts.extend(image_part(img) for img in images if img != "")
            converted["content"] = parts
            has_images = True
        else:
            converted["content"] = content

        thinking = msg.get("thinking")
        if isinstance(thinking, str) and thinking and role == "assistant":
            converted["reasoning_content"] = thinking

        tool_calls = msg.get("tool_calls")
        if tool_calls:
            calls = tool_calls_to_openai(tool_calls, str(i))
            converted["tool_calls"] = calls
            pending = [(c["id"], c["function"]["name"]) for c in calls]

        if role == "tool":
            _pair_tool_result(msg, converted, pending)
        out.append(converted)
    return out, has_images


def _is_system(msg: object) -> bool:
    return isinstance(msg, Mapping) and isinstance(msg.get("role"), str) and msg["role"].lower() == "system"


def _pair_tool_result(
    msg: Mapping[str, Any], converted: dict[str, Any], pending: list[tuple[str, str]]
) -> None:
    call_id = msg.get("tool_call_id")
    name = msg.get("tool_name") or msg.get("name")
    call_id = call_id if isinstance(call_id, str) and call_id else None
    name = name if isinstance(name, str) and name else None
    match: tuple[str, str] | None = None
    if call_id is not None:
        match = next((p for p in pending if p[0] == call_id), None)
    elif pending:
        # By name when the client names the tool (LangChain, Open WebUI), else by order (Continue).
        match = next((p for p in pending if p[1] == name), None) if name else pending[0]
    if match is not None:
        pending.remove(match)
        call_id = call_id or match[0]
        name = name or match[1]
    if call_id is not None:
        converted["tool_call_id"] = call_id
    if name is not None:
        converted["name"] = name


# What llama-server says when the prompt is longer than the context (upstream's 400
# exceed_context_size_error; ik's 500 "the request exceeds the available context size").
_OVERFLOW_MARKS = ("exceeds the available context size", "exceed_context_size", "context_length_exceeded")
PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the "
    "prompt, adjust the context length in settings, or use a model with a longer context length"
)


def is_context_overflow(message: str) -> bool:
    """Whether a llama-server error says the prompt does not fit the context."""
    return any(mark in message for mark in _OVERFLOW_MARKS)


def drop_oldest_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Ollama's truncation step: the messages without the oldest non-system one.

    System messages stay where they are and the last message is never dropped (as Ollama's
    chatPrompt); a tool result whose call was dropped goes with it. None: nothing left to drop.
    """
    last = len(messages) - 1
    for i, msg in enumerate(messages[:last]):
        if msg.get("role") != "system":
            j = i + 1
            while j < last and messages[j].get("role") == "tool":
                j += 1  # results without their call would not render
            return messages[:i] + messages[j:]
    return None


def build_chat_request(
    body: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    n_ctx: int | None = None,
    default_system: str | None = None,
    stream_upstream: bool | None = None,
) -> ChatPlan:
    """Validate an /api/chat body and build the llama-server request.

    `defaults`: the model's configured options (layered under the request's).
    `n_ctx`: the context the model runs with, if known (bounds num_predict, see map_options).
    `default_system`: the model's system prompt, prepended unless the first message is system.
    `stream_upstream`: ask llama-server to stream; defaults to what the client asked. Streaming
    upstream also sets `stream_options.include_usage` so usage/timings arrive at the end.
    """
    if not isinstance(body, Mapping):
        raise OllamaError(400, "request body must be a JSON object")
    model = require_model(body, "chat")
    stream = parse_stream(body, "ChatRequest")
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    messages = body.get("messages")
    stray = stray_root_options(body)

    if not messages:
        if not isinstance(messages, (list, type(None))):
            raise type_error("ChatRequest", "messages", messages, "[]api.Message")
        if keep_alive == 0:  # Ollama unloads before looking at anything else
            return ChatPlan(
                model=model, action="unload", stream=stream, keep_alive=keep_alive, stray_options=stray
            )

    logprobs, top_logprobs = parse_logprobs(body, "ChatRequest")
    think = parse_think(body.get("think"))
    fmt = parse_format(body.get("format"))
    tools = normalize_tools(body.get("tools"))
    mapped = map_options(body.get("options"), defaults=defaults, n_ctx=n_ctx)
    plan = ChatPlan(
        model=model,
        action="chat" if messages else "load",
        stream=stream,
        keep_alive=keep_alive,
        load_options=mapped.load,
        ignored_options=mapped.ignored,
        stray_options=stray,
        has_tools=tools is not None,
        think=think,
        top_logprobs=top_logprobs if logprobs else 0,
        truncate=parse_flag(body, "truncate", "ChatRequest") is not False,
        shift=parse_flag(body, "shift", "ChatRequest") is not False,
    )
    if not messages:
        return plan

    converted, plan.has_images = convert_messages(messages, default_system=default_system)
    up_stream = stream if stream_upstream is None else stream_upstream
    out: dict[str, Any] = {"model": model, "messages": converted, "stream": up_stream}
    if up_stream:
        out["stream_options"] = {"include_usage": True}
    out["cache_prompt"] = True
    out.update(mapped.params)
    if tools is not None:
        out["tools"] = tools
    response_format = chat_response_format(fmt)
    if response_format is not None:
        out["response_format"] = response_format
    out.update(think_params(think))
    out.update(logprob_params(logprobs, top_logprobs, native=False))
    plan.body = out
    return plan
