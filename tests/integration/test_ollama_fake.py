"""The Ollama API where content matters, with the fake llama-server: tool-call round trips,
thinking, exact timings as exact nanoseconds, capability errors, a crash mid-stream."""

from __future__ import annotations

import json
import time

import httpx
import ollama
import pytest

from guardian_supervisor import demo_models
from guardian_supervisor.demo_models import TinySpec, write_tiny_llama
from tests.fakes.fake_llama_server import read_records
from tests.harness import write_fake_config

pytestmark = pytest.mark.timeout(120)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory) -> dict[str, str]:
    """GGUF files whose chat template has no tools (plain) or is a reasoning model's (thinking)."""
    d = tmp_path_factory.mktemp("odd-models")
    out = {}
    templates = {
        "plain": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
        "thinking": "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if enable_thinking %}<think>{% endif %}",
    }
    mp = pytest.MonkeyPatch()
    try:
        for name, template in templates.items():
            mp.setattr(demo_models, "CHAT_TEMPLATE", template)
            out[name] = str(write_tiny_llama(d / f"{name}.gguf", TinySpec(name=name, seed=5)))
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def fake(tmp_path_factory, model_dir, odd_models, llama_bin):
    """One Guardian on the fake for the whole module; tests change the fake's behaviour."""
    from tests.harness import Guardian

    root = tmp_path_factory.mktemp("ollama-fake")
    cfg, record = root / "fake.json", root / "record.jsonl"
    write_fake_config(cfg)
    models = {
        "fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512},
        "plain": {"path": odd_models["plain"], "backend": "fake", "context": 512},
        "thinker": {"path": odd_models["thinking"], "backend": "fake", "context": 512},
        "vec": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "embeddings": True},
    }
    env = {"FAKE_LLAMA_CONFIG": str(cfg), "FAKE_LLAMA_RECORD": str(record)}
    g = Guardian(root / "g", models, env=env)
    g.start()
    g.fake_config, g.record = cfg, record
    yield g
    g.close()


def behave(g, default=None, per_model=None) -> None:
    write_fake_config(g.fake_config, default or {}, per_model)


def chat_bodies(g) -> list[dict]:
    return [r["body"] for r in read_records(g.record) if r.get("path") == "/v1/chat/completions"]


def test_tool_call_round_trip(fake):
    behave(fake, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]})
    client = ollama.Client(host=fake.url)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat("fa", messages=messages, tools=[WEATHER_TOOL])
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris", "unit": "C"}  # an object, keys in order
    assert list(call.function.arguments) == ["city", "unit"]
    assert r.done_reason == "stop"
    sent = chat_bodies(fake)[-1]
    tool = sent["tools"][0]
    assert tool["type"] == "function" and tool["function"]["name"] == "get_weather"

    # Streaming: each call arrives once, whole (LangChain collects them from every chunk).
    chunks = list(client.chat("fa", messages=messages, tools=[WEATHER_TOOL], stream=True))
    calls = [c for chunk in chunks for c in (chunk.message.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.arguments == {"city": "Paris", "unit": "C"}
    assert chunks[-1].done

    # Second turn: the client sends the call back (without an id) and the tool's result.
    behave(fake, {"content": ["It is ", "sunny."]})
    messages += [r.message, {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]
    r2 = client.chat("fa", messages=messages, tools=[WEATHER_TOOL])
    assert r2.message.content == "It is sunny."
    fwd = chat_bodies(fake)[-1]["messages"]
    assistant, result = fwd[1], fwd[2]
    (tc,) = assistant["tool_calls"]
    assert tc["type"] == "function" and tc["id"].startswith("call_")
    assert isinstance(tc["function"]["arguments"], str)
    assert json.loads(tc["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert assistant["content"] == ""
    assert result["role"] == "tool" and result["tool_call_id"] == tc["id"]
    assert result["name"] == "get_weather" and result["content"] == "sunny, 21 C"


def test_empty_tools_list_is_not_a_tools_request(fake):
    behave(fake, {"content": ["ok"]})
    client = ollama.Client(host=fake.url)
    # ollama-python sends "tools": [] always; a model without tools must still answer.
    assert client.chat("plain", messages=[{"role": "user", "content": "x"}]).message.content == "ok"
    assert "tools" not in chat_bodies(fake)[-1]
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("plain", messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL])
    assert (e.value.status_code, e.value.error) == (400, "plain does not support tools")
    assert "tools" in client.show("fa").capabilities and "tools" not in client.show("plain").capabilities


def test_thinking(fake):
    behave(fake, {"reasoning": ["Let me ", "think."], "content": ["42"]})
    client = ollama.Client(host=fake.url)
    assert "thinking" in client.show("thinker").capabilities
    r = client.chat("thinker", messages=[{"role": "user", "content": "?"}], think=True)
    assert (r.message.thinking, r.message.content) == ("Let me think.", "42")
    assert chat_bodies(fake)[-1]["chat_template_kwargs"] == {"enable_thinking": True}
    chunks = list(
        client.chat("thinker", messages=[{"role": "user", "content": "?"}], think="high", stream=True)
    )
    assert "".join(c.message.thinking or "" for c in chunks) == "Let me think."
    assert chat_bodies(fake)[-1]["chat_template_kwargs"] == {
        "enable_thinking": True,
        "reasoning_effort": "high",
    }
    g = client.generate("thinker", prompt="?", think=True)
    assert (g.thinking, g.response) == ("Let me think.", "42")
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("fa", messages=[{"role": "user", "content": "?"}], think=True)
    assert (e.value.status_code, e.value.error) == (400, '"fa" does not support thinking')
    assert client.chat("fa", messages=[{"role": "user", "content": "?"}], think=False).done


TIMINGS = {"cache_n": 3, "prompt_n": 10, "prompt_ms": 12.5, "predicted_n": 7, "predicted_ms": 33.25}


def test_exact_timings_become_exact_nanoseconds(fake):
    behave(fake, {"content": ["a", "b"], "timings": TIMINGS})
    client = ollama.Client(host=fake.url)
    msgs = [{"role": "user", "content": "x"}]
    for r in (client.chat("fa", messages=msgs), list(client.chat("fa", messages=msgs, stream=True))[-1]):
        assert r.prompt_eval_count == 13  # prompt_n + cache_n, as Ollama counts
        assert r.prompt_eval_duration == 12_500_000
        assert r.eval_count == 7 and r.eval_duration == 33_250_000
        assert isinstance(r.total_duration, int) and r.total_duration >= r.load_duration
    for r in (client.generate("fa", prompt="x"), list(client.generate("fa", prompt="x", stream=True))[-1]):
        assert (r.prompt_eval_count, r.prompt_eval_duration) == (13, 12_500_000)
        assert (r.eval_count, r.eval_duration) == (7, 33_250_000)
        assert r.context, "prompt + output tokens via /apply-template and /tokenize"
    raw = httpx.post(fake.url + "/api/chat", json={"model": "fa", "messages": msgs, "stream": False}).json()
    assert all(isinstance(raw[k], int) for k in ("total_duration", "prompt_eval_duration", "eval_duration"))


def test_generate_forwards_options_system_and_raw(fake):
    behave(fake, {"content": ["ok"]})
    client = ollama.Client(host=fake.url)
    client.generate(
        "fa", prompt="hi", system="Be brief.", options={"temperature": 0.1, "stop": ["\n"], "num_predict": 9}
    )
    body = chat_bodies(fake)[-1]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (body["temperature"], body["stop"], body["n_predict"]) == (0.1, ["\n"], 9)
    client.generate("fa", prompt="raw text", raw=True)
    native = [r for r in read_records(fake.record) if r.get("path") == "/completion"][-1]["body"]
    assert native["prompt"] == "raw text"
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("fa", prompt="def f(", suffix="return 1")
    assert (e.value.status_code, e.value.error) == (400, "fa does not support insert")


def test_crash_mid_stream_ends_with_an_error_line(fake):
    behave(
        fake,
        per_model={
            "fa": {"crash_mid_stream_after": 2, "content": ["a", "b", "c", "d"], "token_delay_s": 0.02}
        },
    )
    r = httpx.post(
        fake.url + "/api/chat",
        json={"model": "fa", "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["message"]["content"] for line in lines[:-1]] == ["a", "b"]
    assert set(lines[-1]) == {"error"} and "llama-server" in lines[-1]["error"]
    behave(fake, per_model={"fa": {"crash_mid_stream_after": 1, "content": ["a", "b"]}})
    with pytest.raises(ollama.ResponseError):
        list(
            ollama.Client(host=fake.url).chat("fa", messages=[{"role": "user", "content": "x"}], stream=True)
        )
    behave(fake, {"content": ["back"]})
    r2 = ollama.Client(host=fake.url).chat("fa", messages=[{"role": "user", "content": "x"}])
    assert r2.message.content == "back", "the model is restarted on the next request"


def test_client_disconnect_cancels_upstream_and_frees_the_lease(fake):
    behave(fake, {"content": ["t"] * 200, "token_delay_s": 0.02})
    body = {"model": "fa", "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", fake.url + "/api/chat", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False
    deadline = time.monotonic() + 5
    while fake.status()["leases"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.status()["leases"] == 0
    while time.monotonic() < deadline:
        if any(r.get("event") == "disconnect" for r in read_records(fake.record)):
            break
        time.sleep(0.02)
    else:
        pytest.fail("llama-server never saw the request go away")
    behave(fake)


def test_upstream_error_before_the_stream(fake):
    behave(
        fake,
        {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size",
                "type": "exceed_context_size_error",
            }
        },
    )
    r = httpx.post(
        fake.url + "/api/chat", json={"model": "fa", "messages": [{"role": "user", "content": "x"}]}
    )
    # Nothing to drop from a one-message chat: Ollama's words, llama-server's reason after them.
    assert r.status_code == 400
    assert r.json()["error"].startswith("the prompt is longer than the context length")
    assert r.json()["error"].endswith("(llama-server: the request exceeds the available context size)")
    behave(fake)


def test_embedding_model_through_the_fake(fake):
    behave(fake, {"embedding_dim": 8})
    client = ollama.Client(host=fake.url)
    r = client.embed("vec", input=["a", "b", "c"])
    assert len(r.embeddings) == 3 and all(len(v) == 8 for v in r.embeddings)
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("vec", prompt="x")
    assert (e.value.status_code, e.value.error) == (400, '"vec" does not support generate')
    assert client.show("vec").capabilities == ["embedding"]
