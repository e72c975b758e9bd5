"""A model's shape from its own config.json, with vLLM's rules for what its KV cache keeps per token.

vLLM sizes a KV cache block as block_size x (per-layer bytes per token) x layers, where one layer
keeps, per token (vllm 0.32 `vllm/transformers_utils/model_arch_config_convertor.py`,
`vllm/config/model.py`):
- standard attention: a key and a value per KV head: 2 x kv_heads x head_size elements;
- multi-head latent attention (DeepSeek-V2/V3 and the other model types vLLM lists in
  `is_deepseek_mla`, when `kv_lora_rank` is set): ONE latent of kv_lora_rank + qk_rope_head_dim
  elements, as a single "head" (`get_num_kv_heads` returns 1 under MLA).
head_size is the config's `head_dim` when it is set and positive (Qwen3 sets it to twice
hidden_size / heads), else `hidden_size_per_head`, else hidden_size // num_attention_heads.
KV heads are the first of n_head_kv, num_kv_heads, num_key_value_heads, multi_query_group_num,
num_attention_groups that is set, else the attention heads (Falcon's `multi_query` means one).
The element size is the KV cache dtype's: `auto` means the model's dtype (2 bytes for fp16/bf16,
and for an fp32 checkpoint, which vLLM serves in 16 bits by default); fp8 variants are 1 byte.

Limits, stated: the dict is the raw config.json (or a transformers config's `to_dict()`), so
architectures that only name their fields through transformers' `attribute_map` are read through
the aliases below (n_layer, n_head, n_embd, d_model). Layers that keep less than the whole
context (`kv_layout_facts`) are read from `layer_types` (sliding_attention, chunked_attention,
linear_attention, mamba), from Gemma-2/3's `sliding_window_pattern` and Llama-4's
`no_rope_layers` where a raw config lacks layer_types; a linear-attention layer's state is sized
for Qwen3-Next's gated delta net (`linear_*` fields, vLLM's mamba_utils.py
gated_delta_net_state_shape, the model's dtype) and Mamba-2 layers (Granite-4.0-H, Nemotron-H's
hybrid_override_pattern) by mamba2_state_shape; other kinds need the state size given
(`architecture.stateBytesPerLayer`), else the config is refused. Pure: the config is read by the
caller (profiler/model_files.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmpack.advisor.memory import dtype_bytes
from llmpack.api.profile import KVLayoutFacts

# vllm 0.32 model_arch_config_convertor.py::is_deepseek_mla
MLA_MODEL_TYPES = frozenset(
    {
        "axk1",
        "deepseek_v2",
        "deepseek_v3",
        "deepseek_v32",
        "deepseek_v41",
        "dots3_note",
        "deepseek_mtp",
        "k3_dspark",
        "glm5_next",
        "glm5_next_text",
        "glm_moe_dsa",
        "glm4_moe_lite",
        "glm4_moe_lite_mtp",
        "kimi_k2",
        "kimi_linear",
        "longcat_flash",
        "pangu_ultra_moe",
        "pangu_ultra_moe_mtp",
        "bailing_hybrid",
        "bailing_hybrid_mtp",
        "bailing_hybrid_v3_mtp",
        "hy_v4",
        "hy_v4_mtp",
    }
)
_KV_HEAD_KEYS = (
    "n_head_kv",
    "num_kv_heads",
    "num_key_value_heads",
    "multi_query_group_num",
    "num_attention_groups",
)
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_HEAD_KEYS = ("num_attention_heads", "n_head")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
# vllm 0.32 model_arch_config_convertor.py::derive_max_model_len_and_key: the smallest of these
# that is set, and model_max_length wins when set.
_POSITION_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# RoPE types whose `factor` vLLM does not apply to that length again (vllm/config/model.py
# _get_and_verify_max_len): their max_position_embeddings is already the scaled one.
_ROPE_TYPES_ALREADY_SCALED = frozenset(
    {"default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}
)


class ModelConfigError(ValueError):
    """The config does not describe a model whose KV cache can be sized; says which field is missing."""


@dataclass(frozen=True)
class ModelShape:
    """What a model's config says about its size, with vLLM's reading of it."""

    model_type: str | None
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int  # KV heads vLLM allocates (1 under MLA)
    head_dim: int  # elements of one KV head (under MLA: the latent, kv_lora_rank + qk_rope_head_dim)
    hidden_size: int | None
    vocab_size: int | None
    max_position_embeddings: int | None
    dtype: str | None  # the checkpoint's dtype as config.json names it ("bfloat16"), if it does
    mla: bool
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    kv_layout: KVLayoutFacts | None = None  # None: every layer keeps full attention

    @property
    def attention_layers(self) -> int:
        return self.num_layers - (self.kv_layout.state_layers if self.kv_layout else 0)

    @property
    def kv_elements_per_token(self) -> int:
        """Elements one token keeps over the attention layers if each kept the whole context:
        2 (key, value) x heads x head_dim per layer, or one latent per layer under MLA."""
        per_layer = self.head_dim if self.mla else 2 * self.num_kv_heads * self.head_dim
        return self.attention_layers * per_layer

    def kv_bytes_per_token(self, kv_cache_dtype: str = "auto", dtype: str = "auto") -> int:
        """Bytes one token of KV cache takes over the attention layers (as if each kept the whole
        context; kv_layout.py says what each kind keeps), for vLLM's --kv-cache-dtype and
        --dtype (`auto` in both: the checkpoint's 16-bit dtype). Raises ValueError for a dtype
        name vLLM does not know."""
        return self.kv_elements_per_token * kv_element_bytes(kv_cache_dtype, dtype or "auto", self.dtype)


def kv_element_bytes(kv_cache_dtype: str, dtype: str = "auto", config_dtype: str | None = None) -> int:
    """Bytes of one KV element. `auto` KV follows the served dtype; an `auto` served dtype is the
    checkpoint's, served in 16 bits when the checkpoint is fp32 (vLLM's default for `auto`)."""
    if kv_cache_dtype.strip().lower() != "auto":
        return dtype_bytes(kv_cache_dtype)
    if dtype.strip().lower() != "auto":
        return dtype_bytes(dtype)
    return min(dtype_bytes(config_dtype or "auto"), 2)


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value > 0 and math.isfinite(value) else None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal configs nest it as text_config)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, Mapping) and nested else config


def model_shape(config: Mapping[str, Any], *, read_layout: bool = True) -> ModelShape:
    """The shape vLLM reads from a config.json dict. Raises ModelConfigError naming a missing field.
    `read_layout` False leaves the layers that keep less than the whole context unread (the
    caller was given them), so a state llmpack cannot size raises nothing."""
    cfg = text_config(config)
    model_type = cfg.get("model_type") or config.get("model_type")
    layers = _positive_int(_first(cfg, _LAYER_KEYS))
    heads = _positive_int(_first(cfg, _HEAD_KEYS))
    if layers is None:
        raise ModelConfigError("config.json has no num_hidden_layers (or n_layer, num_layers)")
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        # Nemotron-H: M is a Mamba layer, * attention, - and E an MLP or MoE block with no cache
        layers = pattern.count("M") + pattern.count("*") or layers
    if heads is None:
        raise ModelConfigError("config.json has no num_attention_heads (or n_head)")
    hidden = _positive_int(_first(cfg, _HIDDEN_KEYS))
    kv_lora_rank = _positive_int(cfg.get("kv_lora_rank"))
    rope = _positive_int(cfg.get("qk_rope_head_dim")) or 0
    mla = model_type in MLA_MODEL_TYPES and kv_lora_rank is not None
    if mla:
        assert kv_lora_rank is not None
        head_dim, kv_heads = kv_lora_rank + rope, 1
    else:
        kv_heads = _positive_int(_first(cfg, _KV_HEAD_KEYS)) or heads
        if cfg.get("multi_query") is True and not cfg.get("new_decoder_architecture"):
            kv_heads = 1  # Falcon-7B style multi-query attention
        explicit = _positive_int(cfg.get("head_dim")) or _positive_int(cfg.get("hidden_size_per_head"))
        if explicit is None and hidden is None:
            raise ModelConfigError("config.json has neither head_dim nor hidden_size")
        head_dim = explicit or (hidden // heads if hidden else 0)
        if head_dim < 1:
            raise ModelConfigError(f"hidden_size {hidden} / num_attention_heads {heads} is below 1")
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or config.get("dtype") or config.get("torch_dtype")
    return ModelShape(
        model_type=model_type,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=_positive_int(cfg.get("vocab_size")),
        max_position_embeddings=context_limit(cfg),
        dtype=str(dtype) if dtype else None,
        mla=mla,
        kv_lora_rank=kv_lora_rank if mla else None,
        qk_rope_head_dim=rope if mla else None,
        kv_layout=kv_layout_facts(cfg, layers, str(dtype) if dtype else None) if read_layout else None,
    )


_SLIDING = frozenset({"sliding_attention"})
_CHUNKED = frozenset({"chunked_attention"})
_STATE = frozenset({"linear_attention", "mamba", "mamba2", "linear"})


def model_type_of(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("model_type") or "")


def layer_kinds(cfg: Mapping[str, Any], layers: int) -> list[str]:
    """The kind of each layer as vLLM's model code reads it: `layer_types`, else what
    transformers derives it from (Gemma-2/3 `sliding_window_pattern`: every p-th layer global;
    Llama-4 `no_rope_layers`: a layer with RoPE uses chunked local attention; Qwen3-Next and
    Qwen3.5 `full_attention_interval`; Nemotron-H `hybrid_override_pattern`)."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        return [str(t) for t in types[:layers]]
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        return ["mamba"] * pattern.count("M") + ["full_attention"] * pattern.count("*")
    if model_type_of(cfg).startswith(("qwen3_next", "qwen3_5")):
        # transformers' default layer_types: every full_attention_interval-th layer is full
        interval = _positive_int(cfg.get("full_attention_interval")) or 4
        return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]
    model_type = str(cfg.get("model_type") or "")
    if model_type.startswith("gemma") and _positive_int(cfg.get("sliding_window")):
        pattern = _positive_int(cfg.get("sliding_window_pattern")) or (2 if model_type == "gemma2" else 6)
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    if model_type.startswith("llama4") and _positive_int(cfg.get("attention_chunk_size")):
        nope = cfg.get("no_rope_layers")
        if not isinstance(nope, list) or len(nope) < layers:
            interval = _positive_int(cfg.get("no_rope_layer_interval")) or 4
            nope = [int((i + 1) % interval != 0) for i in range(layers)]
        return ["chunked_attention" if nope[i] else "full_attention" for i in range(layers)]
    return ["full_attention"] * layers


def kv_layout_facts(cfg: Mapping[str, Any], layers: int, dtype: str | None) -> KVLayoutFacts | None:
    """The layers of a config that keep less than the whole context; None when all keep it.
    Raises ModelConfigError for state layers whose size llmpack cannot read from the config."""
    kinds = layer_kinds(cfg, layers)
    sliding = sum(k in _SLIDING for k in kinds)
    chunked = sum(k in _CHUNKED for k in kinds)
    state = sum(k in _STATE for k in kinds)
    if sliding + chunked + state == 0:
        return None
    window = _positive_int(cfg.get("sliding_window")) if sliding else None
    chunk = _positive_int(cfg.get("attention_chunk_size")) if chunked else None
    if sliding and window is None:
        raise ModelConfigError("config.json has sliding_attention layers but no sliding_window")
    if chunked and chunk is None:
        raise ModelConfigError("config.json has chunked_attention layers but no attention_chunk_size")
    return KVLayoutFacts(
        sliding_window=window,
        sliding_window_layers=sliding,
        attention_chunk_size=chunk,
        chunked_attention_layers=chunked,
        state_layers=state,
        state_bytes_per_layer=state_bytes(cfg, dtype) if state else None,
        state_checkpoint_blocks=1 if state and _is_mamba2(cfg) else 0,
    )


def state_bytes(cfg: Mapping[str, Any], dtype: str | None) -> int:
    """One state layer's state for one request, one GPU, in the model's dtype (vLLM's
    --mamba-cache-dtype auto): Qwen3-Next's gated delta net, or a Mamba-2 layer (Granite-4.0-H's
    mamba_* fields, Nemotron-H's mamba_num_heads ...). Raises ModelConfigError naming what to
    give for another kind."""
    if "linear_num_value_heads" in cfg:
        return gated_delta_net_state_bytes(cfg, dtype)
    if "mamba_n_heads" in cfg or "mamba_num_heads" in cfg:
        return mamba2_state_bytes(cfg, dtype)
    raise ModelConfigError(
        "config.json has linear-attention or Mamba layers of a kind llmpack cannot size (neither "
        "Qwen3-Next's gated delta net nor Mamba-2); give spec.model.architecture with stateLayers and "
        "stateBytesPerLayer"
    )


def _is_mamba2(cfg: Mapping[str, Any]) -> bool:
    return "linear_num_value_heads" not in cfg and ("mamba_n_heads" in cfg or "mamba_num_heads" in cfg)


def mamba2_state_bytes(cfg: Mapping[str, Any], dtype: str | None) -> int:
    """A Mamba-2 layer: a convolution state of (d_conv - 1) x (intermediate + 2 x groups x
    d_state) and a recurrent state of heads x head dim x d_state (vllm 0.32 mamba_utils.py
    mamba2_state_shape; intermediate = mamba_expand x hidden_size for Granite-4.0-H,
    heads x head dim for Nemotron-H)."""
    nemotron = "mamba_num_heads" in cfg
    names = (
        ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel")
        if nemotron
        else ("mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_n_groups", "mamba_d_conv")
    )
    values = _required(cfg, names, "Mamba-2")
    heads, head_dim, d_state, groups, kernel = values
    if nemotron:
        intermediate = heads * head_dim
    else:
        expand, hidden = _required(cfg, ("mamba_expand", "hidden_size"), "Mamba-2")
        intermediate = expand * hidden
    conv = (kernel - 1) * (intermediate + 2 * groups * d_state)
    return conv * _state_element_bytes(dtype) + heads * head_dim * d_state * _ssm_element_bytes(cfg, dtype)


def _required(cfg: Mapping[str, Any], names: tuple[str, ...], kind: str) -> list[int]:
    values = [_positive_int(cfg.get(n)) for n in names]
    missing = [n for n, v in zip(names, values, strict=True) if v is None]
    if missing:
        raise ModelConfigError(
            f"config.json has {kind} layers whose state llmpack cannot size (no {', '.join(missing)}); "
            "give spec.model.architecture with stateLayers and stateBytesPerLayer"
        )
    return [int(v) for v in values if v is not None]


def gated_delta_net_state_bytes(cfg: Mapping[str, Any], dtype: str | None) -> int:
    """One gated-delta-net layer's state for one request (Qwen3-Next), one GPU: a convolution
    state of (conv kernel - 1) x conv_dim and a recurrent state of value heads x key dim x value
    dim, both in the model's dtype (vllm 0.32 mamba_utils.py gated_delta_net_state_shape and
    _mamba_state_dtype with --mamba-cache-dtype auto)."""
    names = (
        "linear_num_key_heads",
        "linear_num_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_conv_kernel_dim",
    )
    values = _required(cfg, names, "gated-delta-net")
    k_heads, v_heads, k_dim, v_dim, kernel = values
    conv_dim = k_dim * k_heads * 2 + v_dim * v_heads
    conv = (kernel - 1) * conv_dim
    return conv * _state_element_bytes(dtype) + v_heads * k_dim * v_dim * _ssm_element_bytes(cfg, dtype)


def _state_element_bytes(dtype: str | None) -> int:
    """The convolution state's element: the model's dtype as served (16 bits for fp32)."""
    return min(dtype_bytes(dtype or "auto"), 2)


def _ssm_element_bytes(cfg: Mapping[str, Any], dtype: str | None) -> int:
    """The recurrent state's element with --mamba-ssm-cache-dtype auto: Nemotron-H keeps it in
    fp32 unless its config names another (mamba_ssm_cache_dtype), Qwen3.5 as its config's
    mamba_ssm_dtype says, any other model in the convolution state's dtype (vllm 0.32
    model_executor/models/config.py NemotronHForCausalLMConfig, Qwen3_5ForConditionalGenerationConfig;
    mamba_utils.py _mamba_state_dtype)."""
    model_type = str(cfg.get("model_type") or "")
    named = None
    if model_type.startswith("nemotron_h"):
        named = cfg.get("mamba_ssm_cache_dtype") or "float32"
    elif model_type.startswith("qwen3_5"):
        named = cfg.get("mamba_ssm_dtype")
    if isinstance(named, str) and named != "auto":
        return dtype_bytes(named)
    return _state_element_bytes(dtype)


def context_limit(config: Mapping[str, Any]) -> int | None:
    """The longest --max-model-len vLLM accepts for a model (vllm 0.32 `_get_and_verify_max_len`
    without VLLM_ALLOW_LONG_MAX_MODEL_LEN): the smallest of the config's length keys, or its
    model_max_length when set, times the RoPE scaling factor of the RoPE types that scale it
    (linear, dynamic; not yarn or llama3, whose length is already the scaled one). None when the
    config names no length (vLLM then assumes 2,048)."""
    cfg = text_config(config)
    lengths = [v for key in _POSITION_KEYS if (v := _positive_int(cfg.get(key))) is not None]
    if not lengths:
        return None
    derived = _positive_int(cfg.get("model_max_length")) or min(lengths)
    model_type = str(cfg.get("model_type") or config.get("model_type") or "")
    factor = 1.0
    if "gemma3" not in model_type:  # vLLM: Gemma3's length is already scaled
        for rope in _rope_parameters(cfg):
            kind = rope.get("rope_type") or rope.get("type") or "default"
            scale = rope.get("factor")
            if kind not in _ROPE_TYPES_ALREADY_SCALED and isinstance(scale, int | float) and scale > 0:
                factor = float(scale)
    return int(derived * factor)


def _rope_parameters(cfg: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The RoPE settings of a config: `rope_parameters` (transformers 5, possibly one per layer
    type) or `rope_scaling` (older configs)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if not isinstance(rope, Mapping):
        return []
    if "rope_type" in rope or "type" in rope or "factor" in rope:
        return [rope]
    return [v for v in rope.values() if isinstance(v, Mapping)]


def kv_capacity_tokens(kv_cache_memory_bytes: int, kv_bytes_per_token: int, block_size: int) -> int:
    """Tokens vLLM's KV pool holds for --kv-cache-memory-bytes: whole blocks only
    (vllm/v1/core/kv_cache_utils.py: num_blocks = memory // (block bytes x layers))."""
    if kv_bytes_per_token < 1 or block_size < 1:
        raise ValueError("bytes per token and block size must be at least 1")
    return kv_cache_memory_bytes // (kv_bytes_per_token * block_size) * block_size
