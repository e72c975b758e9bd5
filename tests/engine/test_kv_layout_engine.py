"""Layers that keep less than the whole context: what llmpack predicts equals what vLLM holds.

1. The real engine, with tiny models whose config.json names sliding-window layers (3 of 4, and
   all): started with a known --kv-cache-memory-bytes, it logs "CPU KV cache size: N tokens,
   Maximum concurrency for L tokens per request: X.XXx"; llmpack's layout, read from the same
   config.json, predicts both exactly, with the in-flight term where the window plus the tokens a
   step schedules is shorter than the context (--max-num-batched-tokens 256).
2. vLLM's own KV cache code, called directly (hack/engine/kv_cache_specs.py) with every layer's
   spec as vLLM's attention layers register it, for the layouts the CPU build cannot run or that
   are too large to run here: Gemma-3-1B (22 sliding + 4 full), gpt-oss-20b (12 + 12),
   Llama-4 Scout (36 chunked local + 12 full), Qwen3-Next-80B (36 gated-delta-net states + 12
   full, attention block raised to 544 tokens), with and without asynchronous scheduling:
   block count and maximum concurrency equal llmpack's.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import engine
from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.kv_layout import KVLayout, in_flight_tokens, layout_from_facts, layout_of
from llmpack.advisor.model_config import model_shape

KV_BYTES = 3 << 20
SPECS_SCRIPT = engine.ROOT / "hack" / "engine" / "kv_cache_specs.py"


def _tiny_layout(model) -> KVLayout:
    shape = model_shape(json.loads((model / "config.json").read_text()))
    assert shape.kv_layout is not None and shape.kv_layout.sliding_window == 200
    return layout_from_facts(
        shape.kv_layout, num_layers=shape.num_layers, kv_bytes_per_token=shape.kv_bytes_per_token()
    )


@pytest.mark.parametrize(
    ("name", "max_model_len", "batched"),
    [("swa-hybrid", 1024, None), ("swa-all", 1024, None), ("swa-hybrid", 2048, 256), ("swa-all", 2048, 256)],
    ids=["hybrid", "all-sliding", "hybrid-in-flight", "all-sliding-in-flight"],
)
def test_the_engine_holds_what_the_layout_predicts(name, max_model_len, batched, tiny_models, tmp_path):
    model = tiny_models[name]
    layout = _tiny_layout(model)
    flags = ["--max-model-len", str(max_model_len)]
    if batched is not None:
        flags += ["--max-num-batched-tokens", str(batched)]
    block_size, startup = engine.kv_capacity(model, tmp_path, *flags, kv_cache_memory_bytes=KV_BYTES)
    assert startup.max_concurrency
    # the CPU build's executor schedules one batch at a time; its default budget is 2,048 tokens
    flight = in_flight_tokens(batched or 2048, async_scheduling=False)
    tokens = layout.capacity_tokens(
        KV_BYTES, max_model_len=max_model_len, block_size=block_size, in_flight_tokens=flight
    )
    concurrency = layout.max_concurrency(
        KV_BYTES, max_model_len=max_model_len, block_size=block_size, in_flight_tokens=flight
    )
    full = layout_from_facts(
        None, num_layers=layout.attention_layers, kv_bytes_per_token=256 * layout.attention_layers
    )
    as_full = full.capacity_tokens(
        KV_BYTES, max_model_len=max_model_len, block_size=block_size, in_flight_tokens=flight
    )
    print(
        f"{name} L={max_model_len} budget={batched}: engine {startup.kv_cache_tokens} tokens, "
        f"{startup.max_concurrency}x; llmpack {tokens}, {concurrency:.2f}x (every layer full: {as_full})"
    )
    assert (startup.kv_cache_tokens, startup.max_concurrency) == (tokens, round(concurrency, 2))
    if 200 - 1 + flight < max_model_len:  # the window and a step's tokens are shorter than the context
        assert tokens > as_full, "the window frees memory the full-attention reading would hold"
    else:  # vLLM keeps one block more than the context for a window that may straddle blocks
        assert tokens < as_full


# the shapes of one state layer as vLLM's calculator gives them (mamba_utils.py), by its bytes in bf16
STATE_SHAPES = {
    (3 * 8192 + 32 * 128 * 128) * 2: [[3, 8192], [32, 128, 128]],  # Qwen3-Next's gated delta net
    (3 * (3072 + 2 * 128) + 48 * 64 * 128) * 2: [[3, 3328], [48, 64, 128]],  # Granite-4.0-H's Mamba-2
}
GRANITE_CONFIG = {  # Granite-4.0-H-Tiny-like: 36 Mamba-2 + 4 attention layers
    "model_type": "granitemoehybrid",
    "num_hidden_layers": 40,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "hidden_size": 1536,
    "layer_types": (["mamba"] * 9 + ["attention"]) * 4,
    "mamba_expand": 2,
    "mamba_n_groups": 1,
    "mamba_n_heads": 48,
    "mamba_d_head": 64,
    "mamba_d_state": 128,
    "mamba_d_conv": 4,
    "torch_dtype": "bfloat16",
}


def _layout_request(
    name: str, layout: KVLayout, *, kv_heads: int, head_size: int, pool: int, block: int = 16
):
    layers = []
    for kind in layout.layers:
        entry: dict = {"kind": kind.kind, "count": kind.count, "window": kind.window}
        if kind.kind == "state":
            entry["state_shapes"] = STATE_SHAPES[kind.state_bytes]
            entry["checkpoint_blocks"] = kind.state_blocks - 2
        layers.append(entry)
    return {
        "name": name,
        "block_size": layout.block_size(block),
        "num_kv_heads": kv_heads,
        "head_size": head_size,
        "pool_bytes": pool,
        "layers": layers,
    }


def _granite() -> KVLayout:
    shape = model_shape(GRANITE_CONFIG)
    return layout_from_facts(
        shape.kv_layout, num_layers=shape.num_layers, kv_bytes_per_token=shape.kv_bytes_per_token()
    )


LAYOUTS = {
    # name: (layout, KV heads, head size, pool bytes, --max-model-len, --max-num-batched-tokens)
    "google/gemma-3-1b-it": (None, 1, 256, 1 << 30, 2048, 256),
    "openai/gpt-oss-20b": (None, 8, 64, 3 << 30, 2048, 512),
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": (None, 8, 128, 20 << 30, 2048, 1024),
    "Qwen/Qwen3-Next-80B-A3B-Instruct": (None, 2, 256, 10 << 30, 2048, 1024),
    "granite-4.0-h config.json": (_granite, 4, 128, 4 << 30, 2048, 1024),
}


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["one-batch", "async"])
def test_vllms_kv_cache_code_agrees_with_the_layout(async_scheduling, vllm_python, tiny_models):
    results = {}
    for max_model_len, batched in sorted({(v[4], v[5]) for v in LAYOUTS.values()}):
        layouts = {
            name: make() if make else layout_of(find_architecture(name).model_facts(dtype="bfloat16"))
            for name, (make, *_, length, budget) in LAYOUTS.items()
            if (length, budget) == (max_model_len, batched)
        }
        request = {
            "model": str(tiny_models["llama-gqa"]),
            "max_model_len": max_model_len,
            "max_num_batched_tokens": batched,
            "async_scheduling": async_scheduling,
            "layouts": [
                _layout_request(
                    name, lay, kv_heads=LAYOUTS[name][1], head_size=LAYOUTS[name][2], pool=LAYOUTS[name][3]
                )
                for name, lay in layouts.items()
            ],
        }
        done = subprocess.run(
            [str(vllm_python), str(SPECS_SCRIPT)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=engine.engine_env(),
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                vllm = json.loads(line)
                results[vllm["name"]] = (vllm, layouts[vllm["name"]], batched, max_model_len)
    assert sorted(results) == sorted(LAYOUTS)
    for name, (vllm, layout, batched, max_model_len) in results.items():
        flight = in_flight_tokens(batched, async_scheduling=async_scheduling)
        assert vllm["max_in_flight_tokens"] == flight, name
        pool = LAYOUTS[name][3]
        ours = (
            layout.num_blocks(pool, 16),
            layout.max_concurrency(pool, max_model_len=max_model_len, block_size=16, in_flight_tokens=flight),
        )
        print(
            f"{name}: vLLM {vllm['num_blocks']} blocks, {vllm['max_concurrency']:.3f}x; "
            f"llmpack {ours[0]}, {ours[1]:.3f}x"
        )
        assert (vllm["num_blocks"], vllm["max_concurrency"]) == pytest.approx(ours), name


STATE_SNIPPET = """
import json, math, sys
import torch
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateDtypeCalculator as D
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator as C
from vllm.model_executor.models.config import NemotronHForCausalLMConfig as Nemotron
a = json.loads(sys.argv[1])
bf16 = torch.bfloat16
states = {
    "qwen3-next": (
        C.gated_delta_net_state_shape(1, 16, 32, 128, 128, 4),
        D.gated_delta_net_state_dtype(bf16, "auto"),
    ),
    "granite-4-h": (
        C.mamba2_state_shape(1, a["granite_intermediate"], 1, 48, 64, 128, 4),
        D.mamba2_state_dtype(bf16, "auto", "auto"),
    ),
    # Nemotron-H: vLLM sets the recurrent state's dtype from its default for the model
    "nemotron-h": (
        C.mamba2_state_shape(1, 64 * 32, 8, 64, 32, 128, 4),
        D.mamba2_state_dtype(bf16, "auto", Nemotron.DEFAULT_MAMBA_SSM_CACHE_DTYPE),
    ),
}
sizes = {
    name: sum(math.prod(s) * d.itemsize for s, d in zip(shapes, dtypes))
    for name, (shapes, dtypes) in states.items()
}
print(json.dumps(sizes))
"""


def test_state_sizes_are_vllms(vllm_python):
    """A state layer's bytes per request as llmpack reads a config equal what vLLM's own shape
    and dtype calculators give (a bf16 model, one GPU; Nemotron-H's recurrent state in vLLM's
    default for it, fp32)."""
    from llmpack.advisor.model_config import state_bytes

    configs = {
        "qwen3-next": {
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 32,
            "linear_key_head_dim": 128,
            "linear_value_head_dim": 128,
            "linear_conv_kernel_dim": 4,
        },
        "granite-4-h": {
            "hidden_size": 1536,
            "mamba_expand": 2,
            "mamba_n_groups": 1,
            "mamba_n_heads": 48,
            "mamba_d_head": 64,
            "mamba_d_state": 128,
            "mamba_d_conv": 4,
        },
        "nemotron-h": {
            "model_type": "nemotron_h",
            "mamba_num_heads": 64,
            "mamba_head_dim": 32,
            "ssm_state_size": 128,
            "n_groups": 8,
            "conv_kernel": 4,
        },
    }
    done = subprocess.run(
        [str(vllm_python), "-c", STATE_SNIPPET, json.dumps({"granite_intermediate": 2 * 1536})],
        capture_output=True,
        text=True,
        env=engine.engine_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    vllm = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {name: state_bytes(config, "bfloat16") for name, config in configs.items()}
    assert ours == vllm


def test_the_engine_keeps_one_block_back_from_the_longest_request(tiny_models, tmp_path):
    """vLLM's start-up check leaves its null block out of the pool: a pool of 8 blocks serves
    --max-model-len 7 blocks long (what llmpack's context_for_pool gives), not 8."""
    from llmpack.advisor.memory import context_for_pool

    model = tiny_models["llama-gqa"]
    shape = model_shape(json.loads((model / "config.json").read_text()))
    block = 128  # the CPU build's
    pool_tokens = 8 * block
    pool = pool_tokens * shape.kv_bytes_per_token()
    context = context_for_pool(2048, pool_tokens, block)
    assert context == 7 * block
    refused = engine.serve(
        model, tmp_path, "--max-model-len", str(pool_tokens), kv_cache_memory_bytes=pool, wait=False
    )
    try:
        assert refused.process.wait(timeout=engine.START_TIMEOUT_S) != 0
        assert "cache is needed, which is larger than the available KV cache memory" in refused.log()
    finally:
        refused.stop()
    served = engine.serve(model, tmp_path, "--max-model-len", str(context), kv_cache_memory_bytes=pool)
    try:
        assert engine.http_get(served.url + "/health")[0] == 200
    finally:
        served.stop()
