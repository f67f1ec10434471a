"""Durations as Ollama reads them: numbers are seconds, strings are Go durations ('5m', '1h30m').

`parse_go_duration` is Go's `time.ParseDuration` to the letter (the Ollama API returns its
error text), used by the supervisor for keep_alive settings and by the Ollama routes.
"""

from __future__ import annotations

import math

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


MAX_KEEP_ALIVE_S = 10 * 365 * 86400.0


def parse_keep_alive(value: object) -> float:
    """keep_alive in seconds: a number is seconds, a string a Go duration; negative = forever (-1)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"keep_alive must be a number of seconds or a duration like '5m', got {value!r}")
    if isinstance(value, str):
        seconds = parse_go_duration(value) / 1e9
    else:
        seconds = float(value)
        if math.isnan(seconds):
            raise ValueError("keep_alive must be a number of seconds, got NaN")
    # Past ten years means "forever": huge values (1e19, inf) would overflow timers and the
    # nanosecond timestamps /api/ps prints.
    return -1.0 if seconds < 0 or seconds > MAX_KEEP_ALIVE_S else seconds
