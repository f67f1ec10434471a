import base64

import pytest

from guardian_proxy.ollama import KEEP_FOREVER, OllamaError, build_generate_request

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 20).decode()


def gen(**kw):
    body = {"model": "m", "prompt": "Why is the sky blue?"}
    body.update(kw)
    return build_generate_request(body)


def test_default_goes_through_the_chat_template():
    plan = gen(system="Be brief", options={"num_predict": 8})
    assert plan.action == "generate"
    assert (plan.mode, plan.endpoint, plan.upstream) == ("chat", "/v1/chat/completions", "chat")
    assert plan.body["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert plan.body["n_predict"] == 8
    assert plan.body["stream"] is True
    assert plan.body["stream_options"] == {"include_usage": True}
    assert plan.body["cache_prompt"] is True
    assert plan.render_body == {"messages": plan.body["messages"]}
    assert plan.wants_context is True
    assert plan.context == []


def test_context_steps_for_the_chat_shape():
    plan = gen()
    assert plan.tokenize_body("<|user|>hi\n<|assistant|>", "hello") == {
        "content": "<|user|>hi\n<|assistant|>hello",
        "add_special": True,
        "parse_special": True,
    }
    assert plan.context_from_tokens([1, 2]) == [1, 2]


def test_default_system_used_when_request_has_none():
    plan = build_generate_request({"model": "m", "prompt": "x"}, default_system="sys")
    assert plan.body["messages"][0] == {"role": "system", "content": "sys"}
    plan = build_generate_request({"model": "m", "prompt": "x", "system": "mine"}, default_system="sys")
    assert plan.body["messages"][0] == {"role": "system", "content": "mine"}


def test_think_format_and_images_in_chat_shape():
    plan = gen(think=True, format={"type": "object"}, images=[PNG])
    assert plan.body["chat_template_kwargs"] == {"enable_thinking": True}
    assert plan.render_body == {
        "messages": plan.body["messages"],
        "chat_template_kwargs": {"enable_thinking": True},
    }
    assert plan.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "schema", "schema": {"type": "object"}},
    }
    assert plan.body["messages"][-1]["content"] == [
        {"type": "text", "text": "Why is the sky blue?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    assert plan.has_images
    assert plan.wants_context is False  # image tokens cannot be expressed as ids


def test_non_stream_client():
    plan = gen(stream=False)
    assert plan.stream is False
    assert plan.body["stream"] is False
    assert "stream_options" not in plan.body


@pytest.mark.parametrize("body", [{}, {"model": ""}, {"prompt": "x"}])
def test_missing_model_is_404_like_ollama(body):
    with pytest.raises(OllamaError) as e:
        build_generate_request(body)
    assert (e.value.status, e.value.message) == (404, "model '' not found")


@pytest.mark.parametrize("keep_alive", [0, "0", "0m"])
def test_empty_prompt_keep_alive_zero_unloads(keep_alive):
    plan = build_generate_request({"model": "m", "prompt": "", "keep_alive": keep_alive})
    assert plan.action == "unload"


def test_open_webui_unload_payload():
    plan = build_generate_request({"model": "qwen3:8b", "keep_alive": 0, "prompt": ""})
    assert plan.action == "unload"
    assert plan.model == "qwen3:8b"


@pytest.mark.parametrize("extra", [{}, {"prompt": ""}, {"keep_alive": "10m"}, {"keep_alive": -1}])
def test_empty_prompt_loads(extra):
    plan = build_generate_request({"model": "m", **extra})
    assert plan.action == "load"
    assert plan.body == {}


def test_load_keeps_keep_alive_and_load_options():
    plan = build_generate_request(
        {"model": "m", "keep_alive": -1, "options": {"num_ctx": 2048, "num_gpu": 0}}
    )
    assert plan.keep_alive == KEEP_FOREVER
    assert plan.load_options == {"num_ctx": 2048, "num_gpu": 0}


@pytest.mark.parametrize("extra", [{"system": "s"}, {"template": "{{ .Prompt }}"}, {"context": [1, 2]}])
def test_raw_rejects_template_system_context(extra):
    with pytest.raises(OllamaError) as e:
        gen(raw=True, **extra)
    assert (e.value.status, e.value.message) == (
        400,
        "raw mode does not support template, system, or context",
    )


def test_raw_mode_sends_the_prompt_as_is_to_completion():
    plan = gen(raw=True, options={"temperature": 0, "stop": ["\n"]}, format="json")
    assert (plan.mode, plan.endpoint, plan.upstream) == ("raw", "/completion", "native")
    assert plan.body == {
        "prompt": "Why is the sky blue?",
        "stream": True,
        "cache_prompt": True,
        "temperature": 0.0,
        "stop": ["\n"],
        "json_schema": {"type": "object"},
    }
    assert plan.wants_context is False  # Ollama omits context in raw mode


def test_raw_mode_ignores_suffix_like_ollama():
    plan = gen(raw=True, suffix="return x")
    assert plan.mode == "raw"
    assert not plan.has_suffix


def test_raw_images_use_multimodal_prompt_with_markers():
    plan = gen(raw=True, prompt="look: [img-1] then [img-0]", images=[PNG, JPEG])
    assert plan.body["prompt"] == {
        "prompt_string": "look: <__media__> then <__media__>",
        "multimodal_data": [JPEG, PNG],
    }
    plan = gen(raw=True, prompt="describe", images=[PNG])
    assert plan.body["prompt"] == {"prompt_string": "<__media__>describe", "multimodal_data": [PNG]}


def test_raw_images_custom_marker():
    plan = build_generate_request(
        {"model": "m", "prompt": "x", "raw": True, "images": [PNG]}, media_marker="<m>"
    )
    assert plan.body["prompt"]["prompt_string"] == "<m>x"


def test_model_without_template_sends_prompt_with_context_tokens():
    plan = build_generate_request(
        {"model": "m", "prompt": " and then", "context": [1, 50, 60]}, has_template=False
    )
    assert plan.mode == "raw"
    assert plan.body["prompt"] == [1, 50, 60, " and then"]
    assert plan.wants_context
    assert plan.prompt_text == " and then"
    assert plan.tokenize_body(plan.prompt_text, " done")["add_special"] is False
    assert plan.context_from_tokens([7, 8]) == [1, 50, 60, 7, 8]


def test_suffix_uses_infill():
    plan = gen(
        prompt="def add(a, b):\n    ",
        suffix="\n\nprint(add(1, 2))",
        options={"num_predict": 32, "temperature": 0},
    )
    assert (plan.mode, plan.endpoint, plan.upstream) == ("infill", "/infill", "native")
    assert plan.body == {
        "input_prefix": "def add(a, b):\n    ",
        "input_suffix": "\n\nprint(add(1, 2))",
        "stream": True,
        "cache_prompt": True,
        "n_predict": 32,
        "temperature": 0.0,
    }
    assert plan.has_suffix  # caller checks the insert capability
    assert plan.wants_context is False


def test_infill_reports_fields_it_cannot_use():
    plan = gen(suffix="}", system="s", images=[PNG])
    assert set(plan.ignored_fields) >= {"system", "images"}


def test_context_with_template_renders_then_completes():
    plan = gen(context=[1, 10, 11, 12], stream=False)
    assert (plan.mode, plan.endpoint, plan.upstream) == ("render", "/completion", "native")
    assert plan.render_body == {"messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    body = plan.completion_body("<|user|>Why is the sky blue?\n<|assistant|>")
    assert body["prompt"] == [1, 10, 11, 12, "<|user|>Why is the sky blue?\n<|assistant|>"]
    assert body["stream"] is False
    assert body["cache_prompt"] is True
    assert plan.prompt_text == "<|user|>Why is the sky blue?\n<|assistant|>"
    assert plan.wants_context
    assert plan.tokenize_body("p", "o") == {"content": "po", "add_special": False, "parse_special": True}
    assert plan.context_from_tokens([5]) == [1, 10, 11, 12, 5]


def test_context_with_images_goes_to_chat_and_drops_context():
    plan = gen(context=[1, 2], images=[PNG])
    assert plan.mode == "chat"
    assert "context" in plan.ignored_fields


def test_go_template_is_reported_ignored():
    plan = gen(template="{{ .Prompt }}")
    assert "template" in plan.ignored_fields


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": 5},
        {"raw": "yes"},
        {"system": 1},
        {"context": "1,2"},
        {"context": [1.5]},
        {"context": [True]},
        {"images": "x"},
    ],
)
def test_mistyped_fields_are_400(extra):
    with pytest.raises(OllamaError) as e:
        gen(**extra)
    assert e.value.status == 400


def test_logprobs_native():
    plan = gen(raw=True, logprobs=True, top_logprobs=2)
    assert plan.body["n_probs"] == 2
    assert plan.top_logprobs == 2
    assert plan.translator().include_top_logprobs


def test_translator_matches_upstream():
    assert gen().translator().upstream == "chat"
    assert gen(raw=True).translator().upstream == "native"
    assert gen(suffix="x").translator(emit=False).emit is False


def test_images_empty_list_from_langchain():
    plan = gen(images=[])
    assert plan.body["messages"][-1] == {"role": "user", "content": "Why is the sky blue?"}
    assert plan.wants_context


def test_default_system_not_reported_as_ignored_for_templateless_models():
    plan = build_generate_request({"model": "m", "prompt": "x"}, has_template=False, default_system="sys")
    assert "system" not in plan.ignored_fields
    plan = build_generate_request({"model": "m", "prompt": "x", "system": "mine"}, has_template=False)
    assert "system" in plan.ignored_fields
