"""Cheap type checks on OpenAI request bodies, so bad input is a 400 that names the field
instead of llama-server's 500. Unknown fields pass through untouched."""

from __future__ import annotations

from typing import Any

ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_SCALARS: dict[str, tuple[str, Any]] = {
    "stream": ("a boolean", lambda v: isinstance(v, bool)),
    "max_tokens": ("an integer", _is_int),
    "max_completion_tokens": ("an integer", _is_int),
    "n_predict": ("an integer", _is_int),
    "n": ("an integer", _is_int),
    "seed": ("an integer", _is_int),
    "top_k": ("an integer", _is_int),
    "temperature": ("a number", _is_num),
    "top_p": ("a number", _is_num),
    "min_p": ("a number", _is_num),
    "presence_penalty": ("a number", _is_num),
    "frequency_penalty": ("a number", _is_num),
    "stop": (
        "a string or a list of strings",
        lambda v: (
            v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
        ),
    ),
    "tools": ("a list", lambda v: v is None or isinstance(v, list)),
    "stream_options": ("an object", lambda v: v is None or isinstance(v, dict)),
    "response_format": ("an object", lambda v: v is None or isinstance(v, dict)),
}


def _scalars(body: dict[str, Any]) -> str | None:
    for key, (what, ok) in _SCALARS.items():
        if key in body and not ok(body[key]):
            return f"'{key}' must be {what}, got {type(body[key]).__name__}"
    tools = body.get("tools") or []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("function", {}), dict):
            return f"'tools[{i}]' must be an object like {{'type': 'function', 'function': {{...}}}}"
    return None


def _content_ok(content: Any) -> bool:
    if content is None or isinstance(content, str):
        return True
    return isinstance(content, list) and all(isinstance(part, dict) for part in content)


def check_chat(body: dict[str, Any]) -> str | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"'messages[{i}]' must be an object with 'role' and 'content'"
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            return f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}"
        if not _content_ok(m.get("content")):
            return f"'messages[{i}].content' must be a string or a list of content parts"
        if "tool_calls" in m and not (m["tool_calls"] is None or isinstance(m["tool_calls"], list)):
            return f"'messages[{i}].tool_calls' must be a list"
        if m.get("content") is None and not m.get("tool_calls"):
            return f"'messages[{i}]' needs 'content' or 'tool_calls'"
    return _scalars(body)


def check_completion(body: dict[str, Any]) -> str | None:
    prompt = body.get("prompt")
    if not (
        isinstance(prompt, str)
        or (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(p, str | int) and not isinstance(p, bool) for p in prompt)
        )
    ):
        return "'prompt' must be a string or a non-empty list of strings or token ids"
    return _scalars(body)


def check_embeddings(body: dict[str, Any]) -> str | None:
    data = body.get("input")
    if not (
        isinstance(data, str)
        or (
            isinstance(data, list)
            and data
            and all(isinstance(p, str | int) and not isinstance(p, bool) for p in data)
        )
    ):
        return "'input' must be a string or a non-empty list of strings"
    return None
