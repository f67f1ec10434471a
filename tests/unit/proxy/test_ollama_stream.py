import json
import re

import pytest
from ollama._types import ChatResponse, GenerateResponse

from guardian_proxy.ollama import (
    ChatStreamTranslator,
    GenerateStreamTranslator,
    OllamaError,
    chat_response_from_openai,
    done_reason_for,
    generate_response_from_llama,
    ndjson_line,
)

RFC3339NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
CID = "chatcmpl-abc"


def chunk(delta=None, finish=None, **extra):
    c = {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta if delta is not None else {}}],
        "id": CID,
        "object": "chat.completion.chunk",
    }
    c.update(extra)
    return c


TIMINGS = {"cache_n": 10, "prompt_n": 5, "prompt_ms": 12.5, "predicted_n": 3, "predicted_ms": 30.25}
USAGE = {"completion_tokens": 3, "prompt_tokens": 15, "total_tokens": 18}


def usage_chunk(timings=TIMINGS, usage=USAGE):
    c = {"choices": [], "id": CID, "object": "chat.completion.chunk", "usage": usage}
    if timings is not None:
        c["timings"] = timings
    return c


def run(t, chunks, **finish_kw):
    out = []
    for c in chunks:
        out.extend(t.feed(c))
    out.extend(t.finish(**finish_kw))
    return out


def validate_chat(objs):
    for o in objs:
        ChatResponse.model_validate(o)
        json.loads(ndjson_line(o))  # encodable, one line
        assert ndjson_line(o).count(b"\n") == 1
        assert RFC3339NANO.match(o["created_at"])


def test_content_deltas_become_ollama_chunks():
    t = ChatStreamTranslator("llama3.2:latest")
    out = run(
        t,
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
            usage_chunk(),
        ],
        total_duration=2_000_000_000,
        load_duration=500,
    )
    validate_chat(out)
    assert [o["message"] for o in out[:2]] == [
        {"role": "assistant", "content": "Hel"},
        {"role": "assistant", "content": "lo"},
    ]
    assert all(o["done"] is False and o["model"] == "llama3.2:latest" for o in out[:2])
    final = out[-1]
    assert len(out) == 3
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["total_duration"] == 2_000_000_000
    assert final["load_duration"] == 500
    assert final["prompt_eval_count"] == 15  # prompt_n + cache_n
    assert final["prompt_eval_duration"] == 12_500_000
    assert final["eval_count"] == 3
    assert final["eval_duration"] == 30_250_000
    assert all(isinstance(final[k], int) for k in final if k.endswith(("duration", "count")))
    assert t.content == "Hello"


def test_reasoning_content_becomes_thinking():
    t = ChatStreamTranslator("m")
    out = run(
        t,
        [
            chunk({"reasoning_content": "Let me"}),
            chunk({"reasoning_content": " think"}),
            chunk({"content": "4"}),
            chunk({}, "stop"),
        ],
    )
    validate_chat(out)
    assert out[0]["message"] == {"role": "assistant", "content": "", "thinking": "Let me"}
    assert out[2]["message"] == {"role": "assistant", "content": "4"}
    assert t.thinking == "Let me think"


def test_length_stays_length_everything_else_is_stop():
    assert done_reason_for("length") == "length"
    assert done_reason_for("limit") == "length"
    for reason in ("stop", "tool_calls", "eos", "word", "content_filter", None):
        assert done_reason_for(reason) == "stop"
    out = run(ChatStreamTranslator("m"), [chunk({"content": "x"}), chunk({}, "length")])
    assert out[-1]["done_reason"] == "length"


def tool_stream():
    # Shaped like llama.cpp's streaming: name and id first, then argument string pieces; two calls.
    return [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "srv_id_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Par'}}]}),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "type": "function", "function": {"name": "get_time", "arguments": '{"tz":'}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is", "unit": "C"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ' "CET"}'}}]}),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]


def test_tool_call_deltas_are_joined_per_index_and_emitted_once_whole():
    t = ChatStreamTranslator("m")
    per_chunk = [t.feed(c) for c in tool_stream()]
    assert all(objs == [] for objs in per_chunk)  # nothing partial goes out
    out = t.finish(total_duration=1, load_duration=1)
    validate_chat(out)
    assert len(out) == 3
    first, second, final = out
    assert first["done"] is False and second["done"] is False
    assert first["message"]["content"] == ""
    (call0,) = first["message"]["tool_calls"]
    (call1,) = second["message"]["tool_calls"]
    assert call0 == {
        "id": "srv_id_0",
        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}},
    }
    assert list(call0["function"]["arguments"]) == ["city", "unit"]  # key order kept
    assert call1["function"] == {"index": 1, "name": "get_time", "arguments": {"tz": "CET"}}
    assert re.fullmatch(r"call_[a-z0-9]{8}", call1["id"])
    assert final["done"] is True
    assert final["done_reason"] == "stop"  # tool_calls → stop
    assert "tool_calls" not in final["message"]


def test_langchain_style_accumulation_sees_each_call_once():
    t = ChatStreamTranslator("m")
    out = run(t, tool_stream())
    collected = [call for o in out for call in o["message"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in collected] == ["get_weather", "get_time"]
    for o in out:
        parsed = ChatResponse.model_validate(o)
        for call in parsed.message.tool_calls or []:
            assert isinstance(call.function.arguments, dict)


def test_tool_calls_then_content_in_same_stream():
    t = ChatStreamTranslator("m")
    out = run(
        t,
        [
            chunk({"content": "Checking."}),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ],
    )
    validate_chat(out)
    assert out[0]["message"]["content"] == "Checking."
    assert out[1]["message"]["tool_calls"][0]["function"]["arguments"] == {}
    assert out[2]["done"]


def test_empty_arguments_become_empty_object():
    t = ChatStreamTranslator("m")
    out = run(
        t,
        [
            chunk({"tool_calls": [{"index": 0, "function": {"name": "now", "arguments": ""}}]}),
            chunk({}, "tool_calls"),
        ],
    )
    assert out[0]["message"]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.parametrize("args", ['{"a": ', "[1, 2]", '"text"'])
def test_invalid_or_non_object_arguments_are_an_error(args):
    t = ChatStreamTranslator("m")
    t.feed(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": args}}]}))
    t.feed(chunk({}, "tool_calls"))
    with pytest.raises(OllamaError) as e:
        t.finish()
    assert e.value.status == 500
    assert '"f"' in e.value.message


def test_usage_and_timings_on_the_finish_chunk_old_builds():
    t = ChatStreamTranslator("m")
    out = run(t, [chunk({"content": "x"}), chunk({}, "stop", usage=USAGE, timings=TIMINGS)])
    assert out[-1]["prompt_eval_count"] == 15
    assert out[-1]["eval_count"] == 3


def test_usage_on_a_later_chunk_new_builds():
    t = ChatStreamTranslator("m")
    t.feed(chunk({"content": "x"}))
    t.feed(chunk({}, "stop"))
    t.feed(usage_chunk())
    final = t.finish()[-1]
    assert final["prompt_eval_count"] == 15
    assert final["eval_duration"] == 30_250_000


def test_metrics_without_cache_n_ik_uses_prompt_n():
    ik_timings = {
        "prompt_n": 7,
        "prompt_ms": 1.0,
        "predicted_n": 2,
        "predicted_ms": 2.0,
        "n_ctx": 4096,
        "n_past": 9,
    }
    t = ChatStreamTranslator("m")
    final = run(t, [chunk({"content": "x"}), chunk({}, "stop", timings=ik_timings)])[-1]
    assert final["prompt_eval_count"] == 7
    assert final["prompt_eval_duration"] == 1_000_000
    assert final["eval_count"] == 2


def test_metrics_without_cache_n_prefers_llama_server_prompt_total():
    ik_timings = {"prompt_n": 2, "prompt_ms": 1.0, "predicted_n": 2, "predicted_ms": 2.0}
    t = ChatStreamTranslator("m")
    final = run(
        t,
        [
            chunk({"content": "x"}),
            chunk({}, "stop"),
            usage_chunk(ik_timings, {"prompt_tokens": 40, "completion_tokens": 2}),
        ],
    )[-1]
    assert final["prompt_eval_count"] == 40


def test_cache_n_zero_still_counts_prompt_n():
    t = ChatStreamTranslator("m")
    final = run(t, [chunk({}, "stop", timings={**TIMINGS, "cache_n": 0})])[-1]
    assert final["prompt_eval_count"] == 5


def test_zero_metrics_are_omitted():
    t = ChatStreamTranslator("m")
    final = run(t, [chunk({}, "stop")])[-1]
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert key not in final
    ChatResponse.model_validate(final)


def test_usage_only_fallback():
    t = ChatStreamTranslator("m")
    final = run(t, [chunk({}, "stop"), usage_chunk(None)])[-1]
    assert final["prompt_eval_count"] == 15
    assert final["eval_count"] == 3
    assert "eval_duration" not in final


def test_stream_that_never_finished_is_an_error():
    t = ChatStreamTranslator("m")
    t.feed(chunk({"content": "x"}))
    assert not t.finished
    with pytest.raises(OllamaError) as e:
        t.finish()
    assert e.value.status == 500


def test_finish_twice_is_a_bug():
    t = ChatStreamTranslator("m")
    t.feed(chunk({}, "stop"))
    t.finish()
    with pytest.raises(RuntimeError):
        t.finish()


def test_error_event_mid_stream_raises_with_its_message():
    t = ChatStreamTranslator("m")
    with pytest.raises(OllamaError) as e:
        t.feed({"error": {"code": 500, "message": "context shift disabled", "type": "server_error"}})
    assert (e.value.status, e.value.message) == (500, "context shift disabled")
    assert e.value.body() == {"error": "context shift disabled"}


def test_logprobs_are_translated():
    t = ChatStreamTranslator("m", include_top_logprobs=True)
    c = chunk({"content": "Hi"})
    c["choices"][0]["logprobs"] = {
        "content": [
            {
                "id": 5,
                "token": "Hi",
                "bytes": [72, 105],
                "logprob": -0.1,
                "top_logprobs": [{"id": 5, "token": "Hi", "logprob": -0.1}],
            }
        ]
    }
    (o,) = t.feed(c)
    assert o["logprobs"] == [
        {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}
    ]
    ChatResponse.model_validate(o)
    t2 = ChatStreamTranslator("m")
    (o2,) = t2.feed(c)
    assert o2["logprobs"] == [{"token": "Hi", "logprob": -0.1}]


# non-streaming


def test_aggregator_from_streamed_chunks():
    t = ChatStreamTranslator("m", emit=False)
    for c in [
        chunk({"reasoning_content": "hmm"}),
        chunk({"content": "a"}),
        chunk({"content": "b"}),
        *tool_stream(),
    ]:
        assert t.feed(c) == []
    obj = t.result(total_duration=9, load_duration=1)
    ChatResponse.model_validate(obj)
    assert obj["message"]["content"] == "ab"
    assert obj["message"]["thinking"] == "hmm"
    assert [c["function"]["name"] for c in obj["message"]["tool_calls"]] == ["get_weather", "get_time"]
    assert obj["done"] is True and obj["done_reason"] == "stop"
    assert obj["total_duration"] == 9


def test_aggregator_without_tool_calls_has_no_tool_calls_key():
    t = ChatStreamTranslator("m", emit=False)
    t.feed(chunk({"content": "a"}))
    t.feed(chunk({}, "stop"))
    obj = t.result()
    assert obj["message"] == {"role": "assistant", "content": "a"}


def test_non_stream_openai_response():
    resp = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "need weather",
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                            "id": "abc",
                        },
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
            }
        ],
        "usage": USAGE,
        "timings": TIMINGS,
        "object": "chat.completion",
    }
    obj = chat_response_from_openai(resp, model="m", total_duration=100, load_duration=10)
    ChatResponse.model_validate(obj)
    assert obj["message"]["thinking"] == "need weather"
    calls = obj["message"]["tool_calls"]
    assert calls[0] == {
        "id": "abc",
        "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
    }
    assert calls[1]["function"] == {"index": 1, "name": "get_weather", "arguments": {"city": "Rome"}}
    assert calls[1]["id"].startswith("call_")
    assert obj["done_reason"] == "stop"
    assert obj["prompt_eval_count"] == 15


def test_non_stream_plain_response():
    resp = {
        "choices": [
            {"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": "Hello"}}
        ],
        "timings": TIMINGS,
    }
    obj = chat_response_from_openai(resp, model="m")
    assert obj["message"] == {"role": "assistant", "content": "Hello"}
    assert obj["done_reason"] == "length"


# generate


def native(content, stop=False, **extra):
    return {"index": 0, "content": content, "tokens": [], "stop": stop, "id_slot": -1, **extra}


NATIVE_FINAL = {
    "stop_type": "eos",
    "tokens_evaluated": 15,
    "timings": {"cache_n": 0, "prompt_n": 15, "prompt_ms": 2.0, "predicted_n": 2, "predicted_ms": 4.0},
}


def validate_generate(objs):
    for o in objs:
        GenerateResponse.model_validate(o)
        assert RFC3339NANO.match(o["created_at"])


def test_generate_native_stream():
    t = GenerateStreamTranslator("m")
    out = run(
        t,
        [native("The"), native(" sky"), native("", True, **NATIVE_FINAL)],
        total_duration=50,
        load_duration=5,
        context=[1, 2, 3],
    )
    validate_generate(out)
    assert [o["response"] for o in out] == ["The", " sky", ""]
    assert out[0] == {"model": "m", "created_at": out[0]["created_at"], "response": "The", "done": False}
    final = out[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["context"] == [1, 2, 3]
    assert final["prompt_eval_count"] == 15
    assert final["eval_count"] == 2
    assert final["eval_duration"] == 4_000_000
    assert t.text == "The sky"


@pytest.mark.parametrize(
    ("stop_type", "reason"), [("limit", "length"), ("eos", "stop"), ("word", "stop"), ("none", "stop")]
)
def test_generate_native_stop_types(stop_type, reason):
    t = GenerateStreamTranslator("m")
    out = run(t, [native("x"), native("", True, stop_type=stop_type)])
    assert out[-1]["done_reason"] == reason


def test_generate_without_context_has_no_context_key():
    out = run(GenerateStreamTranslator("m"), [native("", True, **NATIVE_FINAL)])
    assert "context" not in out[-1]


def test_generate_content_on_the_stop_chunk_is_not_lost():
    out = run(GenerateStreamTranslator("m"), [native("a"), native("b", True, **NATIVE_FINAL)])
    assert [o["response"] for o in out] == ["a", "b", ""]


def test_generate_native_error_event():
    t = GenerateStreamTranslator("m")
    with pytest.raises(OllamaError) as e:
        t.feed(
            {
                "error": {
                    "code": 400,
                    "message": "the request exceeds the available context size",
                    "type": "invalid_request_error",
                }
            }
        )
    assert e.value.status == 400


def test_generate_over_chat_upstream_maps_reasoning_to_thinking():
    t = GenerateStreamTranslator("m", upstream="chat")
    out = run(
        t, [chunk({"reasoning_content": "hmm"}), chunk({"content": "42"}), chunk({}, "stop"), usage_chunk()]
    )
    validate_generate(out)
    assert out[0]["thinking"] == "hmm" and out[0]["response"] == ""
    assert out[1]["response"] == "42" and "thinking" not in out[1]
    assert out[-1]["prompt_eval_count"] == 15


def test_generate_non_stream_native():
    resp = native("Hello world", True, **NATIVE_FINAL)
    obj = generate_response_from_llama(resp, model="m", total_duration=7, context=[9])
    GenerateResponse.model_validate(obj)
    assert obj["response"] == "Hello world"
    assert obj["done"] is True and obj["context"] == [9]
    assert obj["total_duration"] == 7


def test_generate_non_stream_chat_with_thinking():
    resp = {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
            }
        ]
    }
    obj = generate_response_from_llama(resp, model="m", upstream="chat")
    assert obj["response"] == "4" and obj["thinking"] == "2+2"


def test_generate_native_logprobs():
    t = GenerateStreamTranslator("m", include_top_logprobs=True)
    probs = [
        {
            "id": 1,
            "token": "a",
            "logprob": -0.5,
            "bytes": [97],
            "top_logprobs": [{"id": 1, "token": "a", "logprob": -0.5}],
        }
    ]
    (o,) = t.feed(native("a", completion_probabilities=probs))
    assert o["logprobs"] == [
        {"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5}]}
    ]
    GenerateResponse.model_validate(o)


def test_generate_aggregator_collects_logprobs():
    t = GenerateStreamTranslator("m", emit=False)
    t.feed(native("a", completion_probabilities=[{"token": "a", "prob": 0.5}]))
    t.feed(native("", True, **NATIVE_FINAL))
    obj = t.result()
    assert obj["logprobs"] == [{"token": "a", "logprob": 0.5}]
