import math

import pytest
from ollama._types import EmbeddingsResponse, EmbedResponse

from guardian_proxy.ollama import (
    OllamaError,
    build_embed_request,
    build_legacy_embeddings_request,
    embed_response,
    l2_normalize,
    legacy_embeddings_response,
)


def upstream(*vectors, prompt_tokens=7, shuffle=False):
    data = [{"embedding": v, "index": i, "object": "embedding"} for i, v in enumerate(vectors)]
    if shuffle:
        data.reverse()
    return {
        "model": "x",
        "object": "list",
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "data": data,
    }


def test_string_input():
    plan = build_embed_request({"model": "all-minilm", "input": "hello"})
    assert plan.inputs == ["hello"]
    assert plan.body == {"model": "all-minilm", "input": ["hello"], "encoding_format": "float"}
    assert plan.truncate is True
    assert plan.dimensions == 0


def test_list_input():
    plan = build_embed_request({"model": "m", "input": ["a", "", "b"]})
    assert plan.inputs == ["a", "", "b"]


@pytest.mark.parametrize("value", ["", [], None])
def test_empty_input_needs_no_call(value):
    plan = build_embed_request({"model": "m", "input": value})
    assert plan.inputs == []
    assert plan.body == {}
    assert embed_response(None, model="m") == {"model": "m", "embeddings": []}


@pytest.mark.parametrize("value", [5, [1, 2], ["a", 3], {"text": "a"}, True, [["a"]]])
def test_non_string_input_is_400(value):
    with pytest.raises(OllamaError) as e:
        build_embed_request({"model": "m", "input": value})
    assert (e.value.status, e.value.message) == (400, "invalid input type")


def test_missing_model():
    with pytest.raises(OllamaError) as e:
        build_embed_request({"input": "x"})
    assert e.value.status == 404


def test_options_and_keep_alive():
    plan = build_embed_request(
        {
            "model": "m",
            "input": "x",
            "keep_alive": "1m",
            "options": {"num_ctx": 512, "bogus": 1},
            "truncate": False,
        }
    )
    assert plan.keep_alive == 60.0
    assert plan.load_options == {"num_ctx": 512}
    assert plan.ignored_options == {"bogus": 1}
    assert plan.truncate is False


@pytest.mark.parametrize("dims", ["3", 2.5, True])
def test_dimensions_must_be_int(dims):
    with pytest.raises(OllamaError):
        build_embed_request({"model": "m", "input": "x", "dimensions": dims})


def test_vectors_are_l2_normalised_and_ordered_by_index():
    obj = embed_response(
        upstream([3.0, 4.0], [0.0, 2.0], shuffle=True), model="m", total_duration=10, load_duration=2
    )
    EmbedResponse.model_validate(obj)
    assert obj["model"] == "m"
    assert obj["embeddings"] == [pytest.approx([0.6, 0.8]), pytest.approx([0.0, 1.0])]
    assert obj["total_duration"] == 10
    assert obj["load_duration"] == 2
    assert obj["prompt_eval_count"] == 7


def test_dimensions_truncate_then_renormalise():
    obj = embed_response(upstream([1.0, 1.0, 5.0, 7.0]), model="m", dimensions=2)
    vec = obj["embeddings"][0]
    assert len(vec) == 2
    assert vec == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
    assert math.fsum(v * v for v in vec) == pytest.approx(1.0)


def test_dimensions_larger_than_vector_is_ignored():
    obj = embed_response(upstream([0.0, 3.0]), model="m", dimensions=10)
    assert obj["embeddings"][0] == pytest.approx([0.0, 1.0])


def test_zero_vector_stays_zero_and_zero_metrics_are_omitted():
    obj = embed_response(upstream([0.0, 0.0], prompt_tokens=0), model="m")
    assert obj == {"model": "m", "embeddings": [[0.0, 0.0]]}


def test_nan_is_an_error():
    with pytest.raises(OllamaError) as e:
        l2_normalize([float("nan"), 1.0])
    assert e.value.message == "embedding contains NaN or Inf values"


def test_malformed_upstream():
    with pytest.raises(OllamaError):
        embed_response({"object": "list"}, model="m")


def test_legacy_embeddings():
    plan = build_legacy_embeddings_request({"model": "m", "prompt": "hi"})
    assert plan.body == {"model": "m", "input": ["hi"], "encoding_format": "float"}
    obj = legacy_embeddings_response(upstream([0.5, 0.25]))
    EmbeddingsResponse.model_validate(obj)
    assert obj == {"embedding": [0.5, 0.25]}


def test_legacy_empty_prompt():
    plan = build_legacy_embeddings_request({"model": "m", "prompt": ""})
    assert plan.body == {}
    assert legacy_embeddings_response(None) == {"embedding": []}


def test_legacy_model_required_is_400():
    with pytest.raises(OllamaError) as e:
        build_legacy_embeddings_request({"prompt": "x"})
    assert (e.value.status, e.value.message) == (400, "model is required")
