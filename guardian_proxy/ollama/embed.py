"""/api/embed and legacy /api/embeddings ⇄ llama-server /v1/embeddings.

Ollama L2-normalises every vector, then (with `dimensions`) truncates and normalises again;
the legacy endpoint returns the vector as the runner gives it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardian_proxy.ollama.durations import parse_keep_alive
from guardian_proxy.ollama.errors import OllamaError, require_model, type_error
from guardian_proxy.ollama.fields import get_bool, get_str
from guardian_proxy.ollama.options import map_options

EMBED_ENDPOINT = "/v1/embeddings"


@dataclass
class EmbedPlan:
    model: str
    inputs: list[str]
    """Empty: no upstream call is needed, answer `embed_response(None, …)` (after loading)."""
    keep_alive: float | None
    dimensions: int = 0
    truncate: bool = True
    """Ollama truncates over-long input by default; llama-server errors instead, so with
    truncate true the caller may shorten and retry (truncate false: 400
    `the input length exceeds the context length`)."""
    body: dict[str, Any] = field(default_factory=dict)
    load_options: dict[str, Any] = field(default_factory=dict)
    ignored_options: dict[str, Any] = field(default_factory=dict)


def build_embed_request(body: Mapping[str, Any], *, n_ctx: int | None = None) -> EmbedPlan:
    """Validate an /api/embed body: `input` is a string or a list of strings."""
    if not isinstance(body, Mapping):
        raise OllamaError(400, "request body must be a JSON object")
    model = require_model(body, "embed")
    value = body.get("input")
    inputs: list[str]
    if value is None:
        inputs = []
    elif isinstance(value, str):
        inputs = [value] if value else []
    elif isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise OllamaError(400, "invalid input type")
        inputs = list(value)
    else:
        raise OllamaError(400, "invalid input type")
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = 0
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise type_error("EmbedRequest", "dimensions", dimensions, "int")
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    truncate = get_bool(body, "truncate", "EmbedRequest", True)
    mapped = map_options(body.get("options"), n_ctx=n_ctx)
    upstream: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"} if inputs else {}
    return EmbedPlan(
        model=model,
        inputs=inputs,
        keep_alive=keep_alive,
        dimensions=dimensions,
        truncate=truncate,
        body=upstream,
        load_options=mapped.load,
        ignored_options=mapped.ignored,
    )


def l2_normalize(vector: list[float]) -> list[float]:
    """Unit length (a zero vector stays zero); NaN or Inf is an error, as in Ollama."""
    total = 0.0
    for v in vector:
        total += v * v
    if not math.isfinite(total):
        raise OllamaError(400, "embedding contains NaN or Inf values")
    scale = 1.0 / max(math.sqrt(total), 1e-12)
    return [v * scale for v in vector]


def _vectors(response: Mapping[str, Any]) -> list[list[float]]:
    data = response.get("data")
    if not isinstance(data, list):
        raise OllamaError(500, "llama-server returned no embeddings")
    items = sorted((d for d in data if isinstance(d, Mapping)), key=lambda d: d.get("index", 0))
    vectors: list[list[float]] = []
    for item in items:
        vec = item.get("embedding")
        if isinstance(vec, list) and vec and isinstance(vec[0], list):
            vec = vec[0]  # pooling none returns one vector per token; Ollama needs pooled ones
        if not isinstance(vec, list):
            raise OllamaError(500, "llama-server returned a malformed embedding")
        vectors.append(vec)
    return vectors


def embed_response(
    response: Mapping[str, Any] | None,
    *,
    model: str,
    dimensions: int = 0,
    total_duration: float = 0,
    load_duration: float = 0,
) -> dict[str, Any]:
    """llama-server's /v1/embeddings answer (or None for empty input) → the /api/embed object."""
    out: dict[str, Any] = {"model": model, "embeddings": []}
    if response is None:
        return out
    embeddings = []
    for vec in _vectors(response):
        unit = l2_normalize(vec)
        if 0 < dimensions < len(unit):
            unit = l2_normalize(unit[:dimensions])
        embeddings.append(unit)
    out["embeddings"] = embeddings
    usage = response.get("usage")
    prompt_tokens = usage.get("prompt_tokens", 0) if isinstance(usage, Mapping) else 0
    for key, value in (
        ("total_duration", int(total_duration)),
        ("load_duration", int(load_duration)),
        ("prompt_eval_count", int(prompt_tokens or 0)),
    ):
        if value > 0:
            out[key] = value
    return out


@dataclass
class LegacyEmbedPlan:
    model: str
    prompt: str
    """Empty: answer `{"embedding": []}` without an upstream call (it still loads the model)."""
    keep_alive: float | None
    body: dict[str, Any] = field(default_factory=dict)
    load_options: dict[str, Any] = field(default_factory=dict)
    ignored_options: dict[str, Any] = field(default_factory=dict)


def build_legacy_embeddings_request(body: Mapping[str, Any], *, n_ctx: int | None = None) -> LegacyEmbedPlan:
    """Validate a legacy /api/embeddings body (`prompt`: one string)."""
    if not isinstance(body, Mapping):
        raise OllamaError(400, "request body must be a JSON object")
    model = require_model(body, "embeddings")
    prompt = get_str(body, "prompt", "EmbeddingRequest")
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    mapped = map_options(body.get("options"), n_ctx=n_ctx)
    upstream: dict[str, Any] = (
        {"model": model, "input": [prompt], "encoding_format": "float"} if prompt else {}
    )
    return LegacyEmbedPlan(
        model=model,
        prompt=prompt,
        keep_alive=keep_alive,
        body=upstream,
        load_options=mapped.load,
        ignored_options=mapped.ignored,
    )


def legacy_embeddings_response(response: Mapping[str, Any] | None) -> dict[str, Any]:
    """llama-server's answer (or None for an empty prompt) → `{"embedding": [...]}`."""
    if response is None:
        return {"embedding": []}
    vectors = _vectors(response)
    vec = [float(v) for v in vectors[0]] if vectors else []
    if not all(math.isfinite(v) for v in vec):
        raise OllamaError(500, "embedding contains NaN or Inf values")
    return {"embedding": vec}
