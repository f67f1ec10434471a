"""The proxy's view of the supervisor: acquire/release leases over one persistent RPC connection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.rpc import AsyncRpcClient


@dataclass(frozen=True)
class Lease:
    id: str
    model: str
    url: str
    ctx: int | None
    timeout_s: float
    waited_s: float
    # The llama-server's own key (random per launch); every request to lease.url sends it.
    auth: dict[str, str] = field(default_factory=dict)


class SupervisorLink:
    def __init__(self, socket_path: Path) -> None:
        self.rpc = AsyncRpcClient(socket_path, on_orphan=self._orphan)
        self._models: tuple[float, list[dict[str, Any]]] | None = None

    def _orphan(self, method: str, result: Any) -> None:
        if method == "models.acquire" and isinstance(result, dict) and "lease" in result:
            self.release(result["lease"])  # granted after the client went away

    async def acquire(self, model: str, *, ctx: int | None = None, keep_alive: Any = None) -> Lease:
        params: dict[str, Any] = {"model": model}
        if ctx:
            params["ctx"] = ctx
        if keep_alive is not None:
            params["keep_alive"] = keep_alive
        r = await self.rpc.call("models.acquire", params)
        return Lease(
            r["lease"],
            r["model"],
            r["url"],
            r.get("ctx"),
            float(r["timeout_s"]),
            float(r.get("waited_s", 0.0)),
            {"Authorization": f"Bearer {r['api_key']}"} if r.get("api_key") else {},
        )

    def release(self, lease_id: str) -> None:
        self.rpc.notify("models.release", {"lease": lease_id})

    async def models(self, max_age_s: float = 1.0) -> list[dict[str, Any]]:
        """The configured models; cached for a second since clients poll lists often."""
        now = time.monotonic()
        if self._models is not None and now - self._models[0] < max_age_s:
            return self._models[1]
        listing = await self.rpc.call("models.list")
        self._models = (now, listing)
        return listing

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.rpc.call(method, params)

    async def close(self) -> None:
        await self.rpc.close()
