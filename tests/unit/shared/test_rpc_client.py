"""AsyncRpcClient: a lease granted just as its caller is cancelled is handed to on_orphan, never lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shared.rpc import AsyncRpcClient


async def _granting_server(path: Path) -> asyncio.AbstractServer:
    """Answers every call at once with a lease named after its id."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if "id" in msg:
                reply = {"jsonrpc": "2.0", "id": msg["id"], "result": {"lease": f"L{msg['id']}"}}
                writer.write(json.dumps(reply).encode() + b"\n")
        writer.close()

    return await asyncio.start_unix_server(serve, str(path))


class _Hook(dict):  # type: ignore[type-arg]
    """The client's pending table, calling `on_pop(entry)` when the read loop takes an answer's entry."""

    def __init__(self, on_pop: Any) -> None:
        super().__init__()
        self.on_pop = on_pop

    def pop(self, key: Any, default: Any = None) -> Any:
        entry = super().pop(key, default)
        if entry is not None and self.on_pop is not None:
            entry, self.on_pop = self.on_pop(entry), None
        return entry


async def _call_cancelled_at_answer(tmp_path: Path, cancel_after_result: bool) -> list[Any]:
    sock = tmp_path / "s.sock"
    server = await _granting_server(sock)
    orphans: list[Any] = []
    client = AsyncRpcClient(sock, on_orphan=lambda method, result: orphans.append((method, result)))
    task: asyncio.Task[Any] | None = None

    def on_pop(entry: tuple[asyncio.Future[Any], str]) -> tuple[Any, str]:
        fut, method = entry
        assert task is not None
        if not cancel_after_result:
            task.cancel()  # the caller gives up before the read loop sets the answer
            return entry

        class Late:  # sets the answer, then the caller is cancelled before it resumes
            def done(self) -> bool:
                return fut.done()

            def set_result(self, msg: Any) -> None:
                fut.set_result(msg)
                assert task is not None
                task.cancel()

        return Late(), method

    client._pending = _Hook(on_pop)  # type: ignore[assignment]
    try:
        task = asyncio.create_task(client.call("models.acquire", {"model": "m"}))
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert task.cancelled()
        await asyncio.sleep(0.05)  # let any late answer arrive
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    return orphans


async def test_answer_set_then_caller_cancelled_goes_to_on_orphan(tmp_path: Path) -> None:
    assert await _call_cancelled_at_answer(tmp_path, cancel_after_result=True) == [
        ("models.acquire", {"lease": "L1"})
    ]


async def test_caller_cancelled_before_answer_is_read_goes_to_on_orphan(tmp_path: Path) -> None:
    assert await _call_cancelled_at_answer(tmp_path, cancel_after_result=False) == [
        ("models.acquire", {"lease": "L1"})
    ]
