"""Bad input gets a clear 4xx in the API's shape; nothing reaches a 500, nothing hangs."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Guardian, write_fake_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fake_g(tmp_path_factory, model_dir):
    """One Guardian on the fake llama-server for the whole module (hypothesis makes many calls)."""
    root = tmp_path_factory.mktemp("badinput")
    cfg = root / "fake.json"
    write_fake_config(cfg, {"content": ["ok"]})
    models = {
        "fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512},
        "fe": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512, "embeddings": True},
    }
    g = Guardian(
        root / "g",
        models,
        {"proxy": {"max_body_mb": 0.05}, "supervisor": {"max_queue": 2}},
        {"FAKE_LLAMA_CONFIG": str(cfg)},
    )
    g.start()
    yield g, cfg
    g.close()


def test_malformed_json_and_wrong_types(fake_g):
    g, _ = fake_g
    url = g.url + "/v1/chat/completions"
    cases = [
        (b"{nope", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "'model' is required"),
        (json.dumps({"model": 5, "messages": []}).encode(), "'model' is required"),
        (json.dumps({"model": "fa", "messages": "hi"}).encode(), "'messages'"),
        (json.dumps({"model": "fa", "messages": [{"role": "wizard", "content": "x"}]}).encode(), "role"),
        (json.dumps({"model": "fa", "messages": [{"role": []}]}).encode(), "role"),  # found by hypothesis
        (
            json.dumps(
                {"model": "fa", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}
            ).encode(),
            "'max_tokens' must be an integer",
        ),
        (
            json.dumps(
                {"model": "fa", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}
            ).encode(),
            "'stream' must be a boolean",
        ),
    ]
    for body, words in cases:
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["error"]["message"], (body, r.text)


def test_oversized_body_is_413_in_api_shape(fake_g):
    g, _ = fake_g
    big = {"model": "fa", "messages": [{"role": "user", "content": "x" * 100_000}]}
    r = httpx.post(g.url + "/v1/chat/completions", json=big)
    assert r.status_code == 413 and "max_body_mb" in r.json()["error"]["message"]


def test_unknown_route_and_method_are_json(fake_g):
    g, _ = fake_g
    r = httpx.get(g.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(g.url + "/v1/chat/completions")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


def test_embeddings_need_an_embedding_model(fake_g):
    g, _ = fake_g
    r = httpx.post(g.url + "/v1/embeddings", json={"model": "fa", "input": "x"})
    assert r.status_code == 400 and "embeddings: true" in r.json()["error"]["message"]
    r = httpx.post(g.url + "/v1/embeddings", json={"model": "fa:latest", "input": "x"})  # same model
    assert r.status_code == 400 and "embeddings: true" in r.json()["error"]["message"]
    r = httpx.post(g.url + "/v1/embeddings", json={"model": "fe", "input": "x"})
    assert r.status_code == 200 and r.json()["data"][0]["embedding"]


def test_unknown_model_is_404(fake_g):
    g, _ = fake_g
    r = httpx.post(g.url + "/v1/embeddings", json={"model": "../../etc/passwd", "input": "x"})
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]


def test_queue_limit_gives_503_with_retry_after(fake_g):
    g, cfg = fake_g
    g.rpc("models.unload", {"all": True})
    write_fake_config(cfg, {"content": ["ok"], "load_delay_s": 1.5})  # read at the next start

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            body = {"model": "fa", "messages": [{"role": "user", "content": "x"}]}
            return await asyncio.gather(
                *(c.post(g.url + "/v1/chat/completions", json=body) for _ in range(8))
            )

    rs = asyncio.run(burst())
    write_fake_config(cfg, {"content": ["ok"]})
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 2 and 503 in codes, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers["Retry-After"] and "waiting" in busy.json()["error"]["message"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
chat_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["fa", "fe", "nope", ""]) | json_values},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | json_values},
                optional={"content": json_values, "tool_calls": json_values},
            ),
            max_size=3,
        )
        | json_values,
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers(-5, 50) | json_values,
        "temperature": json_values,
        "stop": json_values,
        "tools": json_values,
        "prompt": json_values,
        "input": json_values,
    },
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]),
    body=chat_like | json_values,
)
def test_generated_openai_requests_never_500(fake_g, path, body):
    g, _ = fake_g
    r = httpx.post(g.url + path, json=body, timeout=20)  # a hang fails by timeout
    assert r.status_code < 500 or r.status_code == 503, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"]["message"], str)


ollama_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["fa", "fe", "fa:latest", "nope", ""]) | json_values},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant", "tool"]) | json_values},
                optional={"content": json_values, "images": json_values, "tool_calls": json_values},
            ),
            max_size=3,
        )
        | json_values,
        "prompt": st.text(max_size=20) | json_values,
        "stream": st.booleans() | json_values,
        "options": st.dictionaries(
            st.sampled_from(["num_predict", "temperature", "top_k", "stop", "num_ctx", "seed", "mirostat"]),
            json_values,
            max_size=3,
        )
        | json_values,
        "keep_alive": st.sampled_from(["5m", "0", "10", -1, 0, "1h"]) | json_values,
        "format": st.sampled_from(["json", ""]) | json_values,
        "think": json_values,
        "tools": json_values,
        "input": json_values,
        "raw": json_values,
        "suffix": json_values,
        "context": json_values,
        "name": json_values,
    },
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        [
            "/api/chat",
            "/api/generate",
            "/api/embed",
            "/api/embeddings",
            "/api/show",
            "/api/pull",
            "/api/copy",
            "/api/create",
        ]
    ),
    body=ollama_like | json_values,
)
def test_generated_ollama_requests_never_500(fake_g, path, body):
    g, _ = fake_g
    r = httpx.post(g.url + path, json=body, timeout=20)  # a hang fails by timeout
    assert r.status_code < 500 or r.status_code == 503, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["error"], str), r.text
    elif r.headers.get("Content-Type", "").startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        assert lines and "error" not in lines[-1], lines[-1:]
