"""Pure: a model's config + its backend flavor + port + placement → llama-server argv.

Every flag is passed explicitly because defaults differ between forks and versions
(see shared/reference/llama-server.md §2). The result is a list, never a shell string.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from shared.config import Backend, ModelConfig
from shared.llama_http import http_threads

QUANTIZED_KV = {"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1", "q6_0", "q8_KV"}
IK_ONLY_KV = {"q6_0", "q8_KV"}

# Flags one flavor does not accept (reference §2). A value after the flag, if any, is checked
# separately below for the split-mode / fit / ngl forms.
IK_ONLY_FLAGS = {
    "-mla",
    "--mla-use",
    "-amb",
    "--attention-max-batch",
    "-rtr",
    "--run-time-repack",
    "-ger",
    "--grouped-expert-routing",
    "-ser",
    "--smart-expert-reduction",
    "-smgs",
    "-sas",
    "-muge",
    "-mqkv",
    "-cuda",
    "--max-gpu",
    "-gfm",
    "-no-fmoe",
    "--no-fused-moe",
    "-fmoe",
    "--fused-moe",
    "-khad",
    "-vhad",
    "-ctk-first",
    "-ctk-last",
    "--log-format",
    "-no-fa",
}
UPSTREAM_ONLY_FLAGS = {
    "--models-dir",
    "--models-preset",
    "--models-max",
    "--props",
    "--sleep-idle-seconds",
    "--reuse-port",
    "--list-devices",
    "--no-jinja",
    "-lm",
    "--load-mode",
    "-fit",
    "--fit",
}
GONE_FROM_IK = {
    "-fmoe": "fused MoE is on by default in ik_llama.cpp and -fmoe was removed; drop it (use -no-fmoe to turn it off)",
    "-lv": "ik_llama.cpp has no log verbosity levels; drop it (use -v for verbose logs)",
    "--verbosity": "ik_llama.cpp has no log verbosity levels; drop it (use -v for verbose logs)",
}
# ik always runs flash attention on CPU, and its CPU flash attention has no kernels for these
# cache types: the server aborts at the first request.
IK_CPU_BAD_KV = {"bf16", "q5_0", "q5_1"}
# ik keeps finished prompts' KV in host RAM, 8 GiB by default; Guardian caps it and counts the
# cap in the memory budget (memory.planner).
IK_CACHE_RAM_MIB = 1024
IK_SPLIT_MODES = {"none", "layer", "attn", "graph"}
UPSTREAM_SPLIT_MODES = {"none", "layer", "row", "tensor"}


@dataclass(frozen=True)
class Placement:
    """What the placement decided for one launch (None fields: leave to the model config)."""

    n_gpu_layers: int | None = None
    tensor_split: tuple[float, ...] | None = None
    main_gpu: int | None = None
    split_mode: str | None = None
    n_cpu_moe: int = 0  # keep the experts of the first N layers in RAM
    swa_full: bool = False  # upstream --swa-full: a full-size cache on sliding-window layers


def cpu_moe_args(flavor: str, n: int) -> list[str]:
    """Experts of layers 0..n-1 on the CPU: upstream's --n-cpu-moe; ik gets the same as a
    tensor override (-ot), which both forks accept."""
    if n <= 0:
        return []
    if flavor != "ik":
        return ["--n-cpu-moe", str(n)]
    layers = "|".join(str(i) for i in range(n))
    return ["-ot", f"blk\\.({layers})\\.ffn_.*_exps\\.=CPU"]


def _fmt_split(split: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in split)


def launch_ctx(model: ModelConfig, ctx: int | None = None) -> int:
    """-c as passed to llama-server: it is shared by all -np slots, so each gets the full ctx."""
    return (ctx or model.context) * model.parallel


def user_argv(model: ModelConfig, backend: Backend) -> list[str]:
    """The user's own extra arguments as llama-server gets them: the backend's, then the
    model's (a flag given twice counts as the last one)."""
    return [*shlex.split(backend.extra_args), *model.extra_argv]


def check_extra_args(flavor: str, model: str, args: list[str]) -> str | None:
    """Return an error naming the model and flag if `args` has a flag the flavor rejects."""
    fork = "ik_llama.cpp" if flavor == "ik" else "upstream llama.cpp"
    for i, arg in enumerate(args):
        value = args[i + 1] if i + 1 < len(args) else ""
        if flavor == "ik":
            if arg in GONE_FROM_IK:
                return (
                    f"model {model!r}: extra_args flag {arg} is not accepted by {fork}: {GONE_FROM_IK[arg]}"
                )
            if arg in UPSTREAM_ONLY_FLAGS:
                return f"model {model!r}: extra_args flag {arg} is not accepted by {fork} (upstream llama.cpp only)"
            if arg in ("-sm", "--split-mode") and value not in IK_SPLIT_MODES:
                return f"model {model!r}: extra_args '{arg} {value}' is not accepted by {fork}; split modes: {', '.join(sorted(IK_SPLIT_MODES))}"
            if arg in ("-ngl", "--n-gpu-layers", "--gpu-layers") and not value.lstrip("-").isdigit():
                return f"model {model!r}: extra_args '{arg} {value}' is not accepted by {fork}; it takes a number of layers"
        else:
            if arg in IK_ONLY_FLAGS:
                return f"model {model!r}: extra_args flag {arg} is not accepted by {fork} (ik_llama.cpp only); use backend: ik_fork or drop it"
            if arg in ("-sm", "--split-mode") and value not in UPSTREAM_SPLIT_MODES:
                return f"model {model!r}: extra_args '{arg} {value}' is not accepted by {fork}; split modes: {', '.join(sorted(UPSTREAM_SPLIT_MODES))}"
    return None


def check_model(model: ModelConfig, backend: Backend, *, on_cpu: bool = False) -> str | None:
    """Problems with a model/backend combination that would make llama-server exit at start."""
    if on_cpu and backend.flavor == "ik" and model.kv_type in IK_CPU_BAD_KV:
        return (
            f"model {model.name!r}: kv_type {model.kv_type} makes ik_llama.cpp abort on CPU "
            "(its CPU flash attention, always on, has no kernel for it); use f16, q8_0, q8_KV, q6_0 or q4_0"
        )
    if model.kv_type in IK_ONLY_KV and backend.flavor != "ik":
        return f"model {model.name!r}: kv_type {model.kv_type} exists only in ik_llama.cpp; use backend: ik_fork or another kv_type"
    if model.kv_type in QUANTIZED_KV and model.flash_attn == "off":
        return f"model {model.name!r}: a quantized KV cache ({model.kv_type}) needs flash attention; set flash_attn: on or auto"
    return check_extra_args(backend.flavor, model.name, user_argv(model, backend))


def build_argv(
    model: ModelConfig,
    backend: Backend,
    *,
    binary: str,
    port: int,
    ctx: int | None = None,
    placement: Placement | None = None,
    slot_dir: Path | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    """The exact command line for one llama-server serving `model` on `host:port`."""
    place = placement or Placement()
    ik = backend.flavor == "ik"
    argv = [binary, "-m", str(model.path), "--host", host, "--port", str(port), "--alias", model.name]
    # -c is shared by all slots (reference §2): give each parallel slot the full context.
    argv += ["-c", str(launch_ctx(model, ctx)), "-np", str(model.parallel)]
    ngl = place.n_gpu_layers if place.n_gpu_layers is not None else model.ngl
    argv += ["-ngl", str(ngl)]
    argv += cpu_moe_args(backend.flavor, place.n_cpu_moe)
    split = place.tensor_split if place.tensor_split is not None else model.split
    if split is not None and len(split) > 1:
        argv += ["-sm", place.split_mode or "layer", "-ts", _fmt_split(split)]
    if place.main_gpu is not None:
        argv += ["-mg", str(place.main_gpu)]
    argv += ["-ctk", model.kv_type, "-ctv", model.kv_type]
    flash = model.flash_attn
    if flash == "auto" and model.kv_type in QUANTIZED_KV:
        flash = "on"  # a quantized V cache requires flash attention in both forks
    argv += ["-fa", flash]
    if model.batch_size is not None:
        argv += ["-b", str(model.batch_size)]
    if model.ubatch_size is not None:
        argv += ["-ub", str(model.ubatch_size)]
    if model.threads is not None:
        argv += ["-t", str(model.threads)]
    if model.chat_template is not None:
        # A named built-in template is not a Jinja one: upstream's Jinja is on by default.
        argv += ["--chat-template", model.chat_template] + ([] if ik else ["--no-jinja"])
    else:
        argv += ["--jinja"]  # ik: jinja is off by default and tool calls need it
    argv += ["--metrics"]
    # One thread per pooled proxy connection, and spares (shared/llama_http.py).
    argv += ["--threads-http", str(http_threads(model.parallel))]
    if ik:
        argv += ["--cache-ram", str(IK_CACHE_RAM_MIB)]
    if place.swa_full and not ik:
        argv += ["--swa-full"]
    if not ik:
        argv += ["-fit", "off"]  # upstream would shrink ctx/ngl on its own; Guardian owns the budget
        argv += ["-lv", "4"]  # upstream prints its buffer sizes (the measured memory) only at -lv 4
    if model.embeddings:
        argv += ["--embeddings"]
    if model.reranking and not ik:
        argv += ["--rerank"]  # pooling rank; ik_llama.cpp has no reranking endpoint (proxy says so)
    if model.pooling is not None:
        argv += ["--pooling", model.pooling]
    if model.mmproj is not None:
        argv += ["--mmproj", str(model.mmproj)]
    if slot_dir is not None:
        argv += ["--slot-save-path", str(slot_dir)]
    return argv + user_argv(model, backend)
