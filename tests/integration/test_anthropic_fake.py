"""The Anthropic Messages API where content matters: tool-use round trips and thinking blocks,
through the real anthropic SDK and Guardian, on the fake llama-server (which answers tool calls
and reasoning on cue and records what it was sent). Also: think / reasoning effort reaching
the backend as its reasoning controls."""

from __future__ import annotations

import anthropic
import ollama
import openai
import pytest

from guardian_supervisor import demo_models
from guardian_supervisor.demo_models import TinySpec, write_tiny_llama
from tests.fakes.fake_llama_server import read_records
from tests.harness import Guardian, write_fake_config

pytestmark = pytest.mark.timeout(120)

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def fake(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("anthropic-fake")
    cfg, record = root / "fake.json", root / "record.jsonl"
    write_fake_config(cfg)
    # A model whose chat template reads enable_thinking: Guardian then lists the thinking capability.
    mp = pytest.MonkeyPatch()
    mp.setattr(
        demo_models,
        "CHAT_TEMPLATE",
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if enable_thinking %}<think>{% endif %}",
    )
    try:
        thinker = write_tiny_llama(root / "thinker.gguf", TinySpec(name="thinker", seed=5))
    finally:
        mp.undo()
    models = {
        "fa": {"path": str(model_dir / "demo-a.gguf"), "backend": "fake", "context": 512},
        "thinker": {"path": str(thinker), "backend": "fake", "context": 512},
    }
    g = Guardian(root / "g", models, env={"FAKE_LLAMA_CONFIG": str(cfg), "FAKE_LLAMA_RECORD": str(record)})
    g.start()
    g.fake_config, g.record = cfg, record
    yield g
    g.close()


def behave(g, default):
    write_fake_config(g.fake_config, default)


def last_chat_body(g):
    return [r["body"] for r in read_records(g.record) if r.get("path") == "/v1/chat/completions"][-1]


@pytest.fixture
def client(fake):
    return anthropic.Anthropic(base_url=fake.url, api_key="unused", max_retries=0)


def test_tool_use_round_trip(fake, client):
    behave(fake, {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call_1"}]})
    msg = client.messages.create(
        model="fa", max_tokens=64, messages=ASK, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert (use.name, use.input, use.id) == ("get_weather", {"city": "Paris"}, "call_1")
    sent = last_chat_body(fake)
    assert sent["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert sent["tool_choice"] == "required"

    # Streamed: the SDK assembles the tool_use block from input_json_delta events.
    with client.messages.stream(model="fa", max_tokens=64, messages=ASK, tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == {"city": "Paris"} and final.stop_reason == "tool_use"

    # Second turn: the call and its result go back; system text after the result stays there.
    behave(fake, {"content": ["It is ", "sunny."]})
    turn2 = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"},
                {"type": "text", "text": "<system-reminder>be brief</system-reminder>"},
            ],
        },
    ]
    answer = client.messages.create(
        model="fa", max_tokens=64, system="You are terse.", messages=turn2, tools=[WEATHER]
    )
    assert answer.content[0].text == "It is sunny." and answer.stop_reason == "end_turn"
    fwd = last_chat_body(fake)["messages"]
    assert [m["role"] for m in fwd] == ["system", "user", "assistant", "tool", "user"]
    assert fwd[2]["tool_calls"][0]["id"] == "call_1"
    assert fwd[2]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert fwd[3] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}
    assert fwd[4]["content"] == "<system-reminder>be brief</system-reminder>"


def test_thinking_blocks_and_budget(fake, client):
    behave(fake, {"reasoning": ["Let me ", "think."], "content": ["42"]})
    with client.messages.stream(
        model="fa",
        max_tokens=2048,
        messages=[{"role": "user", "content": "?"}],
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think." and final.content[1].text == "42"
    sent = last_chat_body(fake)
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert sent["thinking_budget_tokens"] == 1024


def test_upstream_error_mid_request_is_anthropic_shaped(fake, client):
    behave(fake, {"error": {"code": 500, "message": "slot exploded", "type": "server_error"}})
    with pytest.raises(anthropic.InternalServerError) as e:
        client.messages.create(model="fa", max_tokens=8, messages=ASK)
    assert e.value.body == {"type": "error", "error": {"type": "api_error", "message": "slot exploded"}}
    behave(fake, {})


def test_ollama_think_high_and_v1_effort_reach_the_backend(fake):
    behave(fake, {"reasoning": ["hm"], "content": ["ok"]})
    r = ollama.Client(host=fake.url).chat(
        "thinker", messages=[{"role": "user", "content": "?"}], think="high"
    )
    assert r.message.content == "ok"
    sent = last_chat_body(fake)
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}
    assert sent["reasoning_effort"] == "high" and sent["thinking_budget_tokens"] == 16384

    oai = openai.OpenAI(base_url=fake.url + "/v1", api_key="unused")
    oai.chat.completions.create(
        model="fa", messages=[{"role": "user", "content": "?"}], reasoning_effort="none"
    )
    sent = last_chat_body(fake)
    assert sent["chat_template_kwargs"] == {"enable_thinking": False} and sent["thinking_budget_tokens"] == 0
    assert "reasoning_effort" not in sent
    oai.chat.completions.create(
        model="fa", messages=[{"role": "user", "content": "?"}], extra_body={"reasoning": {"effort": "xhigh"}}
    )
    sent = last_chat_body(fake)
    assert sent["chat_template_kwargs"]["reasoning_effort"] == "max" and "reasoning" not in sent
