"""A model's KV cache by vLLM's rule for each kind of layer: what one request holds, how many
requests a pool holds, and the pool a batch of requests needs.

vLLM v1 gives every layer a KV cache spec (vllm 0.32 `vllm/v1/kv_cache_interface.py`) and caps
what one request may hold in it (`max_admission_blocks_per_request`, the same figure sizes the
pool at start-up and admits a request at run time):

- full attention (`FullAttentionSpec`, also MLA): cdiv(L, block) blocks for a request of L tokens;
- sliding window W (`SlidingWindowSpec`): cdiv(min(W - 1 + in-flight, L), block) + 1: the window,
  the tokens scheduled but not yet settled, and one block because the window rarely starts at a
  block's first token; blocks behind the window are freed;
- chunked local attention of chunk C (Llama-4, `ChunkedLocalAttentionSpec`): cdiv(min(C +
  in-flight, L), block);
- linear attention and Mamba (`MambaSpec`): blocks of state per request whatever its length: 2
  in mamba_cache_mode "align", which vLLM sets for a hybrid model with prefix caching (its
  default: vllm/model_executor/models/config.py MambaModelConfig), plus one prefill checkpoint
  for Mamba-2 layers (mamba_mixer2.py); 1 without prefix caching, which this over-counts.

In-flight tokens are `VllmConfig.max_in_flight_tokens`: --max-num-batched-tokens times the
batches in flight (2 with asynchronous scheduling, vLLM's default where its executor supports it;
1 without).

Layers are grouped as `_get_kv_cache_groups_uniform_page_size` (kv_cache_utils.py) does: one
bucket per kind (and window); the group size is the smallest bucket's layer count, or the largest
when that is under 1.5 times the smallest; each bucket splits into cdiv(layers, group size)
groups, the last ones padded. A block id then covers one page in each of `group size` layers, so
a block costs group size x page bytes and a request needs, in every group, its kind's blocks.
A model of one kind is one group of all its layers (`UniformTypeKVCacheSpecs`). With Mamba or
linear-attention layers vLLM raises the attention block size until one attention page holds a
layer's state (`Platform` `_align_hybrid_block_size`, platforms/interface.py), then pads the
state page to it.

The pool a batch needs (`pool_blocks`) is llmpack's rule on top of vLLM's: B requests of T tokens
each hold what they keep while decoding (the window, not the context, in a sliding layer), and one
more request's prefill holds the in-flight tokens, once per pool, as a step schedules at most that
many; vLLM's null block is the caller's to add (memory.NULL_BLOCKS).

Limits, stated: every attention layer keeps the same bytes per token (one KV head count and head
size; vLLM packs layers of different page sizes differently, `_get_packed_kv_cache_groups`, which
this does not follow); a model has at most one kind of state layer; page alignment of
block-outermost layouts and speculative-decoding blocks are left out. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmpack.api.profile import KVLayoutFacts, ModelFacts

LayerKind = Literal["full_attention", "sliding_attention", "chunked_attention", "state"]


def cdiv(a: int, b: int) -> int:
    """a / b rounded up (vLLM's cdiv, vllm/utils/math_utils.py)."""
    return -(-a // b)


@dataclass(frozen=True)
class Layers:
    """Layers of one kind: `window` is the sliding window or the attention chunk in tokens;
    `state_bytes` one layer's state per request (Mamba, linear attention)."""

    kind: LayerKind
    count: int
    window: int | None = None
    state_bytes: int = 0
    state_blocks: int = 2  # blocks of state one request holds (mamba_cache_mode "align")

    def blocks(self, tokens: int, *, block_size: int, in_flight_tokens: int) -> int:
        """Blocks one request of `tokens` tokens may hold in one group of these layers: vLLM's
        admission cap (see the module docstring)."""
        if self.kind == "full_attention":
            return cdiv(tokens, block_size)
        if self.kind == "state":
            return self.state_blocks
        assert self.window is not None
        if self.kind == "sliding_attention":
            return cdiv(min(self.window - 1 + in_flight_tokens, tokens), block_size) + 1
        return cdiv(min(self.window + in_flight_tokens, tokens), block_size)

    def resident_blocks(self, tokens: int, *, block_size: int) -> int:
        """Blocks a request of `tokens` tokens holds while it decodes (one new token a step): the
        admission cap with one token in flight."""
        return self.blocks(tokens, block_size=block_size, in_flight_tokens=1)


@dataclass(frozen=True)
class KVLayout:
    """The layers of a model by kind, and the bytes one token takes in one attention layer (a key
    and a value per KV head, or one MLA latent, times the element size)."""

    layers: tuple[Layers, ...]
    bytes_per_token_per_layer: int

    @classmethod
    def full(cls, num_layers: int, bytes_per_token_per_layer: int) -> KVLayout:
        return cls((Layers("full_attention", num_layers),), bytes_per_token_per_layer)

    @property
    def attention_layers(self) -> int:
        return sum(k.count for k in self.layers if k.kind != "state")

    @property
    def is_full_attention(self) -> bool:
        """Every layer keeps the whole context: a pool of N tokens is N x bytes per token."""
        return all(k.kind == "full_attention" for k in self.layers)

    @property
    def keeps_whole_context(self) -> bool:
        """Some layer keeps every token, so the context is bounded by the pool."""
        return any(k.kind == "full_attention" for k in self.layers)

    def block_size(self, block_size: int) -> int:
        """The attention block size vLLM runs with: `block_size`, raised to a multiple of it that
        holds one layer's state in one page when the model has state layers."""
        state = max((k.state_bytes for k in self.layers if k.kind == "state"), default=0)
        page_per_token = self.bytes_per_token_per_layer
        if state == 0 or page_per_token == 0:
            return block_size
        return max(block_size, block_size * cdiv(state, block_size * page_per_token))

    def groups(self) -> tuple[int, list[Layers]]:
        """(layers per group, one entry per vLLM KV cache group)."""
        buckets = [k for k in self.layers if k.count > 0]
        if len(buckets) == 1:
            return buckets[0].count, buckets
        smallest = min(k.count for k in buckets)
        largest = max(k.count for k in buckets)
        size = largest if largest < smallest * 1.5 else smallest
        return size, [k for k in buckets for _ in range(cdiv(k.count, size))]

    def page_bytes(self, block_size: int) -> int:
        """One page: one layer's share of one block (the state page is padded to it)."""
        if self.attention_layers == 0:
            return max(k.state_bytes for k in self.layers)
        return self.block_size(block_size) * self.bytes_per_token_per_layer

    def bytes_per_block(self, block_size: int) -> int:
        size, _ = self.groups()
        return size * self.page_bytes(block_size)

    def num_blocks(self, pool_bytes: int, block_size: int) -> int:
        return max(pool_bytes, 0) // self.bytes_per_block(block_size)

    def blocks_per_request(self, tokens: int, *, block_size: int, in_flight_tokens: int) -> int:
        """Blocks (over all groups) vLLM lets one request of `tokens` tokens hold."""
        bs = self.block_size(block_size)
        _, groups = self.groups()
        return sum(g.blocks(tokens, block_size=bs, in_flight_tokens=in_flight_tokens) for g in groups)

    def resident_blocks(self, tokens: int, *, block_size: int) -> int:
        bs = self.block_size(block_size)
        _, groups = self.groups()
        return sum(g.resident_blocks(tokens, block_size=bs) for g in groups)

    def max_concurrency(
        self, pool_bytes: int, *, max_model_len: int, block_size: int, in_flight_tokens: int
    ) -> float:
        """Requests of --max-model-len tokens the pool holds at once, as vLLM logs it ("Maximum
        concurrency for N tokens per request", kv_cache_utils.py
        get_max_concurrency_for_kv_cache_config)."""
        per_request = self.blocks_per_request(
            max_model_len, block_size=block_size, in_flight_tokens=in_flight_tokens
        )
        return self.num_blocks(pool_bytes, block_size) / per_request

    def capacity_tokens(
        self, pool_bytes: int, *, max_model_len: int, block_size: int, in_flight_tokens: int
    ) -> int:
        """vLLM's "KV cache size: N tokens": the concurrency at --max-model-len times it
        (kv_cache_utils.py get_kv_cache_capacity)."""
        concurrency = self.max_concurrency(
            pool_bytes, max_model_len=max_model_len, block_size=block_size, in_flight_tokens=in_flight_tokens
        )
        return int(concurrency * max_model_len)

    def pool_blocks(
        self,
        *,
        batch: int,
        tokens: int,
        block_size: int,
        in_flight_tokens: int,
        max_model_len: int | None = None,
    ) -> int:
        """Blocks a pool needs for `batch` requests of `tokens` tokens decoding at once while one
        more is prefilled: each holds what it keeps while decoding (the window, not the context,
        in a sliding layer), and the in-flight tokens are held once per pool, as vLLM schedules at
        most that many tokens a step; never less than one request of --max-model-len, which vLLM
        checks at start-up."""
        resident = self.resident_blocks(tokens, block_size=block_size)
        prefill = self.blocks_per_request(tokens, block_size=block_size, in_flight_tokens=in_flight_tokens)
        need = max(batch - 1, 0) * resident + (prefill if batch > 0 else 0)
        if max_model_len is not None:
            need = max(
                need,
                self.blocks_per_request(
                    max_model_len, block_size=block_size, in_flight_tokens=in_flight_tokens
                ),
            )
        return need

    def longest_context(self, pool_bytes: int, *, limit: int, block_size: int, in_flight_tokens: int) -> int:
        """The longest --max-model-len up to `limit` whose one request the pool holds (vLLM's
        start-up check, which leaves out the null block), in whole blocks where a layer keeps the
        whole context."""
        blocks = self.num_blocks(pool_bytes, block_size) - 1

        def fits(length: int) -> bool:
            return (
                self.blocks_per_request(length, block_size=block_size, in_flight_tokens=in_flight_tokens)
                <= blocks
            )

        if fits(limit):
            return limit
        bs = self.block_size(block_size)
        low, high = 0, limit  # fits(low) holds (or low is 0), fits(high) does not
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low // bs * bs if self.keeps_whole_context and low >= bs else low

    def read_bytes_per_token(self, context: float) -> float:
        """KV bytes one decode step reads per token of a request's `context`: every token in a
        full-attention layer, at most the window or chunk elsewhere, and each state once. Equals
        the bytes per token over the attention layers when every layer keeps full attention."""
        if context <= 0:
            return float(self.bytes_per_token_per_layer * self.attention_layers)
        read = 0.0
        for k in self.layers:
            if k.kind == "state":
                read += k.count * k.state_bytes
            else:
                attended = context if k.window is None else min(context, k.window)
                read += k.count * attended * self.bytes_per_token_per_layer
        return read / context

    def describe(self) -> str:
        """The layout in words, e.g. "22 sliding-window (512) + 4 full-attention layers"."""
        names = {
            "full_attention": "full-attention",
            "sliding_attention": "sliding-window",
            "chunked_attention": "chunked-local",
            "state": "linear-attention/Mamba",
        }
        parts = []
        for k in self.layers:
            text = f"{k.count} {names[k.kind]}"
            if k.window is not None:
                text += f" ({k.window:,})"
            if k.kind == "state":
                text += f" ({k.state_bytes:,} B of state per request)"
            parts.append(text)
        return " + ".join(parts) + " layers"


def layout_of(model: ModelFacts) -> KVLayout:
    """The layout of a profiled model: its kv_layout facts, the rest of its layers full attention.
    kv_bytes_per_token counts the attention layers, so one layer's share is that over them."""
    return layout_from_facts(
        model.kv_layout, num_layers=model.num_layers, kv_bytes_per_token=model.kv_bytes_per_token
    )


def layout_from_facts(facts: KVLayoutFacts | None, *, num_layers: int, kv_bytes_per_token: int) -> KVLayout:
    if facts is None:
        return KVLayout.full(num_layers, max(kv_bytes_per_token // max(num_layers, 1), 1))
    attention = num_layers - facts.state_layers
    per_layer = max(kv_bytes_per_token // max(attention, 1), 1)
    kinds = [Layers("full_attention", num_layers - facts.special_layers)]
    if facts.sliding_window is not None:
        kinds.append(Layers("sliding_attention", facts.sliding_window_layers, window=facts.sliding_window))
    if facts.attention_chunk_size is not None:
        kinds.append(
            Layers("chunked_attention", facts.chunked_attention_layers, window=facts.attention_chunk_size)
        )
    if facts.state_bytes_per_layer is not None:
        kinds.append(
            Layers(
                "state",
                facts.state_layers,
                state_bytes=facts.state_bytes_per_layer,
                state_blocks=2 + facts.state_checkpoint_blocks,
            )
        )
    return KVLayout(tuple(k for k in kinds if k.count > 0), per_layer)


def in_flight_tokens(max_num_batched_tokens: int, *, async_scheduling: bool = True) -> int:
    """`VllmConfig.max_in_flight_tokens` without pipeline parallelism: one budget per batch in
    flight, two with asynchronous scheduling (vllm/config/vllm.py max_concurrent_batches)."""
    return max_num_batched_tokens * (2 if async_scheduling else 1)


GIB = 1 << 30


def vllm_default_max_num_batched_tokens(device_memory_bytes: int, product: str) -> int:
    """vLLM's --max-num-batched-tokens for `vllm serve` when none is given, by the device's total
    memory (vllm 0.32 engine/arg_utils.py `_get_default_batch_sizes`): 16,384 from 160 GiB,
    8,192 from 70 GiB except on A100s, 2,048 below."""
    if device_memory_bytes >= 160 * GIB:
        return 16384
    if device_memory_bytes >= 70 * GIB and "a100" not in product.lower():
        return 8192
    return 2048
