"""What a spec's serving.extraArgs fix about the engine that llmpack must plan around, read as
vLLM 0.32's parser reads them (vllm/utils/argparse_utils.py FlexibleArgumentParser over the
arguments of vllm/engine/arg_utils.py EngineArgs.add_cli_args): `--flag value` and `--flag=value`,
underscores for dashes, an unambiguous prefix of a long flag (argparse's allow_abbrev, never
turned off in vLLM), the short aliases (`-tp 2`, `-tp=2`), the last occurrence winning.

- The devices one `vllm serve` uses: tensor x pipeline x prefill-context parallel (its world size,
  vllm/config/parallel.py ParallelConfig.__post_init__) times the data-parallel engines it starts
  on the node (--data-parallel-size-local, else --data-parallel-size; vllm/engine/arg_utils.py).
  Decode context parallelism reuses the tensor-parallel ranks and adds none.
- The scheduler's token budget and chunked prefill, which bound the batch and the context
  (vllm/config/scheduler.py SchedulerConfig.verify_max_model_len: max_num_batched_tokens >=
  max_num_seqs; without chunked prefill, max_num_batched_tokens >= max_model_len).
- What changes a replica's memory besides the KV cache: online quantization, LoRA slots
  (--enable-lora, --max-loras, --max-lora-rank), a speculative draft model (--speculative-config).

Limits: a prefix is matched against the flags named here only (vLLM refuses one that is ambiguous
among all its flags, which this cannot see; the rendered command is checked by vLLM itself in
tests/engine); `--config FILE` (flags from a YAML file) is not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# long flag -> its short alias (vllm/engine/arg_utils.py, EngineArgs.add_cli_args)
PARALLEL_FLAGS: dict[str, str] = {
    "--tensor-parallel-size": "-tp",
    "--pipeline-parallel-size": "-pp",
    "--prefill-context-parallel-size": "-pcp",
    "--decode-context-parallel-size": "-dcp",
    "--data-parallel-size": "-dp",
    "--data-parallel-size-local": "-dpl",
}
BATCHED_TOKENS_FLAG = "--max-num-batched-tokens"
CHUNKED_PREFILL_FLAGS = ("--enable-chunked-prefill", "--no-enable-chunked-prefill")
QUANTIZATION_FLAG = "--quantization"  # short -q: online quantization changes the weights' bytes
# flags that change a replica's memory besides the KV cache (advisor/engine_memory.py)
LORA_FLAGS = ("--enable-lora", "--no-enable-lora")
# vLLM then keeps the whole context in sliding-window and chunked layers beside full attention
HYBRID_MANAGER_FLAGS = ("--disable-hybrid-kv-cache-manager", "--no-disable-hybrid-kv-cache-manager")
# two batches in flight (vLLM's default where its executor supports it) or one
ASYNC_SCHEDULING_FLAGS = ("--async-scheduling", "--no-async-scheduling")
MEMORY_FLAGS = ("--max-loras", "--max-lora-rank", "--speculative-config")
BOOLEAN_FLAGS = (*CHUNKED_PREFILL_FLAGS, *LORA_FLAGS, *HYBRID_MANAGER_FLAGS, *ASYNC_SCHEDULING_FLAGS)
SHORT_FLAGS = {**{short: flag for flag, short in PARALLEL_FLAGS.items()}, "-q": QUANTIZATION_FLAG}
KNOWN_FLAGS = (
    *PARALLEL_FLAGS,
    BATCHED_TOKENS_FLAG,
    *CHUNKED_PREFILL_FLAGS,
    QUANTIZATION_FLAG,
    *LORA_FLAGS,
    *HYBRID_MANAGER_FLAGS,
    *ASYNC_SCHEDULING_FLAGS,
    *MEMORY_FLAGS,
)
# Beyond any machine: a value above this is a typo, not a size (and stays an exact int)
MAX_INT = 2**53

# vLLM's human_readable_int (vllm/utils/argparse_utils.py): lower case decimal, upper case binary
_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}
_HUMAN_INT = re.compile(r"^(\d{1,16})(?:\.(\d{1,9}))?([kmgKMG]?)$")


@dataclass(frozen=True)
class Given:
    """One flag as the spec gave it: the spelling (for messages) and the value."""

    spelling: str
    value: str


@dataclass(frozen=True)
class EngineFlags:
    given: dict[str, Given] = field(default_factory=dict)  # canonical long flag -> last given

    def int_of(self, flag: str) -> int | None:
        """The flag's value as vLLM reads it (a plain int for the parallel sizes, vLLM's
        human-readable int for the token budget); None where not given or unreadable."""
        found = self.given.get(flag)
        if found is None:
            return None
        if flag in PARALLEL_FLAGS:
            return int(found.value) if found.value.isdigit() and len(found.value) < 10 else None
        return human_int(found.value)

    def unreadable(self) -> list[str]:
        """Integer flags given without a value vLLM would take ("-tp x", "--max-num-batched-tokens
        0", a flag with nothing after it), as written."""
        bad = []
        for flag in (*PARALLEL_FLAGS, BATCHED_TOKENS_FLAG):
            given, value = self.given.get(flag), self.int_of(flag)
            least = 0 if flag == "--data-parallel-size-local" else 1
            if given is not None and (value is None or value < least):
                bad.append(
                    f"{given.spelling} {given.value!r}" if given.value else f"{given.spelling} (no value)"
                )
        return bad

    @property
    def world_size(self) -> int:
        """GPUs one engine spans: tensor x pipeline x prefill-context parallel."""
        size = 1
        for flag in ("--tensor-parallel-size", "--pipeline-parallel-size", "--prefill-context-parallel-size"):
            size *= self.int_of(flag) or 1
        return size

    @property
    def data_parallel_engines(self) -> int:
        """Data-parallel engines of one deployment of vLLM (on this node, or across nodes where
        --data-parallel-size-local splits them): more than one replica's GPU either way."""
        return max(self.int_of("--data-parallel-size") or 1, self.int_of("--data-parallel-size-local") or 1)

    @property
    def devices(self) -> int:
        return self.world_size * self.data_parallel_engines

    @property
    def context_parallel(self) -> int:
        """Prefill x decode context parallel sizes: above 1, vLLM splits the KV cache by tokens."""
        return (self.int_of("--prefill-context-parallel-size") or 1) * (
            self.int_of("--decode-context-parallel-size") or 1
        )

    def text_of_flags(self, *flags: str) -> str:
        """Those of `flags` given (other than 1), as written: "-dp 2"."""
        return " ".join(
            f"{g.spelling} {g.value}" for f, g in self.given.items() if f in flags and g.value != "1"
        )

    def parallelism_text(self) -> str:
        """The parallel flags given, as written: "-tp 2 --data-parallel-size 2"."""
        return self.text_of_flags(*PARALLEL_FLAGS)

    @property
    def max_num_batched_tokens(self) -> int | None:
        return self.int_of(BATCHED_TOKENS_FLAG)

    @property
    def chunked_prefill(self) -> bool | None:
        """False where the spec turns chunked prefill off, True where on, None: vLLM's default (on
        for decoder language models, vllm/engine/arg_utils.py)."""
        said = [f for f in self.given if f in CHUNKED_PREFILL_FLAGS]  # in the order last given
        return None if not said else said[-1] == CHUNKED_PREFILL_FLAGS[0]

    @property
    def lora(self) -> bool:
        """--enable-lora given last (vLLM's default: off)."""
        said = [f for f in self.given if f in LORA_FLAGS]
        return bool(said) and said[-1] == LORA_FLAGS[0]

    @property
    def async_scheduling(self) -> bool:
        """False where --no-async-scheduling was given last (vLLM's default: on)."""
        said = [f for f in self.given if f in ASYNC_SCHEDULING_FLAGS]
        return not said or said[-1] == ASYNC_SCHEDULING_FLAGS[0]

    @property
    def hybrid_kv_cache_manager(self) -> bool:
        """False where --disable-hybrid-kv-cache-manager was given last (vLLM's default: on)."""
        said = [f for f in self.given if f in HYBRID_MANAGER_FLAGS]
        return not said or said[-1] != HYBRID_MANAGER_FLAGS[0]

    def text_of(self, flag: str) -> str | None:
        found = self.given.get(flag)
        return found.value if found is not None else None


def human_int(text: str) -> int | None:
    """vLLM's reading of an integer flag ("2", "8k", "1K", "1.5k"); None where it would refuse it
    or the value is beyond any machine (MAX_INT)."""
    match = _HUMAN_INT.match(text.strip())
    if match is None:
        return None
    whole, fraction, suffix = match.group(1), match.group(2) or "", match.group(3)
    scale = _SUFFIX.get(suffix, 1)
    numerator = int(whole + fraction) * scale
    denominator = 10 ** len(fraction)
    if numerator % denominator:
        return None
    value = numerator // denominator
    return value if value <= MAX_INT else None


def canonical(option: str) -> str | None:
    """The flag of KNOWN_FLAGS that vLLM reads `option` (the part before any `=`) as, or None."""
    if option in SHORT_FLAGS:
        return SHORT_FLAGS[option]
    if not option.startswith("--") or len(option) <= 2:
        return None
    name = option.replace("_", "-")
    if name in KNOWN_FLAGS:
        return name
    matches = [f for f in KNOWN_FLAGS if f.startswith(name)]
    return matches[0] if len(matches) == 1 else None


def engine_flags(extra_args: list[str]) -> EngineFlags:
    """The flags of KNOWN_FLAGS in `extra_args`, each with its last value, in the order last given
    (a boolean flag's value is "")."""
    given: dict[str, Given] = {}
    for i, arg in enumerate(extra_args):
        option, eq, value = arg.partition("=")
        flag = canonical(option)
        if flag is None:
            continue
        if flag not in BOOLEAN_FLAGS and not eq:
            following = extra_args[i + 1] if i + 1 < len(extra_args) else ""
            value = "" if following.startswith("-") else following  # a flag next: no value
        given.pop(flag, None)  # re-inserted last: `order` is the order last given
        given[flag] = Given(option, value)
    return EngineFlags(given)
