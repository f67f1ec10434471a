"""The closed set of errors that cross the RPC, with their HTTP status and CLI exit code.

Defined once here: the supervisor raises `GuardianError(Code.X, ...)`, the proxy maps the
code to one HTTP status, guardianctl maps it to one exit status.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _Spec:
    rpc_code: int
    http_status: int
    exit_code: int
    retry_after: int | None = None


class Code(enum.Enum):
    """Every error the supervisor can answer with. Value = (rpc code, http status, exit code)."""

    PARSE_ERROR = _Spec(-32700, 400, 2)
    INVALID_REQUEST = _Spec(-32600, 400, 2)
    METHOD_NOT_FOUND = _Spec(-32601, 404, 2)
    INVALID_PARAMS = _Spec(-32602, 400, 2)
    INTERNAL = _Spec(-32603, 500, 1)
    MODEL_NOT_FOUND = _Spec(1001, 404, 3)
    LOAD_FAILED = _Spec(1002, 500, 4)
    LOAD_TIMEOUT = _Spec(1003, 504, 4)
    DOES_NOT_FIT = _Spec(1004, 507, 5)
    QUEUE_FULL = _Spec(1005, 503, 6, retry_after=2)
    CONFIG_INVALID = _Spec(1006, 400, 7)
    CONFLICT = _Spec(1007, 409, 8)
    SHUTTING_DOWN = _Spec(1008, 503, 9, retry_after=2)
    NOT_FOUND = _Spec(1009, 404, 3)
    UNAVAILABLE = _Spec(1010, 503, 9, retry_after=1)
    BAD_FLAG = _Spec(1011, 400, 7)

    @property
    def rpc_code(self) -> int:
        return self.value.rpc_code

    @property
    def http_status(self) -> int:
        return self.value.http_status

    @property
    def exit_code(self) -> int:
        return self.value.exit_code

    @property
    def retry_after(self) -> int | None:
        return self.value.retry_after

    @classmethod
    def from_rpc(cls, rpc_code: int) -> Code:
        return _BY_RPC.get(rpc_code, cls.INTERNAL)


_BY_RPC: dict[int, Code] = {c.rpc_code: c for c in Code}


class GuardianError(Exception):
    """An error with a code from the closed set, a message for humans and optional data."""

    def __init__(self, code: Code, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}

    def to_rpc(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code.rpc_code, "message": self.message}
        err["data"] = {"name": self.code.name, **self.data}
        return err

    @classmethod
    def from_rpc(cls, err: dict[str, Any]) -> GuardianError:
        data = dict(err.get("data") or {})
        name = data.pop("name", None)
        code = Code[name] if name in Code.__members__ else Code.from_rpc(int(err.get("code", -32603)))
        return cls(code, str(err.get("message", "unknown error")), data)

    def __repr__(self) -> str:
        return f"GuardianError({self.code.name}, {self.message!r})"
