"""The memory model: KV bytes per token, KV budget, non-KV memory, vLLM flags."""

from __future__ import annotations

import pytest

from llmpack.advisor import memory
from llmpack.advisor.architectures import (
    ARCHITECTURES,
    UnknownModelError,
    find_architecture,
    lookup_architecture,
    paper_name,
)
from llmpack.advisor.loaders import load_paper_profile, read_paper_rows
from llmpack.api.profile import Profile

GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.parametrize(
    ("name", "expected"),
    [("opt-1.3b", 196_608), ("opt-2.7b", 327_680), ("llama-2-7b", 524_288), ("llama-2-13b", 819_200)],
)
def test_kv_bytes_per_token_of_the_paper_models(name, expected):
    arch = lookup_architecture(name)
    assert arch.kv_bytes_per_token("float16") == expected
    assert memory.kv_bytes_per_token(arch.num_layers, arch.num_kv_heads, arch.head_dim, "float16") == expected


def test_kv_bytes_per_token_agrees_with_the_paper_logs():
    # models.csv: kv_cache_size_gib x 2^30 / (blocks x 16) from the vLLM logs, within 0.05%
    logged = {"opt-1.3b": 196596.8497, "opt-2.7b": 327713.0579, "llama-2-7b": 524395.4702}
    for name, value in logged.items():
        assert lookup_architecture(name).kv_bytes_per_token() == pytest.approx(value, rel=5e-4)


def test_grouped_query_attention_shrinks_the_kv_cache():
    llama3 = lookup_architecture("meta-llama/Llama-3.1-8B-Instruct")
    assert llama3.num_kv_heads == 8 < llama3.num_attention_heads
    assert llama3.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    assert lookup_architecture("Qwen/Qwen2.5-0.5B-Instruct").kv_bytes_per_token() == 2 * 24 * 2 * 64 * 2


@pytest.mark.parametrize(
    ("dtype", "size"),
    [("float16", 2), ("bfloat16", 2), ("auto", 2), ("float32", 4), ("fp8", 1), ("torch.float16", 2)],
)
def test_dtype_bytes(dtype, size):
    assert memory.dtype_bytes(dtype) == size


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        memory.dtype_bytes("int3")


def test_architecture_lookup_is_forgiving():
    assert find_architecture("FACEBOOK/OPT-1.3B").hf_id == "facebook/opt-1.3b"
    assert find_architecture("meta-llama/Llama-3.2-1B").hf_id == "meta-llama/Llama-3.2-1B-Instruct"
    assert find_architecture("/models/Mistral-7B-v0.1/").hf_id == "mistralai/Mistral-7B-v0.1"
    assert find_architecture("qwen2.5-7b-instruct").num_kv_heads == 4
    assert paper_name("meta-llama/Llama-2-13b-hf") == "llama-2-13b"
    assert paper_name("Qwen/Qwen2.5-1.5B-Instruct") is None
    with pytest.raises(UnknownModelError, match=r"unknown model 'gpt-5'.*facebook/opt-1\.3b"):
        lookup_architecture("gpt-5")


def test_every_architecture_is_self_consistent():
    for arch in ARCHITECTURES:
        assert arch.num_attention_heads % arch.num_kv_heads == 0
        facts = arch.model_facts()
        assert facts.kv_bytes_per_token == arch.kv_bytes_per_token()
        assert facts.weight_bytes == (arch.checkpoint_bytes or 2 * arch.num_parameters)


def test_kv_for_a_batch_rounds_each_sequence_to_whole_blocks():
    assert memory.round_up_to_block(1) == 16
    assert memory.round_up_to_block(16) == 16
    assert memory.round_up_to_block(17) == 32
    # 242 + 390 = 632 tokens -> 40 blocks = 640 tokens per sequence
    assert memory.kv_tokens_for_batch(128, 242, 390) == 128 * 640
    assert memory.kv_bytes_for_batch(128, 242, 390, 196_608) == 128 * 640 * 196_608
    assert memory.kv_tokens_for_batch(0, 242, 390) == 0


def test_kv_budget_takes_the_largest_need():
    by_batch = memory.kv_budget(
        batch=96, prompt_tokens=111, output_tokens=292, bytes_per_token=1, max_model_len=2048
    )
    assert by_batch.tokens == 96 * 416 and "96 sequences" in by_batch.sizing
    measured = memory.kv_budget(
        batch=96,
        prompt_tokens=111,
        output_tokens=292,
        bytes_per_token=1,
        max_model_len=2048,
        measured_peak_tokens=47_375,
    )
    assert measured.tokens == 47_376 and "measured" in measured.sizing
    one_long = memory.kv_budget(
        batch=1, prompt_tokens=10, output_tokens=10, bytes_per_token=3, max_model_len=4000
    )
    # and the block vLLM keeps back (its null block), which its start-up check leaves out
    assert one_long.tokens == 4016 and one_long.bytes == 12_048 and "null block" in one_long.sizing


def test_non_kv_estimate_covers_every_paper_measurement():
    """The constants are conservative: at or above what nvidia-smi saw on every paper run that
    did not preempt (peak device memory minus the KV pool that run allocated)."""
    vocab = {
        a: lookup_architecture(a).vocab_size for a in ("opt-1.3b", "opt-2.7b", "llama-2-7b", "llama-2-13b")
    }
    checked = 0
    for row in read_paper_rows():
        if row["status"] != "ok" or float(row["preemptions_max"]) > 0:
            continue
        batch = int(row["max_num_seqs"])
        weights = float(row["weights_gib"]) * GIB
        measured = float(row["nvsmi_mem_used_max_mib"]) * MIB - float(row["kv_cache_size_gib"]) * GIB
        estimate = memory.estimate_non_kv_bytes(int(weights), batch, vocab[row["model"]])
        assert estimate >= measured, (row["family"], row["output_len_setting"], row["model"], batch)
        checked += 1
    assert checked > 150


def test_measured_non_kv_memory_wins_over_the_estimate():
    profile = load_paper_profile("opt-1.3b")
    at_96 = memory.non_kv_memory(profile, 96)
    assert at_96.measured and "batch 96" in at_96.source
    point = profile.point(96)
    expected = point.gpu_memory_used_bytes - point.kv_capacity_tokens * profile.model.kv_bytes_per_token
    assert at_96.bytes == expected + memory.MEASURED_MARGIN_BYTES
    # an unmeasured batch falls back to the start-up figure, then to the estimate
    assert not memory.non_kv_memory(profile, 100).measured
    startup = Profile.model_validate({**profile.model_dump(), "non_kv_memory_bytes": 4 * GIB})
    assert memory.non_kv_memory(startup, 100).bytes == 4 * GIB + memory.MEASURED_MARGIN_BYTES
    estimate = memory.non_kv_memory(profile, 100)
    assert estimate.bytes == memory.estimate_non_kv_bytes(profile.model.weight_bytes, 100, 50272)


def test_contradictory_measurement_is_ignored():
    profile = load_paper_profile("opt-1.3b")
    data = profile.model_dump()
    data["points"][0]["gpu_memory_used_bytes"] = 1 * GIB  # less than the KV pool: nonsense
    broken = Profile.model_validate(data)
    assert not memory.non_kv_memory(broken, profile.points[0].max_num_seqs).measured


def test_gpu_memory_utilization_rounds_down():
    assert memory.gpu_memory_utilization_for(15 * GIB, 63 * GIB) == 0.238
    assert memory.gpu_memory_utilization_for(63 * GIB, 63 * GIB) == 1.0
    assert memory.gpu_memory_utilization_for(1, 63 * GIB) == 0.001
    with pytest.raises(ValueError):
        memory.gpu_memory_utilization_for(0, GIB)


def test_vllm_args():
    args = memory.vllm_args(
        max_num_seqs=96, kv_cache_bytes=9_314_500_608, gpu_memory_utilization=0.247, max_model_len=2048
    )
    assert args == [
        "--max-num-seqs",
        "96",
        "--kv-cache-memory-bytes",
        "9314500608",
        "--gpu-memory-utilization",
        "0.247",
        "--max-model-len",
        "2048",
    ]
