import base64
import json

import pytest

from guardian_proxy.ollama import (
    KEEP_FOREVER,
    OllamaError,
    build_chat_request,
    convert_messages,
    normalize_tools,
)
from guardian_proxy.ollama.images import image_data_uri, image_mime

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 20).decode()
GIF = base64.b64encode(b"GIF89a" + b"\x00" * 20).decode()
WEBP = base64.b64encode(b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20).decode()
UNKNOWN = base64.b64encode(b"hello world, not an image").decode()


def chat(**kw):
    body = {"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return build_chat_request(body)


def test_minimal_request():
    plan = chat()
    assert plan.action == "chat"
    assert plan.model == "llama3.2:latest"
    assert plan.stream is True
    assert plan.keep_alive is None
    assert plan.endpoint == "/v1/chat/completions"
    assert plan.body == {
        "model": "llama3.2:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache_prompt": True,
    }


def test_non_stream_client_gets_non_stream_upstream_by_default():
    plan = chat(stream=False)
    assert plan.stream is False
    assert plan.body["stream"] is False
    assert "stream_options" not in plan.body


def test_stream_upstream_override_for_aggregation():
    plan = build_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False}, stream_upstream=True
    )
    assert plan.stream is False
    assert plan.body["stream"] is True
    assert plan.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body", [{}, {"model": ""}, {"model": None, "messages": []}])
def test_model_is_required(body):
    with pytest.raises(OllamaError) as e:
        build_chat_request(body)
    assert (e.value.status, e.value.message) == (400, "model is required")


def test_model_must_be_string():
    with pytest.raises(OllamaError) as e:
        build_chat_request({"model": 5})
    assert e.value.status == 400
    assert "cannot unmarshal number" in e.value.message


def test_stream_must_be_bool():
    with pytest.raises(OllamaError) as e:
        chat(stream="yes")
    assert e.value.status == 400


@pytest.mark.parametrize("keep_alive", [0, "0", "0s", 0.0])
def test_empty_messages_with_keep_alive_zero_unloads(keep_alive):
    plan = build_chat_request({"model": "m", "messages": [], "keep_alive": keep_alive})
    assert plan.action == "unload"
    assert plan.keep_alive == 0
    assert plan.body == {}


def test_unload_wins_even_with_bad_options_like_ollama():
    plan = build_chat_request({"model": "m", "keep_alive": 0, "options": {"temperature": "hot"}})
    assert plan.action == "unload"


@pytest.mark.parametrize(
    "extra", [{}, {"messages": []}, {"messages": None}, {"keep_alive": "5m"}, {"keep_alive": -1}]
)
def test_empty_messages_otherwise_loads(extra):
    plan = build_chat_request({"model": "m", **extra})
    assert plan.action == "load"
    assert plan.body == {}


def test_load_still_validates_options():
    with pytest.raises(OllamaError):
        build_chat_request({"model": "m", "options": {"temperature": "hot"}})


def test_load_reports_load_options_and_keep_alive():
    plan = build_chat_request({"model": "m", "keep_alive": -1, "options": {"num_ctx": 8192}})
    assert plan.keep_alive == KEEP_FOREVER
    assert plan.load_options == {"num_ctx": 8192}


def test_keep_alive_error_is_400_with_go_text():
    with pytest.raises(OllamaError) as e:
        chat(keep_alive="10")
    assert (e.value.status, e.value.message) == (400, 'time: missing unit in duration "10"')


def test_options_format_think_and_logprobs_reach_the_body():
    plan = chat(
        options={"temperature": 0.1, "num_predict": 20, "num_ctx": 4096, "mirostat_x": 1},
        format="json",
        think="high",
        logprobs=True,
        top_logprobs=3,
    )
    body = plan.body
    assert body["temperature"] == 0.1
    assert body["n_predict"] == 20
    assert "num_ctx" not in body
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "high"}
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 3
    assert body["cache_prompt"] is True
    assert plan.load_options == {"num_ctx": 4096}
    assert plan.ignored_options == {"mirostat_x": 1}
    assert plan.think == "high"
    assert plan.top_logprobs == 3


def test_stray_root_options_are_ignored_but_reported():
    plan = chat(num_predict=5, options={"num_predict": 7})
    assert plan.body["n_predict"] == 7
    assert plan.stray_options == {"num_predict": 5}
    assert "num_predict" not in plan.body


def test_think_false_is_sent():
    assert chat(think=False).body["chat_template_kwargs"] == {"enable_thinking": False}


def test_unknown_root_keys_are_ignored():
    plan = chat(truncate=True, shift=False, whatever=1)
    assert "whatever" not in plan.body


# messages


def test_roles_are_lower_cased_and_content_defaults_to_empty():
    msgs, _ = convert_messages(
        [{"role": "USER", "content": "a"}, {"role": "Assistant"}, {"role": "user", "content": None}]
    )
    assert msgs == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": ""},
    ]


def test_thinking_in_history_becomes_reasoning_content():
    msgs, _ = convert_messages([{"role": "assistant", "content": "4", "thinking": "2+2"}])
    assert msgs == [{"role": "assistant", "content": "4", "reasoning_content": "2+2"}]


def test_default_system_prepended_unless_first_is_system():
    msgs, _ = convert_messages([{"role": "user", "content": "x"}], default_system="be brief")
    assert msgs[0] == {"role": "system", "content": "be brief"}
    msgs, _ = convert_messages(
        [{"role": "SYSTEM", "content": "mine"}, {"role": "user", "content": "x"}], default_system="be brief"
    )
    assert msgs[0] == {"role": "system", "content": "mine"}
    assert len(msgs) == 2


@pytest.mark.parametrize("messages", ["hi", [1], [{"role": "user", "content": ["a"]}], [{"role": 3}]])
def test_bad_messages_are_400(messages):
    with pytest.raises(OllamaError) as e:
        build_chat_request({"model": "m", "messages": messages})
    assert e.value.status == 400


# images


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (UNKNOWN, "image/jpeg"),
        ("!!", "image/jpeg"),
    ],
)
def test_image_mime_from_magic_bytes(data, mime):
    assert image_mime(data) == mime


def test_images_become_image_url_parts_after_text():
    msgs, has_images = convert_messages([{"role": "user", "content": "what is this?", "images": [PNG, JPEG]}])
    assert has_images
    assert msgs[0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]


def test_image_without_text_has_no_empty_text_part():
    msgs, _ = convert_messages([{"role": "user", "images": [GIF]}])
    assert msgs[0]["content"] == [{"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}}]


def test_empty_images_list_keeps_plain_content():
    msgs, has_images = convert_messages([{"role": "user", "content": "x", "images": []}])
    assert msgs == [{"role": "user", "content": "x"}]
    assert not has_images


def test_data_uri_passes_through():
    assert image_data_uri("data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"


def test_image_must_be_string():
    with pytest.raises(OllamaError):
        convert_messages([{"role": "user", "images": [123]}])


# tools (pitfalls from the reference)


def test_empty_tools_list_is_dropped():
    plan = chat(tools=[])
    assert "tools" not in plan.body
    assert plan.has_tools is False


def test_tools_get_type_description_and_parameters():
    tools = normalize_tools(
        [
            {"function": {"name": "now"}},
            {"type": "function", "function": {"name": "f", "parameters": {"required": []}}},
        ]
    )
    assert tools == [
        {
            "type": "function",
            "function": {
                "name": "now",
                "description": "",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "",
                "parameters": {"required": [], "type": "object", "properties": {}},
            },
        },
    ]


def test_complete_tools_are_kept():
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "$defs": {},
            },
        },
    }
    plan = chat(tools=[tool])
    assert plan.body["tools"] == [tool]
    assert plan.has_tools is True


@pytest.mark.parametrize("tools", ["x", [1], [{"function": {}}], [{"type": "function"}]])
def test_bad_tools_are_400(tools):
    with pytest.raises(OllamaError) as e:
        chat(tools=tools)
    assert e.value.status == 400


def test_assistant_tool_calls_get_type_id_and_string_arguments():
    msgs, _ = convert_messages(
        [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}},
                    {
                        "id": "call_given",
                        "function": {"index": 1, "name": "get_weather", "arguments": {"city": "Rome"}},
                    },
                ],
            },
        ]
    )
    assistant = msgs[1]
    assert assistant["content"] == ""
    calls = assistant["tool_calls"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris","unit":"C"}'}
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert calls[0]["id"].startswith("call_") and len(calls[0]["id"]) == 13
    assert calls[1]["id"] == "call_given"


def test_generated_history_ids_are_stable_across_turns():
    history = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]
    a, _ = convert_messages(history)
    b, _ = convert_messages([*history, {"role": "tool", "content": "1"}])
    assert a[0]["tool_calls"][0]["id"] == b[0]["tool_calls"][0]["id"]


def test_string_arguments_from_openai_style_clients_are_kept():
    msgs, _ = convert_messages(
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}]
    )
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'


def test_missing_arguments_become_empty_object():
    msgs, _ = convert_messages([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}])
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_non_ascii_arguments_stay_readable():
    msgs, _ = convert_messages(
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"city": "Zürich"}}}]}]
    )
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == '{"city":"Zürich"}'


def test_open_webui_tool_call_shape():
    msgs, _ = convert_messages(
        [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"index": 0, "id": "abc", "function": {"name": "f", "arguments": {"x": 1}}}],
            }
        ]
    )
    assert msgs[0]["tool_calls"] == [
        {"id": "abc", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    ]


def test_tool_result_tool_name_becomes_name_and_id_passes_through():
    msgs, _ = convert_messages(
        [
            {
                "role": "assistant",
                "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": {}}}],
            },
            {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "call_1"},
        ]
    )
    assert msgs[1] == {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "f"}


def test_tool_results_without_ids_pair_by_name():
    msgs, _ = convert_messages(
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {"tz": "CET"}}},
                ],
            },
            {"role": "tool", "content": "12:00", "tool_name": "time"},
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ]
    )
    weather_id = msgs[0]["tool_calls"][0]["id"]
    time_id = msgs[0]["tool_calls"][1]["id"]
    assert weather_id != time_id
    assert msgs[1]["tool_call_id"] == time_id and msgs[1]["name"] == "time"
    assert msgs[2]["tool_call_id"] == weather_id and msgs[2]["name"] == "weather"


def test_tool_results_without_ids_or_names_pair_by_order():
    # Continue sends tool messages with neither id nor name.
    msgs, _ = convert_messages(
        [
            {"role": "assistant", "tool_calls": [{"function": {"name": "a"}}, {"function": {"name": "b"}}]},
            {"role": "tool", "content": "ra"},
            {"role": "tool", "content": "rb"},
        ]
    )
    ids = [c["id"] for c in msgs[0]["tool_calls"]]
    assert (msgs[1]["tool_call_id"], msgs[1]["name"]) == (ids[0], "a")
    assert (msgs[2]["tool_call_id"], msgs[2]["name"]) == (ids[1], "b")


def test_tool_result_with_id_gets_name_from_its_call():
    msgs, _ = convert_messages(
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "x1", "function": {"name": "a"}},
                    {"id": "x2", "function": {"name": "b"}},
                ],
            },
            {"role": "tool", "content": "rb", "tool_call_id": "x2"},
            {"role": "tool", "content": "ra"},
        ]
    )
    assert (msgs[1]["tool_call_id"], msgs[1]["name"]) == ("x2", "b")
    assert (msgs[2]["tool_call_id"], msgs[2]["name"]) == ("x1", "a")


def test_tool_result_without_any_call_is_left_alone():
    msgs, _ = convert_messages([{"role": "tool", "content": "r"}])
    assert msgs == [{"role": "tool", "content": "r"}]


def test_tool_call_arguments_must_be_object_or_string():
    with pytest.raises(OllamaError) as e:
        convert_messages(
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}]
        )
    assert e.value.status == 400


def test_langchain_round_trip_body():
    plan = build_chat_request(
        {
            "model": "qwen3:8b",
            "stream": True,
            "messages": [
                {"role": "user", "content": "What is 3*4?", "images": []},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "type": "function",
                            "id": "call_lc1",
                            "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}},
                        }
                    ],
                },
                {"role": "tool", "content": "12", "tool_call_id": "call_lc1"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "multiply",
                        "description": "Multiply",
                        "parameters": {
                            "type": "object",
                            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                        },
                    },
                }
            ],
            "options": {},
        }
    )
    msgs = plan.body["messages"]
    assert msgs[1]["tool_calls"] == [
        {"id": "call_lc1", "type": "function", "function": {"name": "multiply", "arguments": '{"a":3,"b":4}'}}
    ]
    assert msgs[2] == {"role": "tool", "content": "12", "tool_call_id": "call_lc1", "name": "multiply"}
    assert plan.has_tools
