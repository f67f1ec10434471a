"""Tool calling between Ollama and llama-server's OpenAI dialect.

Going up (request): Ollama tools and assistant tool calls become what llama.cpp's parser
insists on (`type:"function"` everywhere, `description` and `parameters` present, arguments
as a JSON *string*, `content` present), and tool results get their `tool_call_id`/`name`.
Coming back (response): OpenAI string deltas are accumulated per `index` and each call is
handed out once, whole, with arguments as a JSON *object* (ollama-python rejects strings).
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Mapping
from typing import Any

from guardian_proxy.ollama.errors import OllamaError

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_tool_call_id() -> str:
    """An id shaped like Ollama's: `call_` + 8 random lowercase letters/digits."""
    return "call_" + "".join(random.choices(_ID_ALPHABET, k=8))


def stable_tool_call_id(position: str, name: str, arguments: str) -> str:
    """An id for a history call that came without one.

    Derived from the call and its place in the conversation, so the same history renders to
    the same prompt on the next turn and llama-server's prompt cache still matches.
    """
    digest = hashlib.sha1(f"{position}\x00{name}\x00{arguments}".encode("utf-8", "surrogatepass")).hexdigest()
    return "call_" + digest[:8]


def normalize_tools(tools: object) -> list[dict[str, Any]] | None:
    """Ollama `tools` → llama-server `tools`; None for absent or `[]` (ollama-python sends `[]`)."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise OllamaError(400, "tools must be an array")
    out: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise OllamaError(400, "each tool must be an object")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise OllamaError(400, "tool is missing its function")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise OllamaError(400, "tool function is missing its name")
        function = dict(fn)
        description = function.get("description")
        function["description"] = description if isinstance(description, str) else ""
        params = function.get("parameters")
        params = dict(params) if isinstance(params, Mapping) else {}
        params.setdefault("type", "object")
        if params["type"] == "object" and not isinstance(params.get("properties"), Mapping):
            params["properties"] = {}
        function["parameters"] = params
        out.append({**tool, "type": "function", "function": function})
    return out or None


def arguments_string(arguments: object) -> str:
    """Tool-call arguments as the JSON string llama.cpp requires (compact, like Go's json.Marshal)."""
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments  # an OpenAI-style client already sent a string; keep it verbatim
    if isinstance(arguments, Mapping):
        return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    raise OllamaError(400, "tool call arguments must be an object")


def tool_calls_to_openai(tool_calls: object, position: str) -> list[dict[str, Any]]:
    """An assistant message's Ollama tool calls → OpenAI tool calls with id and type."""
    if not isinstance(tool_calls, list):
        raise OllamaError(400, "tool_calls must be an array")
    out: list[dict[str, Any]] = []
    for j, call in enumerate(tool_calls):
        if not isinstance(call, Mapping):
            raise OllamaError(400, "each tool call must be an object")
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise OllamaError(400, "tool call is missing its function")
        name = fn.get("name")
        if not isinstance(name, str):
            raise OllamaError(400, "tool call function is missing its name")
        args = arguments_string(fn.get("arguments"))
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = stable_tool_call_id(f"{position}.{j}", name, args)
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": args}})
    return out


class ToolCallAccumulator:
    """Collects OpenAI tool-call deltas per index; `calls()` gives Ollama calls, once, whole."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        # index → [id, name, argument fragments]
        self._parts: dict[int, list[Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, deltas: list[Any]) -> None:
        """One chunk's `delta.tool_calls` (or a whole message's `tool_calls`, indexed by position)."""
        for position, delta in enumerate(deltas):
            if not isinstance(delta, Mapping):
                continue
            index = delta.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                index = position
            part = self._parts.get(index)
            if part is None:
                part = self._parts[index] = ["", "", []]
            call_id = delta.get("id")
            if isinstance(call_id, str):
                part[0] += call_id
            fn = delta.get("function")
            if isinstance(fn, Mapping):
                name = fn.get("name")
                if isinstance(name, str):
                    part[1] += name
                args = fn.get("arguments")
                if isinstance(args, str):
                    part[2].append(args)
                elif isinstance(args, Mapping):  # a server that already sends objects
                    part[2].append(json.dumps(args, ensure_ascii=False))

    def calls(self) -> list[dict[str, Any]]:
        """The accumulated calls in index order, arguments parsed; invalid JSON is an error (as in Ollama)."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._parts):
            call_id, name, fragments = self._parts[index]
            text = "".join(fragments)
            arguments: Any = {}
            if text.strip():
                try:
                    arguments = json.loads(text)
                except ValueError as e:
                    raise OllamaError(
                        500, f'llama-server returned invalid tool call arguments for "{name}": {e}'
                    ) from None
                if not isinstance(arguments, dict):
                    raise OllamaError(
                        500,
                        f'llama-server returned tool call arguments for "{name}" that are not a JSON object',
                    )
            out.append(
                {
                    "id": call_id or new_tool_call_id(),
                    "function": {"index": index, "name": name, "arguments": arguments},
                }
            )
        return out
