import json
import time

import pytest
from ollama._types import ChatResponse, GenerateResponse

from guardian_proxy.ollama import (
    OllamaError,
    chat_load_response,
    error_line,
    error_object,
    format_rfc3339_nano,
    generate_load_response,
    json_bytes,
    model_not_found,
    model_required,
    ndjson_line,
    now_rfc3339,
    require_model,
    unsupported_capability,
    upstream_error,
)


def test_ndjson_line_is_compact_and_newline_terminated():
    line = ndjson_line({"model": "m", "message": {"role": "assistant", "content": "héllo \n"}, "done": False})
    assert line == b'{"model":"m","message":{"role":"assistant","content":"h\xc3\xa9llo \\n"},"done":false}\n'
    assert line.count(b"\n") == 1


def test_json_bytes_has_no_newline():
    assert json_bytes({"a": [1, 2]}) == b'{"a":[1,2]}'


def test_lone_surrogate_is_escaped_not_crashing():
    line = ndjson_line({"response": "\ud83d"})
    assert json.loads(line) == {"response": "\ud83d"}


def test_nan_never_goes_out():
    with pytest.raises(ValueError):
        ndjson_line({"x": float("nan")})


def test_error_line():
    assert error_line("boom") == b'{"error":"boom"}\n'
    assert error_object("x") == {"error": "x"}


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_755_298_508_508_208_329, "2025-08-15T22:55:08.508208329Z"),
        (1_755_298_508_516_779_930, "2025-08-15T22:55:08.51677993Z"),
        (1_755_298_508_500_000_000, "2025-08-15T22:55:08.5Z"),
        (1_755_298_509_000_000_001, "2025-08-15T22:55:09.000000001Z"),
    ],
)
def test_rfc3339_nano_like_go(ns, text):
    assert format_rfc3339_nano(ns) == text


def test_now_is_current_utc():
    from datetime import datetime

    stamp = now_rfc3339()
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 5


def test_load_and_unload_answers():
    for reason in ("load", "unload"):
        chat = chat_load_response("m", reason)
        assert chat["done"] is True and chat["done_reason"] == reason
        assert chat["message"] == {"role": "assistant", "content": ""}
        ChatResponse.model_validate(chat)
        gen = generate_load_response("m", reason)
        assert gen == {
            "model": "m",
            "created_at": gen["created_at"],
            "response": "",
            "done": True,
            "done_reason": reason,
        }
        GenerateResponse.model_validate(gen)


def test_error_helpers():
    assert (model_required().status, model_required().message) == (400, "model is required")
    e = model_not_found("x")
    assert (e.status, e.message) == (404, "model 'x' not found")
    assert e.body() == {"error": "model 'x' not found"}
    assert str(e) == "model 'x' not found"


def test_require_model_per_endpoint():
    assert require_model({"model": "a"}, "chat") == "a"
    assert require_model({"name": "b"}, "show") == "b"
    with pytest.raises(OllamaError) as e:
        require_model({"name": "b"}, "chat")
    assert e.value.status == 400
    with pytest.raises(OllamaError) as e:
        require_model({}, "generate")
    assert (e.value.status, e.value.message) == (404, "model '' not found")


def test_unsupported_capability_wording():
    assert unsupported_capability("m", "thinking").message == '"m" does not support thinking'
    assert unsupported_capability("bert", "chat").message == '"bert" does not support chat'
    assert unsupported_capability("m:latest", "tools").message == "m:latest does not support tools"
    assert unsupported_capability("m:latest", "insert").message == "m:latest does not support insert"
    assert unsupported_capability("m", "tools").status == 400


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (
            400,
            {"error": {"code": 400, "message": "bad thing", "type": "invalid_request_error"}},
            (400, "bad thing"),
        ),
        (
            500,
            b'{"error":{"code":501,"message":"not supported","type":"not_supported_error"}}',
            (501, "not supported"),
        ),
        (503, '{"error":"Loading model"}', (503, "Loading model")),
        (502, "gateway trouble", (502, "gateway trouble")),
        (500, "", (500, "llama-server answered with status 500")),
        (200, {"error": {"message": "mid-stream"}}, (500, "mid-stream")),
    ],
)
def test_upstream_error(status, payload, expected):
    e = upstream_error(status, payload)
    assert (e.status, e.message) == expected
