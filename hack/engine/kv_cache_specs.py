"""vLLM's own KV cache arithmetic for a layout of layers, with no model loaded: run with the engine
environment's python. Reads one JSON object on stdin:

    {"model": PATH, "max_model_len": N, "max_num_batched_tokens": N, "async_scheduling": BOOL,
     "layouts": [{"name": ..., "block_size": N, "num_kv_heads": N, "head_size": N,
                  "pool_bytes": N, "layers": [{"kind": "full_attention" | "sliding_attention" |
                  "chunked_attention" | "state", "count": N, "window": N,
                  "state_shapes": [[...], ...], "checkpoint_blocks": N}]}]}

builds the engine config vLLM would run (`EngineArgs.create_engine_config`, the tiny model at PATH
standing in for the model), gives every layer the KV cache spec vLLM's attention layers register
(vllm/v1/kv_cache_interface.py: FullAttentionSpec, SlidingWindowSpec, ChunkedLocalAttentionSpec,
MambaSpec, bf16), and prints one JSON line per layout: what vLLM's kv_cache_utils.py makes of
it (get_kv_cache_groups, get_kv_cache_config_from_groups, get_max_concurrency_for_kv_cache_config)
and the in-flight tokens its config holds (VllmConfig.max_in_flight_tokens). A layout with state
layers runs in mamba_cache_mode "align", as vLLM sets it for a hybrid model with prefix caching
(vllm/model_executor/models/config.py MambaModelConfig).
"""

from __future__ import annotations

import json
import math
import sys


def specs(layout: dict, torch):  # -> dict[str, KVCacheSpec]
    from vllm.v1.kv_cache_interface import (
        ChunkedLocalAttentionSpec,
        FullAttentionSpec,
        MambaSpec,
        SlidingWindowSpec,
    )

    block, heads, size = layout["block_size"], layout["num_kv_heads"], layout["head_size"]
    attention = {"block_size": block, "num_kv_heads": heads, "head_size": size, "dtype": torch.bfloat16}
    page = block * 2 * heads * size * 2
    out = {}
    for kind in layout["layers"]:
        for i in range(kind["count"]):
            name = f"model.layers.{kind['kind']}.{i}"
            if kind["kind"] == "full_attention":
                out[name] = FullAttentionSpec(**attention)
            elif kind["kind"] == "sliding_attention":
                out[name] = SlidingWindowSpec(**attention, sliding_window=kind["window"])
            elif kind["kind"] == "chunked_attention":
                out[name] = ChunkedLocalAttentionSpec(**attention, attention_chunk_size=kind["window"])
            else:
                shapes = tuple(tuple(s) for s in kind["state_shapes"])
                out[name] = MambaSpec(
                    block_size=block,
                    shapes=shapes,
                    dtypes=tuple(torch.bfloat16 for _ in shapes),
                    page_size_padded=page,  # vLLM pads the state page to the attention page
                    mamba_cache_mode="align",
                    num_prefill_checkpoint_blocks=kind.get("checkpoint_blocks", 0),
                )
    return out


def main() -> int:
    request = json.load(sys.stdin)
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core import kv_cache_utils as kcu

    config = EngineArgs(
        model=request["model"],
        max_model_len=request["max_model_len"],
        max_num_batched_tokens=request["max_num_batched_tokens"],
    ).create_engine_config()
    # the CPU build's executor turns asynchronous scheduling off; the GPU's keeps vLLM's default
    # (on), and max_in_flight_tokens reads the setting when it is called
    config.scheduler_config.async_scheduling = request["async_scheduling"]
    # the engine core resolves the memory layout from its attention backends; every layout
    # expresses layers of one page size, which is all these layouts have
    if config.cache_config.kv_cache_layout is None:
        config.cache_config.kv_cache_layout = "LBNHC"
    for layout in request["layouts"]:
        hybrid = any(kind["kind"] == "state" for kind in layout["layers"])
        config.cache_config.mamba_cache_mode = "align" if hybrid else "none"
        groups = kcu.get_kv_cache_groups(config, specs(layout, torch))
        kv = kcu.get_kv_cache_config_from_groups(config, groups, layout["pool_bytes"])
        concurrency = kcu.get_max_concurrency_for_kv_cache_config(config, kv)
        print(
            json.dumps(
                {
                    "name": layout["name"],
                    "groups": len(groups),
                    "num_blocks": kv.num_blocks,
                    "max_concurrency": concurrency,
                    "capacity_tokens": int(concurrency * config.model_config.max_model_len),
                    "max_in_flight_tokens": config.max_in_flight_tokens,
                    "finite": math.isfinite(concurrency),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
