"""Current Ollama: think levels → llama-server's controls, reasoning effort on /v1, truncation,
cached prompt tokens on /api and /v1."""

import json

import pytest

from guardian_proxy import openai_chat
from guardian_proxy.ollama import ChatStreamTranslator, OllamaError, build_chat_request
from guardian_proxy.ollama.chat import drop_oldest_message, is_context_overflow
from guardian_proxy.ollama.fields import think_from_effort, think_params
from shared.config import ProxySettings


@pytest.mark.parametrize(
    ("think", "params"),
    [
        (None, {}),
        (True, {"chat_template_kwargs": {"enable_thinking": True}}),
        (False, {"chat_template_kwargs": {"enable_thinking": False}, "thinking_budget_tokens": 0}),
        (
            "low",
            {
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "low"},
                "reasoning_effort": "low",
                "thinking_budget_tokens": 1024,
            },
        ),
        (
            "high",
            {
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"},
                "reasoning_effort": "high",
                "thinking_budget_tokens": 16384,
            },
        ),
        (
            "max",  # unlimited budget; the OpenAI-scale field tops out at "high"
            {
                "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "max"},
                "reasoning_effort": "high",
            },
        ),
    ],
)
def test_think_maps_to_backend_controls(think, params):
    assert think_params(think) == params


def test_chat_request_carries_the_think_controls():
    body = build_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "think": "medium"}
    ).body
    assert body["reasoning_effort"] == "medium" and body["thinking_budget_tokens"] == 4096
    assert body["chat_template_kwargs"]["enable_thinking"] is True


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", "low"), ("medium", "medium"), ("xhigh", "max"), ("", None), (None, None)],
)
def test_effort_scale(effort, think):
    assert think_from_effort(effort) == think


def test_unknown_effort_names_the_scale():
    with pytest.raises(ValueError, match='"none", "minimal"'):
        think_from_effort("extreme")


def test_reasoning_effort_on_v1_is_mapped_and_removed():
    out = openai_chat.apply_reasoning({"model": "m", "messages": [], "reasoning_effort": "none"})
    assert out is not None and "reasoning_effort" not in out
    assert out["chat_template_kwargs"] == {"enable_thinking": False} and out["thinking_budget_tokens"] == 0


def test_reasoning_object_wins_and_client_kwargs_win():
    out = openai_chat.apply_reasoning(
        {
            "model": "m",
            "reasoning": {"effort": "high"},
            "reasoning_effort": "low",
            "chat_template_kwargs": {"enable_thinking": False, "x": 1},
        }
    )
    assert out is not None and "reasoning" not in out
    assert out["reasoning_effort"] == "high" and out["thinking_budget_tokens"] == 16384
    assert out["chat_template_kwargs"] == {"enable_thinking": False, "reasoning_effort": "high", "x": 1}
    assert openai_chat.apply_reasoning({"model": "m"}) is None
    with pytest.raises(ValueError):
        openai_chat.apply_reasoning({"model": "m", "reasoning": "high"})


def test_cached_tokens_from_cache_n_or_ik_prompt_n():
    upstream = {"usage": {"prompt_tokens": 34}, "timings": {"cache_n": 29, "prompt_n": 5}}
    assert openai_chat.add_cached_tokens(upstream)
    assert upstream["usage"]["prompt_tokens_details"] == {"cached_tokens": 29}
    ik = {"usage": {"prompt_tokens": 34}, "timings": {"prompt_n": 1, "n_past": 42}}
    assert openai_chat.add_cached_tokens(ik) and ik["usage"]["prompt_tokens_details"]["cached_tokens"] == 33
    already = {"usage": {"prompt_tokens_details": {"cached_tokens": 3}}, "timings": {"cache_n": 9}}
    assert not openai_chat.add_cached_tokens(already)
    assert not openai_chat.add_cached_tokens({"usage": {"prompt_tokens": 3}})  # no timings: unknown


def test_sse_rewriter_touches_only_usage_lines_and_rejoins_split_ones():
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 10}, "timings": {"prompt_n": 4}})
    stream = (
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: ' + usage.encode() + b"\n\ndata: [DONE]\n\n"
    )
    r = openai_chat.SseUsageRewriter()
    first = r.feed(stream[:20])
    assert first == b""  # an incomplete line waits for its end
    out = first + r.feed(stream[20:70]) + r.feed(stream[70:]) + r.close()
    lines = out.split(b"\n")
    assert lines[0] == b'data: {"choices":[{"delta":{"content":"hi"}}]}'
    rewritten = json.loads(lines[2][5:])
    assert rewritten["usage"]["prompt_tokens_details"] == {"cached_tokens": 6}
    assert out.endswith(b"data: [DONE]\n\n")


def test_api_metrics_separate_cached_prompt_tokens():
    t = ChatStreamTranslator("m", emit=False)
    t.feed(
        {
            "choices": [{"message": {"content": "a"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 34, "completion_tokens": 1},
            "timings": {
                "prompt_n": 5,
                "cache_n": 29,
                "prompt_ms": 2.0,
                "predicted_n": 1,
                "predicted_ms": 1.0,
            },
        }
    )
    out = t.result()
    assert out["prompt_eval_count"] == 34 and out["prompt_eval_cached_count"] == 29


def test_truncation_drops_oldest_non_system_and_keeps_the_last():
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "a"}]},
        {"role": "tool", "content": "r"},
        {"role": "system", "content": "s2"},
        {"role": "user", "content": "2"},
    ]
    step1 = drop_oldest_message(msgs)
    assert step1 is not None and [m["content"] for m in step1] == ["s", "", "r", "s2", "2"]
    step2 = drop_oldest_message(step1)
    assert step2 is not None and [m["content"] for m in step2] == [
        "s",
        "s2",
        "2",
    ]  # the call's result went with it
    assert drop_oldest_message(step2) is None
    assert is_context_overflow(
        "request (5000 tokens) exceeds the available context size (1024 tokens), try increasing it"
    )


def test_truncate_and_shift_are_booleans():
    plan = build_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "truncate": False}
    )
    assert plan.truncate is False and plan.shift is True
    with pytest.raises(OllamaError) as e:
        build_chat_request({"model": "m", "messages": [], "shift": "no"})
    assert e.value.status == 400 and "shift" in e.value.message


def test_ollama_version_is_configurable_and_numeric():
    assert ProxySettings().ollama_version == "0.35.1"
    assert ProxySettings(ollama_version="0.40.0").validate() is None
    assert ProxySettings(ollama_version="0.40.0-rc1").validate()[0] == "ollama_version"
