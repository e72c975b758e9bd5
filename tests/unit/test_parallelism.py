"""What one GPU of a tensor or pipeline parallel engine holds, by vLLM's rules (advisor/parallelism.py).
The real engine agrees on the tiny models (tests/engine/test_parallelism_engine.py); these are the
rules on the catalogue's models, where no engine runs here."""

from __future__ import annotations

import pytest

from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.parallelism import Parallelism, per_worker, refusal, tensor_parallel_to_fit
from llmpack.api.engine_flags import engine_flags

GIB = 1 << 30


def facts(name: str):
    arch = find_architecture(name)
    assert arch is not None
    return arch.model_facts(name=name, dtype="bfloat16")


def test_one_gpu_is_the_identity():
    model = facts("meta-llama/Llama-3.1-8B-Instruct")
    assert per_worker(model, Parallelism()) is model


@pytest.mark.parametrize(
    ("tp", "pp", "heads", "layers"),
    [(2, 1, 4, 32), (8, 1, 1, 32), (16, 1, 1, 32), (1, 2, 8, 16), (1, 3, 8, 11), (4, 2, 2, 16)],
)
def test_kv_heads_divide_and_replicate_and_the_largest_stage_sizes_the_pool(tp, pp, heads, layers):
    model = facts("meta-llama/Llama-3.1-8B-Instruct")  # 8 KV heads of 128, 32 layers
    worker = per_worker(model, Parallelism(tensor=tp, pipeline=pp))
    assert (worker.num_kv_heads, worker.num_layers) == (heads, layers)
    assert worker.kv_bytes_per_token == 2 * layers * heads * 128 * 2
    assert worker.weight_bytes == -(-model.weight_bytes // (tp * pp))
    assert worker.gpus_per_engine == tp * pp
    assert per_worker(worker, Parallelism(tensor=tp, pipeline=pp)) is worker, "never divided twice"


def test_latent_attention_keeps_the_whole_latent_on_every_worker():
    model = facts("deepseek-ai/DeepSeek-V2-Lite-Chat")
    assert model.latent_attention
    worker = per_worker(model, Parallelism(tensor=4))
    assert worker.kv_bytes_per_token == model.kv_bytes_per_token


def test_state_is_sharded_by_tensor_parallelism_and_layer_kinds_by_stage():
    model = facts("Qwen/Qwen3-Next-80B-A3B-Instruct")  # 12 full + 36 gated-delta-net layers
    layout = model.kv_layout
    assert layout is not None and layout.state_bytes_per_layer
    tp = per_worker(model, Parallelism(tensor=4))
    assert tp.kv_layout.state_bytes_per_layer * 4 == layout.state_bytes_per_layer
    assert tp.kv_layout.state_layers == 36 and tp.num_kv_heads == 1  # 2 KV heads over 4: replicated
    pp = per_worker(model, Parallelism(pipeline=2))
    assert (pp.kv_layout.state_layers, pp.num_layers) == (18, 24)
    assert pp.kv_bytes_per_token * 2 == model.kv_bytes_per_token  # 6 of the 12 attention layers


def test_what_vllm_refuses_is_said_with_the_sizes_it_takes():
    model = facts("facebook/opt-1.3b")  # 32 attention heads, 24 layers
    assert "use one of 1, 2, 4, 8, 16" in (refusal(model, Parallelism(tensor=3)) or "")
    assert "use at most 24" in (refusal(model, Parallelism(pipeline=25)) or "")
    assert refusal(model, Parallelism(tensor=8, pipeline=2)) is None


def test_the_smallest_tensor_parallel_size_that_holds_the_weights():
    model = facts("Qwen/Qwen3-Next-80B-A3B-Instruct")  # 151.5 GiB of weights
    assert tensor_parallel_to_fit(model, 79 * GIB) == 4
    assert tensor_parallel_to_fit(model, 130 * GIB) == 2
    assert tensor_parallel_to_fit(model, 10 * GIB) is None


def test_the_flags_are_read_in_every_spelling():
    assert Parallelism.of(engine_flags(["-tp", "2", "--pipeline_parallel_size=3"])) == Parallelism(2, 3)
    assert Parallelism(2, 3).flags() == "--tensor-parallel-size 2 --pipeline-parallel-size 3"


def test_the_operators_gpu_gauges_count_every_gpu_of_a_multi_gpu_replica():
    from llmpack.controller.metrics import samples_of

    packed = {"recommendation": {"gpus": 1, "replicas": 3, "replicasPerGPU": 3}, "phase": "Ready"}
    split = {"recommendation": {"gpus": 8, "replicas": 2, "gpusPerReplica": 4}, "phase": "Ready"}
    objects = [
        {"metadata": {"namespace": "a", "name": n}, "status": s} for n, s in (("p", packed), ("s", split))
    ]
    samples = samples_of(objects)
    assert samples["llmpack_gpus_in_use"] == [((), 9)]
    assert samples["llmpack_gpus_exclusive_equivalent"] == [((), 3 + 8)]
