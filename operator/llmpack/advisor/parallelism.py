"""One vLLM engine spanning several GPUs: what one GPU (one of the engine's workers) holds under
tensor and pipeline parallelism, by vLLM 0.32's own rules. Every memory figure llmpack computes
for such an engine is one worker's, which is what vLLM sizes too: --kv-cache-memory-bytes and
--gpu-memory-utilization apply to each worker, and the engine's KV capacity is the fewest blocks
any worker holds (vllm/v1/core/kv_cache_utils.py, get_kv_cache_configs).

Rules, each with its source:
- KV heads per worker: max(1, KV heads // tensor parallel size); a worker keeps at least one KV
  head, replicated where there are fewer heads than workers (ModelConfig.get_num_kv_heads,
  vllm/config/model.py). Latent attention (MLA) keeps the whole latent on every worker (same
  function: 1 head whatever the size).
- Layers per pipeline stage: L // pp each, the remainder one more on the stages before the last
  (get_pp_indices, vllm/distributed/utils.py): the largest stage holds ceil(L / pp), and it
  sizes the pool. Where a model mixes kinds of layers (sliding window, chunked, state), which
  kinds a stage holds depends on their order, which llmpack's counts do not keep: each kind is
  taken at ceil(count / pp), an upper bound.
- Linear-attention and Mamba state: sharded over tensor parallelism by heads
  (MambaStateShapeCalculator, vllm/model_executor/layers/mamba/mamba_utils.py).
- Weights: divided evenly over the world size (linear layers and the vocabulary are sharded:
  ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding). Replicated norms and the
  embedding on the first stage and head on the last are left out; a real profile measures what
  the worker loaded ("Model loading took ...") and wins.
- What vLLM refuses (ModelConfig.verify_with_parallel_config): attention heads not divisible by
  the tensor parallel size; llmpack also refuses more pipeline stages than layers.

Not modelled, and refused where they are asked for (decide.check_engine_flags): prefill and
decode context parallelism (they split the KV cache by tokens), and data parallelism, which
llmpack's own replicas already are. Pure: no Kubernetes, no engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor.kv_layout import cdiv
from llmpack.api.engine_flags import EngineFlags
from llmpack.api.profile import KVLayoutFacts, ModelFacts


@dataclass(frozen=True)
class Parallelism:
    """The GPUs one engine spans: `tensor` x `pipeline` (vLLM's world size without data parallelism)."""

    tensor: int = 1
    pipeline: int = 1

    @classmethod
    def of(cls, flags: EngineFlags) -> Parallelism:
        return cls(
            tensor=flags.int_of("--tensor-parallel-size") or 1,
            pipeline=flags.int_of("--pipeline-parallel-size") or 1,
        )

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline

    def flags(self) -> str:
        """The flags as vLLM spells them: "--tensor-parallel-size 4 --pipeline-parallel-size 2"."""
        given = (("--tensor-parallel-size", self.tensor), ("--pipeline-parallel-size", self.pipeline))
        return " ".join(f"{flag} {size}" for flag, size in given if size > 1)


def refusal(model: ModelFacts, parallelism: Parallelism) -> str | None:
    """What vLLM would refuse about serving `model` (whole-model facts) this way, in words that
    say what to change; None: nothing."""
    tp, pp = parallelism.tensor, parallelism.pipeline
    heads = model.num_attention_heads
    if heads is not None and heads % tp:
        sizes = [n for n in (1, 2, 4, 8, 16) if heads % n == 0]
        return (
            f"--tensor-parallel-size {tp} does not divide the model's {heads} attention heads, which vLLM "
            f"requires (vllm/config/model.py); use one of {', '.join(map(str, sizes))}"
        )
    if pp > model.num_layers:
        return (
            f"--pipeline-parallel-size {pp} is more stages than the model's {model.num_layers} layers; "
            f"use at most {model.num_layers}"
        )
    return None


def per_worker(model: ModelFacts, parallelism: Parallelism) -> ModelFacts:
    """What one worker of an engine of `parallelism` holds of `model` (whole-model facts): KV
    heads, layers, KV bytes per token, state and weights as the module docstring says. The
    identity for one GPU; facts already per worker (their parallel sizes set) are returned as
    they are."""
    tp, pp = parallelism.tensor, parallelism.pipeline
    if parallelism.world_size == 1 or (model.tensor_parallel_size, model.pipeline_parallel_size) != (1, 1):
        return model
    heads = model.num_kv_heads if model.latent_attention else max(1, model.num_kv_heads // tp)
    layout = model.kv_layout
    attention = model.num_layers - (layout.state_layers if layout else 0)
    worker_layout = _layout_per_worker(layout, tp, pp) if layout else None
    layers = cdiv(model.num_layers, pp)
    if layout is not None and worker_layout is not None:
        full = model.num_layers - layout.special_layers
        layers = max(layers, cdiv(full, pp) + worker_layout.special_layers)
    worker_attention = layers - (worker_layout.state_layers if worker_layout else 0)

    def per_token(whole: int) -> int:
        # the same bytes per layer and KV head, over the worker's attention layers and KV heads
        return round(whole * worker_attention * heads / (attention * model.num_kv_heads))

    update = {
        "num_layers": layers,
        "num_kv_heads": heads,
        "num_attention_heads": model.num_attention_heads // tp if model.num_attention_heads else None,
        "kv_bytes_per_token": per_token(model.kv_bytes_per_token),
        "weight_bytes": cdiv(model.weight_bytes, parallelism.world_size),
        "kv_layout": worker_layout,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
    }
    if model.kv_bytes_per_token_config is not None:
        update["kv_bytes_per_token_config"] = per_token(model.kv_bytes_per_token_config)
    return model.model_copy(update=update)


def _layout_per_worker(layout: KVLayoutFacts, tp: int, pp: int) -> KVLayoutFacts:
    state = layout.state_bytes_per_layer
    return layout.model_copy(
        update={
            "sliding_window_layers": cdiv(layout.sliding_window_layers, pp),
            "chunked_attention_layers": cdiv(layout.chunked_attention_layers, pp),
            "state_layers": cdiv(layout.state_layers, pp),
            "state_bytes_per_layer": None if state is None else cdiv(state, tp),
        }
    )


def tensor_parallel_to_fit(model: ModelFacts, usable_bytes: int, *, headroom: float = 1.1) -> int | None:
    """The smallest tensor parallel size (a power of two up to 8, one node's GPUs) at which one
    worker's weights, with `headroom` for a KV cache, fit `usable_bytes` and vLLM accepts the
    size; None: none does."""
    for tp in (2, 4, 8):
        if (
            refusal(model, Parallelism(tensor=tp)) is None
            and model.weight_bytes / tp * headroom < usable_bytes
        ):
            return tp
    return None
