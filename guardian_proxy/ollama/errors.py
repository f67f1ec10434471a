"""Errors exactly as Ollama words them, so clients that match on text keep working.

`OllamaError` carries the HTTP status and the message; the HTTP layer writes it as
`{"error": message}` before the first byte, or as a final NDJSON line mid-stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class OllamaError(Exception):
    """An answer the client should get: `status` before streaming starts, `message` always."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message}

    def __repr__(self) -> str:
        return f"OllamaError({self.status}, {self.message!r})"


def json_kind(value: object) -> str:
    """The JSON kind of a decoded value, as Go's encoding/json names it in errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


def type_error(struct: str, field: str, value: object, go_type: str) -> OllamaError:
    """400 worded like Go's json.Unmarshal, which is what Ollama answers for a mistyped field."""
    kind = json_kind(value)
    if kind == "number":
        kind = (
            f"number {json.dumps(value)}"
            if go_type in ("int", "[]int") and isinstance(value, float)
            else kind
        )
    return OllamaError(
        400, f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} of type {go_type}"
    )


def model_required() -> OllamaError:
    return OllamaError(400, "model is required")


def model_not_found(name: str) -> OllamaError:
    return OllamaError(404, f"model '{name}' not found")


# Ollama words each missing capability differently (routes.go): some quote the requested
# name with %q, others print the resolved name bare.
_QUOTED_CAPABILITIES = {"chat", "generate", "thinking"}


def unsupported_capability(model: str, capability: str) -> OllamaError:
    """400 for a model that lacks `capability` (chat, generate, thinking, tools, insert, vision…)."""
    if capability in _QUOTED_CAPABILITIES:
        return OllamaError(400, f"{json.dumps(model)} does not support {capability}")
    return OllamaError(400, f"{model} does not support {capability}")


def require_model(body: Mapping[str, Any], endpoint: str) -> str:
    """The `model` of a request, or the error Ollama gives for that endpoint when it is missing.

    chat, embeddings (legacy), show, pull, push → 400 `model is required`;
    generate, embed → 404 `model '' not found` (they go through the name parser first).
    `show`, `pull`, `push` and `delete` also accept the deprecated `name`.
    """
    model = body.get("model")
    if model is None and endpoint in ("show", "pull", "push", "delete"):
        model = body.get("name")
    if model is not None and not isinstance(model, str):
        raise type_error(_STRUCTS.get(endpoint, "Request"), "model", model, "string")
    if not model:
        if endpoint in ("generate", "embed"):
            raise model_not_found("")
        raise model_required()
    return model


_STRUCTS = {
    "chat": "ChatRequest",
    "generate": "GenerateRequest",
    "embed": "EmbedRequest",
    "embeddings": "EmbeddingRequest",
    "show": "ShowRequest",
}


def upstream_error(status: int, payload: object) -> OllamaError:
    """llama-server's error (`{"error":{"code","message","type"}}`, a string, or raw text) as an Ollama error.

    Used both for a non-2xx answer (pass its status) and for an `{"error": …}` SSE event
    mid-stream (pass 500; the event's own code wins when present).
    """
    message: str | None = None
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8", "replace")
    if isinstance(payload, str):
        text = payload.strip()
        try:
            payload = json.loads(text)
        except ValueError:
            message = text
    if isinstance(payload, Mapping):
        err = payload.get("error", payload)
        if isinstance(err, Mapping):
            code = err.get("code")
            if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
                status = code
            msg = err.get("message")
            message = msg if isinstance(msg, str) else json.dumps(err)
        elif isinstance(err, str):
            message = err
    if not message:
        message = f"llama-server answered with status {status}"
    if not 400 <= status <= 599:
        status = 500
    return OllamaError(status, message)
