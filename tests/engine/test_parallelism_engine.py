"""One engine over several devices: what llmpack says one worker holds equals what vLLM holds.

vLLM's CPU build runs tensor and pipeline parallelism with one worker process per rank (its
threads bound to cores by VLLM_CPU_OMP_THREADS_BIND, ranks sharing cores where the machine has
fewer). Each worker sizes its KV cache from --kv-cache-memory-bytes, and the engine logs the
tokens the pool holds: with the tiny grouped-query model (2 layers, 2 KV heads of 32), a worker
of -tp 2 keeps 1 KV head, of -pp 2 one layer, and of -tp 4 still 1 head (vLLM replicates a KV
head where there are fewer heads than ranks, ModelConfig.get_num_kv_heads). llmpack's
per-worker facts (advisor/parallelism.py, through the profiler's ProfileRequest, as the
profiling Job reads the same config.json) predict the same tokens.
"""

from __future__ import annotations

import json
import os

import pytest

import engine
from llmpack.advisor.kv_layout import layout_of
from llmpack.profiler.facts import ProfileRequest

KV_BYTES = 512 << 10


def _binding(ranks: int) -> str:
    """One core per rank, cores reused where there are fewer than ranks."""
    cores = sorted(os.sched_getaffinity(0))
    return "|".join(str(cores[i % len(cores)]) for i in range(ranks))


@pytest.mark.parametrize(
    ("flags", "ranks", "heads", "layers"),
    [
        (("--tensor-parallel-size", "2"), 2, 1, 2),
        (("--pipeline-parallel-size", "2"), 2, 2, 1),
        (("-tp", "4"), 4, 1, 2),
    ],
    ids=["tp2", "pp2", "tp4-replicated-heads"],
)
def test_the_engine_holds_what_one_worker_is_said_to_hold(flags, ranks, heads, layers, tiny_models, tmp_path):
    model = tiny_models["llama-gqa"]
    config = json.loads((model / "config.json").read_text())
    request = ProfileRequest(
        model=str(model),
        gpu_product="NVIDIA-L4",
        dtype="bfloat16",
        max_model_len=512,
        prompt_tokens=256,
        output_tokens=256,
        config=config,
        engine_args=flags,
    )
    facts = request.model_facts()
    whole = ProfileRequest(**{**request.__dict__, "engine_args": ()}).model_facts()
    assert (facts.num_kv_heads, facts.num_layers) == (heads, layers)
    block_size, startup = engine.kv_capacity(
        model,
        tmp_path,
        "--max-model-len",
        "512",
        *flags,
        kv_cache_memory_bytes=KV_BYTES,
        env={"VLLM_CPU_OMP_THREADS_BIND": _binding(ranks)},
    )
    predicted = layout_of(facts).num_blocks(KV_BYTES, block_size) * block_size
    as_one_gpu = layout_of(whole).num_blocks(KV_BYTES, block_size) * block_size
    print(
        f"{' '.join(flags)}: engine {startup.kv_cache_tokens:,} tokens; llmpack per worker {predicted:,} "
        f"({facts.kv_bytes_per_token} B/token; the whole model on one device: {as_one_gpu:,})"
    )
    assert startup.kv_cache_tokens == predicted
    assert predicted == 2 * as_one_gpu
