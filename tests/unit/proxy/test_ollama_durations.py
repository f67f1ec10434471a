import math

import pytest

from guardian_proxy.ollama import KEEP_FOREVER, OllamaError, parse_go_duration, parse_keep_alive

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("5m", 5 * 60 * S),
        ("1h", 3600 * S),
        ("1h30m", 5400 * S),
        ("300ms", 300_000_000),
        ("1.5s", 1_500_000_000),
        (".5s", 500_000_000),
        ("1.s", S),
        ("2h45m30.5s", (2 * 3600 + 45 * 60 + 30) * S + 500_000_000),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("10μs", 10_000),
        ("7ns", 7),
        ("-1m", -60 * S),
        ("+1m", 60 * S),
        ("0s", 0),
        ("1h1h", 7200 * S),
    ],
)
def test_parse_go_duration(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        ("m", 'time: invalid duration "m"'),
        (".s", 'time: invalid duration ".s"'),
        ("5x", 'time: unknown unit "x" in duration "5x"'),
        ("5 m", 'time: unknown unit " m" in duration "5 m"'),
        ("1m10", 'time: missing unit in duration "1m10"'),
        ("forever", 'time: invalid duration "forever"'),
        ('5"m', 'time: unknown unit "\\"m" in duration "5\\"m"'),
        ("5é", 'time: unknown unit "\\xc3\\xa9" in duration "5\\xc3\\xa9"'),
        ("9999999999h", 'time: invalid duration "9999999999h"'),
    ],
)
def test_parse_go_duration_errors_match_go(text, message):
    with pytest.raises(ValueError) as e:
        parse_go_duration(text)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (300, 300.0),
        (1.5, 1.5),
        ("5m", 300.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        (-1, KEEP_FOREVER),
        (-0.5, KEEP_FOREVER),
        ("-1m", KEEP_FOREVER),
        ("-1s", KEEP_FOREVER),
        (math.inf, KEEP_FOREVER),
        (1e19, KEEP_FOREVER),  # would overflow /api/ps timestamps: clamped to forever
        ("2562047h", KEEP_FOREVER),
    ],
)
def test_parse_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


def test_keep_forever_is_negative_so_it_round_trips_as_ollama_json():
    assert KEEP_FOREVER < 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("abc", 'time: invalid duration "abc"'),
        (True, "unsupported duration type: 'bool'"),
        ([1], "unsupported duration type: '[]interface {}'"),
        ({"s": 1}, "unsupported duration type: 'map[string]interface {}'"),
        (math.nan, "unsupported duration type: 'float64'"),
    ],
)
def test_parse_keep_alive_errors(value, message):
    with pytest.raises(OllamaError) as e:
        parse_keep_alive(value)
    assert e.value.status == 400
    assert e.value.message == message
