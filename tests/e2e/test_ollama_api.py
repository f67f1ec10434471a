"""The Ollama API end to end: a real llama-server on tiny models, the official ollama and
openai clients, real processes and sockets. Output is gibberish; shapes and state are tested."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import ollama
import openai
import pytest

from tests.harness import Guardian

pytestmark = pytest.mark.timeout(120)

COPILOT = {"User-Agent": "GitHubCopilotChat/0.31.0"}
# At temperature 0 the tiny demo model answers this prompt without an early EOS, so every
# metric is present; what it says is gibberish and never checked.
X = [{"role": "user", "content": "x"}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def g(tmp_path_factory, model_dir, llama_bin):
    """One Guardian for the read-mostly tests: two chat models and an embedding model."""
    models = {
        "demo-a": {"path": str(model_dir / "demo-a.gguf"), "context": 1024, "aliases": ["fast"]},
        "demo-b:small": {"path": str(model_dir / "demo-b.gguf"), "context": 768},
        # A llama with --embeddings needs a pooling type (the tiny model's GGUF names none).
        "emb": {
            "path": str(model_dir / "demo-a.gguf"),
            "context": 512,
            "embeddings": True,
            "extra_args": "--pooling mean",
        },
    }
    guardian = Guardian(tmp_path_factory.mktemp("ollama-api"), models)
    guardian.start()
    yield guardian
    guardian.close()


@pytest.fixture
def client(g):
    return ollama.Client(host=g.url, timeout=60)


def ndjson(r: httpx.Response) -> list[dict]:
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = r.text.split("\n")
    assert lines[-1] == "", "every line ends with a newline"
    return [json.loads(line) for line in lines[:-1]]  # a blank line would fail here


def test_root_and_version(g):
    assert httpx.get(g.url + "/").text == "Ollama is running"
    assert httpx.head(g.url + "/").status_code == 200
    r = httpx.get(g.url + "/api/version")
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    version = r.json()["version"]
    assert tuple(map(int, version.split("."))) >= (0, 6, 4)
    assert httpx.head(g.url + "/api/version").status_code == 200


def test_tags(g, client, model_dir):
    r = httpx.get(g.url + "/api/tags")
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"demo-a:latest", "demo-b:small", "emb:latest"}
    a = models["demo-a:latest"]
    assert a["model"] == "demo-a:latest" and "expires_at" not in a
    assert len(a["digest"]) == 64 and int(a["digest"], 16) >= 0
    assert a["size"] == (model_dir / "demo-a.gguf").stat().st_size
    assert a["details"]["format"] == "gguf" and a["details"]["family"] == "llama"
    assert a["details"]["families"] == ["llama"]
    assert a["details"]["quantization_level"] == "F32"
    assert a["details"]["parameter_size"].endswith("K")
    assert datetime.fromisoformat(a["modified_at"]).tzinfo is not None
    assert models["emb:latest"]["capabilities"] == ["embedding"]
    assert httpx.head(g.url + "/api/tags").status_code == 200
    listed = client.list()  # the client's pydantic models accept it
    assert {m.model for m in listed.models} == set(models)


def test_show(g, client):
    s = client.show("demo-a")
    assert "completion" in s.capabilities and "tools" in s.capabilities
    assert s.modelinfo["general.architecture"] == "llama"
    assert s.modelinfo["llama.context_length"] == 4096  # the GGUF's own value
    assert "general.basename" not in s.modelinfo or s.modelinfo["general.basename"] != "demo-a"
    assert s.details.family == "llama"
    assert s.license and s.modelfile and "models.yaml" in s.modelfile
    assert s.template and "tools" in s.template
    lines = dict(line.split(maxsplit=1) for line in s.parameters.splitlines())
    assert lines["num_ctx"] == "1024" and json.loads(lines["stop"]) == "</s>"
    assert s.modified_at is not None
    # The deprecated `name` (Continue), an alias and the :latest form resolve too.
    for body in ({"name": "demo-a"}, {"model": "fast"}, {"model": "demo-a:latest"}):
        r = httpx.post(g.url + "/api/show", json=body)
        assert r.status_code == 200 and r.json()["parameters"] == s.parameters
    emb = httpx.post(g.url + "/api/show", json={"model": "emb"}).json()
    assert emb["capabilities"] == ["embedding"] and emb["model_info"]
    verbose = httpx.post(g.url + "/api/show", json={"model": "demo-a", "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) > 5 and verbose["tensors"]


def test_show_errors_and_wrong_methods(g, client):
    r = httpx.post(g.url + "/api/show", json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = httpx.post(g.url + "/api/show", json={"model": "nope"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nope")
    assert e.value.status_code == 404 and e.value.error == "model 'nope' not found"
    for method, path in (
        ("GET", "/api/show"),
        ("GET", "/api/chat"),
        ("POST", "/api/tags"),
        ("GET", "/api/delete"),
    ):
        r = httpx.request(method, g.url + path)
        assert r.status_code == 405, (method, path)
        assert "error" in r.json()


def test_chat_stream_and_not(g, client):
    chunks = list(client.chat("demo-a", messages=X, stream=True, options={"num_predict": 6, **GREEDY}))
    assert all(c.model == "demo-a" and c.message.role == "assistant" for c in chunks)
    assert [c.done for c in chunks].count(True) == 1 and chunks[-1].done
    final = chunks[-1]
    assert final.done_reason in ("stop", "length") and final.message.content == ""
    assert isinstance(final.total_duration, int) and final.total_duration > 0
    assert final.eval_count and final.prompt_eval_count and final.eval_duration
    r = client.chat("demo-a", messages=X, options={"num_predict": 4, **GREEDY})
    assert r.done and r.message.role == "assistant" and r.eval_count <= 4
    assert r.total_duration >= r.load_duration >= 0
    # Raw wire format: NDJSON by default, one compact object per line.
    raw = httpx.post(
        g.url + "/api/chat",
        json={
            "model": "fast",
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 3},
        },
        timeout=60,
    )
    lines = ndjson(raw)
    assert lines[-1]["done"] is True and all(line["model"] == "fast" for line in lines)
    assert lines[-1]["created_at"].endswith("Z")


def test_generate_stream_and_not(g, client):
    chunks = list(client.generate("demo-a", prompt="x", stream=True, options={"num_predict": 5, **GREEDY}))
    final = chunks[-1]
    assert final.done and final.done_reason in ("stop", "length")
    assert final.context and final.total_duration and final.load_duration is not None
    assert final.prompt_eval_duration and final.eval_count and final.eval_duration
    text = "".join(c.response for c in chunks)
    r = client.generate("demo-a", prompt="x", options={"num_predict": 5, **GREEDY})
    assert r.done and isinstance(r.response, str) and r.context
    # The old `context` continues the conversation (rendered template after the ids).
    r2 = client.generate("demo-a", prompt="more", context=r.context, options={"num_predict": 3})
    assert r2.done and r2.context[: len(r.context)] == r.context
    raw = client.generate("demo-a", prompt="abc", raw=True, options={"num_predict": 3})
    assert raw.done and not raw.context  # Ollama leaves context out in raw mode
    assert isinstance(text, str)


def test_embed_and_legacy_embeddings(g, client):
    r = client.embed("emb", input=["hello", "world"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 128
    norm = sum(v * v for v in r.embeddings[0]) ** 0.5
    assert abs(norm - 1) < 1e-6
    assert r.prompt_eval_count and r.total_duration
    short = client.embed("emb", input="hello", dimensions=16)
    assert len(short.embeddings[0]) == 16 and abs(sum(v * v for v in short.embeddings[0]) - 1) < 1e-6
    assert client.embed("emb", input=[]).embeddings == []
    legacy = client.embeddings("emb", prompt="hello")
    assert len(legacy.embedding) == 128
    # Longer than one batch: truncated by default, refused with truncate false.
    long = "hello world " * 400
    assert len(client.embed("emb", input=long).embeddings[0]) == 128
    r = httpx.post(g.url + "/api/embed", json={"model": "emb", "input": long, "truncate": False}, timeout=60)
    assert (r.status_code, r.json()) == (400, {"error": "the input length exceeds the context length"})
    # A model without `embeddings: true`, and an embedding model asked to chat.
    with pytest.raises(ollama.ResponseError) as e:
        client.embed("demo-a", input="x")
    assert e.value.status_code == 400 and e.value.error == '"demo-a" does not support embeddings'
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("emb", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 400 and e.value.error == '"emb" does not support chat'
    r = httpx.post(g.url + "/api/embed", json={"model": "emb", "input": [1, 2]})
    assert (r.status_code, r.json()) == (400, {"error": "invalid input type"})


def test_request_errors(g, client):
    body = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(g.url + "/api/chat", json=body)
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = httpx.post(g.url + "/api/chat", json={"messages": []})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    r = httpx.post(g.url + "/api/generate", json={"model": "nope", "prompt": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope' not found"})
    r = httpx.post(g.url + "/api/generate", json={"prompt": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "model '' not found"})
    r = httpx.post(g.url + "/api/chat", content=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(g.url + "/api/generate", json={"model": "demo-a", "prompt": "x", "keep_alive": "10"})
    assert (r.status_code, r.json()) == (400, {"error": 'time: missing unit in duration "10"'})
    r = httpx.post(
        g.url + "/api/generate", json={"model": "demo-a", "prompt": "x", "raw": True, "system": "s"}
    )
    assert r.json() == {"error": "raw mode does not support template, system, or context"}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404


def test_model_management_routes(g, client):
    assert client.pull("demo-a").status == "success"
    r = httpx.post(g.url + "/api/pull", json={"name": "demo-a"})
    assert ndjson(r) == [{"status": "success"}]
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3.2:1b")
    assert (
        e.value.status_code == 404
        and "the server's models.yaml" in e.value.error
        and str(g.root) not in e.value.error
    )
    for path, body in (
        ("/api/push", {"model": "demo-a"}),
        ("/api/create", {"model": "mine", "from": "demo-a"}),
        ("/api/copy", {"source": "demo-a", "destination": "other"}),
    ):
        r = httpx.post(g.url + path, json=body)
        assert r.status_code == 400 and "models.yaml" in r.json()["error"], path
    r = httpx.post(g.url + "/api/copy", json={"source": "nope", "destination": "x"})
    assert r.status_code == 404 and r.json()["error"].startswith('model "nope" not found')
    r = httpx.request("DELETE", g.url + "/api/delete", json={"model": "demo-a"})
    assert r.status_code == 400 and "models.yaml" in r.json()["error"]
    r = httpx.request("DELETE", g.url + "/api/delete", json={"model": "nope"})
    assert r.status_code == 404
    digest = "sha256:" + "0" * 64
    assert httpx.head(f"{g.url}/api/blobs/{digest}").status_code == 404
    r = httpx.post(f"{g.url}/api/blobs/{digest}", content=b"data")
    assert r.status_code == 400 and "models.yaml" in r.json()["error"]


def test_ps_lists_resident_models(g, client):
    client.generate("demo-b:small", prompt="hi", options={"num_predict": 1})
    ps = client.ps()
    names = [m.name for m in ps.models]
    assert "demo-b:small" in names
    m = next(m for m in ps.models if m.name == "demo-b:small")
    assert m.digest and m.details.family == "llama" and m.size > 0 and 0 <= m.size_vram <= m.size
    assert m.context_length == 768
    assert m.expires_at > datetime.now(UTC)
    raw = httpx.get(g.url + "/api/ps").json()["models"]
    expires = [datetime.fromisoformat(x["expires_at"]) for x in raw]
    assert expires == sorted(expires, reverse=True)


def test_copilot_sequence(g):
    c = httpx.Client(base_url=g.url, headers=COPILOT, timeout=60)
    version = c.get("/api/version").json()["version"]
    assert tuple(map(int, version.split("."))) >= (0, 6, 4)
    models = [m["model"] for m in c.get("/api/tags").json()["models"]]
    shown = {}
    for name in models:
        s = c.post("/api/show", json={"model": name}).json()
        assert isinstance(s["capabilities"], list)
        info = s["model_info"]
        assert info["general.basename"] == name
        shown[name] = (s["capabilities"], info[f"{info['general.architecture']}.context_length"])
    assert "tools" in shown["demo-a:latest"][0]
    assert shown["demo-a:latest"][1] == 1024  # the context Guardian runs, for Copilot's budget
    oai = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", default_headers=COPILOT, max_retries=0)
    finish = [
        c.choices[0].finish_reason
        for c in oai.chat.completions.create(
            model="demo-a:latest", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        if c.choices and c.choices[0].finish_reason
    ]
    assert finish in (["length"], ["stop"])  # random weights: what it says does not matter


def test_cors(g):
    pre = httpx.options(
        g.url + "/api/chat",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = httpx.get(g.url + "/api/tags", headers={"Origin": "vscode-webview://abc"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "vscode-webview://abc"
    r = httpx.get(g.url + "/api/tags", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in httpx.get(g.url + "/api/tags").headers


def test_keep_alive_load_and_unload(guardian_factory):
    g = guardian_factory()
    client = ollama.Client(host=g.url)
    r = client.generate("demo-a", prompt="", keep_alive="10m")
    assert r.done and r.done_reason == "load" and r.response == ""
    assert g.model("demo-a")["state"] == "READY"
    (m,) = client.ps().models
    left = (m.expires_at - datetime.now(UTC)).total_seconds()
    assert m.name == "demo-a:latest" and 500 < left <= 600
    r = client.chat("demo-a", messages=[], keep_alive=0)
    assert r.done and r.done_reason == "unload" and r.message.role == "assistant"
    assert g.model("demo-a")["state"] == "STOPPED"
    assert client.ps().models == []
    r = client.chat("demo-b", messages=[], keep_alive=-1)
    assert r.done_reason == "load"
    (m,) = client.ps().models
    assert m.expires_at.year > 2200  # kept forever
    status = g.ctl("status", "--json")
    assert status.returncode == 0
    assert {x["name"]: x["state"] for x in json.loads(status.stdout)["models"]}["demo-b"] == "READY"
    r = httpx.post(g.url + "/api/generate", json={"model": "demo-b", "prompt": "", "keep_alive": 0}).json()
    assert r["done_reason"] == "unload" and g.model("demo-b")["state"] == "STOPPED"


def test_num_ctx_reloads_only_for_more(guardian_factory, model_dir):
    g = guardian_factory({"demo-a": {"path": str(model_dir / "demo-a.gguf"), "context": 2048}})
    client = ollama.Client(host=g.url)

    def chat(num_ctx: int) -> tuple[int, int]:
        client.chat(
            "demo-a",
            messages=[{"role": "user", "content": "hi"}],
            options={"num_ctx": num_ctx, "num_predict": 1},
        )
        m = g.model("demo-a")
        return m["ctx"], m["pid"]

    ctx, pid = chat(512)
    assert ctx == 512
    ctx2, pid2 = chat(1024)
    assert ctx2 == 1024 and pid2 != pid, "a larger context reloads the model"
    ctx3, pid3 = chat(256)
    assert (ctx3, pid3) == (1024, pid2), "a smaller one does not"
    ctx4, _ = chat(100_000)
    assert ctx4 == 2048, "never beyond the configured context"
    (m,) = client.ps().models
    assert m.context_length == 2048


def test_api_key_is_enforced_on_api_routes(guardian_factory):
    g = guardian_factory()
    created = g.ctl("keys", "create", "x", "--models", "demo-a")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 5
    while httpx.get(g.url + "/api/tags").status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.05)  # the proxy re-reads the key file within a moment
    r = httpx.get(g.url + "/api/tags")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(g.url + "/api/version").status_code == 200  # probes stay open
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=g.url).chat("demo-a", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401
    authed = ollama.Client(host=g.url, headers={"Authorization": f"Bearer {key}"})
    assert [m.model for m in authed.list().models] == ["demo-a:latest"]  # filtered to the key's scope
    assert authed.chat("demo-a", messages=[{"role": "user", "content": "x"}], options={"num_predict": 1}).done
    with pytest.raises(ollama.ResponseError) as e:
        authed.chat("demo-b", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404  # out of scope looks like absent
