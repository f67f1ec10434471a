"""Anthropic Messages ⇄ llama-server chat completions: the pure translation."""

import json

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from guardian_proxy.anthropic_api import AnthropicError, MessageStream, build_chat_body, message_from_openai
from guardian_proxy.anthropic_api.errors import error_body

TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def body(**kw):
    return {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_system_blocks_and_in_place_system_messages_keep_their_order():
    plan = build_chat_body(
        body(
            system=[{"type": "text", "text": "You are"}, {"type": "text", "text": "terse."}],
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "system", "content": "reminder"},
                {"role": "user", "content": [{"type": "text", "text": "c"}]},
            ],
        )
    )
    assert [(m["role"], m["content"]) for m in plan.body["messages"]] == [
        ("system", "You are\nterse."),
        ("user", "a"),
        ("assistant", "b"),
        ("system", "reminder"),
        ("user", "c"),
    ]
    assert plan.body["max_tokens"] == 64 and plan.stream is False


def test_tool_round_trip_history_and_tool_choice():
    plan = build_chat_body(
        body(
            tools=[TOOL, {"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "need tool", "signature": ""},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {"type": "text", "text": "and tomorrow?"},
                    ],
                },
            ],
        )
    )
    msgs = plan.body["messages"]
    assert msgs[1] == {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "need tool",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert msgs[3] == {"role": "user", "content": "and tomorrow?"}
    assert [t["function"]["name"] for t in plan.body["tools"]] == ["get_weather"]
    assert plan.dropped_tools == ["web_search (web_search_20250305)"]
    assert plan.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert plan.body["parallel_tool_calls"] is False


def test_base64_image_becomes_a_data_uri_part():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}
    plan = build_chat_body(
        body(messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}])
    )
    assert plan.body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "text", "text": "what?"},
    ]


def test_thinking_stream_and_sampling_fields():
    plan = build_chat_body(
        body(
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 2048},
            stop_sequences=["X"],
            temperature=0.2,
        )
    )
    b = plan.body
    assert b["stream"] and b["stream_options"] == {"include_usage": True}
    assert b["chat_template_kwargs"] == {"enable_thinking": True} and b["thinking_budget_tokens"] == 2048
    assert b["stop"] == ["X"] and b["temperature"] == 0.2
    assert build_chat_body(body(thinking={"type": "disabled"})).body["thinking_budget_tokens"] == 0


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"tool_choice": {"type": "sometimes"}, "tools": [TOOL]}, "tool_choice.type"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "tool_use_id"),
    ],
)
def test_invalid_requests_name_the_field(bad, where):
    with pytest.raises(AnthropicError) as e:
        build_chat_body(body(**bad))
    assert e.value.status == 400 and where in e.value.message


def test_count_tokens_needs_no_max_tokens():
    plan = build_chat_body({"model": "m", "messages": [{"role": "user", "content": "x"}]}, count_only=True)
    assert "max_tokens" not in plan.body and "stream" not in plan.body


def test_whole_answer_with_cached_usage_validates_as_sdk_message():
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "Let me look.",
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 7},
        "timings": {"prompt_n": 10, "cache_n": 30},
    }
    msg = message_from_openai(answer, "m")
    Message.model_validate(msg)
    assert [b["type"] for b in msg["content"]] == ["thinking", "text", "tool_use"]
    assert msg["content"][2]["input"] == {"city": "Oslo"} and msg["stop_reason"] == "tool_use"
    assert msg["usage"]["input_tokens"] == 10 and msg["usage"]["cache_read_input_tokens"] == 30
    assert msg["usage"]["output_tokens"] == 7


def chunk(delta=None, finish=None, **extra):
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_stream_events_open_and_close_one_block_per_kind():
    s = MessageStream("m")
    events = s.start()
    for c in [
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "th"}),
        chunk({"reasoning_content": "ink"}),
        chunk({"content": "Hi"}),
        chunk(
            {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5},
            "timings": {"prompt_n": 2, "cache_n": 10},
        },
    ]:
        events += s.feed(c)
    events += s.finish()
    adapter = TypeAdapter(RawMessageStreamEvent)
    for name, data in events:
        if name != "ping":
            adapter.validate_python(data)
        assert data["type"] == name
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names.count("content_block_start") == 3 == names.count("content_block_stop")
    assert names[-2:] == ["message_delta", "message_stop"]
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    json_parts = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(json_parts) == {"city": "Rome"}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
        "output_tokens": 5,
    }


def test_stream_that_never_finishes_is_an_error_and_errors_have_anthropic_shape():
    s = MessageStream("m")
    s.feed(chunk({"content": "a"}))
    with pytest.raises(AnthropicError):
        s.finish()
    with pytest.raises(AnthropicError) as e:
        s.feed({"error": {"code": 500, "message": "boom"}})
    assert error_body(e.value.status, e.value.message) == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
    }
    assert error_body(404, "x")["error"]["type"] == "not_found_error"
