"""/v1/responses with the real openai SDK against Guardian on a real llama-server (Gemma 3 270M),
and the relayed llama-server routes (/tokenize, /detokenize, /apply-template, /infill, /v1/rerank)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.harness import ROOT, Guardian

pytestmark = pytest.mark.timeout(240)

GEMMA = ROOT / "data" / "models" / "gemma-3-270m-q4_k_m.gguf"
NAME = "gemma3:270m-upstream"


@pytest.fixture(scope="module")
def guardian(tmp_path_factory, model_dir, llama_bin):
    if not GEMMA.exists():
        pytest.skip(f"{GEMMA} is missing: run 'make models'")
    root = tmp_path_factory.mktemp("responses")
    models = {
        NAME: {"path": str(GEMMA), "context": 8192, "backend": "official", "chat_template": "gemma"},
        "ranker": {"path": str(model_dir / "demo-a.gguf"), "context": 512, "reranking": True},
        "demo-a": {"path": str(model_dir / "demo-a.gguf"), "context": 4096},
    }
    g = Guardian(root / "g", models)
    g.start()
    yield g
    g.close()


@pytest.fixture
def client(guardian):
    return openai.OpenAI(base_url=guardian.url + "/v1", api_key="unused", max_retries=0)


def test_responses_create_not_streamed(client):
    r = client.responses.create(
        model=NAME,
        instructions="You are a terse assistant.",
        input="Say hello.",
        max_output_tokens=16,
        temperature=0,
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output_text.strip()
    assert r.usage is not None and r.usage.input_tokens > 5 and 0 < r.usage.output_tokens <= 16


def test_responses_create_streamed(client):
    stream = client.responses.create(
        model=NAME, input=[{"role": "user", "content": "Count to three."}], max_output_tokens=12, stream=True
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1  # token by token, not one buffered block
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "".join(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output[0].content[0].text == done.text


def test_empty_probe_with_one_token_answers(client):
    r = client.responses.create(model=NAME, input=[], max_output_tokens=1)
    assert r.status in ("completed", "incomplete") and r.usage.output_tokens <= 1


def test_structured_output_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=NAME,
        input="Give a city and its population as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        max_output_tokens=60,
        temperature=0,
    )
    data = json.loads(r.output_text)  # the grammar makes even a 270M model emit valid JSON
    assert set(data) == {"city", "population"}
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_codex_like_tools_are_accepted(client, guardian):
    tools = [
        {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}},
        {
            "type": "namespace",
            "name": "mcp__files__",
            "description": "file tools",
            "tools": [
                {"type": "function", "name": "read", "parameters": {"type": "object", "properties": {}}}
            ],
        },
        {"type": "web_search", "external_web_access": False},
        {"type": "image_generation"},
    ]
    # demo-a: a Jinja template (tools need one; the Gemma entry uses llama-server's built-in 'gemma').
    r = client.responses.create(
        model="demo-a",
        instructions="Be brief. " * 200,
        input="hi",
        tools=tools,
        tool_choice="none",  # random weights: gibberish that llama-server's tool parser would refuse
        store=False,
        max_output_tokens=4,
    )
    assert r.status in ("completed", "incomplete")
    assert "responses_dropped" in guardian.log()  # said what it left out
    # Codex's ~20 KB of instructions with only hosted tools (all dropped) on the real model.
    r = client.responses.create(
        model=NAME,
        instructions="You are a coding agent. Follow the rules. " * 480,
        input="hi",
        tools=tools[2:],
        store=False,
        max_output_tokens=2,
    )
    assert r.status in ("completed", "incomplete") and r.usage.input_tokens > 3000


def test_previous_response_id_is_refused_with_a_reason(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=NAME, input="x", previous_response_id="resp_1")
    assert "stateless" in str(e.value)


def test_tokenize_detokenize_apply_template_relayed(guardian):
    with httpx.Client(base_url=guardian.url, timeout=120) as h:
        tokens = h.post("/tokenize", json={"model": NAME, "content": "Hello world"}).json()["tokens"]
        assert tokens and all(isinstance(t, int) for t in tokens)
        text = h.post("/detokenize", json={"model": NAME, "tokens": tokens}).json()["content"]
        assert text.strip() == "Hello world"
        prompt = h.post(
            "/apply-template", json={"model": NAME, "messages": [{"role": "user", "content": "hi"}]}
        ).json()["prompt"]
        assert "<start_of_turn>user" in prompt  # Gemma's template, rendered by the model's server
        missing = h.post("/tokenize", json={"content": "x"})
        assert missing.status_code == 400 and "model" in missing.json()["error"]["message"]


def test_infill_relayed(guardian):
    # Neither test model has fill-in-the-middle tokens: llama-server's own refusal comes back.
    with httpx.Client(base_url=guardian.url, timeout=120) as h:
        r = h.post("/infill", json={"model": "demo-a", "input_prefix": "def f(", "input_suffix": ")"})
    assert r.status_code == 501 and "Infill is not supported" in r.json()["error"]["message"]


def test_rerank_relayed_on_a_reranking_model(guardian):
    body = {"model": "ranker", "query": "a", "documents": ["x", "y z", "w"]}
    with httpx.Client(base_url=guardian.url, timeout=120) as h:
        for path in ("/v1/rerank", "/rerank", "/v1/reranking"):
            r = h.post(path, json=body)
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert sorted(x["index"] for x in results) == [0, 1, 2]
            assert all(isinstance(x["relevance_score"], float) for x in results)
        r = h.post("/v1/rerank", json={**body, "model": "demo-a"})
    assert r.status_code == 400 and "reranking: true" in r.json()["error"]["message"]
