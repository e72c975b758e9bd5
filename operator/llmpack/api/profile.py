"""The Profile: what one model measured on one GPU with one engine and one workload shape.

A Profile is data. It is validated by these models wherever it is read (a cached ConfigMap, a
profiling Job's output, `llmpack advise --profile FILE`), so a bad number is rejected with a
message that names the field, never discovered later as a wrong recommendation. JSON field names
are snake_case (``points[*].max_num_seqs``); this file is the contract between the profiler, the
cache and the advisor.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PROFILE_SCHEMA_VERSION = 1

# Upper bounds that no real measurement reaches; a value beyond them is a unit mix-up or garbage.
MAX_BATCH = 65_536
MAX_TOKENS_PER_S = 1e8
MAX_LATENCY_MS = 86_400_000.0  # one day (TTFT of a huge queue at request rate = inf takes hours)
MAX_MEMORY_BYTES = 1 << 44  # 16 TiB
MAX_TOKENS = 1 << 24

NonNegInt = Annotated[int, Field(ge=0)]


class ProfileModel(BaseModel):
    """Base of the profile models: finite numbers only, unknown fields kept out of the contract."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, validate_assignment=True)


def _not_a_percentage(value: float) -> float:
    if 1.0 < value <= 100.0:
        raise ValueError(
            f"must be a fraction between 0 and 1; {value:g} looks like a percentage, divide it by 100"
        )
    return value


class KVLayoutFacts(ProfileModel):
    """Layers that keep less than the whole context, by vLLM's KV cache spec of each
    (vllm/v1/kv_cache_interface.py); the model's other layers keep full attention. Absent from a
    profile: every layer keeps full attention."""

    sliding_window: int | None = Field(None, ge=1, le=MAX_TOKENS, description="Sliding window, tokens.")
    sliding_window_layers: int = Field(0, ge=0, le=1024, description="Layers with the sliding window.")
    attention_chunk_size: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Chunk of chunked local attention (Llama-4), tokens."
    )
    chunked_attention_layers: int = Field(
        0, ge=0, le=1024, description="Layers with chunked local attention."
    )
    state_layers: int = Field(
        0, ge=0, le=1024, description="Linear-attention or Mamba layers: a fixed state per request, no KV."
    )
    state_bytes_per_layer: int | None = Field(
        None, ge=1, le=1 << 34, description="Bytes of one such layer's state for one request."
    )
    state_checkpoint_blocks: int = Field(
        0,
        ge=0,
        le=8,
        description="Blocks of state a request holds beyond vLLM's two (a Mamba-2 layer's prefill "
        "checkpoint: 1).",
    )

    @model_validator(mode="after")
    def _pairs(self) -> KVLayoutFacts:
        for size, count, size_name, count_name in (
            (self.sliding_window, self.sliding_window_layers, "sliding_window", "sliding_window_layers"),
            (
                self.attention_chunk_size,
                self.chunked_attention_layers,
                "attention_chunk_size",
                "chunked_attention_layers",
            ),
            (self.state_bytes_per_layer, self.state_layers, "state_bytes_per_layer", "state_layers"),
        ):
            if (size is None) != (count == 0):
                raise ValueError(f"{size_name} and {count_name} go together: give both or neither")
        return self

    @property
    def special_layers(self) -> int:
        return self.sliding_window_layers + self.chunked_attention_layers + self.state_layers

    def without_hybrid_manager(self, num_layers: int) -> KVLayoutFacts | None:
        """The layout vLLM keeps with --disable-hybrid-kv-cache-manager: beside full-attention
        layers, sliding-window and chunked layers keep the whole context too
        (vllm/v1/core/kv_cache_utils.py unify_hybrid_kv_cache_specs); None when nothing is left."""
        if self.special_layers - self.state_layers == num_layers - self.state_layers:
            return self  # no full-attention layer: nothing is promoted
        if self.state_layers == 0:
            return None
        return KVLayoutFacts(
            state_layers=self.state_layers,
            state_bytes_per_layer=self.state_bytes_per_layer,
            state_checkpoint_blocks=self.state_checkpoint_blocks,
        )


class ModelFacts(ProfileModel):
    """The model as served: its shape and the memory it takes."""

    name: str = Field(min_length=1, description="Hugging Face id or local path of the model.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit).")
    dtype: str = Field("float16", min_length=1, description="Weight dtype as served, e.g. float16.")
    kv_cache_dtype: str | None = Field(None, description="KV-cache dtype when it differs from dtype.")
    num_layers: int = Field(ge=1, le=1024, description="Transformer layers.")
    num_kv_heads: int = Field(ge=1, le=1024, description="Key/value heads (fewer than heads under GQA).")
    head_dim: int = Field(ge=1, le=4096, description="Dimension of one attention head.")
    num_attention_heads: int | None = Field(None, ge=1, le=1024, description="Query heads.")
    hidden_size: int | None = Field(None, ge=1, le=1 << 20, description="Hidden size.")
    vocab_size: int | None = Field(None, ge=1, le=1 << 24, description="Vocabulary size.")
    num_parameters: int | None = Field(None, ge=1, description="Parameter count.")
    weight_bytes: int = Field(ge=1, le=MAX_MEMORY_BYTES, description="Bytes of the weights on the GPU.")
    kv_bytes_per_token: int = Field(
        ge=1,
        le=1 << 30,
        description="KV-cache bytes one token takes over all layers: 2 x layers x KV heads x head dim "
        "x bytes per element (under latent attention: layers x head dim x bytes per element).",
    )
    kv_bytes_per_token_config: int | None = Field(
        None,
        ge=1,
        le=1 << 30,
        description="What llmpack computed from the model's config when the engine's measured KV "
        "capacity disagreed with it (kv_bytes_per_token then holds the engine's figure).",
    )
    latent_attention: bool = Field(
        False,
        description="Multi-head latent attention (DeepSeek-V2 style): each layer keeps one latent of "
        "head_dim (kv_lora_rank + qk_rope_head_dim) elements per token, num_kv_heads is 1.",
    )
    kv_layout: KVLayoutFacts | None = Field(
        None,
        description="Layers that keep less than the whole context (sliding window, chunked local "
        "attention, linear attention or Mamba state); None: every layer keeps full attention. "
        "kv_bytes_per_token counts the attention layers only.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="--tensor-parallel-size of the engine: above 1, layers, KV heads, KV bytes per "
        "token, state and weights are one worker's (one GPU's), as vLLM sizes each worker.",
    )
    pipeline_parallel_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="--pipeline-parallel-size of the engine: above 1, the facts are the largest "
        "stage's (one GPU's).",
    )
    max_model_len: int = Field(ge=1, le=MAX_TOKENS, description="--max-model-len of the profiled runs.")
    max_position_embeddings: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description="The longest context the model allows (the most --max-model-len vLLM accepts): "
        "derived from its config.json by vLLM's rules, else the built-in catalogue's. None: unknown.",
    )

    @property
    def gpus_per_engine(self) -> int:
        """GPUs one engine spans (vLLM's world size without data parallelism)."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @model_validator(mode="after")
    def _layout_fits(self) -> ModelFacts:
        layout = self.kv_layout
        if layout is not None and layout.special_layers > self.num_layers:
            raise ValueError(
                f"kv_layout names {layout.special_layers} sliding, chunked and state layers, more than "
                f"the model's {self.num_layers}"
            )
        if layout is not None and layout.state_layers >= self.num_layers:
            raise ValueError(
                "kv_layout: every layer is a state layer; llmpack sizes models with attention layers"
            )
        return self


class GPUFacts(ProfileModel):
    """The GPU the profile was measured on."""

    product: str = Field(
        min_length=1, description="The node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3."
    )
    memory_bytes: int = Field(
        ge=1, le=MAX_MEMORY_BYTES, description="Total device memory the profiler saw, in bytes."
    )
    bandwidth_bytes_per_s: float | None = Field(None, gt=0, le=1e15, description="Peak memory bandwidth.")
    mig_profile: str | None = Field(None, description="MIG profile of the slice measured, if any.")


class EngineFacts(ProfileModel):
    """The serving engine that was measured, as it reported itself."""

    name: Literal["vllm"] = "vllm"
    version: str | None = Field(None, description="Engine version as it reports itself.")
    image: str | None = Field(None, description="Container image of the engine.")
    device: str | None = Field(
        None,
        description="Device the engine ran on as its config line says (cuda, cpu): a profile "
        "measured on the CPU build describes that engine, not a GPU's speed.",
    )
    args: list[str] = Field(
        default_factory=list, description="The engine flags of the profiled runs besides model and port."
    )
    config: dict[str, str] = Field(
        default_factory=dict,
        description="Settings from the engine's own start-up config line (dtype, kv_cache_dtype, "
        "quantization, enforce_eager, enable_prefix_caching, ...), as it printed them.",
    )
    kv_cache_dtype: str | None = Field(None, description="KV-cache dtype the engine ran with.")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=1, le=MAX_MEMORY_BYTES, description="--kv-cache-memory-bytes the profiled runs were given."
    )


class WorkloadShape(ProfileModel):
    """The requests the profile was measured with."""

    prompt_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Mean prompt length in tokens.")
    output_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Mean output length in tokens.")
    dataset: str | None = Field(None, description="Dataset or generator of the prompts.")
    num_prompts: int | None = Field(None, ge=1, description="Requests sent per measured point.")
    request_rate: float | None = Field(
        None, gt=0, description="Requests per second offered; absent means all at once (rate = inf)."
    )
    chunked_prefill: bool | None = Field(None, description="Whether chunked prefill was on.")


class ProfilePoint(ProfileModel):
    """One measured batch size (one value of --max-num-seqs). Fields a source lacks are absent."""

    max_num_seqs: int = Field(ge=1, le=MAX_BATCH, description="--max-num-seqs of this run.")
    total_tokens_per_s: float = Field(
        ge=0, le=MAX_TOKENS_PER_S, description="Prompt + generated tokens per second."
    )
    output_tokens_per_s: float | None = Field(None, ge=0, le=MAX_TOKENS_PER_S)
    requests_per_s: float | None = Field(None, ge=0, le=1e7)
    itl_mean_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS, description="Mean inter-token latency.")
    itl_p50_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    itl_p99_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    tpot_mean_ms: float | None = Field(
        None, ge=0, le=MAX_LATENCY_MS, description="Mean time per output token."
    )
    tpot_p50_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    tpot_p99_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    ttft_mean_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS, description="Mean time to first token.")
    ttft_p50_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    ttft_p99_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    kv_cache_usage_peak: float | None = Field(
        None, ge=0, le=1, description="Peak fraction of the allocated KV blocks in use (0..1)."
    )
    kv_capacity_tokens: int | None = Field(
        None, ge=1, le=1 << 32, description="KV-cache capacity of this run in tokens (blocks x block size)."
    )
    preemptions: NonNegInt = Field(0, description="Requests preempted for lack of KV cache.")
    gpu_memory_used_bytes: int | None = Field(
        None, ge=0, le=MAX_MEMORY_BYTES, description="Peak device memory in use during the run."
    )
    gpu_utilization: float | None = Field(None, ge=0, le=1, description="Fraction of time a kernel ran.")
    memory_busy_fraction: float | None = Field(
        None, ge=0, le=1, description="Fraction of time the memory controller was busy (NVML)."
    )
    dram_bandwidth_utilization: float | None = Field(
        None, ge=0, le=1, description="DRAM bandwidth used as a fraction of peak (NVML GPM)."
    )
    sm_occupancy: float | None = Field(None, ge=0, le=1, description="SM occupancy (NVML GPM).")
    mean_running: float | None = Field(
        None, ge=0, le=MAX_BATCH, description="Mean number of running requests while busy."
    )
    completed: int | None = Field(None, ge=0, description="Requests that completed.")
    duration_s: float | None = Field(None, gt=0, le=1e7, description="Wall time of the run.")

    @field_validator(
        "kv_cache_usage_peak",
        "gpu_utilization",
        "memory_busy_fraction",
        "dram_bandwidth_utilization",
        "sm_occupancy",
        mode="before",
    )
    @classmethod
    def _not_percent(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _not_a_percentage(float(value))
        return value

    @property
    def itl_or_tpot_mean_ms(self) -> float | None:
        """Mean ITL, or mean TPOT where ITL was not recorded (equal when each chunk is one token)."""
        return self.itl_mean_ms if self.itl_mean_ms is not None else self.tpot_mean_ms


class Profile(ProfileModel):
    """Everything one profiling run measured, one point per batch size."""

    schema_version: int = Field(PROFILE_SCHEMA_VERSION, ge=1, le=PROFILE_SCHEMA_VERSION)
    model: ModelFacts
    gpu: GPUFacts
    engine: EngineFacts = Field(default_factory=EngineFacts)
    workload: WorkloadShape
    points: list[ProfilePoint] = Field(min_length=1, description="One point per measured batch size.")
    block_size: int = Field(16, ge=1, le=1024, description="vLLM KV-cache block size in tokens.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="--gpu-memory-utilization of the profiled runs."
    )
    kv_capacity_tokens: int | None = Field(
        None,
        ge=1,
        le=1 << 32,
        description="KV-cache capacity of a single instance with the profiled settings, in tokens.",
    )
    non_kv_memory_bytes: int | None = Field(
        None,
        ge=0,
        le=MAX_MEMORY_BYTES,
        description="Memory an instance uses besides the KV cache (weights, activations, CUDA graphs, "
        "CUDA context), as vLLM measured it at start-up.",
    )
    backend: str = Field("vllm", min_length=1, description="What produced it: vllm, simulated, paper.")
    source: str | None = Field(None, description="Where the numbers came from, for people.")
    created_at: datetime | None = None
    key: str | None = Field(None, description="Cache key: a hash of everything that changes the measurement.")
    notes: list[str] = Field(default_factory=list, description="Caveats, e.g. points that failed.")

    @field_validator("points")
    @classmethod
    def _sorted_unique(cls, points: list[ProfilePoint]) -> list[ProfilePoint]:
        batches = [p.max_num_seqs for p in points]
        duplicates = sorted({b for b in batches if batches.count(b) > 1})
        if duplicates:
            raise ValueError(f"each batch size may appear once; repeated max_num_seqs: {duplicates}")
        return sorted(points, key=lambda p: p.max_num_seqs)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < self.block_size:
            raise ValueError("kv_capacity_tokens is smaller than one KV block")
        return self

    def point(self, max_num_seqs: int) -> ProfilePoint | None:
        for p in self.points:
            if p.max_num_seqs == max_num_seqs:
                return p
        return None

    @property
    def batch_sizes(self) -> list[int]:
        return [p.max_num_seqs for p in self.points]

    # JSON in and out --------------------------------------------------------------------------

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent, exclude_none=True)

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        """Parse and validate; raises ProfileError with a readable message."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ProfileError(f"not valid JSON: {err}") from None
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: Any) -> Profile:
        if not isinstance(data, dict):
            raise ProfileError(f"a profile is a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ProfileError(describe_validation_error(err)) from None

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise ProfileError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ProfileError(f"{path}: is a directory, expected a profile JSON file") from None
        except OSError as err:
            raise ProfileError(f"{path}: cannot read: {err.strerror}") from None
        try:
            return cls.from_json(text)
        except ProfileError as err:
            raise ProfileError(f"{path}: {err}") from None


class ProfileError(ValueError):
    """A profile that cannot be read or does not validate; the message says which field and why."""


def describe_validation_error(err: ValidationError, limit: int = 3) -> str:
    """One line per problem (at most `limit`), naming the field path as it appears in the JSON."""
    parts = []
    for item in err.errors()[:limit]:
        location = _location(item.get("loc", ()))
        message = item.get("msg", "invalid")
        message = message.removeprefix("Value error, ")
        if item.get("type") == "too_short" and location == "points":
            message = "a profile needs at least one measured point"
        value = item.get("input")
        shown = ""
        if (
            item.get("type") != "missing"
            and isinstance(value, int | float | str)
            and not isinstance(value, bool)
        ):
            if isinstance(value, float) and not math.isfinite(value):
                shown = f" (got {value})"
            elif len(repr(value)) < 40:
                shown = f" (got {value!r})"
        parts.append(f"{location}: {message}{shown}" if location else f"{message}{shown}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "invalid profile: " + "; ".join(parts)


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
