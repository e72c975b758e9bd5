"""A small catalogue of model architectures, for models whose shape the operator must know without
downloading their config.json: the four models of the paper and a few popular small ones.

Figures are those of each model's Hugging Face ``config.json`` (num_hidden_layers,
num_attention_heads, num_key_value_heads, hidden_size, vocab_size, max_position_embeddings) and
the parameter count on its model card. Models with grouped-query attention have fewer KV heads
than attention heads, which is what makes their KV cache small; models whose layers keep less
than the whole context (sliding windows, chunked local attention, linear attention) name those
layers as their config.json's layer_types does (advisor/kv_layout.py sizes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor.errors import UnknownModelError
from llmpack.advisor.memory import dtype_bytes
from llmpack.advisor.model_config import ModelShape
from llmpack.api.profile import KVLayoutFacts, ModelFacts


@dataclass(frozen=True)
class Architecture:
    hf_id: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    num_parameters: int
    max_position_embeddings: int
    aliases: tuple[str, ...] = ()  # other ids with the same shape (instruct/chat variants, short names)
    # multi-head latent attention (DeepSeek-V2 style): the KV cache keeps one latent per layer
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    kv_layout: KVLayoutFacts | None = None  # layers that keep less than the whole context
    checkpoint_bytes: int | None = None  # weights as published, where not parameters x dtype (MXFP4)

    def shape(self) -> ModelShape:
        """The shape as vLLM reads it (advisor/model_config.py): under MLA, one "head" of
        kv_lora_rank + qk_rope_head_dim elements per layer."""
        mla = self.kv_lora_rank is not None
        return ModelShape(
            model_type="deepseek_v2" if mla else None,
            num_layers=self.num_layers,
            num_attention_heads=self.num_attention_heads,
            num_kv_heads=1 if mla else self.num_kv_heads,
            head_dim=(self.kv_lora_rank or 0) + (self.qk_rope_head_dim or 0) if mla else self.head_dim,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            dtype=None,
            mla=mla,
            kv_lora_rank=self.kv_lora_rank,
            qk_rope_head_dim=self.qk_rope_head_dim,
            kv_layout=self.kv_layout,
        )

    def kv_bytes_per_token(self, dtype: str = "float16") -> int:
        return self.shape().kv_bytes_per_token(dtype=dtype)

    def weight_bytes(self, dtype: str = "float16") -> int:
        if self.checkpoint_bytes is not None and dtype in ("auto", "bfloat16", "float16"):
            return self.checkpoint_bytes
        return self.num_parameters * dtype_bytes(dtype)

    def model_facts(
        self,
        *,
        name: str | None = None,
        dtype: str = "float16",
        max_model_len: int | None = None,
        weight_bytes: int | None = None,
        revision: str | None = None,
    ) -> ModelFacts:
        """ModelFacts for this architecture; measured weight bytes win over parameters x dtype."""
        return ModelFacts(
            name=name or self.hf_id,
            revision=revision,
            dtype=dtype,
            num_layers=self.num_layers,
            num_kv_heads=self.shape().num_kv_heads,
            head_dim=self.shape().head_dim,
            latent_attention=self.kv_lora_rank is not None,
            kv_layout=self.kv_layout,
            num_attention_heads=self.num_attention_heads,
            hidden_size=self.hidden_size,
            vocab_size=self.vocab_size,
            num_parameters=self.num_parameters,
            weight_bytes=weight_bytes or self.weight_bytes(dtype),
            kv_bytes_per_token=self.kv_bytes_per_token(dtype),
            max_model_len=max_model_len or self.max_position_embeddings,
        )


# The paper's short names come first in `aliases`; `paper_name` relies on that.
ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("facebook/opt-1.3b", 24, 32, 32, 64, 2048, 50272, 1_315_758_080, 2048, ("opt-1.3b",)),
    Architecture("facebook/opt-2.7b", 32, 32, 32, 80, 2560, 50272, 2_651_596_800, 2048, ("opt-2.7b",)),
    Architecture(
        "meta-llama/Llama-2-7b-hf",
        32,
        32,
        32,
        128,
        4096,
        32000,
        6_738_415_616,
        4096,
        ("llama-2-7b", "meta-llama/Llama-2-7b-chat-hf"),
    ),
    Architecture(
        "meta-llama/Llama-2-13b-hf",
        40,
        40,
        40,
        128,
        5120,
        32000,
        13_015_864_320,
        4096,
        ("llama-2-13b", "meta-llama/Llama-2-13b-chat-hf"),
    ),
    Architecture(
        "Qwen/Qwen2.5-0.5B-Instruct", 24, 14, 2, 64, 896, 151936, 494_032_768, 32768, ("Qwen/Qwen2.5-0.5B",)
    ),
    Architecture(
        "Qwen/Qwen2.5-1.5B-Instruct",
        28,
        12,
        2,
        128,
        1536,
        151936,
        1_543_714_304,
        32768,
        ("Qwen/Qwen2.5-1.5B",),
    ),
    Architecture(
        "Qwen/Qwen2.5-7B-Instruct", 28, 28, 4, 128, 3584, 152064, 7_615_616_512, 32768, ("Qwen/Qwen2.5-7B",)
    ),
    Architecture(
        "meta-llama/Llama-3.2-1B-Instruct",
        16,
        32,
        8,
        64,
        2048,
        128256,
        1_235_814_400,
        131072,
        ("meta-llama/Llama-3.2-1B",),
    ),
    Architecture(
        "meta-llama/Llama-3.2-3B-Instruct",
        28,
        24,
        8,
        128,
        3072,
        128256,
        3_212_749_824,
        131072,
        ("meta-llama/Llama-3.2-3B",),
    ),
    Architecture(
        "meta-llama/Llama-3.1-8B-Instruct",
        32,
        32,
        8,
        128,
        4096,
        128256,
        8_030_261_248,
        131072,
        ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B-Instruct"),
    ),
    # config.json head_dim 128 while hidden_size / heads = 64: the KV is sized with 128.
    Architecture("Qwen/Qwen3-0.6B", 28, 16, 8, 128, 1024, 151936, 751_632_384, 40960),
    # MLA: 27 x (512 + 64) x 2 bytes = 31,104 bytes per token, not 2 x 27 x 16 x 128 x 2.
    Architecture(
        "deepseek-ai/DeepSeek-V2-Lite-Chat",
        27,
        16,
        16,
        128,
        2048,
        102400,
        15_706_484_224,
        163840,
        ("deepseek-ai/DeepSeek-V2-Lite",),
        kv_lora_rank=512,
        qk_rope_head_dim=64,
    ),
    Architecture(
        "mistralai/Mistral-7B-v0.1",
        32,
        32,
        8,
        128,
        4096,
        32000,
        7_241_732_096,
        32768,
        ("mistralai/Mistral-7B-Instruct-v0.1",),
    ),
    # 22 of 26 layers keep a 512-token window (sliding_window_pattern 6: every 6th is global).
    Architecture(
        "google/gemma-3-1b-it",
        26,
        4,
        1,
        256,
        1152,
        262144,
        999_885_952,
        32768,
        ("google/gemma-3-1b-pt",),
        kv_layout=KVLayoutFacts(sliding_window=512, sliding_window_layers=22),
    ),
    # layer_types alternate sliding_attention (window 128) and full_attention; MXFP4 experts.
    Architecture(
        "openai/gpt-oss-20b",
        24,
        64,
        8,
        64,
        2880,
        201088,
        20_914_757_184,
        131072,
        kv_layout=KVLayoutFacts(sliding_window=128, sliding_window_layers=12),
        checkpoint_bytes=13_834_944_512,
    ),
    # 36 gated-delta-net layers (a state per request: model_config.gated_delta_net_state_bytes of
    # 16 key heads, 32 value heads of 128, kernel 4, bf16) and 12 full-attention layers.
    Architecture(
        "Qwen/Qwen3-Next-80B-A3B-Instruct",
        48,
        16,
        2,
        256,
        2048,
        151936,
        81_324_862_720,
        262144,
        ("Qwen/Qwen3-Next-80B-A3B-Thinking",),
        kv_layout=KVLayoutFacts(state_layers=36, state_bytes_per_layer=1_097_728),
    ),
    # Chunked local attention (chunk 8192) in the 36 layers with RoPE; every 4th layer is global.
    Architecture(
        "meta-llama/Llama-4-Scout-17B-16E-Instruct",
        48,
        40,
        8,
        128,
        5120,
        202048,
        108_641_793_536,
        10485760,
        ("meta-llama/Llama-4-Scout-17B-16E",),
        kv_layout=KVLayoutFacts(attention_chunk_size=8192, chunked_attention_layers=36),
    ),
)

PAPER_MODELS = ("opt-1.3b", "opt-2.7b", "llama-2-7b", "llama-2-13b")

_INDEX: dict[str, Architecture] = {}
for _arch in ARCHITECTURES:
    for _name in (_arch.hf_id, *_arch.aliases):
        _INDEX[_name.lower()] = _arch
        # also without the organisation ("Llama-2-7b-hf"), unless that would be ambiguous
        _INDEX.setdefault(_name.rsplit("/", 1)[-1].lower(), _arch)


def known_models() -> list[str]:
    return [arch.hf_id for arch in ARCHITECTURES]


def find_architecture(name: str) -> Architecture | None:
    """The architecture of a Hugging Face id, one of its aliases or the paper's short names, in
    any letter case; a local path matches by its last component. None when unknown."""
    key = name.strip().rstrip("/").lower()
    if key in _INDEX:
        return _INDEX[key]
    return _INDEX.get(key.rsplit("/", 1)[-1])


def lookup_architecture(name: str) -> Architecture:
    arch = find_architecture(name)
    if arch is None:
        raise UnknownModelError(
            f"unknown model {name.strip()!r}: the built-in catalogue knows {', '.join(known_models())} "
            f"(and the paper's short names {', '.join(PAPER_MODELS)}); for another model give its "
            "architecture (layers, KV heads, head dim, parameter bytes) explicitly"
        )
    return arch


def paper_name(name: str) -> str | None:
    """The paper's short name (opt-1.3b, ...) of a model, or None when it is not a paper model."""
    arch = find_architecture(name)
    if arch is None:
        return None
    for alias in arch.aliases:
        if alias in PAPER_MODELS:
            return alias
    return None
