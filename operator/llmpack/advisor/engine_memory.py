"""What engine flags change in one replica's memory, before anything is measured: the figures the
dry run (`llmpack plan --simulate`, the simulated profiler) and the checks before profiling use.
A real profile measures all of it and wins (the weights vLLM loaded, its KV capacity).

- Online quantization (vllm/model_executor/layers/quantization): `--quantization fp8` (or
  ptpc_fp8) stores a 16-bit checkpoint's linear layers in 1 byte per weight; `bitsandbytes`
  in 4 bits plus one fp32 scale per 64 weights. Embeddings and the LM head stay 16-bit. Other
  methods (awq, gptq, compressed-tensors, mxfp4, ...) name a checkpoint already quantized: its
  bytes are what it publishes (spec.model.architecture.parameterBytes), which this cannot know.
- LoRA (vllm/lora/layers/base_linear.py create_lora_weights): every LoRA-able linear layer keeps,
  for --max-loras slots (default 1), A = rank x input and B = output x rank per output slice, in
  the model's dtype, at --max-lora-rank (default 16) whatever the adapters' own ranks. For a
  decoder layer: qkv (3 slices), o, gate_up (2 slices), down. The MLP's width is estimated from
  the parameter count as a dense gated MLP (said so); MoE experts, which vLLM gives slots each
  (lora/layers/fused_moe.py), are not counted, so LoRA on an MoE model is under-estimated.
  --max-cpu-loras is host memory.
- A speculative draft model (`--speculative-config` with a "model", method draft_model or
  eagle-style heads): its weights, and its layers' KV cache, which vLLM keeps in the same pool
  as the target's (v1: the draft's layers join the KV cache groups), when the catalogue knows the
  draft; otherwise it is said to be unmodelled. ngram and suffix methods hold no weights.

Limits, stated: the tokens a request holds for speculative lookahead (num_speculative_tokens) and
LoRA's dummy activations at start-up are left out; MoE weights count every expert (the
parameter count is the total), which is what vLLM loads. Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.memory import dtype_bytes
from llmpack.api.engine_flags import QUANTIZATION_FLAG, EngineFlags
from llmpack.api.profile import ModelFacts

GB = 10**9
# bytes per linear weight under an online quantization method, from a 16-bit checkpoint
ONLINE_QUANTIZATION = {"fp8": 1.0, "ptpc_fp8": 1.0, "bitsandbytes": 0.5 + 4 / 64}
VLLM_DEFAULT_MAX_LORAS = 1  # vllm/config/lora.py
VLLM_DEFAULT_MAX_LORA_RANK = 16
NO_WEIGHTS_METHODS = frozenset({"ngram", "suffix", "ngram_gpu"})


@dataclass(frozen=True)
class EngineMemory:
    """One replica's memory as the engine flags change it."""

    weight_bytes: int  # the target's weights as served, plus a draft model's
    lora_bytes: int  # LoRA slots, beside the weights
    kv_bytes_per_token: int  # the target's KV per token, plus a draft model's layers
    notes: tuple[str, ...]  # one sentence per flag modelled (or not), for the plan and the profile

    @property
    def extra_bytes(self) -> int:
        return self.lora_bytes


def engine_memory(model: ModelFacts, flags: EngineFlags) -> EngineMemory:
    """The weights, LoRA slots and KV per token of `model` served with `flags`."""
    notes: list[str] = []
    weights = quantized_weight_bytes(model, flags, notes)
    lora = lora_bytes(model, flags, notes)
    draft_weights, draft_kv = draft_model(flags, model.dtype, notes)
    return EngineMemory(weights + draft_weights, lora, model.kv_bytes_per_token + draft_kv, tuple(notes))


def _embedding_parameters(model: ModelFacts) -> int:
    """Embeddings and LM head (untied assumed: both kept 16-bit under online quantization)."""
    if model.vocab_size is None or model.hidden_size is None:
        return 0
    return 2 * model.vocab_size * model.hidden_size


def _parameters(model: ModelFacts) -> int:
    return model.num_parameters or model.weight_bytes // dtype_bytes(model.dtype)


def quantized_weight_bytes(model: ModelFacts, flags: EngineFlags, notes: list[str]) -> int:
    method = flags.text_of(QUANTIZATION_FLAG)
    if not method:
        return model.weight_bytes
    per_weight = ONLINE_QUANTIZATION.get(method.strip().lower())
    if per_weight is None:
        notes.append(
            f"--quantization {method}: a checkpoint quantized ahead of time; its weights are the bytes "
            "it publishes (give spec.model.architecture.parameterBytes), measured when profiled"
        )
        return model.weight_bytes
    embeddings = min(_embedding_parameters(model), _parameters(model))
    linear = _parameters(model) - embeddings
    served = int(embeddings * 2 + linear * per_weight)
    notes.append(
        f"--quantization {method}: {per_weight:g} bytes per linear weight, embeddings 16-bit: "
        f"{served / GB:.2f} GB of weights instead of {model.weight_bytes / GB:.2f} GB"
    )
    return min(served, model.weight_bytes)


def _mlp_width(model: ModelFacts) -> int:
    """The MLP's intermediate size, estimated from the parameter count as a gated MLP (3 x hidden
    x width per layer) beside the attention projections."""
    hidden = model.hidden_size or model.num_attention_heads or 1
    q = (model.num_attention_heads or model.num_kv_heads) * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    per_layer = (_parameters(model) - _embedding_parameters(model)) / model.num_layers
    attention = hidden * q * 2 + hidden * kv * 2
    return max(int((per_layer - attention) / (3 * hidden)), 1)


def lora_bytes(model: ModelFacts, flags: EngineFlags, notes: list[str]) -> int:
    if not flags.lora:
        return 0
    slots = flags.int_of("--max-loras") or VLLM_DEFAULT_MAX_LORAS
    rank = flags.int_of("--max-lora-rank") or VLLM_DEFAULT_MAX_LORA_RANK
    hidden = model.hidden_size
    if hidden is None:
        notes.append("--enable-lora: the model's hidden size is unknown, so its LoRA slots are not sized")
        return 0
    q = (model.num_attention_heads or model.num_kv_heads) * model.head_dim
    kv = model.num_kv_heads * model.head_dim
    width = _mlp_width(model)
    # (input, output slices) of each LoRA-able linear layer of a decoder layer
    modules = ((hidden, (q, kv, kv)), (q, (hidden,)), (hidden, (width, width)), (width, (hidden,)))
    per_layer = sum(rank * (inp * len(outs) + sum(outs)) for inp, outs in modules)
    size = slots * per_layer * model.num_layers * min(dtype_bytes(model.dtype), 2)
    notes.append(
        f"--enable-lora: {slots} slot{'s' if slots != 1 else ''} at rank {rank} take {size / GB:.2f} GB "
        f"beside the weights (MLP width {width:,}, estimated from the parameter count)"
    )
    return size


def draft_model(flags: EngineFlags, dtype: str, notes: list[str]) -> tuple[int, int]:
    """(weights, KV bytes per token) of a draft model named by --speculative-config."""
    text = flags.text_of("--speculative-config")
    if not text:
        return 0, 0
    try:
        config = json.loads(text)
    except ValueError:
        notes.append("--speculative-config is not JSON; its draft model is not modelled")
        return 0, 0
    if not isinstance(config, dict):
        return 0, 0
    method, name = str(config.get("method") or ""), config.get("model")
    if method in NO_WEIGHTS_METHODS or not name:
        return 0, 0
    arch = find_architecture(str(name))
    if arch is None:
        notes.append(
            f"--speculative-config: the draft model {name} is not in llmpack's catalogue; its weights and "
            "KV layers are measured when profiled, not in this estimate"
        )
        return 0, 0
    facts = arch.model_facts(dtype=dtype)
    notes.append(
        f"--speculative-config: draft model {name} adds {facts.weight_bytes / GB:.2f} GB of weights and "
        f"{facts.kv_bytes_per_token:,} bytes of KV per token (its layers share the target's pool)"
    )
    return facts.weight_bytes, facts.kv_bytes_per_token
