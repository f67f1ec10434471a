"""`keep_alive`: a number of seconds or a Go duration string, parsed as Ollama does.

Ollama's `api.Duration.UnmarshalJSON`: a number is seconds (fractions allowed), a string
goes through Go's `time.ParseDuration` (so `"10"` without a unit is an error), and any
negative value means "keep loaded forever". Errors are Go's own text, which Ollama returns
as the 400 body.
"""

from __future__ import annotations

import math

from guardian_proxy.ollama.errors import OllamaError
from shared.durations import MAX_KEEP_ALIVE_S, parse_go_duration

KEEP_FOREVER = -1.0
"""What `parse_keep_alive` returns for a negative keep_alive: never unload (Ollama's convention)."""


def _go_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return type(value).__name__


def parse_keep_alive(value: object) -> float | None:
    """Seconds to keep the model loaded after this request.

    Returns None when the client did not say (absent or JSON null: the caller applies its
    default, Ollama's is 5m), `KEEP_FOREVER` (-1.0) for any negative value, else seconds >= 0
    (0 means unload now). Raises OllamaError(400) with Go's message for anything else.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        if math.isnan(seconds):
            raise OllamaError(400, "unsupported duration type: 'float64'")
        return KEEP_FOREVER if seconds < 0 or seconds > MAX_KEEP_ALIVE_S else seconds
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except ValueError as e:
            raise OllamaError(400, str(e)) from None
        return KEEP_FOREVER if ns < 0 or ns / 1e9 > MAX_KEEP_ALIVE_S else ns / 1e9
    raise OllamaError(400, f"unsupported duration type: '{_go_type_name(value)}'")
