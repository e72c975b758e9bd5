"""Engine flags that change a replica's memory, modelled before anything is measured
(advisor/engine_memory.py): LoRA slots, a speculative draft model, online quantization. Instances:
../shared/cases/memory-contract/03 (Llama-3.1-8B, 4 LoRA slots at rank 64) and 04 (a Llama-3.2-1B
draft model); the plan shows what the dry run assumed, and the check before profiling uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_badinput_pure import simulated_profile

from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.engine_memory import engine_memory
from llmpack.advisor.options import options_for_spec
from llmpack.advisor.recommend import advise
from llmpack.api.engine_flags import engine_flags
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.cli import main
from llmpack.hardware import lookup_gpu

LLAMA_8B = find_architecture("meta-llama/Llama-3.1-8B-Instruct").model_facts(dtype="bfloat16")
CASES = Path(__file__).parents[3] / "shared" / "cases" / "memory-contract"


def memory(*args: str):
    return engine_memory(LLAMA_8B, engine_flags(list(args)))


def test_lora_slots_are_what_vllm_preallocates():
    """Per decoder layer and slot: A = rank x input and B = output x rank per output slice of
    qkv (3 slices), o, gate_up (2 slices) and down; Llama-3.1-8B: hidden 4,096, 8 KV heads of 128,
    MLP 14,336 (estimated from the parameter count, exactly)."""
    per_layer = 64 * ((3 * 4096 + 4096 + 2 * 1024) + (4096 + 4096) + (2 * 4096 + 2 * 14336) + (14336 + 4096))
    assert (
        memory("--enable-lora", "--max-loras", "4", "--max-lora-rank", "64").lora_bytes
        == 4 * 32 * per_layer * 2
    )
    assert memory("--enable-lora", "--max-loras", "4", "--max-lora-rank", "64").lora_bytes == 1_342_177_280
    assert memory("--enable-lora").lora_bytes == 1_342_177_280 // 4 // 4  # vLLM's defaults: 1 slot, rank 16
    assert memory("--enable-lora", "--no-enable-lora", "--max-loras", "4").lora_bytes == 0
    assert memory("--max-loras", "4").lora_bytes == 0  # without --enable-lora vLLM keeps no slots
    assert memory("--enable_lora", "--max-lora-r=64").lora_bytes == 1_342_177_280 // 4


def test_a_draft_model_adds_its_weights_and_kv_layers():
    draft = find_architecture("meta-llama/Llama-3.2-1B-Instruct").model_facts(dtype="bfloat16")
    config = {
        "method": "draft_model",
        "model": "meta-llama/Llama-3.2-1B-Instruct",
        "num_speculative_tokens": 4,
    }
    served = memory("--speculative-config", json.dumps(config))
    assert served.weight_bytes == LLAMA_8B.weight_bytes + draft.weight_bytes
    assert served.kv_bytes_per_token == LLAMA_8B.kv_bytes_per_token + 16 * 2 * 8 * 64 * 2
    unknown = memory("--speculative-config", json.dumps({**config, "model": "example/drafter"}))
    assert unknown.weight_bytes == LLAMA_8B.weight_bytes
    assert "example/drafter is not in llmpack's catalogue" in unknown.notes[0]
    assert memory("--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}').notes == ()


@pytest.mark.parametrize(
    ("args", "weights"),
    [
        (("--quantization", "fp8"), 2 * 128256 * 4096 * 2 + (8_030_261_248 - 2 * 128256 * 4096)),
        (("-q", "bitsandbytes"), 2 * 128256 * 4096 * 2 + int((8_030_261_248 - 2 * 128256 * 4096) * 0.5625)),
        (("--quantization", "awq"), 8_030_261_248 * 2),  # quantized ahead of time: bytes as given
    ],
    ids=["fp8", "bitsandbytes", "awq"],
)
def test_online_quantization_stores_linear_weights_smaller(args, weights):
    assert memory(*args).weight_bytes == weights


def _spec(number: str) -> LLMDeploymentSpec:
    (path,) = [p for p in CASES.glob(f"{number}-*.yaml") if not p.name.endswith("-cluster.yaml")]
    return LLMDeploymentSpec.model_validate(yaml.safe_load(path.read_text())["spec"])


@pytest.mark.parametrize("number", ["03", "04"], ids=["lora", "draft-model"])
def test_the_dry_run_sizes_a_replica_with_what_the_flags_add(number):
    spec = _spec(number)
    plain = spec.model_copy(update={"serving": spec.serving.model_copy(update={"extra_args": []})})
    gpu = lookup_gpu(spec.gpu.product)
    with_flags = simulated_profile(spec)
    without = simulated_profile(plain)
    served = engine_memory(without.model, engine_flags(spec.serving.extra_args))
    assert with_flags.model.weight_bytes == served.weight_bytes
    assert with_flags.model.kv_bytes_per_token == served.kv_bytes_per_token
    assert with_flags.non_kv_memory_bytes - without.non_kv_memory_bytes == (
        served.weight_bytes - without.model.weight_bytes + served.lora_bytes
    )
    assert served.notes and served.notes[0] in with_flags.notes
    b_opt = 8
    options = options_for_spec(spec).model_copy(update={"max_num_seqs": b_opt})
    assert (
        advise(with_flags, options, gpu).kv_cache_bytes
        >= advise(
            without, options_for_spec(plain).model_copy(update={"max_num_seqs": b_opt}), gpu
        ).kv_cache_bytes
    )


def test_weights_with_a_draft_model_that_exceed_the_gpu_are_refused_before_profiling(tmp_path, capsys):
    body = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "x"},
        "spec": {
            "model": {
                "name": "example/big",
                "architecture": {
                    "numLayers": 80,
                    "numKvHeads": 8,
                    "headDim": 128,
                    "parameterBytes": 78 << 30,
                },
            },
            "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
            "profiling": {"backend": "simulated"},
            "serving": {
                "extraArgs": [
                    "--speculative-config",
                    '{"method": "draft_model", "model": "meta-llama/Llama-3.2-1B-Instruct"}',
                ]
            },
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main(["plan", "-f", str(path), "--simulate"]) == 1
    err = capsys.readouterr().err
    assert (
        "WeightsDoNotFit: the weights of example/big take 80.3 GiB (--speculative-config: draft model" in err
    )
    body["spec"]["serving"] = {}
    path.write_text(yaml.safe_dump(body))
    main(["plan", "-f", str(path), "--simulate"])
    assert "WeightsDoNotFit" not in capsys.readouterr().err
