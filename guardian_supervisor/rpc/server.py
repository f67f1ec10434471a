"""The supervisor's JSON-RPC 2.0 server on a Unix socket (mode 0660).

Handlers are registered explicitly by name; a handler's docstring is its documentation.
Each connection is a `Connection`; when it closes, `on_close` runs (the scheduler drops
the connection's leases there).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import structlog

from shared.errors import Code, GuardianError
from shared.rpc import LINE_LIMIT, encode

log = structlog.get_logger("rpc")


@dataclass
class Connection:
    id: int
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    by_request: dict[Any, asyncio.Task[None]] = field(default_factory=dict)


Handler = Callable[[dict[str, Any], Connection], Awaitable[Any]]


WATCH_INTERVAL_S = 2.0


class RpcServer:
    """JSON-RPC over a unix socket. Whoever can connect is admin, unless `read_only` names
    the only methods this socket serves. A deleted (or replaced) socket file is noticed
    within WATCH_INTERVAL_S and bound again, so guardianctl is never locked out."""

    def __init__(
        self,
        socket_path: Path,
        on_close: Callable[[Connection], None],
        *,
        read_only: frozenset[str] | None = None,
        group: str | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.handlers: dict[str, Handler] = {}
        self.on_close = on_close
        self.read_only = read_only
        self.group = group
        self._server: asyncio.base_events.Server | None = None
        self._ids = itertools.count(1)
        self._conns: dict[int, asyncio.StreamWriter] = {}
        self._inode: int | None = None
        self._watcher: asyncio.Task[None] | None = None

    def register(self, name: str, handler: Handler) -> None:
        if name in self.handlers:
            raise ValueError(f"RPC method {name} registered twice")
        self.handlers[name] = handler

    async def start(self) -> None:
        await self._bind()
        self._watcher = asyncio.create_task(self._watch())

    async def _bind(self) -> None:
        await asyncio.to_thread(self._prepare_socket_path)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=LINE_LIMIT
        )
        self._inode = await asyncio.to_thread(self._secure_socket)

    def _secure_socket(self) -> int:
        os.chmod(self.socket_path, 0o660)
        if self.group:
            shutil.chown(self.socket_path, group=self.group)
        return os.stat(self.socket_path).st_ino

    def _socket_is_ours(self) -> bool:
        try:
            return os.stat(self.socket_path).st_ino == self._inode
        except OSError:
            return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if await asyncio.to_thread(self._socket_is_ours):
                continue
            log.warning("rpc_socket_recreated", socket=str(self.socket_path))
            if self._server is not None:
                self._server.close()  # the unreachable listener; open connections stay
            try:
                await self._bind()
            except (OSError, GuardianError) as e:
                log.error("rpc_socket_rebind_failed", socket=str(self.socket_path), error=str(e))

    def _prepare_socket_path(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.socket_path.exists():
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # stale socket from a supervisor that died
                return
        raise GuardianError(
            Code.CONFLICT, f"another guardian-supervisor is already listening on {self.socket_path}"
        )

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._server is not None:
            self._server.close()
            for writer in list(self._conns.values()):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._socket_is_ours():  # not another supervisor's, bound since
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(self._ids))
        self._conns[conn.id] = writer
        try:
            while line := await reader.readline():
                task = asyncio.create_task(self._handle_line(line, conn, writer))
                conn.tasks.add(task)
                task.add_done_callback(conn.tasks.discard)
                await asyncio.sleep(0)  # let the handler register its request id for $/cancel
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.pop(conn.id, None)
            for task in list(conn.tasks):
                task.cancel()
            self.on_close(conn)
            writer.close()

    async def _handle_line(self, line: bytes, conn: Connection, writer: asyncio.StreamWriter) -> None:
        req_id: Any = None
        try:
            try:
                msg = json.loads(line)
            except ValueError as e:
                raise GuardianError(Code.PARSE_ERROR, f"request is not valid JSON: {e}") from e
            if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
                raise GuardianError(Code.INVALID_REQUEST, "a request is an object with a 'method' string")
            req_id = msg.get("id")
            params = msg.get("params") or {}
            if not isinstance(params, dict):
                raise GuardianError(Code.INVALID_PARAMS, "params must be an object")
            if msg["method"] == "$/cancel":  # the client gave up on request params.id
                target = conn.by_request.get(params.get("id"))
                if target is not None:
                    target.cancel()
                return
            if req_id is not None:
                task = asyncio.current_task()
                assert task is not None
                conn.by_request[req_id] = task
            handler = self.handlers.get(msg["method"])
            if self.read_only is not None and msg["method"] not in self.read_only:
                raise GuardianError(
                    Code.METHOD_NOT_FOUND,
                    f"{msg['method']!r} is not available on the read-only status socket; "
                    "it needs the admin socket (supervisor.socket)",
                )
            if handler is None:
                raise GuardianError(Code.METHOD_NOT_FOUND, f"no RPC method {msg['method']!r}")
            result = await handler(params, conn)
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "result": result}
        except GuardianError as e:
            reply = {"jsonrpc": "2.0", "id": req_id, "error": e.to_rpc()}
        except asyncio.CancelledError:
            # Cancelled by $/cancel (answer, so the client can forget the id) or by a closed
            # connection (nobody to answer).
            reply = {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": GuardianError(Code.INTERNAL, "request cancelled").to_rpc(),
            }
        except Exception as e:  # a bug: log the traceback here, never send it
            log.exception("rpc_handler_failed", error=str(e))
            reply = {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": GuardianError(Code.INTERNAL, "internal error; see the supervisor log").to_rpc(),
            }
        conn.by_request.pop(req_id, None)
        if req_id is not None and not writer.is_closing():
            writer.write(encode(reply))


@overload
def params_str(params: dict[str, Any], key: str, *, required: Literal[True] = True) -> str: ...


@overload
def params_str(params: dict[str, Any], key: str, *, required: bool) -> str | None: ...


def params_str(params: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    """Read a string parameter or raise INVALID_PARAMS naming it."""
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise GuardianError(Code.INVALID_PARAMS, f"parameter '{key}' must be a non-empty string")
    return value


@overload
def params_int(params: dict[str, Any], key: str, default: int) -> int: ...


@overload
def params_int(params: dict[str, Any], key: str, default: None = None) -> int | None: ...


def params_int(params: dict[str, Any], key: str, default: int | None = None) -> int | None:
    """Read a non-negative integer parameter (absent: `default`) or raise INVALID_PARAMS naming it."""
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GuardianError(Code.INVALID_PARAMS, f"parameter '{key}' must be a non-negative integer")
    return value
