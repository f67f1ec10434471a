"""argv for both flavors: every flag explicit, list form, flavor-specific forms and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian_supervisor.models.argv import Placement, build_argv, check_extra_args, check_model
from shared.config import Backend, ModelConfig

IK = Backend("/opt/ik/llama-server", "ik")
UP = Backend("llama-server", "upstream")


def model(**kw) -> ModelConfig:
    base = {"name": "m", "path": Path("/models/m.gguf"), "context": 8192}
    return ModelConfig(**{**base, **kw})


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("backend", [IK, UP])
def test_common_flags(backend):
    argv = build_argv(model(), backend, binary=backend.binary, port=11441)
    assert argv[0] == backend.binary
    assert flag(argv, "-m") == "/models/m.gguf"
    assert flag(argv, "--host") == "127.0.0.1" and flag(argv, "--port") == "11441"
    assert flag(argv, "--alias") == "m" and flag(argv, "-c") == "8192" and flag(argv, "-np") == "1"
    assert flag(argv, "-ngl") == "99" and flag(argv, "-ctk") == "f16" and flag(argv, "-ctv") == "f16"
    assert flag(argv, "-fa") == "auto" and "--jinja" in argv
    assert all(isinstance(a, str) for a in argv)


def test_upstream_turns_off_fit_and_ik_does_not_get_it():
    up = build_argv(model(), UP, binary="llama-server", port=1)
    ik = build_argv(model(), IK, binary="ik", port=1)
    assert flag(up, "-fit") == "off"
    assert "-fit" not in ik and "--fit" not in ik


def test_context_is_per_slot_times_parallel():
    argv = build_argv(model(parallel=4), UP, binary="x", port=1, ctx=4096)
    assert flag(argv, "-c") == "16384" and flag(argv, "-np") == "4"


def test_quantized_kv_forces_flash_attention():
    argv = build_argv(model(kv_type="q4_0"), IK, binary="x", port=1)
    assert flag(argv, "-ctk") == "q4_0" and flag(argv, "-ctv") == "q4_0" and flag(argv, "-fa") == "on"
    assert check_model(model(kv_type="q8_0", flash_attn="off"), UP) is not None


def test_tensor_split_from_config_and_from_placement():
    argv = build_argv(model(tensor_split="0.55,0.45"), IK, binary="x", port=1)
    assert flag(argv, "-ts") == "0.55,0.45" and flag(argv, "-sm") == "layer"
    argv = build_argv(
        model(),
        UP,
        binary="x",
        port=1,
        placement=Placement(n_gpu_layers=20, tensor_split=(3.0, 1.0), main_gpu=1),
    )
    assert flag(argv, "-ts") == "3,1" and flag(argv, "-ngl") == "20" and flag(argv, "-mg") == "1"
    single = build_argv(model(), UP, binary="x", port=1, placement=Placement(tensor_split=(1.0,)))
    assert "-ts" not in single


def test_extra_args_split_like_a_shell_and_come_last():
    argv = build_argv(model(extra_args="--override-kv 'a=str:b c' -t 8"), UP, binary="x", port=1)
    assert argv[-4:] == ["--override-kv", "a=str:b c", "-t", "8"]


def test_optional_flags():
    argv = build_argv(
        model(embeddings=True, threads=6, batch_size=1024, ubatch_size=256, mmproj=Path("/p.gguf")),
        UP,
        binary="x",
        port=1,
        slot_dir=Path("/s"),
    )
    assert (
        "--embeddings" in argv
        and flag(argv, "-t") == "6"
        and flag(argv, "-b") == "1024"
        and flag(argv, "-ub") == "256"
    )
    assert flag(argv, "--mmproj") == "/p.gguf" and flag(argv, "--slot-save-path") == "/s"


@pytest.mark.parametrize(
    ("flavor", "args", "bad"),
    [
        ("ik", ["-fmoe"], "-fmoe"),
        ("ik", ["-sm", "row"], "-sm row"),
        ("ik", ["-ngl", "auto"], "-ngl auto"),
        ("ik", ["--no-jinja"], "--no-jinja"),
        ("ik", ["-fit", "on"], "-fit"),
        ("upstream", ["-mla", "3"], "-mla"),
        ("upstream", ["-rtr"], "-rtr"),
        ("upstream", ["-sm", "graph"], "-sm graph"),
    ],
)
def test_flags_a_flavor_rejects_are_named(flavor, args, bad):
    msg = check_extra_args(flavor, "qwen", args)
    assert msg is not None and "'qwen'" in msg and bad in msg


@pytest.mark.parametrize(
    ("flavor", "args"),
    [
        ("ik", ["-mla", "3", "-amb", "512", "-sm", "graph"]),
        ("upstream", ["-sm", "row", "-ngl", "auto", "--no-jinja"]),
    ],
)
def test_flags_a_flavor_accepts(flavor, args):
    assert check_extra_args(flavor, "m", args) is None


def test_ik_only_cache_types():
    assert check_model(model(kv_type="q6_0"), IK) is None
    assert "ik_llama.cpp" in (check_model(model(kv_type="q6_0"), UP) or "")


def test_chat_template_names_a_builtin_and_turns_jinja_off_on_upstream():
    up = build_argv(model(chat_template="gemma"), UP, binary="llama-server", port=1)
    ik = build_argv(model(chat_template="gemma"), IK, binary="ik", port=1)
    assert flag(up, "--chat-template") == "gemma" and "--no-jinja" in up and "--jinja" not in up
    # ik's Jinja is off unless asked for, and ik rejects --no-jinja.
    assert flag(ik, "--chat-template") == "gemma" and "--jinja" not in ik and "--no-jinja" not in ik


@pytest.mark.parametrize("flag_", ["-lv", "--verbosity"])
def test_ik_rejects_log_verbosity(flag_):
    err = check_extra_args("ik", "m", [flag_, "4"])
    assert err is not None and flag_ in err and "ik_llama.cpp" in err
    assert check_extra_args("upstream", "m", [flag_, "4"]) is None


@pytest.mark.parametrize("kv", ["bf16", "q5_0", "q5_1"])
def test_ik_cpu_refuses_kv_types_its_flash_attention_lacks(kv):
    err = check_model(model(kv_type=kv), IK, on_cpu=True)
    assert err is not None and kv in err and "abort on CPU" in err
    assert check_model(model(kv_type=kv), IK, on_cpu=False) is None
    assert check_model(model(kv_type=kv), UP, on_cpu=True) is None
    assert check_model(model(kv_type="q8_KV"), IK, on_cpu=True) is None


def test_ik_host_prompt_cache_is_capped():
    from guardian_supervisor.models.argv import IK_CACHE_RAM_MIB

    argv = build_argv(model(), IK, binary="ik", port=1)
    assert flag(argv, "--cache-ram") == str(IK_CACHE_RAM_MIB) and IK_CACHE_RAM_MIB < 8192
    assert "--cache-ram" not in build_argv(model(), UP, binary="up", port=1)


def test_reranking_model_starts_with_rerank_on_upstream_only():
    assert "--rerank" in build_argv(model(reranking=True), UP, binary="llama-server", port=1)
    # ik_llama.cpp has no reranking endpoint: the proxy refuses such requests with a 400 instead.
    assert "--rerank" not in build_argv(model(reranking=True), IK, binary="ik", port=1)
    assert "--rerank" not in build_argv(model(), UP, binary="llama-server", port=1)


@pytest.mark.parametrize("backend", [IK, UP])
def test_http_threads_exceed_the_proxy_pool_and_extra_args_still_win(backend):
    from shared.llama_http import POOL_PER_SERVER

    argv = build_argv(model(parallel=4), backend, binary="x", port=1)
    assert int(flag(argv, "--threads-http") or 0) == POOL_PER_SERVER + 4 + 4  # pool, slots, spares
    argv = build_argv(model(extra_args="--threads-http 99"), backend, binary="x", port=1)
    assert argv[-2:] == ["--threads-http", "99"]  # later on the line: llama-server takes the last
