"""JSON-RPC 2.0 over a Unix stream socket, one JSON object per line.

`AsyncRpcClient` is the proxy's single persistent, multiplexed connection (leases belong to
it, so if the proxy dies the supervisor drops them). `call_sync` is guardianctl's short
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import Code, GuardianError

LINE_LIMIT = 16 * 2**20  # status replies carry argv and log tails; keep well above asyncio's 64 KiB

# What the read-only status socket answers (guardianctl status/list/logs for a non-admin group).
READ_ONLY_METHODS = frozenset(
    {"models.status", "models.list", "models.logs", "models.estimate", "sessions.list", "metrics.snapshot"}
)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def request(method: str, params: dict[str, Any] | None, req_id: int | None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if req_id is not None:
        msg["id"] = req_id
    return encode(msg)


def not_running(socket_path: Path, why: object) -> GuardianError:
    return GuardianError(
        Code.UNAVAILABLE,
        f"guardian-supervisor is not running (cannot connect to {socket_path}: {why}); "
        "start it with 'guardian-supervisor' or 'systemctl start guardian-supervisor'",
    )


def _result(msg: dict[str, Any]) -> Any:
    if "error" in msg and msg["error"] is not None:
        raise GuardianError.from_rpc(msg["error"])
    return msg.get("result")


class AsyncRpcClient:
    """One connection, many concurrent calls matched by id; reconnects on the next call."""

    def __init__(
        self,
        socket_path: Path,
        connect_timeout: float = 0.5,
        on_orphan: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        # A result that arrives for a call its caller gave up on (e.g. a lease granted just as
        # the client disconnected) goes here, so it can be undone instead of leaking.
        self.on_orphan = on_orphan
        self._orphans: dict[int, str] = {}
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], str]] = {}  # id → (future, method)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _ensure(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(str(self.socket_path), limit=LINE_LIMIT),
                    self.connect_timeout,
                )
            except (OSError, TimeoutError) as e:
                raise not_running(self.socket_path, getattr(e, "strerror", None) or e or "timed out") from e
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_loop(reader, writer))
            return writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                req_id = msg.get("id")
                if (pending := self._pending.pop(req_id, None)) is not None:
                    fut, method = pending
                    if not fut.done():
                        fut.set_result(msg)
                    else:  # its caller was cancelled and has not run its cleanup yet
                        self._orphaned(method, msg)
                elif late := self._orphans.pop(req_id, None):
                    self._orphaned(late, msg)
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            lost = GuardianError(
                Code.UNAVAILABLE, "lost the connection to guardian-supervisor; retry shortly"
            )
            for fut, _ in self._pending.values():
                if not fut.done():
                    fut.set_exception(lost)
            self._pending.clear()

    def _orphaned(self, method: str, msg: dict[str, Any]) -> None:
        if self.on_orphan and msg.get("result") is not None:
            self.on_orphan(method, msg["result"])

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        writer = await self._ensure()
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (fut, method)
        try:
            writer.write(request(method, params, req_id))
            return _result(await fut)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # The answer had already arrived when the caller gave up: undo it right here.
                self._orphaned(method, fut.result())
            elif req_id in self._pending and not writer.is_closing():  # else already answered
                self._orphans[req_id] = method
                writer.write(request("$/cancel", {"id": req_id}, None))
            raise
        finally:
            self._pending.pop(req_id, None)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Fire and forget (used for release: nothing to wait for on the hot path)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(request(method, params, None))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


def call_sync(
    socket_path: Path, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
) -> Any:
    """One call on a short-lived connection (guardianctl)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(socket_path))
        except OSError as e:
            raise not_running(socket_path, e.strerror or e) from e
        s.sendall(request(method, params, 1))
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise GuardianError(
                    Code.UNAVAILABLE, "guardian-supervisor closed the connection before answering"
                )
            buf += chunk
    return _result(json.loads(buf))
