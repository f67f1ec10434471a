"""Effect: measure one running llama-server with its own timings (aiohttp).

The prompt is built from token ids (text tokenized by the server itself, repeated to length),
so it has exactly the number of tokens asked for whatever the tokenizer. Each repetition is a
POST /completion with cache_prompt false (the whole prompt is processed every time) and
ignore_eos (exactly n_predict tokens are generated). Both forks report `timings` with
prompt_n, prompt_ms, prompt_per_second, predicted_n, predicted_per_second.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import aiohttp

from guardian_supervisor.models.launcher import llama_session

FILLER = (
    "Guardian measures every model on its own hardware while nobody is using it. "
    "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. "
)


class MeasureError(Exception):
    """llama-server answered, but not with usable timings."""


class Measurer(Protocol):
    async def prompt(self, url: str, n_tokens: int, timeout_s: float) -> list[int]: ...

    async def complete(
        self, url: str, prompt: list[int], gen_tokens: int, timeout_s: float
    ) -> dict[str, Any]:
        """One completion; llama-server's `timings` object plus the `id_slot` that served it."""
        ...

    async def forget(self, url: str, slots: set[int], timeout_s: float) -> None:
        """Erase these slots (best effort): benchmark prompts are no conversation to keep."""
        ...


class HttpMeasurer:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = llama_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        async with self._http().post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            text = await r.text()
            if r.status != 200:
                raise MeasureError(f"POST {url} answered {r.status}: {text[:300]}")
        try:
            data = json.loads(text)
        except ValueError as e:
            raise MeasureError(f"POST {url} answered with invalid JSON: {e}") from e
        if not isinstance(data, dict):
            raise MeasureError(f"POST {url} answered with {type(data).__name__}, not an object")
        return data

    async def prompt(self, url: str, n_tokens: int, timeout_s: float) -> list[int]:
        if n_tokens <= 0:
            return []
        data = await self._post(f"{url}/tokenize", {"content": FILLER}, timeout_s)
        ids = [int(t) for t in data.get("tokens", []) if isinstance(t, int)]
        if not ids:
            raise MeasureError("/tokenize returned no tokens")
        return (ids * (n_tokens // len(ids) + 1))[:n_tokens]

    async def complete(
        self, url: str, prompt: list[int], gen_tokens: int, timeout_s: float
    ) -> dict[str, Any]:
        body = {
            "prompt": prompt,
            "n_predict": gen_tokens,
            "ignore_eos": True,
            "cache_prompt": False,
            "stream": False,
        }
        data = await self._post(f"{url}/completion", body, timeout_s)
        timings = data.get("timings")
        if not isinstance(timings, dict) or "predicted_per_second" not in timings:
            raise MeasureError("the completion carried no timings")
        return {**timings, "id_slot": data.get("id_slot")}

    async def forget(self, url: str, slots: set[int], timeout_s: float) -> None:
        # Else the session carry-over would save and restore benchmark gibberish on each swap.
        for slot in sorted(slots):
            try:
                await self._post(f"{url}/slots/{slot}?action=erase", {}, timeout_s)
            except (aiohttp.ClientError, TimeoutError, MeasureError):
                pass  # no --slot-save-path (ik has no route then), or an old server: harmless
