"""`keep_alive`: a number of seconds or a Go duration string, parsed as Ollama does.

Ollama's `api.Duration.UnmarshalJSON`: a number is seconds (fractions allowed), a string
goes through Go's `time.ParseDuration` (so `"10"` without a unit is an error), and any
negative value means "keep loaded forever". Errors are Go's own text, which Ollama returns
as the 400 body.
"""

from __future__ import annotations

import math

from guardian_proxy.ollama.errors import OllamaError

KEEP_FOREVER = -1.0
"""What `parse_keep_alive` returns for a negative keep_alive: never unload (Ollama's convention)."""

_NS = 1
_US = 1_000
_MS = 1_000_000
_S = 1_000_000_000
_UNITS = {
    "ns": _NS,
    "us": _US,
    "µs": _US,  # U+00B5 micro sign
    "μs": _US,  # U+03BC Greek mu
    "ms": _MS,
    "s": _S,
    "m": 60 * _S,
    "h": 3600 * _S,
}
_LIMIT = 1 << 63


def _go_quote(s: str) -> str:
    """Go's time.quote: ASCII printable as is, `"` and `\\` escaped, the rest as \\xNN per byte."""
    out = ['"']
    for ch in s:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            if ch in '"\\':
                out.append("\\")
            out.append(ch)
    out.append('"')
    return "".join(out)


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration`, in integer nanoseconds; raises ValueError with Go's message."""
    orig = text
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    invalid = ValueError(f"time: invalid duration {_go_quote(orig)}")
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or _is_digit(s[0])):
            raise invalid
        i = 0
        while i < len(s) and _is_digit(s[i]):
            i += 1
        pre = i > 0
        whole = int(s[:i]) if pre else 0
        if whole >= _LIMIT:
            raise invalid
        s = s[i:]
        frac, scale, post = 0, 1, False
        if s and s[0] == ".":
            s = s[1:]
            i = 0
            while i < len(s) and _is_digit(s[i]):
                i += 1
            post = i > 0
            digits = s[:i][:18]  # Go stops accumulating once more digits cannot matter
            if digits:
                frac, scale = int(digits), 10 ** len(digits)
            s = s[i:]
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(s) and s[i] != "." and not _is_digit(s[i]):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {_go_quote(orig)}")
        unit_name, s = s[:i], s[i:]
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {_go_quote(unit_name)} in duration {_go_quote(orig)}")
        if whole > _LIMIT // unit:
            raise invalid
        value = whole * unit
        if frac:
            value += int(frac * (unit / scale))  # float, exactly like Go
            if value > _LIMIT:
                raise invalid
        total += value
        if total > _LIMIT:
            raise invalid
    if neg:
        return -total
    if total > _LIMIT - 1:
        raise invalid
    return total


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
        return KEEP_FOREVER if seconds < 0 or math.isinf(seconds) else seconds
    if isinstance(value, str):
        try:
            ns = parse_go_duration(value)
        except ValueError as e:
            raise OllamaError(400, str(e)) from None
        return KEEP_FOREVER if ns < 0 else ns / 1e9
    raise OllamaError(400, f"unsupported duration type: '{_go_type_name(value)}'")
