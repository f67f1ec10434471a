"""The user's own -ot / --cpu-moe / --n-cpu-moe: what they keep in RAM, read from a generated
qwen3moe GGUF, and how the placement counts it (RAM, not VRAM)."""

from __future__ import annotations

import pytest

from guardian_supervisor.memory.gguf_info import ModelInfo, read_model_info
from guardian_supervisor.memory.placement import NoFit, PlaceRequest, place
from guardian_supervisor.memory.planner import expert_bytes, ram_pinned_request
from guardian_supervisor.memory.tensor_overrides import parse_rules, pinned_to_ram
from tests.families.moe_families import FAMILIES, write_family_model
from tests.unit.memory.test_placement import COMPUTE, LIMITS, NONREP, OVERHEAD, G, as_plan, gpu, rig


@pytest.fixture(scope="module")
def qwen3moe(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    spec = FAMILIES["qwen3moe"]
    return read_model_info(write_family_model(tmp_path_factory.mktemp("moe") / "m.gguf", spec))


def test_cpu_moe_pins_every_expert_and_nothing_else(qwen3moe: ModelInfo) -> None:
    assert qwen3moe.is_moe
    experts = expert_bytes(qwen3moe)
    assert experts and all(experts)
    for args in (["--cpu-moe"], ["-cmoe"], ["-ot", r"\.ffn_.*_exps\.=CPU"], ["--override-tensor=exps=CPU"]):
        pinned = pinned_to_ram(qwen3moe, parse_rules(args))
        assert pinned.per_layer == experts and pinned.other == 0, args


def test_n_cpu_moe_pins_the_first_layers_experts(qwen3moe: ModelInfo) -> None:
    experts = expert_bytes(qwen3moe)
    n = qwen3moe.n_layer // 2
    pinned = pinned_to_ram(qwen3moe, parse_rules(["-c", "4096", "--n-cpu-moe", str(n), "-fa", "on"]))
    assert pinned.per_layer == experts[:n] + (0,) * (qwen3moe.n_layer - n)


def test_the_first_matching_override_decides(qwen3moe: ModelInfo) -> None:
    # llama.cpp stops at the first pattern that matches: layer 0's experts go to the GPU.
    rules = parse_rules(["-ot", r"blk\.0\.ffn_.*_exps=CUDA0,exps=CPU"])
    pinned = pinned_to_ram(qwen3moe, rules)
    assert pinned.per_layer[0] == 0 and pinned.per_layer[1:] == expert_bytes(qwen3moe)[1:]
    embd = next(t.n_bytes for t in qwen3moe.tensors if t.name == "token_embd.weight")
    assert pinned_to_ram(qwen3moe, parse_rules(["-ot", "token_embd=CPU"])).other == embd


def test_no_overrides_pin_nothing(qwen3moe: ModelInfo) -> None:
    assert pinned_to_ram(qwen3moe, parse_rules(["-c", "4096", "-ngl", "99", "--foo=bar"])).total == 0
    assert parse_rules(["-ot", "no-equals-sign", "--n-cpu-moe", "x"]) == ()


def test_pinned_experts_count_as_ram_and_guardian_does_not_move_them_again(qwen3moe: ModelInfo) -> None:
    n_layer = 48
    per, share = int(40 * G) // n_layer, 0.9
    experts = (int(per * share),) * n_layer
    req = PlaceRequest("moe", (per,) * n_layer, NONREP, COMPUTE, OVERHEAD, expert_bytes=experts)
    # The user's --cpu-moe: 36 GB of experts in RAM, the rest (~4 GB) fits one 12 GB card.
    from guardian_supervisor.memory.tensor_overrides import PinnedToRam

    pinned_req = ram_pinned_request(req, PinnedToRam(experts, 0))
    assert pinned_req.ram_bytes == sum(experts) and pinned_req.expert_bytes == ()
    assert pinned_req.weights_bytes == req.weights_bytes, "the whole model is still counted"
    inv = rig(gpu(0, 12, 0, "RTX 3060"), ram_gb=64, ram_free_gb=48)
    plan = as_plan(place(pinned_req, inv, [], LIMITS))
    assert plan.fits_fully and plan.n_cpu_moe == 0 and plan.n_gpu_layers == n_layer + 1
    assert plan.cpu_bytes == sum(experts) + COMPUTE
    assert sum(plan.per_gpu_bytes.values()) < 12 * G
    # Without the RAM for them, it does not fit: refused rather than swapping the host to death.
    small = rig(gpu(0, 12, 0, "RTX 3060"), ram_gb=32, ram_free_gb=20)
    refused = place(pinned_req, small, [], LIMITS)
    assert isinstance(refused, NoFit) and "system RAM" in refused.reason, refused


def test_a_request_without_overrides_is_unchanged() -> None:
    from guardian_supervisor.memory.tensor_overrides import PinnedToRam

    req = PlaceRequest("m", (G,) * 4, NONREP, COMPUTE, OVERHEAD)
    assert ram_pinned_request(req, PinnedToRam((0,) * 4, 0)) is req


def test_a_projector_in_ram_brings_no_compute_buffer_of_its_own() -> None:
    # --no-mmproj-offload: clip's weights and warm-up buffer (2 GB together) sit in RAM; the
    # text model's compute buffer stays on the GPU with its layers.
    req = PlaceRequest("vis", (G,) * 4, NONREP, COMPUTE, OVERHEAD, ram_side_bytes=2 * G)
    plan = as_plan(place(req, rig(gpu(0, 12, 0, "RTX 3060"), ram_gb=64, ram_free_gb=48), [], LIMITS))
    assert plan.fits_fully and plan.cpu_bytes == 2 * G
    refused = place(req, rig(gpu(0, 12, 0, "RTX 3060"), ram_gb=4, ram_free_gb=1), [], LIMITS)
    assert isinstance(refused, NoFit) and "--no-mmproj-offload" in refused.reason, refused
    assert "compute buffer" not in refused.reason and refused.needed_bytes == 2 * G
