"""Run the daemons' event loop: uvloop when it is installed (less overhead per streamed
chunk, measured in bench/proxy_overhead.py), the standard asyncio loop otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]


def run(main: Coroutine[Any, Any, None]) -> None:
    if uvloop is not None:
        uvloop.run(main)
    else:
        asyncio.run(main)
