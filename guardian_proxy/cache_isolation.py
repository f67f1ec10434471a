"""auth.isolate_cache: no prompt-cache reuse across requests made with API keys.

llama-server reuses the longest cached prefix in a slot whoever sent it, and says how much
(`cached_tokens`, `timings.cache_n`, and the time to first token): one key can recover
another's prompt a token at a time. With isolate_cache on, keyed requests go out with
`cache_prompt: false`, so nothing is reused and nothing leaks. The cost: every request
processes its whole prompt (no prefix reuse within one key's conversation either).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from guardian_proxy.auth import get_api_key
from guardian_proxy.context import ctx_of


def isolating(request: web.Request) -> bool:
    return ctx_of(request).config.settings.auth.isolate_cache and get_api_key(request) is not None


def without_reuse(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "cache_prompt": False}
