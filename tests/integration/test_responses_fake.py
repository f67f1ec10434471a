"""/v1/responses where content matters, with the fake llama-server: a function-call round trip
(streamed and not) with the openai SDK, Codex-like tools, and a crash mid-stream."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.fakes.fake_llama_server import read_records
from tests.harness import Guardian, write_fake_config

pytestmark = pytest.mark.timeout(120)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
FILES_NS = {
    "type": "namespace",
    "name": "mcp__files__",
    "description": "files",
    "tools": [{"type": "function", "name": "read", "parameters": {"type": "object", "properties": {}}}],
}


@pytest.fixture(scope="module")
def fake(tmp_path_factory, model_dir, llama_bin):
    root = tmp_path_factory.mktemp("responses-fake")
    cfg, record = root / "fake.json", root / "record.jsonl"
    write_fake_config(cfg)
    models = {
        "fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512},
        "ik-ranker": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake_ik", "reranking": True},
    }
    g = Guardian(root / "g", models, env={"FAKE_LLAMA_CONFIG": str(cfg), "FAKE_LLAMA_RECORD": str(record)})
    g.start()
    g.fake_config, g.record = cfg, record
    yield g
    g.close()


def chat_bodies(g) -> list[dict]:
    return [r["body"] for r in read_records(g.record) if r.get("path") == "/v1/chat/completions"]


def test_function_call_round_trip(fake):
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)
    write_fake_config(
        fake.fake_config, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    )
    tools = [WEATHER, FILES_NS, {"type": "web_search"}]
    r = client.responses.create(model="fa", input="Weather in Paris?", tools=tools, store=False)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    sent = chat_bodies(fake)[-1]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "mcp__files__read"]

    # Streamed: the call arrives as output_item.added, argument deltas, .done events.
    events = list(client.responses.create(model="fa", input="Weather in Paris?", tools=tools, stream=True))
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Paris"}
    assert events[-1].type == "response.completed"
    streamed = [o for o in events[-1].response.output if o.type == "function_call"]
    assert streamed[0].call_id and streamed[0].name == "get_weather"

    # Second turn, whole (as Codex sends it): the call and its output go back to the model.
    write_fake_config(fake.fake_config, {"content": ["It is ", "sunny."]})
    r2 = client.responses.create(
        model="fa",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=tools,
        store=False,
    )
    assert r2.output_text == "It is sunny."
    m = chat_bodies(fake)[-1]["messages"]
    assert m[1]["role"] == "assistant" and m[1]["tool_calls"][0]["id"] == call.call_id
    assert m[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}


def test_namespaced_call_comes_back_with_its_namespace(fake):
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)
    write_fake_config(fake.fake_config, {"tool_calls": [{"name": "mcp__files__read", "arguments": {}}]})
    r = client.responses.create(model="fa", input="read it", tools=[FILES_NS])
    item = r.output[0].model_dump()
    assert item["type"] == "function_call" and item["name"] == "read" and item["namespace"] == "mcp__files__"


def test_crash_mid_stream_is_response_failed(fake):
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)
    write_fake_config(fake.fake_config, {"content": ["a", "b", "c", "d"], "crash_mid_stream_after": 2})
    events = list(client.responses.create(model="fa", input="x", stream=True))
    types = [e.type for e in events]
    # OpenAI's in-band failure: an `error` event, then response.failed (the status was sent).
    assert types[-2:] == ["error", "response.failed"]
    assert "broke off" in events[-2].message or "before it finished" in events[-2].message
    assert "response.output_text.delta" in types and "response.completed" not in types
    write_fake_config(fake.fake_config)


def test_rerank_on_ik_is_a_400_that_says_why(fake):
    r = httpx.post(fake.url + "/v1/rerank", json={"model": "ik-ranker", "query": "q", "documents": ["a"]})
    assert r.status_code == 400
    assert "ik_llama.cpp" in r.json()["error"]["message"]
    assert fake.model("ik-ranker")["state"] != "ready"  # refused before anything was loaded


def test_keys_and_scopes_cover_the_new_routes(guardian_factory, model_dir):
    fake_model = {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512}
    g = guardian_factory({"fa": fake_model, "fb": dict(fake_model)})
    key = g.ctl("keys", "create", "bob", "--models", "fb").stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    tok = {"content": "hi"}
    deadline = time.monotonic() + 2
    while httpx.post(g.url + "/tokenize", json={**tok, "model": "fb"}).status_code != 401:
        assert time.monotonic() < deadline, "auth did not turn on"
        time.sleep(0.05)
    assert httpx.post(g.url + "/v1/responses", json={"model": "fb", "input": "x"}).status_code == 401
    r = httpx.post(g.url + "/tokenize", json={**tok, "model": "fb"}, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["tokens"]
    assert httpx.post(g.url + "/tokenize", json={**tok, "model": "fa"}, headers=auth).status_code == 404
    r = httpx.post(g.url + "/v1/responses", json={"model": "fa", "input": "x"}, headers=auth)
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]
    r = httpx.post(g.url + "/v1/responses", json={"model": "fb", "input": "x"}, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["output"][0]["type"] == "message"
