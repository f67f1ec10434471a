"""Each llama-server gets a random API key of Guardian's own, so its port is no open door.

The key lives in a 0600 file in a 0700 directory (never on argv, where `ps` shows it) and is
handed over with `--api-key-file`, which both upstream and ik_llama.cpp read (ik ignores
LLAMA_API_KEY). `KEYS` maps each live child's port to its key; the supervisor's own HTTP
session adds the header from it, so no caller has to thread the key through.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import aiohttp

# port -> key of the llama-server listening there; owned by launcher.Child (set at start,
# dropped at exit).
KEYS: dict[int, str] = {}


def new_key() -> str:
    return secrets.token_urlsafe(32)


def write_key_file(directory: Path, name: str, key: str) -> Path:
    """Create `directory` 0700 and `name` in it 0600 (regardless of umask), refusing links."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if directory.is_symlink() or not directory.is_dir():
        raise OSError(f"{directory} is not a plain directory")
    os.chmod(directory, 0o700)
    path = directory / name
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.encode())
    finally:
        os.close(fd)
    return path


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment without LLAMA_ARG_* (upstream lets those override argv) or a
    stray LLAMA_API_KEY (which would add a second, foreign key)."""
    return {k: v for k, v in env.items() if not k.startswith("LLAMA_ARG_") and k != "LLAMA_API_KEY"}


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def add_child_key(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware: requests to a port of ours carry that server's key."""
    if req.url.host == "127.0.0.1" and req.url.port in KEYS and "Authorization" not in req.headers:
        req.headers["Authorization"] = f"Bearer {KEYS[req.url.port]}"
    return await handler(req)
