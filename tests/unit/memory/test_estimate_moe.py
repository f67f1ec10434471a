"""MoE hparams from the GGUF header and the MoE compute-buffer rule, on the generated tiny
qwen3moe / gpt-oss files (the rule's figures were measured on upstream llama-server 11434)."""

from __future__ import annotations

import dataclasses

import pytest

from guardian_supervisor.memory.estimate import estimate, ik_activation_floats, moe_activation_floats
from guardian_supervisor.memory.gguf_info import ModelInfo, _moe_hparams, read_model_info
from tests.families.moe_families import FAMILIES, write_family_model


@pytest.fixture(scope="module")
def infos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    d = tmp_path_factory.mktemp("fam")
    return {a: read_model_info(write_family_model(d / f"{a}.gguf", s)) for a, s in FAMILIES.items()}


def test_moe_hparams_are_read(infos: dict[str, ModelInfo]) -> None:
    q = infos["qwen3moe"]
    assert (q.n_expert, q.n_expert_used, q.n_ff_exp, q.is_moe) == (32, 8, 96, True)
    g = infos["gpt-oss"]
    assert (g.n_expert, g.n_expert_used, g.n_ff_exp) == (8, 4, 256)
    assert g.swa_layers == (True, False, True, False)  # even layers: the window
    dense = infos["qwen3"]
    assert (dense.n_expert, dense.n_ff_exp, dense.is_moe) == (0, 0, False)
    assert dense.key_length == 64 and dense.n_embd // dense.n_head == 32  # head dim from key_length


def test_experts_count_as_layer_weights(infos: dict[str, ModelInfo]) -> None:
    q = infos["qwen3moe"]
    exps = sum(t.n_bytes for t in q.tensors if "_exps." in t.name)
    assert exps == 4 * 3 * 32 * 96 * 256 * 2  # 4 layers x gate/up/down x experts x F x E, f16
    assert sum(q.layer_bytes) > exps


def test_moe_n_ff_exp_falls_back_to_n_ff_over_used() -> None:
    # qwen3moe's loader: n_ff_exp = n_ff / n_expert_used when the key is absent
    kv = {"expert_count": 128, "expert_used_count": 8}
    assert _moe_hparams(lambda k, d=None: kv.get(k, d), 6144) == {
        "n_expert": 128,
        "n_expert_used": 8,
        "n_ff_exp": 768,
    }
    kv["expert_feed_forward_length"] = [0, 512, 768]  # per layer: the widest counts
    assert _moe_hparams(lambda k, d=None: kv.get(k, d), 6144)["n_ff_exp"] == 768
    assert _moe_hparams(lambda k, d=None: {}.get(k, d), 6144) == {
        "n_expert": 0,
        "n_expert_used": 0,
        "n_ff_exp": 0,
    }


# (E, K, F, arch, f32 values per token llama-server 11434 reserved beyond the masks)
MEASURED = [
    (256, 8, 96, "qwen3moe", 5642),  # E = 2.7 F, as Qwen3-30B-A3B: 3FK + 5E + EK
    (512, 8, 192, "qwen3moe", 11274),
    (128, 4, 256, "qwen3moe", 3722),  # E <= 2F: 3FK + 5E
    (256, 4, 256, "gpt-oss", 4367),
    (256, 1, 256, "gpt-oss", 2319),  # one narrow expert: the attention's peak
]


@pytest.mark.parametrize(("e", "k", "f", "arch", "floats"), MEASURED)
def test_moe_activation_rule(
    infos: dict[str, ModelInfo], e: int, k: int, f: int, arch: str, floats: int
) -> None:
    info = dataclasses.replace(infos[arch], n_embd=e, n_expert_used=k, n_ff_exp=f)
    assert moe_activation_floats(info) + 10 == pytest.approx(floats, rel=0.005)


def test_moe_compute_is_above_the_dense_reading(infos: dict[str, ModelInfo]) -> None:
    # Read as dense, qwen3moe's unused feed_forward_length would size the FFN instead.
    q = infos["qwen3moe"]
    as_dense = dataclasses.replace(q, n_expert=0, n_expert_used=0)
    moe, dense = (estimate(i, ctx=2048, gpu=False).compute_bytes for i in (q, as_dense))
    assert moe != dense and moe == 512 * 4 * (moe_activation_floats(q) + 10) + 512 * 2048 * 2


# ik_llama.cpp 0.1.5: (arch, E, K, F, f32 values per token it reserved beyond the masks)
IK_MEASURED = [
    ("qwen3moe", 256, 8, 96, 3395),
    ("qwen3moe", 128, 4, 256, 2053),
    ("gpt-oss", 256, 4, 256, 3077),
    ("qwen3", 256, 0, 768, 2821),  # dense: K unused, F is n_ff
    ("qwen3", 256, 0, 1536, 5125),
]


@pytest.mark.parametrize(("arch", "e", "k", "f", "floats"), IK_MEASURED)
def test_ik_activation_rule(
    infos: dict[str, ModelInfo], arch: str, e: int, k: int, f: int, floats: int
) -> None:
    base = infos[arch]
    info = (
        dataclasses.replace(base, n_embd=e, n_expert_used=k, n_ff_exp=f)
        if base.is_moe
        else dataclasses.replace(base, n_embd=e, n_ff=f)
    )
    # exact where the attention's 2Q dominates; over (never under) by 6 % at E = Q
    assert floats * 0.995 <= ik_activation_floats(info) + 10 <= floats * 1.06
