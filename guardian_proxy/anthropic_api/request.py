"""Anthropic Messages request → llama-server /v1/chat/completions body, as pure functions.

`build_chat_body` validates a /v1/messages (or count_tokens) body and returns a `MessagesPlan`.
Order is kept: the top-level `system` becomes the first message and a `system` message a
client puts inside `messages` stays where it is (moving it would change the prompt's prefix
and cost the KV cache every turn). Within a user turn, `tool_result` blocks become `tool`
messages and the text/images around them user messages, in block order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardian_proxy.anthropic_api.errors import AnthropicError
from guardian_proxy.ollama.fields import think_params

CHAT_ENDPOINT = "/v1/chat/completions"


@dataclass
class MessagesPlan:
    model: str
    stream: bool
    body: dict[str, Any]
    """The llama-server chat completion request."""
    dropped_tools: list[str] = field(default_factory=list)
    """Server tools (web_search, code execution, …) that cannot run here: dropped, for a log."""


def _bad(message: str) -> AnthropicError:
    return AnthropicError(400, message)


def _text_of(content: object, where: str) -> str:
    """A string, or the text of a list of text blocks (system, tool_result contents)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where}: expected a string or a list of text blocks")
    parts = []
    for block in content:
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise _bad(f"{where}: only text blocks are allowed here")
        parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def image_url(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block → an OpenAI image_url part (base64 as a data: URI)."""
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _bad(f"{where}: image block without a source")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad(f"{where}: base64 image source needs media_type and data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"{where}: image source type {json.dumps(kind)} is not supported (use base64 or url)")


def _user_parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only parts collapse to a string (every chat template renders that)."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}: tool_result needs the tool_use_id of the call it answers")
    content = block.get("content")
    if isinstance(content, list):  # text and images; images cannot be a tool message's content
        text = "\n".join(
            str(b.get("text", "")) for b in content if isinstance(b, Mapping) and b.get("type") == "text"
        )
    else:
        text = _text_of(content, where)
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user_messages(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content: expected a string or a list of content blocks")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(block, Mapping):
            raise _bad(f"{at}: expected a content block object")
        kind = block.get("type")
        if kind == "tool_result":
            if parts:
                out.append({"role": "user", "content": _user_parts(parts)})
                parts = []
            out.append(_tool_result(block, at))
        elif kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(image_url(block, at))
        elif kind in ("document", "search_result"):
            raise _bad(f"{at}: {kind} blocks are not supported by local models; send the text instead")
        # thinking blocks from a user turn and unknown block types carry nothing to render
    if parts:
        out.append({"role": "user", "content": _user_parts(parts)})
    return out


def _assistant_message(content: object, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content: expected a string or a list of content blocks")
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(block, Mapping):
            raise _bad(f"{at}: expected a content block object")
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise _bad(f"{at}: tool_use needs an id and a name")
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False, separators=(",", ":"))
            calls.append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if thinking:
        msg["reasoning_content"] = "".join(thinking)
    if calls:
        msg["tool_calls"] = calls
    return msg


def convert_messages(system: object, messages: object) -> list[dict[str, Any]]:
    """Anthropic `system` + `messages` → OpenAI messages, in the client's order."""
    if not isinstance(messages, list):
        raise _bad("messages: expected a list of messages")
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _text_of(system, "system")})
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise _bad(f"{where}: expected a message object")
        role = msg.get("role")
        content = msg.get("content")
        if role == "user":
            out.extend(_user_messages(content, where))
        elif role == "assistant":
            out.append(_assistant_message(content, where))
        elif role == "system":  # not in Anthropic's schema, but clients send it: kept in place
            out.append({"role": "system", "content": _text_of(content, f"{where}.content")})
        else:
            raise _bad(f'{where}.role: expected "user" or "assistant", got {json.dumps(role)}')
    return out


def convert_tools(tools: object) -> tuple[list[dict[str, Any]], list[str]]:
    """Client tools → OpenAI function tools; server tools (no input_schema) are dropped and named."""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise _bad("tools: expected a list of tools")
    out: list[dict[str, Any]] = []
    dropped: list[str] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise _bad(f"tools[{i}]: a tool needs a name")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            dropped.append(f"{tool['name']} ({tool.get('type', 'no input_schema')})")
            continue
        params = dict(schema)
        params.setdefault("type", "object")
        params.setdefault("properties", {})
        fn = {"name": tool["name"], "description": str(tool.get("description") or ""), "parameters": params}
        out.append({"type": "function", "function": fn})
    return out, dropped


def convert_tool_choice(choice: object) -> dict[str, Any]:
    """`tool_choice` → OpenAI `tool_choice` (+ `parallel_tool_calls` when parallel use is off)."""
    if choice is None:
        return {}
    if not isinstance(choice, Mapping):
        raise _bad('tool_choice: expected an object like {"type": "auto"}')
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad('tool_choice.type: expected "auto", "any", "tool" (with a name) or "none"')
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def thinking_params(thinking: object) -> dict[str, Any]:
    """`thinking` → the think controls (ollama.fields.think_params); `budget_tokens` is kept."""
    if thinking is None:
        return {}
    if not isinstance(thinking, Mapping):
        raise _bad('thinking: expected an object like {"type": "enabled", "budget_tokens": 2048}')
    kind = thinking.get("type")
    if kind == "disabled":
        return think_params(False)
    if kind in ("enabled", "adaptive"):
        out = think_params(True)
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
            out["thinking_budget_tokens"] = budget
        return out
    raise _bad('thinking.type: expected "enabled", "adaptive" or "disabled"')


def build_chat_body(body: object, *, count_only: bool = False) -> MessagesPlan:
    """Validate a Messages request; `count_only` for count_tokens (no max_tokens needed)."""
    if not isinstance(body, Mapping):
        raise _bad("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: required; name one of the models listed at /v1/models")
    max_tokens = body.get("max_tokens")
    if not count_only and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise _bad("max_tokens: required, a positive integer")
    stream = body.get("stream") is True and not count_only
    tools, dropped = convert_tools(body.get("tools"))
    out: dict[str, Any] = {
        "model": model,
        "messages": convert_messages(body.get("system"), body.get("messages")),
    }
    if tools:
        out["tools"] = tools
        out.update(convert_tool_choice(body.get("tool_choice")))
    if count_only:
        return MessagesPlan(model, False, out, dropped)
    out["max_tokens"] = max_tokens
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}
    out["cache_prompt"] = True
    for key in ("temperature", "top_p", "top_k"):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: expected a list of strings")
        out["stop"] = stops
    out.update(thinking_params(body.get("thinking")))
    return MessagesPlan(model, stream, out, dropped)
