"""The memory model of one vLLM replica, and the vLLM flags that follow from it.

    per-replica memory = weights + activation and CUDA-graph headroom + KV cache + CUDA context

The KV cache is exact arithmetic (vLLM allocates it in blocks of `block_size` tokens, and every
layer stores a key and a value vector per KV head per token). Everything else vLLM measures per
boot and does not document as a fixed number (FACTS.md 1.4), so the advisor prefers measured
figures from the profile and falls back to the constants below only when a profile has none.

How the constants were chosen (all GiB = 2^30 bytes). The paper's logs (vLLM ~0.6.3, H100,
shared/paper-data/profiles.csv) give, beyond weights and KV cache:
- CUDA context (initial memory - weights): 0.60-0.66 GiB for all four models  -> 0.75 GiB.
- peak activation of the start-up profiling pass at small batches: 0.06-0.26 GiB, and the
  CUDA-graph pool (not counted by that vLLM, visible in nvidia-smi) a few hundred MiB
  -> 0.25 GiB activation base + 0.5 GiB CUDA graphs (vLLM 0.33 captures graphs up to batch 512).
- Growth while serving: nvidia-smi's peak minus weights and KV pool climbs from ~0.9-1.1 GiB at
  batch 1 to 3.8 GiB (OPT, B=256) and 7.3 GiB (OPT, B=512). Per running sequence that is 50-62
  fp32 rows of the vocabulary (logits, softmax and sampling buffers, allocator slack): we take 64
  rows of 4 bytes per sequence. With these constants the estimate is at or above every measured
  point of the paper (a unit test checks it), i.e. conservative. Newer vLLM samples more
  frugally, so a measured profile will usually show less; that is why measured figures win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmpack.advisor.kv_layout import KVLayout
from llmpack.api.profile import Profile

GIB = 1 << 30
MIB = 1 << 20

DEFAULT_BLOCK_SIZE = 16  # vLLM's KV-cache block size in tokens (CUDA default)
# Blocks of the pool vLLM's block pool holds back for itself (the null block), which its start-up
# check leaves out (vllm 0.32 kv_cache_utils.py check_enough_kv_cache_memory).
NULL_BLOCKS = 1

CUDA_CONTEXT_BYTES = 768 * MIB
ACTIVATION_BASE_BYTES = 256 * MIB
CUDA_GRAPH_BYTES = 512 * MIB
RUNTIME_VOCAB_ROWS_PER_SEQUENCE = 64  # fp32 rows of the vocabulary each running sequence may hold
FP32_BYTES = 4
# Vocabulary assumed when a model's is unknown: Qwen2.5's, the largest among popular small models.
DEFAULT_VOCAB_SIZE = 152_064
# Added to a measured non-KV figure: samplers poll at about 1 Hz and miss short peaks. vLLM's own
# suggested --kv-cache-memory value keeps 150 MiB spare (FACTS 1.2); we keep a little more.
MEASURED_MARGIN_BYTES = 256 * MIB

# vLLM's default --gpu-memory-utilization: 0.92 in 0.33.0, 0.9 up to 0.11 (FACTS 1.1).
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92

DTYPE_BYTES = {
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "bfloat16": 2,
    "bf16": 2,
    "float32": 4,
    "fp32": 4,
    "float": 4,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "int8": 1,
}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name as vLLM spells it (``auto`` means the fp16/bf16 default)."""
    key = dtype.strip().lower().removeprefix("torch.")
    if key == "auto":
        return 2
    try:
        return DTYPE_BYTES[key]
    except KeyError:
        known = ", ".join(sorted(DTYPE_BYTES))
        raise ValueError(f"unknown dtype {dtype!r}; known: auto, {known}") from None


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: str = "float16") -> int:
    """2 (key and value) x layers x KV heads x head dim x bytes per element."""
    if min(num_layers, num_kv_heads, head_dim) < 1:
        raise ValueError("layers, KV heads and head dim must all be at least 1")
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes(dtype)


def weight_bytes(num_parameters: int, dtype: str = "float16") -> int:
    return num_parameters * dtype_bytes(dtype)


def round_up_to_block(tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    if tokens < 0 or block_size < 1:
        raise ValueError("tokens must be >= 0 and block_size >= 1")
    return math.ceil(tokens / block_size) * block_size


def kv_tokens_for_batch(
    batch: int, prompt_tokens: int, output_tokens: int, block_size: int = DEFAULT_BLOCK_SIZE
) -> int:
    """KV tokens that `batch` sequences of prompt+output tokens occupy: each sequence holds whole
    blocks, so its length is rounded up to the block size."""
    if batch < 0 or prompt_tokens < 0 or output_tokens < 0:
        raise ValueError("batch and token counts must be >= 0")
    return batch * round_up_to_block(prompt_tokens + output_tokens, block_size)


def kv_bytes_for_batch(
    batch: int,
    prompt_tokens: int,
    output_tokens: int,
    bytes_per_token: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> int:
    return kv_tokens_for_batch(batch, prompt_tokens, output_tokens, block_size) * bytes_per_token


@dataclass(frozen=True)
class KVBudget:
    tokens: int  # a multiple of the block size
    bytes: int
    sizing: str  # which rule set the size, for people
    blocks: int | None = None  # layers that keep less than the context: the pool's blocks

    def describe(self) -> str:
        """What the pool holds, in words: tokens where every layer keeps the whole context, blocks
        (shared by all layer groups) otherwise."""
        if self.blocks is None:
            return f"{self.tokens:,} tokens"
        return f"{self.blocks:,} blocks of {self.tokens // self.blocks:,} tokens"


def kv_budget(
    *,
    batch: int,
    prompt_tokens: int,
    output_tokens: int,
    bytes_per_token: int,
    max_model_len: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    measured_peak_tokens: int | None = None,
) -> KVBudget:
    """The KV cache one replica gets: the largest of
    - `batch` sequences of prompt+output tokens, each rounded up to whole blocks;
    - the peak the profile measured at that batch (lengths vary around the mean, so the real
      peak can exceed batch x mean);
    - one sequence of `max_model_len` tokens, which vLLM refuses to start without (FACTS 1.1),
      when the context is fixed. Left out (None), the pool is sized by the batch alone and the
      context follows from it (`context_for_pool`)."""
    candidates = [
        (
            kv_tokens_for_batch(batch, prompt_tokens, output_tokens, block_size),
            f"{batch} sequences x {round_up_to_block(prompt_tokens + output_tokens, block_size)} tokens",
        ),
    ]
    if measured_peak_tokens:
        candidates.append(
            (round_up_to_block(measured_peak_tokens, block_size), f"peak KV use measured at batch {batch}")
        )
    if max_model_len is not None:
        # and the null block, which vLLM's start-up check leaves out of the pool
        candidates.append(
            (
                round_up_to_block(max_model_len, block_size) + NULL_BLOCKS * block_size,
                f"one sequence of --max-model-len {max_model_len} (and vLLM's null block)",
            )
        )
    # last: a tie goes to the need named above
    candidates.append((2 * block_size, "the smallest pool vLLM starts with: a block and its null block"))
    tokens, sizing = max(candidates, key=lambda c: c[0])
    return KVBudget(tokens=tokens, bytes=tokens * bytes_per_token, sizing=sizing)


def layout_kv_budget(
    layout: KVLayout,
    *,
    batch: int,
    prompt_tokens: int,
    output_tokens: int,
    in_flight_tokens: int,
    max_model_len: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> KVBudget:
    """The KV cache of a model whose layers keep less than the whole context (sliding windows,
    chunked local attention, linear attention or Mamba state): `batch` requests of prompt +
    output tokens decoding while one more is prefilled, by vLLM's rule per kind of layer
    (KVLayout.pool_blocks), never less than one request of a fixed --max-model-len. `blocks` are
    the pool's, which every layer group draws from (a block id holds a page in each of a group's
    layers); `tokens` is blocks times the block size, not tokens a request can use."""
    tokens = prompt_tokens + output_tokens
    blocks = layout.pool_blocks(
        batch=batch, tokens=tokens, block_size=block_size, in_flight_tokens=in_flight_tokens
    )
    sizing = (
        f"{batch} requests of {tokens:,} tokens in {layout.describe()}, "
        f"{in_flight_tokens:,} tokens in flight once per pool"
    )
    if max_model_len is not None:
        one = NULL_BLOCKS + layout.blocks_per_request(
            max_model_len, block_size=block_size, in_flight_tokens=in_flight_tokens
        )
        if one > blocks:
            blocks, sizing = one, f"one request of --max-model-len {max_model_len} in {layout.describe()}"
    return KVBudget(
        tokens=blocks * layout.block_size(block_size),
        bytes=blocks * layout.bytes_per_block(block_size),
        sizing=sizing,
        blocks=blocks,
    )


def context_for_pool(model_limit: int, pool_tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """--max-model-len when the user fixes none: the longest context the model allows that the KV
    pool holds, min(the model's limit, the pool's whole blocks but vLLM's null block). The pool is
    sized by the batch; the context follows from it and never grows it. vLLM starts only when the
    pool, less vLLM's null block, holds one sequence of --max-model-len (FACTS 1.1; vllm 0.32
    kv_cache_utils.py check_enough_kv_cache_memory), which this keeps true."""
    if model_limit < 1 or pool_tokens < 2 * block_size or block_size < 1:
        raise ValueError("the model's limit and the block size must be at least 1, the pool two blocks")
    return min(model_limit, (pool_tokens // block_size - NULL_BLOCKS) * block_size)


# Context of a profiling run when neither the spec nor anything known of the model fixes one
# (simulated backend, a model outside the catalogue without architecture.maxPositionEmbeddings and
# no config.json where the profiler runs): the typical request rounded up, which is all the run
# needs. The operator keys the profile on it and the profiler falls back to it: one rule.
PROFILING_CONTEXT_ROUNDING = 256


def unknown_context_for_profiling(prompt_tokens: int, output_tokens: int) -> int:
    return round_up_to_block(prompt_tokens + output_tokens, PROFILING_CONTEXT_ROUNDING)


def profiling_max_model_len(
    model_limit: int, prompt_tokens: int, output_tokens: int, largest_batch: int
) -> int:
    """--max-model-len of a profiling run whose context nobody fixed: the same rule as serving
    (`context_for_pool`) on the profiling run's pool, which holds at least `largest_batch` requests
    of the workload (profiler/vllm.py profiling_kv_cache_bytes): the model's limit, or less where
    that pool holds less. A 1M-token model is then profiled without a 1M-token pool."""
    return min(model_limit, max(largest_batch, 1) * (prompt_tokens + output_tokens))


def context_problem(
    model: str,
    limit: int,
    source: str,
    *,
    length: tuple[int, str] | None,
    workload: tuple[int, str],
    workload_fix: str = "the workload",
) -> str | None:
    """Why vLLM would refuse a fixed context (`length`: tokens and the name of the field or flag
    that fixed it), or reject every typical request (`workload`: prompt + output tokens and how
    to name them), for a model that allows `limit` tokens (`source`: where that figure comes
    from); None when it would do neither. One wording for the operator's refusal before
    profiling, the profiler's own and the advisor's."""
    allows = f"the {limit:,} tokens of context {model} allows ({source})"
    if length is not None and length[0] > limit:
        value, name = length
        return (
            f"{name} {value:,} exceeds {allows}: vLLM refuses to start with a longer --max-model-len. "
            f"Lower {name} to at most {limit}, or leave it unset for the longest context the model "
            "allows that the KV cache holds"
        )
    tokens, named = workload
    if tokens > limit:
        return (
            f"{named} = {tokens:,} tokens exceed {allows}: vLLM would reject every such request. "
            f"Shorten {workload_fix} to at most {limit:,} tokens in all, or serve a model with a "
            "longer context"
        )
    return None


def estimate_non_kv_bytes(weight_bytes: int, max_num_seqs: int, vocab_size: int | None = None) -> int:
    """Memory besides the KV cache when nothing was measured (constants in the module docstring)."""
    vocab = vocab_size or DEFAULT_VOCAB_SIZE
    runtime = max_num_seqs * RUNTIME_VOCAB_ROWS_PER_SEQUENCE * FP32_BYTES * vocab
    return weight_bytes + CUDA_CONTEXT_BYTES + ACTIVATION_BASE_BYTES + CUDA_GRAPH_BYTES + runtime


@dataclass(frozen=True)
class NonKVMemory:
    bytes: int
    source: str  # "measured at batch B", "measured at start-up", "estimated"
    measured: bool


def non_kv_memory(profile: Profile, max_num_seqs: int) -> NonKVMemory:
    """Memory besides the KV cache for one replica at `max_num_seqs`, preferring measurements:
    1. the point at that batch: peak device memory in use minus the KV pool that run allocated
       (vLLM allocates the whole pool at start-up, so the rest is everything else);
    2. the profile's start-up figure (vLLM's "consumed + peak activation + CUDA graph" line);
    3. the estimate of `estimate_non_kv_bytes`.
    Measured figures get MEASURED_MARGIN_BYTES on top."""
    model = profile.model
    point = profile.point(max_num_seqs)
    # the pool in bytes is capacity x bytes per token only where every layer keeps full attention
    if point is not None and point.gpu_memory_used_bytes is not None and model.kv_layout is None:
        capacity = point.kv_capacity_tokens or profile.kv_capacity_tokens
        if capacity is not None:
            rest = point.gpu_memory_used_bytes - capacity * model.kv_bytes_per_token
            if rest >= model.weight_bytes:  # otherwise the figures contradict each other
                return NonKVMemory(rest + MEASURED_MARGIN_BYTES, f"measured at batch {max_num_seqs}", True)
    if profile.non_kv_memory_bytes is not None and profile.non_kv_memory_bytes >= model.weight_bytes:
        return NonKVMemory(profile.non_kv_memory_bytes + MEASURED_MARGIN_BYTES, "measured at start-up", True)
    estimate = estimate_non_kv_bytes(model.weight_bytes, max_num_seqs, model.vocab_size)
    return NonKVMemory(estimate, "estimated (no measurement in the profile)", False)


def gpu_memory_utilization_for(slot_bytes: int, device_total_bytes: int) -> float:
    """--gpu-memory-utilization for a replica that may use `slot_bytes` of a device whose CUDA
    total is `device_total_bytes`: the fraction, rounded down to 0.001 so that the slots of the
    replicas on one GPU never add up to more than the GPU. It must not be vLLM's default when
    replicas share a GPU: vLLM checks at start-up that this fraction of the device is still free,
    even when --kv-cache-memory-bytes sizes the KV cache (FACTS 1.2, pitfall 1)."""
    if slot_bytes <= 0 or device_total_bytes <= 0:
        raise ValueError("slot and device memory must be positive")
    fraction = math.floor(slot_bytes / device_total_bytes * 1000) / 1000
    return min(max(fraction, 0.001), 1.0)


def vllm_args(
    *, max_num_seqs: int, kv_cache_bytes: int, gpu_memory_utilization: float, max_model_len: int
) -> list[str]:
    """The flags one replica gets. --kv-cache-memory-bytes sizes the KV cache exactly (vLLM >= 0.11)
    and --gpu-memory-utilization only has to pass vLLM's start-up check of free memory."""
    return [
        "--max-num-seqs",
        str(max_num_seqs),
        "--kv-cache-memory-bytes",
        str(kv_cache_bytes),
        "--gpu-memory-utilization",
        f"{gpu_memory_utilization:.3f}",
        "--max-model-len",
        str(max_model_len),
    ]
