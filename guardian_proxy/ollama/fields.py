"""Request fields shared by /api/chat and /api/generate: stream, think, format, logprobs.

Each validates like Ollama's Go structs (a wrong JSON type is a 400) and translates to what
llama-server reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from guardian_proxy.ollama.errors import OllamaError, type_error

THINK_LEVELS = ("low", "medium", "high", "max")


def get_str(body: Mapping[str, Any], key: str, struct: str) -> str:
    """A string field; absent or null is "" (Go's zero value)."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise type_error(struct, key, value, "string")
    return value


def get_bool(body: Mapping[str, Any], key: str, struct: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise type_error(struct, key, value, "bool")
    return value


def parse_stream(body: Mapping[str, Any], struct: str) -> bool:
    """`stream` defaults to true on chat and generate."""
    return get_bool(body, "stream", struct, True)


def parse_think(value: object) -> bool | str | None:
    """`think`: a bool, one of low|medium|high|max, or absent (None: the model's default)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in THINK_LEVELS:
            return value
        raise OllamaError(
            400, f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)'
        )
    raise OllamaError(400, "think must be a boolean or string")


def think_enabled(think: bool | str | None) -> bool:
    """Whether the request asks for thinking (for the "does not support thinking" check)."""
    return bool(think)


def think_template_kwargs(think: bool | str | None) -> dict[str, Any] | None:
    """chat_template_kwargs as Ollama's llama-server bridge sends them; None when unset."""
    if think is None:
        return None
    if isinstance(think, str):
        return {"enable_thinking": True, "reasoning_effort": think}
    return {"enable_thinking": think}


# Thinking budgets (tokens) per level for `thinking_budget_tokens`, which both forks read per
# request (it takes effect when llama-server runs without --reasoning-budget, Guardian's default).
# "max" sets none: unlimited. Templates that know an effort scale get `reasoning_effort` as well.
THINK_BUDGETS: dict[str, int] = {"low": 1024, "medium": 4096, "high": 16384}


def think_params(think: bool | str | None) -> dict[str, Any]:
    """The llama-server request fields for `think` (empty when unset: the model's default).

    Both forks: `chat_template_kwargs.enable_thinking` (the template switch, exactly what
    Ollama's bridge sends) and `thinking_budget_tokens` (0 ends a thinking block at once, so
    "off" holds even for a template that ignores enable_thinking). Upstream also reads a
    top-level `reasoning_effort` for templates with an effort scale (gpt-oss: low|medium|high,
    so "max" is sent as "high" there); ik ignores it.
    """
    kwargs = think_template_kwargs(think)
    if kwargs is None:
        return {}
    out: dict[str, Any] = {"chat_template_kwargs": kwargs}
    if think is False:
        out["thinking_budget_tokens"] = 0
    elif isinstance(think, str):
        out["reasoning_effort"] = "high" if think == "max" else think
        if think in THINK_BUDGETS:
            out["thinking_budget_tokens"] = THINK_BUDGETS[think]
    return out


# OpenAI's effort scale → Ollama's think (as Ollama's openai layer clamps it): the ends of
# OpenAI's scale and clients' own tiers map to the nearest level instead of a 400.
_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_from_effort(effort: object) -> bool | str | None:
    """`reasoning_effort` / `reasoning.effort` → a think value; None for absent or "".

    Raises ValueError naming the accepted values for anything else.
    """
    if effort is None or effort == "":
        return None
    if isinstance(effort, str) and effort in _EFFORT_TO_THINK:
        return _EFFORT_TO_THINK[effort]
    raise ValueError(
        f"invalid reasoning effort {json.dumps(effort)}: use one of "
        + ", ".join(f'"{e}"' for e in _EFFORT_TO_THINK)
    )


def parse_flag(body: Mapping[str, Any], key: str, struct: str) -> bool | None:
    """An optional boolean (`truncate`, `shift`): None when absent or null, 400 for another type."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise type_error(struct, key, value, "bool")
    return value


def _invalid_format(value: object) -> OllamaError:
    raw = json.dumps(value, ensure_ascii=False)
    return OllamaError(
        400,
        f'invalid format: {json.dumps(raw, ensure_ascii=False)}; expected "json" or a valid JSON Schema object',
    )


def parse_format(value: object) -> str | dict[str, Any] | None:
    """`format`: "json", a JSON schema object, or nothing (null or "")."""
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    raise _invalid_format(value)


def chat_response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """`response_format` for /v1/chat/completions."""
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}


def native_format_params(fmt: str | dict[str, Any] | None) -> dict[str, Any]:
    """Grammar parameters for /completion, which ignores `response_format`.

    "json" becomes the schema of any JSON object, which is what Ollama's JSON grammar allows.
    """
    if fmt is None:
        return {}
    if fmt == "json":
        return {"json_schema": {"type": "object"}}
    return {"json_schema": fmt}


def parse_logprobs(body: Mapping[str, Any], struct: str) -> tuple[bool, int]:
    """(`logprobs`, `top_logprobs`) with Ollama's 0..20 bound."""
    logprobs = get_bool(body, "logprobs", struct, False)
    top = body.get("top_logprobs")
    if top is None:
        top = 0
    if isinstance(top, bool) or not isinstance(top, int):
        raise type_error(struct, "top_logprobs", top, "int")
    if top < 0 or top > 20:
        raise OllamaError(400, "top_logprobs must be between 0 and 20")
    return logprobs, top


def logprob_params(logprobs: bool, top: int, *, native: bool) -> dict[str, Any]:
    """llama-server parameters that make it return token log-probabilities."""
    if not logprobs:
        return {}
    if native:
        return {"n_probs": max(top, 1)}
    return {"logprobs": True, "top_logprobs": max(top, 1)}
