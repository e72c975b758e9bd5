"""The KV cache of layers that keep less than the whole context, by vLLM's rule per kind of layer
(advisor/kv_layout.py): sliding windows, chunked local attention, linear attention / Mamba state.
Instances from ../shared/cases/memory-contract/ (05 gemma-3-1b, 06 gpt-oss-20b, 14 Qwen3-Next-80B)
and Llama-4 Scout; the engine's own figures for tiny models are in
tests/engine/test_kv_layout_engine.py, vLLM's spec code called directly in the same file."""

from __future__ import annotations

from typing import Any

import pytest
from test_badinput_pure import simulated_profile

from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.kv_layout import KVLayout, Layers, layout_of
from llmpack.advisor.memory import layout_kv_budget
from llmpack.advisor.model_config import ModelConfigError, model_shape
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.api.profile import KVLayoutFacts
from llmpack.hardware.cluster import ClusterFacts
from llmpack.planner import decide as planner
from llmpack.planner.decide import Context
from llmpack.planner.refusal import Refused
from llmpack.profiler.facts import model_facts, override_for
from llmpack.render.plan import OwnerRef

GB = 10**9
QWEN3_NEXT_LINEAR = {"linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128}
QWEN3_NEXT_LINEAR |= {"linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "torch_dtype": "bfloat16"}
GRANITE_MAMBA = {"mamba_expand": 2, "mamba_n_groups": 1, "mamba_n_heads": 48, "mamba_d_head": 64}
GRANITE_MAMBA |= {"mamba_d_state": 128, "mamba_d_conv": 4}
NEMOTRON_MAMBA = {"mamba_num_heads": 64, "mamba_head_dim": 32, "ssm_state_size": 128, "n_groups": 8}
NEMOTRON_MAMBA |= {"conv_kernel": 4, "torch_dtype": "bfloat16"}


def gemma_1b() -> KVLayout:
    return layout_of(find_architecture("google/gemma-3-1b-it").model_facts(dtype="bfloat16"))


def test_full_attention_is_sized_exactly_as_before():
    """One group of all layers: a pool of N blocks is N x block x layers x bytes per layer-token."""
    layout = KVLayout.full(28, 2 * 4 * 128 * 2)
    assert layout.groups() == (28, [Layers("full_attention", 28)])
    assert layout.bytes_per_block(16) == 16 * 28 * 2048
    # 8 requests of 5,000 tokens: each rounded to 313 blocks, as memory.kv_tokens_for_batch does
    assert layout.pool_blocks(batch=8, tokens=5000, block_size=16, in_flight_tokens=4096) == 8 * 313
    assert layout.read_bytes_per_token(4500) == 28 * 2048


def test_gemma3_1b_keeps_the_window_in_its_22_sliding_layers():
    """Case 05: 16,000 + 500 tokens, B = 8 on an L4 (2,048 tokens a step, two steps in flight).
    Every layer as full attention: 26 x 1,024 B x 16,512 x 8 = 3.52 GB. vLLM: 4 full-attention
    layers keep the context; 22 sliding layers in 6 groups of 4 keep 512 tokens + 1 block while
    decoding, and one request being prefilled holds the window + 4,096 in-flight tokens."""
    layout = gemma_1b()
    assert layout.groups()[0] == 4 and len(layout.groups()[1]) == 7  # 1 full + 6 sliding groups
    budget = layout_kv_budget(layout, batch=8, prompt_tokens=16000, output_tokens=500, in_flight_tokens=4096)
    resident = 1032 + 6 * 33  # full: cdiv(16500, 16); sliding: cdiv(512, 16) + 1 per group
    prefilled = 1032 + 6 * (288 + 1)  # sliding: cdiv(511 + 4096, 16) + 1
    assert budget.bytes == (7 * resident + prefilled) * 4 * 16 * 1024
    assert round(budget.bytes / GB, 3) == 0.746
    assert pytest.approx(3.52, abs=0.005) == 26 * 1024 * 16512 * 8 / GB


def test_gpt_oss_20b_alternating_window_128():
    """Case 06: 12 window-128 + 12 full layers of 8 KV heads x 64 (2,048 B a layer-token),
    8,000 + 1,000 tokens, B = 8 on an H100 (8,192 a step)."""
    layout = layout_of(find_architecture("openai/gpt-oss-20b").model_facts(dtype="bfloat16"))
    assert layout.groups()[0] == 12
    budget = layout_kv_budget(layout, batch=8, prompt_tokens=8000, output_tokens=1000, in_flight_tokens=16384)
    full_as_before = 24 * 2048 * 9008 * 8
    resident = 563 + 9  # cdiv(9000, 16) + (cdiv(128, 16) + 1)
    prefilled = 563 + (563 + 1)  # the window + 16,384 in flight exceed the request: all of it
    assert budget.bytes == (7 * resident + prefilled) * 12 * 16 * 2048
    assert round(full_as_before / GB, 2) == 3.54 and round(budget.bytes / GB, 2) == 2.02


def test_qwen3_next_keeps_a_state_per_request_not_per_token():
    """Case 14: 12 full-attention layers keep 24,576 B a token; 36 gated-delta-net layers keep
    1,097,728 B each per request. vLLM raises the attention block to 544 tokens so that one page
    holds a layer's state (16 x cdiv(1,097,728, 16 x 2,048))."""
    facts = find_architecture("Qwen/Qwen3-Next-80B-A3B-Instruct").model_facts(dtype="bfloat16")
    assert facts.kv_bytes_per_token == 24576
    layout = layout_of(facts)
    assert layout.block_size(16) == 544
    assert layout.groups()[0] == 12 and len(layout.groups()[1]) == 4
    # 4,000 + 1,000 tokens: 10 blocks in the full group, two state blocks in each of 3 state groups
    # (vLLM's mamba_cache_mode "align", its default for a hybrid model with prefix caching)
    assert layout.blocks_per_request(5000, block_size=16, in_flight_tokens=32768) == 10 + 3 * 2
    assert layout.bytes_per_block(16) == 12 * 544 * 2048


def test_llama4_chunked_local_attention():
    """Llama-4 Scout: 36 layers attend within chunks of 8,192 tokens, 12 keep the context."""
    layout = layout_of(
        find_architecture("meta-llama/Llama-4-Scout-17B-16E-Instruct").model_facts(dtype="bfloat16")
    )
    # a 100,000-token request: 6,250 blocks in the full group, cdiv(8,192 + 16,384, 16) in each of 3
    assert layout.blocks_per_request(100_000, block_size=16, in_flight_tokens=16384) == 6250 + 3 * 1536


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (  # Gemma-3 without layer_types: every 6th layer is global
            {"model_type": "gemma3_text", "sliding_window": 512, "sliding_window_pattern": 6},
            KVLayoutFacts(sliding_window=512, sliding_window_layers=22),
        ),
        (  # gpt-oss names each layer
            {"layer_types": ["sliding_attention", "full_attention"] * 13, "sliding_window": 128},
            KVLayoutFacts(sliding_window=128, sliding_window_layers=13),
        ),
        (  # Llama-4: layers with RoPE attend within chunks
            {
                "model_type": "llama4_text",
                "attention_chunk_size": 8192,
                "no_rope_layers": [1, 1, 1, 0] * 6 + [1, 1],
            },
            KVLayoutFacts(attention_chunk_size=8192, chunked_attention_layers=20),
        ),
        (  # Qwen3-Next: gated delta net, state from its linear_* fields in bf16
            {
                "model_type": "qwen3_next",
                "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                "linear_num_key_heads": 16,
                "linear_num_value_heads": 32,
                "linear_key_head_dim": 128,
                "linear_value_head_dim": 128,
                "linear_conv_kernel_dim": 4,
                "torch_dtype": "bfloat16",
            },
            KVLayoutFacts(state_layers=3, state_bytes_per_layer=3 * 8192 * 2 + 32 * 128 * 128 * 2),
        ),
        (  # Granite-4.0-H: Mamba-2 layers by layer_types, mamba_* fields
            {
                "model_type": "granitemoehybrid",
                "layer_types": ["mamba"] * 9 + ["attention"],
                "hidden_size": 1536,
                **GRANITE_MAMBA,
                "torch_dtype": "bfloat16",
            },
            KVLayoutFacts(
                state_layers=9,
                state_bytes_per_layer=(3 * (3072 + 2 * 128) + 48 * 64 * 128) * 2,
                state_checkpoint_blocks=1,  # Mamba-2 keeps a prefill checkpoint
            ),
        ),
        (  # Nemotron-H: the pattern names Mamba (M) and attention (*) layers; MLP blocks (-) hold nothing
            {"model_type": "nemotron_h", "hybrid_override_pattern": "M-M-M*-M-", **NEMOTRON_MAMBA},
            # the recurrent state in fp32, as vLLM keeps Nemotron-H's by default
            KVLayoutFacts(
                state_layers=4,
                state_bytes_per_layer=3 * (64 * 32 + 2 * 8 * 128) * 2 + 64 * 32 * 128 * 4,
                state_checkpoint_blocks=1,
            ),
        ),
        (  # Qwen3-Next as published: no layer_types, every 4th layer full
            {
                "model_type": "qwen3_next",
                "num_hidden_layers": 8,
                "full_attention_interval": 4,
                **QWEN3_NEXT_LINEAR,
            },
            KVLayoutFacts(state_layers=6, state_bytes_per_layer=3 * 8192 * 2 + 32 * 128 * 128 * 2),
        ),
        ({"sliding_window": 4096}, None),  # Mistral-7B v0.1: vLLM keeps the context without layer_types
    ],
    ids=[
        "gemma3-pattern",
        "gpt-oss-layer-types",
        "llama4-no-rope",
        "qwen3-next-linear",
        "granite-4-h-mamba2",
        "nemotron-h-pattern",
        "qwen3-next-interval",
        "mistral",
    ],
)
def test_config_json_layouts(config: dict[str, Any], expected: KVLayoutFacts | None):
    base = {"num_hidden_layers": config.get("num_hidden_layers") or len(config.get("layer_types", [])) or 26}
    base |= {"num_attention_heads": 4}
    base |= {"num_key_value_heads": 1, "head_dim": 256}
    shape = model_shape({**base, **config})
    assert shape.kv_layout == expected
    if "hybrid_override_pattern" in config:  # only the layers that hold a cache count
        assert shape.num_layers == 5 and shape.attention_layers == 1


def test_mamba_layers_the_config_cannot_size_are_refused_naming_the_fields():
    config = {"num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 64}
    config |= {"layer_types": ["mamba", "mamba", "mamba", "full_attention"]}
    with pytest.raises(ModelConfigError, match="stateLayers and stateBytesPerLayer"):
        model_shape(config)


def test_the_spec_architecture_carries_the_layout_to_the_profile():
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {
                "name": "example/hybrid",
                "architecture": {
                    "numLayers": 26,
                    "numKvHeads": 1,
                    "headDim": 256,
                    "parameterBytes": 2 * GB,
                    "slidingWindow": 512,
                    "slidingWindowLayers": 22,
                },
            }
        }
    )
    facts = model_facts(
        "example/hybrid",
        dtype="bfloat16",
        max_model_len=4096,
        architecture=override_for(spec.model.architecture),
    )
    assert facts.kv_layout == KVLayoutFacts(sliding_window=512, sliding_window_layers=22)
    assert facts.kv_bytes_per_token == 26 * 1024


def _case(number: str) -> tuple[LLMDeploymentSpec, ClusterFacts]:
    import pathlib

    import yaml

    root = pathlib.Path(__file__).parents[3] / "shared" / "cases" / "memory-contract"
    (spec_path,) = [p for p in root.glob(f"{number}-*.yaml") if not p.name.endswith("-cluster.yaml")]
    body = yaml.safe_load(spec_path.read_text())
    cluster = yaml.safe_load(spec_path.with_name(spec_path.stem + "-cluster.yaml").read_text())
    return LLMDeploymentSpec.model_validate(body["spec"]), ClusterFacts.from_objects(cluster["items"])


@pytest.mark.parametrize(
    ("number", "full_attention_bytes_per_token"),
    [("05", 26 * 1024), ("06", 24 * 2048), ("14", 48 * 2048)],
    ids=["gemma-3-1b", "gpt-oss-20b", "qwen3-next-80b"],
)
def test_the_plan_sizes_each_case_by_its_layout(number: str, full_attention_bytes_per_token: int):
    """Through the planner: the catalogue's layout applies to a spec whose architecture names as
    many layers, and the KV cache rendered is the layout's, below every-layer-full sizing."""
    spec, cluster = _case(number)
    context = Context(
        name="x",
        namespace="team-a",
        owner=OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="x", uid="u"),
        profiler_image="p",
        serving_image="s",
    )
    profile = simulated_profile(spec)
    assert profile.model.kv_layout is not None
    decision = planner.decide(spec, profile, cluster, context)
    assert not isinstance(decision, Refused), decision.message
    args = decision.plan.vllm_args
    kv_bytes = int(args[args.index("--kv-cache-memory-bytes") + 1])
    batch = int(args[args.index("--max-num-seqs") + 1])
    tokens = spec.workload.prompt_tokens + spec.workload.output_tokens
    assert kv_bytes < batch * tokens * full_attention_bytes_per_token


def test_a_state_llmpack_cannot_size_is_refused_in_one_line_unless_the_architecture_gives_it():
    from llmpack.errors import UserError
    from llmpack.profiler.facts import ArchitectureOverride, ProfileRequest

    config = {"num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}
    config |= {"layer_types": ["mamba"] * 6 + ["attention"] * 2}
    request = {"model": "m", "gpu_product": "NVIDIA-H100-80GB-HBM3", "dtype": "bfloat16", "config": config}
    request |= {"max_model_len": 1024, "prompt_tokens": 10, "output_tokens": 10}
    with pytest.raises(
        UserError, match=r"give spec\.model\.architecture with stateLayers and stateBytesPerLayer"
    ):
        ProfileRequest(**request)
    given = KVLayoutFacts(state_layers=6, state_bytes_per_layer=1000)
    facts = ProfileRequest(**request, architecture=ArchitectureOverride(kv_layout=given)).model_facts()
    assert facts.kv_layout == given and facts.kv_bytes_per_token == 2 * 2 * 2 * 64 * 2  # 2 attention layers


def test_without_vllms_hybrid_manager_the_window_layers_keep_the_whole_context():
    """--disable-hybrid-kv-cache-manager: vLLM allocates sliding-window and chunked layers as full
    attention beside full-attention layers (kv_cache_utils.py unify_hybrid_kv_cache_specs)."""
    from llmpack.profiler.facts import ProfileRequest

    request = {"model": "google/gemma-3-1b-it", "gpu_product": "NVIDIA-L4", "dtype": "bfloat16"}
    request |= {"max_model_len": 4096, "prompt_tokens": 10, "output_tokens": 10}
    assert ProfileRequest(**request).model_facts().kv_layout is not None
    off = ProfileRequest(**request, engine_args=("--disable-hybrid-kv-cache-manager",)).model_facts()
    assert off.kv_layout is None and off.kv_bytes_per_token == 26 * 1024
    again = ("--disable-hybrid-kv-cache-manager", "--no-disable-hybrid-kv-cache-manager")
    assert ProfileRequest(**request, engine_args=again).model_facts().kv_layout is not None
    all_sliding = KVLayoutFacts(sliding_window=200, sliding_window_layers=2)
    assert all_sliding.without_hybrid_manager(2) == all_sliding  # nothing to unify with


def test_a_block_size_the_spec_fixes_rounds_the_kv_cache():
    """--block-size 128: every request holds whole blocks of 128 tokens, in the dry run as in vLLM."""
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
            "workload": {"promptTokens": 200, "outputTokens": 100},
            "advisor": {"maxNumSeqs": 8},
            "serving": {"extraArgs": ["--block-size", "128"]},
        }
    )
    profile = simulated_profile(spec)
    assert profile.block_size == 128
    from llmpack.advisor.options import options_for_spec
    from llmpack.advisor.recommend import advise
    from llmpack.hardware import lookup_gpu

    rec = advise(profile, options_for_spec(spec), lookup_gpu(spec.gpu.product))
    assert rec.kv_cache_bytes == 8 * 384 * profile.model.kv_bytes_per_token  # 300 tokens in 3 blocks


def test_one_batch_in_flight_without_async_scheduling_and_what_the_flags_did_is_said():
    """--no-async-scheduling: one batch of tokens in flight, not two, so the one prefilled request
    holds less in each sliding layer; --disable-hybrid-kv-cache-manager is named in the profile."""
    from llmpack.advisor.options import options_for_spec
    from llmpack.advisor.recommend import advise
    from llmpack.hardware import lookup_gpu

    def kv(*flags: str) -> tuple[int, list[str]]:
        spec = LLMDeploymentSpec.model_validate(
            {
                "model": {"name": "google/gemma-3-1b-it"},
                "workload": {"promptTokens": 16000, "outputTokens": 500},
                "gpu": {"product": "NVIDIA-L4"},
                "advisor": {"maxNumSeqs": 8},
                "serving": {"extraArgs": list(flags)},
            }
        )
        profile = simulated_profile(spec)
        return advise(profile, options_for_spec(spec), lookup_gpu("NVIDIA-L4")).kv_cache_bytes, profile.notes

    default, _ = kv()
    one_batch, _ = kv("--no-async-scheduling")
    assert default - one_batch == 6 * (288 - 160) * 4 * 16 * 1024  # cdiv(511 + 4096) vs cdiv(511 + 2048)
    full, notes = kv("--disable-hybrid-kv-cache-manager")
    assert full > default and any(n.startswith("--disable-hybrid-kv-cache-manager") for n in notes)
    assert not any("hybrid" in n for n in kv()[1])
