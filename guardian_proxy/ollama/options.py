"""Ollama `options` → llama-server request parameters, plus the load-time ones split out.

Typing follows Ollama's `Options.FromMap`: numbers arrive as JSON numbers (ints are fine for
float options, floats are truncated for int options, as Go does), booleans are never
numbers, `null` means "not set", unknown keys are ignored (returned so the caller can log
them). Two liberties: `stop` may be a single string, and the mirostat trio is forwarded
because llama-server implements it (current Ollama dropped those keys).

Root-level option keys (Open WebUI sends e.g. `num_predict` beside `options`) are ignored,
as Ollama ignores unknown root keys; `stray_root_options` lists them for a debug log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guardian_proxy.ollama.errors import OllamaError

_INT = "integer"
_FLOAT = "float32"
_BOOL = "boolean"
_STOP = "array"

# Ollama option → (type, llama-server parameter). Names llama-server shares on /completion,
# /infill and /v1/chat/completions.
RUNTIME_OPTIONS: dict[str, tuple[str, str]] = {
    "num_predict": (_INT, "n_predict"),
    "num_keep": (_INT, "n_keep"),
    "seed": (_INT, "seed"),
    "temperature": (_FLOAT, "temperature"),
    "top_k": (_INT, "top_k"),
    "top_p": (_FLOAT, "top_p"),
    "min_p": (_FLOAT, "min_p"),
    "typical_p": (_FLOAT, "typical_p"),
    "repeat_last_n": (_INT, "repeat_last_n"),
    "repeat_penalty": (_FLOAT, "repeat_penalty"),
    "presence_penalty": (_FLOAT, "presence_penalty"),
    "frequency_penalty": (_FLOAT, "frequency_penalty"),
    "mirostat": (_INT, "mirostat"),
    "mirostat_tau": (_FLOAT, "mirostat_tau"),
    "mirostat_eta": (_FLOAT, "mirostat_eta"),
    "stop": (_STOP, "stop"),
}

# Options that only take effect when the model is (re)loaded; Ollama reloads the runner
# when they change. The caller hands them to the supervisor.
LOAD_OPTIONS: dict[str, str] = {
    "num_ctx": _INT,
    "num_batch": _INT,
    "num_gpu": _INT,
    "main_gpu": _INT,
    "use_mmap": _BOOL,
    "num_thread": _INT,
}

KNOWN_OPTIONS = frozenset(RUNTIME_OPTIONS) | frozenset(LOAD_OPTIONS)

OLLAMA_DEFAULT_OPTIONS: Mapping[str, Any] = {
    "num_predict": -1,
    "num_keep": 4,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
}
"""Ollama's per-request defaults (api.DefaultOptions); pass as `defaults=` for exact parity.
Left out by default so llama-server's own (or the optimizer's) defaults apply."""


@dataclass(frozen=True)
class MappedOptions:
    params: dict[str, Any] = field(default_factory=dict)
    """llama-server request parameters (n_predict, temperature, stop, …)."""
    load: dict[str, Any] = field(default_factory=dict)
    """Load-time options present (num_ctx, num_batch, num_gpu, main_gpu, use_mmap, num_thread)."""
    ignored: dict[str, Any] = field(default_factory=dict)
    """Unknown keys and their values, for a debug log."""


def _convert(key: str, kind: str, value: object) -> Any:
    if kind in (_INT, _FLOAT):
        # bool is an int in Python but never a number in JSON; NaN/Infinity are not numbers either.
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise OllamaError(400, f'option "{key}" must be of type {kind}')
        if kind == _INT:
            return int(value)  # Go truncates floats for int options the same way
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            raise OllamaError(400, f'option "{key}" must be of type {kind}') from None
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise OllamaError(400, f'option "{key}" must be of type boolean')
        return value
    # stop: a list of strings; a bare string is accepted as a one-element list.
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise OllamaError(400, f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in value):
        raise OllamaError(400, f'option "{key}" must be of an array of strings')
    return list(value)


def map_options(
    options: object,
    *,
    defaults: Mapping[str, Any] | None = None,
    n_ctx: int | None = None,
) -> MappedOptions:
    """Validate Ollama `options` and translate them.

    `defaults` (e.g. a model's configured parameters, or OLLAMA_DEFAULT_OPTIONS) apply to
    keys the request leaves unset or null, as Ollama layers model options under request
    options. `n_ctx`, when known, lets open-ended `num_predict` be bounded to 10×n_ctx (as
    Ollama's bridge does) and `repeat_last_n: -1` ("the whole context") be expressed;
    without it `repeat_last_n: -1` is dropped because llama-server rejects negatives.
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise OllamaError(400, "options must be a JSON object")
    merged: dict[str, Any] = dict(defaults) if defaults else {}
    for key, value in options.items():
        if value is not None:
            merged[key] = value

    params: dict[str, Any] = {}
    load: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in merged.items():
        runtime = RUNTIME_OPTIONS.get(key)
        if runtime is not None:
            params[runtime[1]] = _convert(key, runtime[0], value)
        elif key in LOAD_OPTIONS:
            load[key] = _convert(key, LOAD_OPTIONS[key], value)
        else:
            ignored[key] = value

    _fix_for_llama_server(params, n_ctx)
    return MappedOptions(params=params, load=load, ignored=ignored)


def _fix_for_llama_server(params: dict[str, Any], n_ctx: int | None) -> None:
    """Values Ollama accepts but llama-server rejects or reads differently."""
    n_predict = params.get("n_predict")
    if n_predict is not None:
        if n_predict < -1:
            n_predict = -1  # Ollama's -2 ("fill the context"); llama-server allows -1 at least
        if n_ctx and n_ctx > 0 and (n_predict < 0 or n_predict > 10 * n_ctx):
            n_predict = 10 * n_ctx
        params["n_predict"] = n_predict
    last_n = params.get("repeat_last_n")
    if last_n is not None and last_n < 0:
        if n_ctx and n_ctx > 0:
            params["repeat_last_n"] = n_ctx
        else:
            del params["repeat_last_n"]
    if "stop" in params and not params["stop"]:
        del params["stop"]


def stray_root_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Option keys a client put at the request's root instead of in `options` (ignored, like Ollama)."""
    return {k: v for k, v in body.items() if k in KNOWN_OPTIONS}
