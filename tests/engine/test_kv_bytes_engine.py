"""KV bytes per token: what llmpack computes from a model's config.json equals what vLLM keeps.

For each tiny model (one per KV layout vLLM distinguishes: GQA, MHA, an explicit head_dim,
latent attention) and the fp8 KV cache dtype, the engine is started with a known
--kv-cache-memory-bytes and reports its capacity ("CPU KV cache size: N tokens") and block size
(/metrics cache_config_info). llmpack's bytes per token must predict that capacity exactly.
"""

from __future__ import annotations

import json

import pytest

import engine
from llmpack.advisor.model_config import kv_capacity_tokens, model_shape

KV_BYTES = 3 << 20  # 3 MiB: not a multiple of most block sizes' bytes, so rounding shows

CASES = {
    # name: (tiny model, extra engine flags, bytes per token expected from the config by hand)
    "llama-gqa": ("llama-gqa", (), 2 * 2 * 2 * 32 * 2),  # 2 layers x (K,V) x 2 KV heads x 32 x bf16
    "opt": ("opt", (), 2 * 2 * 4 * 32 * 2),  # every head keeps K and V
    "qwen3-head-dim": ("qwen3-head-dim", (), 2 * 2 * 2 * 64 * 2),  # head_dim 64, not 128 / 4 = 32
    "deepseek-mla": ("deepseek-mla", (), 2 * (64 + 16) * 2),  # one latent of kv_lora_rank + rope dim
    "llama-gqa-fp8-kv": ("llama-gqa", ("--kv-cache-dtype", "fp8"), 2 * 2 * 2 * 32 * 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kv_capacity_computed_equals_reported(case, tiny_models, tmp_path):
    name, flags, by_hand = CASES[case]
    model = tiny_models[name]
    config = json.loads((model / "config.json").read_text())
    kv_dtype = flags[flags.index("--kv-cache-dtype") + 1] if "--kv-cache-dtype" in flags else "auto"
    computed = model_shape(config).kv_bytes_per_token(kv_dtype)
    assert computed == by_hand

    block_size, startup = engine.kv_capacity(
        model, tmp_path, "--max-model-len", "1024", *flags, kv_cache_memory_bytes=KV_BYTES
    )
    reported = startup.kv_cache_tokens
    predicted = kv_capacity_tokens(KV_BYTES, computed, block_size)
    print(
        f"{case}: {computed} bytes/token computed, block {block_size}; engine holds {reported} tokens "
        f"in {KV_BYTES} bytes, llmpack predicts {predicted}"
    )
    assert predicted == reported, (
        f"{case}: llmpack's {computed} bytes/token predicts {predicted} tokens, the engine holds {reported} "
        f"({KV_BYTES / reported:.1f} bytes/token)"
    )
