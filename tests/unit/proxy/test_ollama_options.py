import pytest

from guardian_proxy.ollama import (
    OLLAMA_DEFAULT_OPTIONS,
    OllamaError,
    map_options,
    parse_format,
    parse_think,
    stray_root_options,
    think_enabled,
    think_template_kwargs,
)
from guardian_proxy.ollama.fields import chat_response_format, native_format_params, parse_logprobs


def test_every_runtime_option_maps_to_llama_server_names():
    m = map_options(
        {
            "num_predict": 128,
            "num_keep": 5,
            "temperature": 0.2,
            "top_k": 20,
            "top_p": 0.8,
            "min_p": 0.05,
            "typical_p": 0.9,
            "repeat_last_n": 32,
            "repeat_penalty": 1.1,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "seed": 42,
            "stop": ["\n\n", "User:"],
        }
    )
    assert m.params == {
        "n_predict": 128,
        "n_keep": 5,
        "temperature": 0.2,
        "top_k": 20,
        "top_p": 0.8,
        "min_p": 0.05,
        "typical_p": 0.9,
        "repeat_last_n": 32,
        "repeat_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 42,
        "stop": ["\n\n", "User:"],
    }
    assert m.load == {}
    assert m.ignored == {}


def test_load_time_options_are_split_out():
    m = map_options(
        {
            "num_ctx": 8192,
            "num_batch": 256,
            "num_gpu": 99,
            "main_gpu": 1,
            "use_mmap": False,
            "num_thread": 8,
            "temperature": 1,
        }
    )
    assert m.load == {
        "num_ctx": 8192,
        "num_batch": 256,
        "num_gpu": 99,
        "main_gpu": 1,
        "use_mmap": False,
        "num_thread": 8,
    }
    assert m.params == {"temperature": 1.0}


def test_unknown_options_are_ignored_and_returned():
    m = map_options({"tfs_z": 1.0, "numa": True, "penalize_newline": "x", "foo": [1], "top_k": 3})
    assert m.ignored == {"tfs_z": 1.0, "numa": True, "penalize_newline": "x", "foo": [1]}
    assert m.params == {"top_k": 3}


def test_mirostat_is_forwarded_because_llama_server_has_it():
    m = map_options({"mirostat": 2, "mirostat_tau": 5, "mirostat_eta": 0.1})
    assert m.params == {"mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1}


def test_ints_accepted_for_float_options_and_become_floats():
    m = map_options({"temperature": 1, "top_p": 0})
    assert m.params == {"temperature": 1.0, "top_p": 0.0}
    assert isinstance(m.params["temperature"], float)


def test_floats_for_int_options_are_truncated_like_go():
    assert map_options({"num_predict": 10.9, "top_k": 40.0}).params == {"n_predict": 10, "top_k": 40}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("temperature", "0.7", 'option "temperature" must be of type float32'),
        ("temperature", True, 'option "temperature" must be of type float32'),
        ("temperature", float("nan"), 'option "temperature" must be of type float32'),
        ("top_p", [0.1], 'option "top_p" must be of type float32'),
        ("num_predict", False, 'option "num_predict" must be of type integer'),
        ("num_predict", "12", 'option "num_predict" must be of type integer'),
        ("seed", float("inf"), 'option "seed" must be of type integer'),
        ("num_ctx", "4096", 'option "num_ctx" must be of type integer'),
        ("num_ctx", True, 'option "num_ctx" must be of type integer'),
        ("use_mmap", 1, 'option "use_mmap" must be of type boolean'),
        ("use_mmap", "true", 'option "use_mmap" must be of type boolean'),
        ("stop", 5, 'option "stop" must be of type array'),
        ("stop", {"a": 1}, 'option "stop" must be of type array'),
        ("stop", ["a", 1], 'option "stop" must be of an array of strings'),
    ],
)
def test_wrong_types_are_400_naming_option_and_type(key, value, message):
    with pytest.raises(OllamaError) as e:
        map_options({key: value})
    assert e.value.status == 400
    assert e.value.message == message


def test_stop_may_be_a_single_string():
    assert map_options({"stop": "###"}).params == {"stop": ["###"]}


def test_empty_stop_is_left_out():
    assert map_options({"stop": []}).params == {}


def test_null_values_mean_unset():
    assert map_options({"temperature": None, "stop": None, "num_ctx": None}) == map_options({})


def test_options_none_or_missing():
    m = map_options(None)
    assert (m.params, m.load, m.ignored) == ({}, {}, {})


def test_options_must_be_an_object():
    with pytest.raises(OllamaError) as e:
        map_options([1, 2])
    assert e.value.status == 400


def test_defaults_layer_under_request_values():
    m = map_options(
        {"temperature": 0.1, "top_k": None}, defaults={"temperature": 0.7, "top_k": 10, "num_ctx": 2048}
    )
    assert m.params == {"temperature": 0.1, "top_k": 10}
    assert m.load == {"num_ctx": 2048}


def test_ollama_defaults_for_exact_parity():
    m = map_options({}, defaults=OLLAMA_DEFAULT_OPTIONS)
    assert m.params["temperature"] == 0.8
    assert m.params["top_k"] == 40
    assert m.params["top_p"] == 0.9
    assert m.params["n_keep"] == 4
    assert m.params["seed"] == -1
    assert m.params["n_predict"] == -1


def test_num_predict_below_minus_one_becomes_minus_one():
    assert map_options({"num_predict": -2}).params == {"n_predict": -1}


def test_num_predict_open_ended_is_bounded_when_n_ctx_known():
    assert map_options({"num_predict": -1}, n_ctx=4096).params == {"n_predict": 40960}
    assert map_options({"num_predict": 10**9}, n_ctx=4096).params == {"n_predict": 40960}
    assert map_options({"num_predict": 100}, n_ctx=4096).params == {"n_predict": 100}
    assert map_options({"num_predict": -1}).params == {"n_predict": -1}


def test_repeat_last_n_minus_one_means_whole_context():
    assert map_options({"repeat_last_n": -1}, n_ctx=8192).params == {"repeat_last_n": 8192}
    assert map_options({"repeat_last_n": -1}).params == {}  # llama-server rejects negatives


def test_stray_root_options_are_reported_not_applied():
    body = {"model": "m", "num_predict": 5, "temperature": 0.1, "options": {"top_k": 3}, "stream": True}
    assert stray_root_options(body) == {"num_predict": 5, "temperature": 0.1}


# think


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [
        (None, None),
        (True, {"enable_thinking": True}),
        (False, {"enable_thinking": False}),
        ("low", {"enable_thinking": True, "reasoning_effort": "low"}),
        ("medium", {"enable_thinking": True, "reasoning_effort": "medium"}),
        ("high", {"enable_thinking": True, "reasoning_effort": "high"}),
        ("max", {"enable_thinking": True, "reasoning_effort": "max"}),
    ],
)
def test_think_to_chat_template_kwargs(value, kwargs):
    assert think_template_kwargs(parse_think(value)) == kwargs


def test_think_enabled():
    assert think_enabled("low") and think_enabled(True)
    assert not think_enabled(False) and not think_enabled(None)


@pytest.mark.parametrize("value", ["extreme", "", 1, [True]])
def test_invalid_think_is_400(value):
    with pytest.raises(OllamaError) as e:
        parse_think(value)
    assert e.value.status == 400


# format


def test_format_json():
    assert chat_response_format(parse_format("json")) == {"type": "json_object"}
    assert native_format_params(parse_format("json")) == {"json_schema": {"type": "object"}}


def test_format_schema():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert chat_response_format(parse_format(schema)) == {
        "type": "json_schema",
        "json_schema": {"name": "schema", "schema": schema},
    }
    assert native_format_params(parse_format(schema)) == {"json_schema": schema}


@pytest.mark.parametrize("value", [None, ""])
def test_format_none(value):
    assert parse_format(value) is None
    assert chat_response_format(None) is None
    assert native_format_params(None) == {}


@pytest.mark.parametrize("value", ["xml", 1, ["json"], True])
def test_format_invalid(value):
    with pytest.raises(OllamaError) as e:
        parse_format(value)
    assert e.value.status == 400
    assert e.value.message.startswith("invalid format: ")
    assert e.value.message.endswith('; expected "json" or a valid JSON Schema object')


def test_format_invalid_message_quotes_raw_json_like_ollama():
    with pytest.raises(OllamaError) as e:
        parse_format("xml")
    assert e.value.message == 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'


# logprobs


def test_top_logprobs_bounds():
    assert parse_logprobs({"logprobs": True, "top_logprobs": 20}, "ChatRequest") == (True, 20)
    assert parse_logprobs({}, "ChatRequest") == (False, 0)
    for bad in (-1, 21):
        with pytest.raises(OllamaError) as e:
            parse_logprobs({"top_logprobs": bad}, "ChatRequest")
        assert e.value.message == "top_logprobs must be between 0 and 20"


def test_huge_integer_for_float_option_is_400_not_a_crash():
    with pytest.raises(OllamaError):
        map_options({"temperature": 10**400})
