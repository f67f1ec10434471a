"""Configuration: every key of the brief, typed and immutable; errors name file, line and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.config import canonical_name, load_config, resolve_model, tier_timeouts
from shared.durations import parse_go_duration, parse_keep_alive
from shared.yamlschema import ConfigError

BRIEF_SETTINGS = """\
proxy:
  port: 11434
  target: http://localhost:11440
  vram_limit_mb: 27000
supervisor: {socket: run/supervisor.sock, data_dir: data, port_base: 11440}
backends:
  ik_fork:  {binary: /opt/ik_llama.cpp/build/bin/llama-server, flavor: ik}
  official: {binary: llama-server, flavor: upstream}
default_backend: ik_fork
benchmark:
  schedule:
    start_hour: 4
    end_hour: 11
    days: ["mon", "tue", "wed", "thu", "fri"]
services_to_stop:
  - caramba-backend
  - agent-forge
timeouts:
  tiers:
    tier_70b: { min_size_mb: 40000, timeout_seconds: 1800 }
    tier_32b: { min_size_mb: 20000, timeout_seconds: 1200 }
"""


def write(d: Path, settings: str | None, models: str) -> Path:
    etc = d / "etc"
    etc.mkdir(exist_ok=True)
    (d / "m.gguf").write_bytes(b"GGUF")
    if settings is not None:
        (etc / "settings.yaml").write_text(settings)
    (etc / "models.yaml").write_text(models)
    return etc


BRIEF_MODEL = """\
models:
  model-name:
    path: m.gguf
    context: 131072
    ngl: 99
    kv_type: q4_0
    backend: ik_fork
    tensor_split: "0.55,0.45"
    extra_args: "--mlock -t 8 --override-kv 'a=str:b c'"
"""


def test_the_briefs_files_load(tmp_path):
    cfg = load_config(write(tmp_path, BRIEF_SETTINGS, BRIEF_MODEL))
    s = cfg.settings
    assert s.proxy.port == 11434 and s.proxy.vram_limit_mb == 27000
    assert s.supervisor.socket == tmp_path / "run" / "supervisor.sock"  # relative to etc/'s parent
    assert s.backends["ik_fork"].flavor == "ik" and s.default_backend == "ik_fork"
    assert s.benchmark.schedule.days == ("mon", "tue", "wed", "thu", "fri")
    assert s.services_to_stop == ("caramba-backend", "agent-forge")
    assert s.timeouts.tiers["tier_70b"].timeout_seconds == 1800
    m = cfg.models["model-name"]
    assert m.path == tmp_path / "m.gguf" and m.context == 131072 and m.kv_type == "q4_0"
    assert m.split == (0.55, 0.45)
    assert m.extra_argv == ["--mlock", "-t", "8", "--override-kv", "a=str:b c"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.context = 5  # type: ignore[misc]


def test_settings_file_is_optional(tmp_path):
    cfg = load_config(write(tmp_path, None, BRIEF_MODEL))
    assert cfg.settings.proxy.port == 11434 and cfg.settings.supervisor.port_base == 11440


@pytest.mark.parametrize(
    ("settings", "models", "where", "words"),
    [
        ("proxy:\n  port: [1\n", BRIEF_MODEL, "settings.yaml:", "YAML syntax error"),
        ("proxy:\n  prot: 1\n", BRIEF_MODEL, "settings.yaml:2: proxy.prot", "unknown key"),
        ("proxy:\n  port: eleven\n", BRIEF_MODEL, "settings.yaml:2: proxy.port", "expected an integer"),
        ("proxy:\n  port: 99999\n", BRIEF_MODEL, "settings.yaml:2: proxy.port", "TCP port"),
        ("default_backend: nope\n", BRIEF_MODEL, "settings.yaml:1: default_backend", "no backend named"),
        ("gpus:\n  ram_gbs: 0\n", BRIEF_MODEL, "settings.yaml:2: gpus.ram_gbs", "positive number of GB/s"),
        (
            "benchmark:\n  schedule:\n    days: [someday]\n",
            BRIEF_MODEL,
            "settings.yaml:3: benchmark.schedule.days",
            "unknown day",
        ),
        (
            "backends:\n  x: {binary: b, flavor: other}\ndefault_backend: x\n",
            BRIEF_MODEL,
            "settings.yaml:2: backends.x.flavor",
            "one of 'ik', 'upstream'",
        ),
        (
            None,
            "models:\n  a:\n    path: missing.gguf\n",
            "models.yaml:3: models.a.path",
            "model file not found",
        ),
        (
            None,
            "models:\n  a:\n    path: m.gguf\n    context: big\n",
            "models.yaml:4: models.a.context",
            "expected an integer",
        ),
        (
            None,
            "models:\n  a:\n    path: m.gguf\n    kv_type: q3\n",
            "models.yaml:4: models.a.kv_type",
            "unknown cache type",
        ),
        (
            None,
            "models:\n  a:\n    path: m.gguf\n    tensor_split: 'x,y'\n",
            "models.yaml:4: models.a.tensor_split",
            "proportions",
        ),
        (
            None,
            'models:\n  a:\n    path: m.gguf\n    extra_args: "--x \'unclosed"\n',
            "models.yaml:4: models.a.extra_args",
            "shell",
        ),
        (
            None,
            "models:\n  a:\n    path: m.gguf\n    backend: nope\n",
            "models.yaml:4: models.a.backend",
            "no backend named",
        ),
        (
            None,
            "models:\n  a:\n    path: m.gguf\n  b:\n    path: m.gguf\n    aliases: [a]\n",
            "models.yaml:4: models.b",
            "already used",
        ),
        (None, "models:\n  bad/name:\n    path: m.gguf\n", "models.yaml:2: models.bad/name", "model names"),
        (None, "modles: {}\n", "models.yaml:1: modles", "unknown key"),
        (
            None,
            "models:\n  a:\n    name: x\n    path: m.gguf\n",
            "models.yaml:3: models.a.name",
            "unknown key",
        ),
        (None, "models:\n  a:\n    ngl: 1\n", "models.yaml:2: models.a", "missing required key 'path'"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, settings, models, where, words):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, settings, models))
    msg = str(exc.value)
    assert where in msg and words in msg, msg


def test_ram_bandwidth_setting(tmp_path):
    cfg = load_config(write(tmp_path, "gpus:\n  ram_gbs: 80\n", BRIEF_MODEL))
    assert cfg.settings.gpus.ram_gbs == 80.0
    (tmp_path / "plain").mkdir()
    assert load_config(write(tmp_path / "plain", None, BRIEF_MODEL)).settings.gpus.ram_gbs is None


def test_missing_models_file(tmp_path):
    (tmp_path / "etc").mkdir()
    with pytest.raises(ConfigError, match=r"models\.yaml: file not found"):
        load_config(tmp_path / "etc")


def test_names_resolve_with_latest_tag_and_aliases(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            None,
            "models:\n  qwen:\n    path: m.gguf\n    aliases: ['q:7b']\n  'llama:8b':\n    path: m.gguf\n",
        )
    )
    assert canonical_name("qwen") == "qwen:latest"
    assert resolve_model(cfg, "qwen:latest").name == "qwen"
    assert resolve_model(cfg, "q:7b").name == "qwen"
    assert resolve_model(cfg, "llama:8b").name == "llama:8b"
    assert resolve_model(cfg, "llama") is None


def test_tier_timeouts_by_size(tmp_path):
    t = load_config(write(tmp_path, BRIEF_SETTINGS, BRIEF_MODEL)).settings.timeouts
    assert tier_timeouts(t, 45000) == (1800, 1800)
    assert tier_timeouts(t, 25000) == (1200, 1200)
    assert tier_timeouts(t, 100) == (t.default_timeout_seconds, t.default_load_timeout_seconds)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("0", 0), ("-1m", -60), ("1.5h", 5400)],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) / 1e9 == pytest.approx(seconds)


def test_keep_alive_forms():
    assert parse_keep_alive(30) == 30 and parse_keep_alive("5m") == 300 and parse_keep_alive(-5) == -1
    with pytest.raises(ValueError, match="missing unit"):
        parse_keep_alive("10")
    with pytest.raises(ValueError):
        parse_keep_alive(True)
