"""A Responses API request body → the /v1/chat/completions body llama-server runs.

Stateless: every turn arrives whole in `input` (Codex sends `store: false`), so a
`previous_response_id` cannot be honoured and is refused with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Hosted tools OpenAI runs on its side; nothing local can run them, so they are dropped.
HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "image_generation",
        "file_search",
        "code_interpreter",
        "computer_use_preview",
        "mcp",
        "tool_search",
        "local_shell",
        "custom",
    }
)
# Input items that carry nothing a chat template can show (encrypted reasoning, hosted tool runs).
SKIPPED_ITEMS = frozenset(
    {
        "reasoning",
        "web_search_call",
        "image_generation_call",
        "file_search_call",
        "code_interpreter_call",
        "computer_call",
        "computer_call_output",
        "local_shell_call",
        "local_shell_call_output",
        "mcp_list_tools",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "item_reference",
    }
)
ROLE_MAP = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class ResponsesError(Exception):
    """A request the Responses API refuses: 400 with the field that is wrong."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass
class ResponsesPlan:
    model: str
    stream: bool
    body: dict[str, Any]
    """The /v1/chat/completions body for llama-server."""
    echo: dict[str, Any]
    """Request fields a Response object repeats (instructions, tools, temperature, ...)."""
    dropped: list[str] = field(default_factory=list)
    """What could not run locally and was left out (hosted tools, skipped input items)."""
    namespaces: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Qualified function name → (namespace, tool name), to answer calls as the client named them."""


def qualified(namespace: str, name: str) -> str:
    """A namespace's tool as one flat function name (Codex's MCP namespaces end in '__')."""
    return f"{namespace}{name}" if namespace.endswith(("_", ".", "/")) else f"{namespace}__{name}"


def _function_tool(tool: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    params = tool.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ResponsesError(f"'{where}.parameters' must be a JSON schema object", where)
    desc = tool.get("description")
    # llama-server requires 'description' ("key 'description' not found"); Codex may omit it.
    fn: dict[str, Any] = {
        "name": name,
        "description": desc if isinstance(desc, str) else "",
        "parameters": params or {"type": "object", "properties": {}},
    }
    return {"type": "function", "function": fn}


def convert_tools(
    tools: Any, dropped: list[str], namespaces: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """Responses tools → chat `tools`: functions stay, namespaces expand into qualified
    functions, hosted tools are dropped (and named in `dropped`)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ResponsesError("'tools' must be a list", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ResponsesError(f"'{where}' must be an object with a 'type'", where)
        kind = tool.get("type")
        if kind == "function":
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise ResponsesError(f"'{where}.name' is required for a function tool", where)
            out.append(_function_tool(tool, name, where))
        elif kind == "namespace":
            ns = tool.get("name")
            inner = tool.get("tools")
            if not isinstance(ns, str) or not ns or not isinstance(inner, list):
                raise ResponsesError(f"'{where}' (a namespace) needs a 'name' and a list of 'tools'", where)
            for j, sub in enumerate(inner):
                sub_where = f"{where}.tools[{j}]"
                if not isinstance(sub, dict) or sub.get("type", "function") != "function":
                    dropped.append(f"{sub_where} (not a function)")
                    continue
                name = sub.get("name")
                if not isinstance(name, str) or not name:
                    raise ResponsesError(f"'{sub_where}.name' is required", sub_where)
                flat = qualified(ns, name)
                namespaces[flat] = (ns, name)
                out.append(_function_tool(sub, flat, sub_where))
        else:
            dropped.append(f"{where} type {kind!r}" + ("" if kind in HOSTED_TOOLS else " (unknown)"))
    return out


def _text_of(content: Any, where: str) -> str:
    """Text parts joined: what system, developer and assistant turns become."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ResponsesError(f"'{where}.content' must be a string or a list of content parts", where)
    texts = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
    return "".join(texts)


def _user_content(content: Any, where: str, dropped: list[str]) -> str | list[dict[str, Any]]:
    """User content: text stays a string; images become chat `image_url` parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ResponsesError(f"'{where}.content' must be a string or a list of content parts", where)
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        if not isinstance(part, dict):
            raise ResponsesError(f"'{where}.content[{k}]' must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise ResponsesError(
                    f"'{where}.content[{k}]': only images given as 'image_url' (a data: or http URL) "
                    "can be sent; uploaded file ids do not exist here",
                    where,
                )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            dropped.append(f"{where}.content[{k}] type {kind!r}")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p.get("text", "") for p in output if isinstance(p, dict))
    return json.dumps(output)


def convert_input(
    value: Any, dropped: list[str], namespaces: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """`input` (a string or items) → chat messages, in the client's order.

    Function calls join the assistant turn before them, as chat templates expect one
    assistant message with its `tool_calls`; each output becomes a `tool` message.
    """
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResponsesError("'input' must be a string or a list of items", "input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ResponsesError(f"'{where}' must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = ROLE_MAP.get(item.get("role", ""))
            if role is None:
                raise ResponsesError(
                    f"'{where}.role' must be one of user, assistant, system, developer", "input"
                )
            content: Any = (
                _user_content(item.get("content"), where, dropped)
                if role == "user"
                else _text_of(item.get("content"), where)
            )
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise ResponsesError(f"'{where}' (a function_call) needs 'name' and 'call_id'", "input")
            ns = item.get("namespace")
            if isinstance(ns, str) and ns:
                name = qualified(ns, name)
            args = item.get("arguments", "")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise ResponsesError(f"'{where}' (a function_call_output) needs 'call_id'", "input")
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": _output_text(item.get("output"))}
            )
        elif kind in SKIPPED_ITEMS:
            dropped.append(f"{where} type {kind!r}")
        else:
            raise ResponsesError(
                f"'{where}.type' {kind!r} is not an input item this server understands", "input"
            )
    return messages


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise ResponsesError("'text' must be an object like {'format': {...}}", "text")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict):
        raise ResponsesError("'text.format' must be an object with a 'type'", "text.format")
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise ResponsesError("'text.format.schema' must be a JSON schema object", "text.format.schema")
        js: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": schema}
        if "strict" in fmt:
            js["strict"] = bool(fmt["strict"])
        return {"type": "json_schema", "json_schema": js}
    raise ResponsesError("'text.format.type' must be text, json_object or json_schema", "text.format.type")


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return "auto"  # allowed_tools / hosted-tool choices: the model chooses among what is left


def _number(body: dict[str, Any], key: str, *, integer: bool = False) -> Any:
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if not ok or isinstance(v, bool):
        raise ResponsesError(f"'{key}' must be {'an integer' if integer else 'a number'}", key)
    return v


def build_chat_request(body: dict[str, Any]) -> ResponsesPlan:
    """Validate a Responses body and plan the chat completions request for it."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ResponsesError("'model' is required: name one of the models listed at /v1/models", "model")
    if body.get("previous_response_id"):
        raise ResponsesError(
            "this server keeps no responses (it is stateless): send the whole conversation in "
            "'input' and leave out 'previous_response_id' (Codex does this with store: false)",
            "previous_response_id",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ResponsesError("'stream' must be a boolean", "stream")
    dropped: list[str] = []
    namespaces: dict[str, tuple[str, str]] = {}
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ResponsesError("'instructions' must be a string", "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += convert_input(body.get("input"), dropped, namespaces)
    if not any(m["role"] != "system" for m in messages):
        # An empty probe (no input, or instructions alone): chat templates need a user turn.
        messages.append({"role": "user", "content": ""})
    chat: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}
    tools = convert_tools(body.get("tools"), dropped, namespaces)
    if tools:
        chat["tools"] = tools
        if (choice := _tool_choice(body.get("tool_choice"))) is not None:
            chat["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if (n := _number(body, "max_output_tokens", integer=True)) is not None:
        if n < 1:
            raise ResponsesError("'max_output_tokens' must be at least 1", "max_output_tokens")
        chat["max_tokens"] = n
    for key in ("temperature", "top_p"):
        if (v := _number(body, key)) is not None:
            chat[key] = v
    if (rf := _response_format(body.get("text"))) is not None:
        chat["response_format"] = rf
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    echo = {
        "instructions": instructions,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "reasoning": reasoning if isinstance(reasoning, dict) else {"effort": None, "summary": None},
        "metadata": body.get("metadata") or {},
        "store": False,
    }
    return ResponsesPlan(model, stream, chat, echo, dropped, namespaces)
