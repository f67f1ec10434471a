"""Durations as Ollama reads them: numbers are seconds, strings are Go durations ('5m', '1h30m')."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string into seconds ('0' alone is allowed, as in Go)."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body):
        if re.fullmatch(r"\d+(\.\d+)?", body):
            raise ValueError(f'time: missing unit in duration "{text}"')
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def parse_keep_alive(value: object) -> float:
    """keep_alive in seconds: a number is seconds, a string a Go duration; negative = forever (-1)."""
    if isinstance(value, bool):
        raise ValueError(f"keep_alive must be a number of seconds or a duration like '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        raise ValueError(f"keep_alive must be a number of seconds or a duration like '5m', got {value!r}")
    return -1.0 if seconds < 0 else seconds
