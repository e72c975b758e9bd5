"""A model's KV bytes per token from its config.json, by vLLM 0.32's rules (advisor/model_config.py).
The engine itself confirms these rules on tiny models of each layout: tests/engine/test_kv_bytes_engine.py."""

from __future__ import annotations

import pytest

from llmpack.advisor.model_config import ModelConfigError, kv_capacity_tokens, model_shape

QWEN3_0_6B = {
    "model_type": "qwen3",
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 1024,
    "torch_dtype": "bfloat16",
    "max_position_embeddings": 40960,
}
DEEPSEEK_V2_LITE = {
    "model_type": "deepseek_v2",
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "hidden_size": 2048,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize(
    ("config", "kv_cache_dtype", "expected"),
    [
        (QWEN3_0_6B, "auto", 2 * 28 * 8 * 128 * 2),  # 114,688: head_dim wins over hidden / heads
        (DEEPSEEK_V2_LITE, "auto", 27 * (512 + 64) * 2),  # 31,104: one latent per layer
        (QWEN3_0_6B, "fp8", 2 * 28 * 8 * 128),  # fp8 KV: one byte per element
        (QWEN3_0_6B, "fp8_e5m2", 2 * 28 * 8 * 128),
        (  # OPT: KV heads = heads, head_dim = hidden / heads; fp32 checkpoints are served in 16 bits
            {"model_type": "opt", "num_hidden_layers": 24, "num_attention_heads": 32, "hidden_size": 2048,
             "torch_dtype": "float32"},
            "auto",
            2 * 24 * 32 * 64 * 2,
        ),
        (  # Falcon-7B: multi-query attention, one KV head
            {"model_type": "falcon", "num_hidden_layers": 32, "num_attention_heads": 71, "hidden_size": 4544,
             "multi_query": True, "new_decoder_architecture": False},
            "auto",
            2 * 32 * 1 * 64 * 2,
        ),
        (  # GPT-2's own field names
            {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768}, "auto", 2 * 12 * 12 * 64 * 2,
        ),
        (  # a multimodal config: the language model's part counts
            {"model_type": "llava", "text_config": {"model_type": "llama", "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}},
            "auto",
            2 * 32 * 8 * 128 * 2,
        ),
    ],
    ids=["qwen3-head-dim", "deepseek-mla", "fp8", "fp8-e5m2", "opt-fp32", "falcon-mqa", "gpt2", "llava"],
)  # fmt: skip
def test_kv_bytes_per_token_by_vllms_rules(config, kv_cache_dtype, expected):
    assert model_shape(config).kv_bytes_per_token(kv_cache_dtype) == expected


def test_a_served_dtype_overrides_the_checkpoints():
    assert model_shape(QWEN3_0_6B).kv_bytes_per_token("auto", "float32") == 2 * 28 * 8 * 128 * 4


def test_latent_attention_needs_a_model_type_vllm_reads_as_mla():
    # kv_lora_rank on a model type vLLM does not treat as MLA: plain attention
    other = {**DEEPSEEK_V2_LITE, "model_type": "llama"}
    assert not model_shape(other).mla


def test_capacity_is_whole_blocks():
    assert kv_capacity_tokens(3 << 20, 512, 128) == 6144
    assert kv_capacity_tokens(3 << 20, 320, 16) == 9824  # what the engine held for the tiny MLA model


def test_a_config_without_layers_or_heads_says_which_field():
    with pytest.raises(ModelConfigError, match="num_hidden_layers"):
        model_shape({"num_attention_heads": 4})
    with pytest.raises(ModelConfigError, match="num_attention_heads"):
        model_shape({"num_hidden_layers": 4})
