"""The Responses API ⇄ chat completions translation (guardian_proxy.responses_api), pure."""

from __future__ import annotations

import json

import pytest

from guardian_proxy.catalog import Entry
from guardian_proxy.llama_routes import rerank_refusal
from guardian_proxy.responses_api import (
    ResponsesError,
    ResponsesStream,
    build_chat_request,
    response_from_chat,
)


def events(raw: list[bytes]) -> list[dict]:
    out = []
    for ev in raw:
        head, data = ev.decode().strip().split("\n")
        obj = json.loads(data.removeprefix("data: "))
        assert head == "event: " + obj["type"]
        out.append(obj)
    return out


def test_string_input_and_instructions():
    plan = build_chat_request(
        {"model": "m", "input": "hi", "instructions": "be nice", "max_output_tokens": 5, "temperature": 0.2}
    )
    assert plan.body["messages"] == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
    ]
    assert plan.body["max_tokens"] == 5 and plan.body["temperature"] == 0.2
    assert plan.body["stream"] is False and "stream_options" not in plan.body


def test_items_function_calls_join_the_assistant_turn():
    plan = build_chat_request(
        {
            "model": "m",
            "stream": True,
            "input": [
                {
                    "type": "message",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "rules"}],
                },
                {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                {"type": "reasoning", "summary": [], "encrypted_content": "xx"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me see."}],
                },
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "read",
                    "namespace": "mcp__files__",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "ok"}],
                },
            ],
        }
    )
    m = plan.body["messages"]
    assert m[0] == {"role": "system", "content": "rules"}
    assert m[1] == {"role": "user", "content": "weather?"}
    assert m[2]["role"] == "assistant" and m[2]["content"] == "Let me see."
    assert [c["function"]["name"] for c in m[2]["tool_calls"]] == ["get_weather", "mcp__files__read"]
    assert m[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert m[4] == {"role": "tool", "tool_call_id": "c2", "content": "ok"}
    assert plan.body["stream_options"] == {"include_usage": True}
    assert plan.dropped == ["input[2] type 'reasoning'"]


def test_codex_tools_expand_namespaces_and_drop_hosted_ones():
    plan = build_chat_request(
        {
            "model": "m",
            "input": "x",
            "tool_choice": {"type": "function", "name": "shell"},
            "tools": [
                {"type": "function", "name": "shell", "description": "run", "parameters": {"type": "object"}},
                {
                    "type": "namespace",
                    "name": "mcp__files__",
                    "tools": [{"type": "function", "name": "read", "parameters": {"type": "object"}}],
                },
                {"type": "namespace", "name": "jira", "tools": [{"type": "function", "name": "find"}]},
                {"type": "web_search"},
                {"type": "image_generation"},
            ],
        }
    )
    tools = plan.body["tools"]
    assert all(t["type"] == "function" for t in tools)  # what llama-server insists on
    assert [t["function"]["name"] for t in tools] == ["shell", "mcp__files__read", "jira__find"]
    assert tools[2]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert plan.namespaces == {"mcp__files__read": ("mcp__files__", "read"), "jira__find": ("jira", "find")}
    assert plan.dropped == ["tools[3] type 'web_search'", "tools[4] type 'image_generation'"]
    assert plan.body["tool_choice"] == {"type": "function", "function": {"name": "shell"}}


def test_only_hosted_tools_send_no_tools():
    plan = build_chat_request({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})
    assert "tools" not in plan.body and "tool_choice" not in plan.body


def test_text_format_and_reasoning_effort():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    plan = build_chat_request(
        {
            "model": "m",
            "input": "x",
            "text": {"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
            "reasoning": {"effort": "low"},
        }
    )
    assert plan.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert plan.body["reasoning_effort"] == "low"
    assert (
        "response_format" not in build_chat_request({"model": "m", "text": {"format": {"type": "text"}}}).body
    )


def test_empty_probe_gets_a_user_turn():
    plan = build_chat_request({"model": "m", "input": [], "instructions": "sys", "max_output_tokens": 1})
    assert plan.body["messages"][-1] == {"role": "user", "content": ""}
    assert plan.body["max_tokens"] == 1


def test_images_become_image_url_parts():
    plan = build_chat_request(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                }
            ],
        }
    )
    assert plan.body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "x"}, "model", "'model' is required"),
        ({"model": "m", "previous_response_id": "r"}, "previous_response_id", "stateless"),
        ({"model": "m", "input": 3}, "input", "string or a list"),
        ({"model": "m", "input": [{"type": "bogus"}]}, "input", "'bogus'"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input", "role"),
        ({"model": "m", "max_output_tokens": 0}, "max_output_tokens", "at least 1"),
        ({"model": "m", "temperature": "hot"}, "temperature", "a number"),
        ({"model": "m", "tools": [{"type": "function"}]}, "tools[0]", "name"),
        ({"model": "m", "text": {"format": {"type": "yaml"}}}, "text.format.type", "json_schema"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0]",
            "image_url",
        ),
    ],
)
def test_bad_requests_name_the_field(body, param, words):
    with pytest.raises(ResponsesError) as e:
        build_chat_request(body)
    assert e.value.param == param and words in e.value.message and e.value.status == 400


def chunk(delta=None, finish=None, **extra):
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_stream_text_with_reasoning():
    t = ResponsesStream("m", {"instructions": None})
    out = t.start()
    out += t.feed(chunk({"role": "assistant", "content": None}))
    out += t.feed(chunk({"reasoning_content": "think"}))
    out += t.feed(chunk({"content": "Hel"}))
    out += t.feed(chunk({"content": "lo"}))
    out += t.feed(chunk(finish="stop"))
    out += t.feed(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )
    out += t.finish()
    evs = events(out)
    assert [e["type"] for e in evs] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert evs[6]["output_index"] == 1 and evs[8]["output_index"] == 1
    final = evs[-1]["response"]
    assert final["status"] == "completed"
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == "Hello"
    assert final["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }


def test_stream_function_calls_and_namespace_names():
    t = ResponsesStream("m", {}, {"mcp__files__read": ("mcp__files__", "read")})
    out = t.feed(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "shell", "arguments": ""},
                    }
                ]
            }
        )
    )
    out += t.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"cmd":'}}]}))
    out += t.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"ls"}'}}]}))
    out += t.feed(
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_2", "function": {"name": "mcp__files__read", "arguments": "{}"}}
                ]
            }
        )
    )
    out += t.feed(chunk(finish="tool_calls"))
    out += t.finish()
    evs = events(out)
    deltas = [e["delta"] for e in evs if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ['{"cmd":', '"ls"}', "{}"]
    done = [e for e in evs if e["type"] == "response.output_item.done"]
    assert done[0]["item"] == {
        "type": "function_call",
        "id": done[0]["item"]["id"],
        "call_id": "call_1",
        "name": "shell",
        "arguments": '{"cmd":"ls"}',
        "status": "completed",
    }
    assert done[1]["item"]["name"] == "read" and done[1]["item"]["namespace"] == "mcp__files__"
    assert [d["output_index"] for d in done] == [0, 1]
    assert evs[-1]["type"] == "response.completed"


def test_length_is_incomplete_and_errors_fail():
    t = ResponsesStream("m", {})
    t.feed(chunk({"content": "a"}, finish="length"))
    assert events(t.finish())[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    t = ResponsesStream("m", {})
    evs = events(t.feed({"error": {"code": 500, "message": "boom"}}))
    assert [e["type"] for e in evs] == ["error", "response.failed"]
    assert evs[1]["response"]["error"]["message"] == "boom"
    assert t.finish() == []  # ended once


def test_whole_completion_to_response():
    completion = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": "ok",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }
    r = response_from_chat(completion, "m", {"tools": []})
    assert r["object"] == "response" and r["status"] == "completed" and r["model"] == "m"
    assert [i["type"] for i in r["output"]] == ["message", "function_call"]
    assert r["output"][1]["call_id"] == "c" and r["usage"]["total_tokens"] == 3


def entry(**kw) -> Entry:
    base = dict(
        name="r",
        aliases=(),
        context=512,
        embeddings=False,
        reranking=True,
        flavor="upstream",
        capabilities=(),
        has_template=True,
        tag={},
    )
    return Entry(**{**base, **kw})


def test_rerank_refusals():
    assert rerank_refusal(entry()) is None
    assert "reranking: true" in (rerank_refusal(entry(reranking=False)) or "")
    assert "ik_llama.cpp" in (rerank_refusal(entry(flavor="ik")) or "")
