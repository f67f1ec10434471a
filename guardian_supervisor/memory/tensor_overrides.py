"""Which weights the user's own launch arguments keep in system RAM.

`-ot/--override-tensor PATTERN=CPU,...`, `-cmoe/--cpu-moe` and `-ncmoe/--n-cpu-moe N` (both
forks) and upstream's `-ncffn/--n-cpu-ffn N` pin tensors to the CPU whatever -ngl says.
llama.cpp tries each tensor name against the overrides in the order given (std::regex_search)
and the first match decides (llama-model-loader.cpp), so a pattern for another device ahead
of a CPU one keeps the tensor off the CPU. The planner counts what these pin as RAM, not VRAM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guardian_supervisor.memory.gguf_info import ModelInfo

# llama.cpp common.h: LLM_FFN_EXPS_REGEX and LLM_FFN_DENSE_REGEX
EXPERTS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
DENSE_FFN = r"\.ffn_(up|down|gate)\."
_LAYER = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    to_cpu: bool  # False: another buffer type (a GPU): the tensor is not in RAM


def _first_layers(n: str, ffn: str) -> list[Rule]:
    try:
        count = int(n)
    except ValueError:
        return []  # llama-server itself refuses it and says so
    return [Rule(re.compile(rf"blk\.{i}{ffn}"), True) for i in range(max(count, 0))]


def _overrides(value: str) -> list[Rule]:
    rules = []
    for item in value.split(","):
        pattern, eq, buft = item.partition("=")
        if not eq:
            continue
        try:
            rules.append(Rule(re.compile(pattern), buft.strip().upper().startswith("CPU")))
        except re.error:
            continue  # not a pattern Python reads; llama-server will say what it makes of it
    return rules


def parse_rules(args: list[str]) -> tuple[Rule, ...]:
    """The tensor placement rules in `args` (extra_args of the backend and the model), in order."""
    rules: list[Rule] = []
    i = 0
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        takes = not eq  # a separate value word follows
        if flag in ("-ot", "--override-tensor"):
            rules += _overrides(value)
        elif flag in ("-ncmoe", "--n-cpu-moe"):
            rules += _first_layers(value, EXPERTS)
        elif flag in ("-ncffn", "--n-cpu-ffn"):
            rules += _first_layers(value, DENSE_FFN)
        elif args[i] in ("-cmoe", "--cpu-moe"):
            rules.append(Rule(re.compile(EXPERTS), True))
            takes = False
        else:
            takes = False
        i += 2 if takes else 1
    return tuple(rules)


@dataclass(frozen=True)
class PinnedToRam:
    per_layer: tuple[int, ...]  # bytes of blk.N.* tensors the rules keep in RAM, index N
    other: int  # bytes of tensors outside blk.N (token_embd, output) they keep in RAM

    @property
    def total(self) -> int:
        return sum(self.per_layer) + self.other


def pinned_to_ram(info: ModelInfo, rules: tuple[Rule, ...]) -> PinnedToRam:
    """What `rules` keep in system RAM of the model's weights, per layer."""
    per = [0] * info.n_layer
    other = 0
    if rules:
        for t in info.tensors:
            rule = next((r for r in rules if r.pattern.search(t.name)), None)
            if rule is None or not rule.to_cpu:
                continue
            m = _LAYER.match(t.name)
            if m and int(m[1]) < len(per):
                per[int(m[1])] += t.n_bytes
            else:
                other += t.n_bytes
    return PinnedToRam(tuple(per), other)
