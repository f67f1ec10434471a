"""The auth middleware: open probes, 401 shapes per API, Bearer and X-Api-Key, 403 scope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from guardian_proxy import auth
from guardian_proxy.auth import (
    allowed_models,
    check_model_scope,
    get_api_key,
    make_auth_middleware,
)
from shared import keystore as ks
from shared.keystore import KeyStore

OPENAI_401 = {"type": "invalid_request_error", "param": None, "code": "invalid_api_key"}


async def _echo(request: web.Request) -> web.Response:
    rec = get_api_key(request)
    return web.json_response({"path": request.path, "key": rec.name if rec else None})


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    check_model_scope(request, body["model"])
    rec = get_api_key(request)
    return web.json_response({"ok": True, "key": rec.name if rec else None})


async def _tags(request: web.Request) -> web.Response:
    return web.json_response({"models": allowed_models(request, ["llama3:latest", "qwen:7b", "phi3"])})


def _app(store: KeyStore, required: Callable[[], bool]) -> web.Application:
    app = web.Application(middlewares=[make_auth_middleware(store, required)])
    app.router.add_get("/", _echo)  # add_get also registers HEAD
    app.router.add_get("/api/version", _echo)
    app.router.add_get("/api/tags", _tags)
    app.router.add_get("/v1/models", _echo)
    app.router.add_post("/api/chat", _chat)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/metrics", _echo)
    return app


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "api_keys.json")


@pytest.fixture
async def client(store: KeyStore) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(_app(store, store.any_keys))) as c:
        yield c


def _assert_openai_401(body: dict[str, object], *words: str) -> None:
    err = body["error"]
    assert isinstance(err, dict)
    assert {k: err[k] for k in OPENAI_401} == OPENAI_401
    for w in words:
        assert w in err["message"]


async def test_no_keys_means_open(client: TestClient[web.Request, web.Application]) -> None:
    r = await client.get("/api/tags")
    assert r.status == 200
    assert len((await r.json())["models"]) == 3
    r = await client.post("/v1/chat/completions", json={"model": "anything"})
    assert r.status == 200


async def test_open_routes_stay_open(
    store: KeyStore, client: TestClient[web.Request, web.Application]
) -> None:
    store.create("alice")
    for method, path in (("GET", "/"), ("HEAD", "/"), ("GET", "/api/version")):
        r = await client.request(method, path)
        assert r.status == 200, (method, path)
    # Anything else, including unknown paths and near-misses, needs a key.
    for path in ("/api/tags", "/v1/models", "/metrics", "/api/version/", "/nope"):
        r = await client.get(path)
        assert r.status == 401, path


async def test_missing_key_401_shapes(
    store: KeyStore, client: TestClient[web.Request, web.Application]
) -> None:
    store.create("alice")
    r = await client.get("/v1/models")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    _assert_openai_401(await r.json(), "missing API key", "Authorization: Bearer", "guardianctl keys create")

    r = await client.get("/api/tags")
    assert r.status == 401
    body = await r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert "missing API key" in body["error"] and "guardianctl keys create" in body["error"]


async def test_wrong_key_401(store: KeyStore, client: TestClient[web.Request, web.Application]) -> None:
    secret, _ = store.create("alice")
    wrong = secret[:-2] + ("zz" if not secret.endswith("zz") else "yy")
    r = await client.get("/v1/models", headers={"Authorization": f"Bearer {wrong}"})
    assert r.status == 401
    _assert_openai_401(await r.json(), "unknown or has been revoked")
    r = await client.post("/api/chat", json={"model": "x"}, headers={"X-Api-Key": "sk-not-ours"})
    assert r.status == 401
    assert "flip_" in (await r.json())["error"]
    # A non-Bearer Authorization scheme is not a key.
    r = await client.get("/api/tags", headers={"Authorization": f"Basic {secret}"})
    assert r.status == 401
    assert "missing API key" in (await r.json())["error"]


async def test_expired_key_401(
    store: KeyStore, client: TestClient[web.Request, web.Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, rec = store.create("temp", expires="1h")
    assert rec.expires_at is not None
    later = rec.expires_at + timedelta(seconds=1)
    monkeypatch.setattr(ks, "_now", lambda: later)
    r = await client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert r.status == 401
    _assert_openai_401(await r.json(), "expired")


@pytest.mark.parametrize(
    "headers",
    [
        lambda k: {"Authorization": f"Bearer {k}"},
        lambda k: {"Authorization": f"bearer   {k}  "},
        lambda k: {"X-Api-Key": k},
        lambda k: {"x-api-key": k},
    ],
)
async def test_valid_key_passes(
    store: KeyStore,
    client: TestClient[web.Request, web.Application],
    headers: Callable[[str], dict[str, str]],
) -> None:
    secret, _ = store.create("alice")
    for path in ("/v1/models", "/metrics"):
        r = await client.get(path, headers=headers(secret))
        assert r.status == 200
        assert await r.json() == {"path": path, "key": "alice"}


async def test_scope_403_shapes(store: KeyStore, client: TestClient[web.Request, web.Application]) -> None:
    secret, _ = store.create("narrow", models=["llama3"])
    h = {"Authorization": f"Bearer {secret}"}

    r = await client.post("/v1/chat/completions", json={"model": "llama3:latest"}, headers=h)
    assert r.status == 200 and (await r.json())["key"] == "narrow"

    # Out of scope answers exactly like a model that does not exist (404, not 403).
    r = await client.post("/v1/chat/completions", json={"model": "qwen:7b"}, headers=h)
    assert r.status == 404
    assert r.content_type == "application/json"
    err = (await r.json())["error"]
    assert err["message"] == "model 'qwen:7b' not found"
    assert err["type"] == "invalid_request_error" and err["code"] == "model_not_found"

    r = await client.post("/api/chat", json={"model": "qwen:7b"}, headers=h)
    assert r.status == 404
    assert await r.json() == {"error": "model 'qwen:7b' not found"}

    r = await client.get("/api/tags", headers=h)
    assert (await r.json())["models"] == ["llama3:latest"]


async def test_required_callback_decides(store: KeyStore) -> None:
    store.create("alice")
    async with TestClient(TestServer(_app(store, lambda: False))) as c:
        r = await c.post("/api/chat", json={"model": "m"})
        assert r.status == 200
    empty = KeyStore(store.path.with_name("other.json"))
    async with TestClient(TestServer(_app(empty, lambda: True))) as c:
        r = await c.get("/api/tags")
        assert r.status == 401  # required with no keys at all: nobody gets in


async def test_key_created_and_revoked_elsewhere_takes_effect(
    store: KeyStore, client: TestClient[web.Request, web.Application]
) -> None:
    other = KeyStore(store.path)  # the CLI / supervisor in another process
    other.create("first")
    secret, _ = other.create("alice")
    h = {"X-Api-Key": secret}

    async def status_within(expected: int, limit: float = 1.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            st = (await client.get("/api/tags", headers=h)).status
            if st == expected or loop.time() > deadline:
                return st
            await asyncio.sleep(0.05)

    assert await status_within(200) == 200
    other.revoke("alice")
    assert await status_within(401) == 401


async def test_last_use_flushed_in_background(
    store: KeyStore, client: TestClient[web.Request, web.Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, _ = store.create("alice")
    monkeypatch.setattr(ks, "FLUSH_INTERVAL_S", 0.0)
    r = await client.get("/api/tags", headers={"X-Api-Key": secret})
    assert r.status == 200
    for _ in range(50):
        if json.loads(store.path.read_text())["keys"][0]["last_used_at"]:
            break
        await asyncio.sleep(0.02)
    assert json.loads(store.path.read_text())["keys"][0]["last_used_at"] is not None


def test_cli_creates_and_prints_once(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        auth.main, ["laptop", "--models", "llama3,qwen", "--expires", "30d", "--data-dir", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip()
    assert secret.startswith("flip_") and "\n" not in secret
    assert "will not be shown again" in res.stderr
    rec = KeyStore(tmp_path / "api_keys.json").verify(secret)
    assert rec is not None and rec.models == ("llama3", "qwen") and rec.expires_at is not None

    again = runner.invoke(auth.main, ["laptop", "--data-dir", str(tmp_path)])
    assert again.exit_code == 8  # Code.CONFLICT
    assert "already exists" in again.stderr


def test_cli_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDIAN_DATA_DIR", str(tmp_path / "d"))
    res = CliRunner().invoke(auth.main, ["bad name"])
    assert res.exit_code == 2 and "invalid key name" in res.stderr
    res = CliRunner().invoke(auth.main, ["ok"])
    assert res.exit_code == 0
    assert (tmp_path / "d" / "api_keys.json").exists()
