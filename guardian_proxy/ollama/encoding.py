"""Bytes on the wire: compact JSON, NDJSON lines, and Go's RFC3339Nano timestamps.

The Go client decodes every line as one JSON object in both modes, so a line is always
compact JSON plus `\n`, never pretty-printed, never an SSE `data:` prefix.
"""

from __future__ import annotations

import json
import time
from typing import Any

# Non-ASCII stays UTF-8 (as Go writes it); NaN/Infinity are not JSON and must never go out.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_COMPACT_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def json_bytes(obj: Any) -> bytes:
    """One compact JSON document (the non-streaming body)."""
    text = _COMPACT.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a `\ud83d` escape upstream) cannot be UTF-8; escaped it is valid JSON.
        return _COMPACT_ASCII.encode(obj).encode("ascii")


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON line: compact JSON terminated by `\n`."""
    return json_bytes(obj) + b"\n"


def error_object(message: str) -> dict[str, str]:
    return {"error": message}


def error_line(message: str) -> bytes:
    """The last line of a stream that failed after the status was sent (status stays 200)."""
    return ndjson_line({"error": message})


# created_at is stamped on every token, so the date part is formatted once per second only.
_stamp_cache: tuple[int, str] = (-1, "")


def format_rfc3339_nano(ns: int) -> str:
    """Unix time in nanoseconds as Go's time.RFC3339Nano in UTC (fraction without trailing zeros)."""
    global _stamp_cache
    sec, frac = divmod(ns, 1_000_000_000)
    cached_sec, prefix = _stamp_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _stamp_cache = (sec, prefix)  # one tuple assignment: safe without a lock
    if frac == 0:
        return prefix + "Z"
    return f"{prefix}.{frac:09d}".rstrip("0") + "Z"


def now_rfc3339() -> str:
    """The current time for `created_at`."""
    return format_rfc3339_nano(time.time_ns())
