"""sessions.* — KV-cache slots saved by name and restored later (see guardian_supervisor/sessions/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardian_supervisor.rpc.server import Connection, RpcServer, params_int, params_str

if TYPE_CHECKING:
    from guardian_supervisor.daemon import Supervisor


def register(server: RpcServer, sup: Supervisor) -> None:
    sessions = sup.sessions

    async def save(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Save a loaded model's conversation as {name, model, slot?} (default: the latest used slot).

        The model must be loaded; saving under an existing name replaces that session.
        """
        name = params_str(params, "name")
        model = params_str(params, "model")
        owner = params_str(params, "owner", required=False)
        return await sessions.save(name, model, params_int(params, "slot"), conn.id, owner)

    async def restore(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Restore session {name, model?, slot?} into its model, loading the model if needed.

        Refused unless the model file, context per slot, KV cache type and fork are the ones it
        was saved with; `model`, when given, must be the session's own model.
        """
        name = params_str(params, "name")
        model = params_str(params, "model", required=False)
        owner = params_str(params, "owner", required=False)
        return await sessions.restore(name, conn.id, model, params_int(params, "slot"), owner)

    async def list_sessions(params: dict[str, Any], conn: Connection) -> list[dict[str, Any]]:
        """Named sessions, least recently used first: {model?, carry?: true adds carry-over files}."""
        model = params_str(params, "model", required=False)
        owner = params_str(params, "owner", required=False)
        return await sessions.list_sessions(model, bool(params.get("carry")), owner)

    async def info(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """One named session: {name}."""
        name = params_str(params, "name")
        return await sessions.info(name, params_str(params, "owner", required=False))

    async def delete(params: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Delete session {name} (its slot file and manifest)."""
        name = params_str(params, "name")
        return await sessions.delete(name, params_str(params, "owner", required=False))

    for method, fn in {
        "sessions.save": save,
        "sessions.restore": restore,
        "sessions.list": list_sessions,
        "sessions.info": info,
        "sessions.delete": delete,
    }.items():
        server.register(method, fn)
