"""The Recommendation: what the Batching Configuration Advisor decided for one profile, and why.

It carries every figure the operator writes into the LLMDeployment status and every flag a
replica is started with, plus one verdict per measured batch size so a user can see which test
each candidate failed. A performance model may later add ``predicted_*`` fields (tokens/s per GPU
with R replicas, the gain over one replica); they belong beside the measured figures here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmpack.api.llmdeployment import Policy

BOptSource = Literal["advisor", "override", "memory", "scheduler"]


class RecommendationModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class CandidateVerdict(RecommendationModel):
    """One measured batch size and how it fared."""

    max_num_seqs: int = Field(description="The measured batch size (--max-num-seqs).")
    total_tokens_per_s: float = Field(description="Measured prompt + generated tokens per second.")
    itl_mean_ms: float | None = Field(None, description="Measured mean inter-token latency.")
    itl_p99_ms: float | None = Field(None, description="Measured p99 inter-token latency.")
    efficiency: float | None = Field(
        None, description="T(B) / (B x T(B_min)): throughput per sequence relative to the smallest batch."
    )
    preemptions: int = Field(0, description="Requests preempted in this run.")
    kept: bool = Field(description="Whether it passed every test of the policy.")
    chosen: bool = Field(False, description="Whether it is B_opt.")
    reasons: list[str] = Field(
        default_factory=list,
        description="The tests it failed (when not kept) or why it passed (when kept).",
    )


class Recommendation(RecommendationModel):
    """B_opt, the KV cache sized for it, and how many replicas of it share one GPU."""

    model_name: str = Field(description="The model the recommendation is for.")

    # The batch size --------------------------------------------------------------------------
    policy: Policy = Field(description="efficiency (the paper's rule) or plateau.")
    epsilon: float = Field(description="Threshold of the policy.")
    latency_cap_ms: float | None = Field(
        None, description="Cap on mean ITL every kept batch met (None: no latency was measured)."
    )
    latency_cap_source: str = Field(
        "", description="Where the cap came from: the SLO, or L x the ITL at the batch nearest 32."
    )
    itl_p99_cap_ms: float | None = Field(None, description="Cap on p99 ITL (from the SLO), if any.")
    b_min: int | None = Field(None, description="Smallest usable measured batch, the efficiency baseline.")
    b_opt: int = Field(description="The recommended --max-num-seqs.")
    b_opt_source: BOptSource = Field(
        "advisor",
        description="advisor: chosen from the profile; override: fixed by the user; memory: the "
        "largest batch one replica can hold in the memory offered (a MIG slice), below the advisor's; "
        "scheduler: the --max-num-batched-tokens the spec fixes, below the advisor's.",
    )
    candidates: list[CandidateVerdict] = Field(default_factory=list)
    measured_tokens_per_s: float | None = Field(
        None, description="Measured tokens/s of one replica at B_opt (None when B_opt was not measured)."
    )
    measured_itl_mean_ms: float | None = Field(None, description="Measured mean ITL at B_opt.")

    # Memory of one replica -------------------------------------------------------------------
    prompt_tokens: int = Field(description="Prompt tokens per sequence the KV cache is sized for.")
    output_tokens: int = Field(description="Output tokens per sequence the KV cache is sized for.")
    max_model_len: int = Field(description="--max-model-len of each replica.")
    kv_tokens: int = Field(description="Tokens the KV cache holds (a multiple of the block size).")
    kv_cache_bytes: int = Field(description="--kv-cache-memory-bytes of each replica.")
    kv_sizing: str = Field("", description="What sized the KV cache (batch x sequence, measured peak, ...).")
    weight_bytes: int = Field(description="Bytes of the weights.")
    non_kv_memory_bytes: int = Field(
        description="Memory besides the KV cache: weights, activations, CUDA graphs, CUDA context."
    )
    non_kv_memory_source: str = Field("", description="measured (and where) or estimated.")
    per_replica_memory_bytes: int = Field(description="non-KV memory + KV cache of one replica.")

    # Packing on one GPU ----------------------------------------------------------------------
    gpu_product: str = Field(description="GPU the packing is computed for (nvidia.com/gpu.product).")
    gpu_memory_bytes: int = Field(description="The GPU's memory (the capacity in its name).")
    gpu_usable_memory_bytes: int = Field(description="Device total a CUDA process sees.")
    replicas_per_gpu: int = Field(
        description="Replicas of B_opt that share one GPU under MPS: what memory holds, trimmed by the "
        "performance model to where one more still pays (what the operator deploys under MPS)."
    )
    replicas_memory_fit: int = Field(description="Replicas of B_opt that one GPU's memory holds.")
    replicas_limited_by: str = Field(
        "",
        description="memory, max_replicas_per_gpu, MPS client limit, override (fixed by the user), "
        "min_replica_gain or slo (the performance model).",
    )
    packing_reason: str = Field("", description="Why no more replicas share a GPU, in a sentence.")
    slot_bytes: int = Field(description="Memory set aside for each replica on a shared GPU.")
    gpu_memory_utilization: float = Field(
        description="--gpu-memory-utilization of each replica under MPS through a DRA claim (its "
        "memory less a CUDA context's margin, over the GPU's memory: vLLM's start-up check passes)."
    )
    mig_profile: str | None = Field(None, description="Smallest MIG profile that holds one replica.")
    mig_instances_per_gpu: int | None = Field(None, description="How many such slices one GPU holds.")
    mig_gpu_memory_utilization: float | None = Field(
        None, description="--gpu-memory-utilization of a replica alone in that MIG slice."
    )

    # Memory freed ----------------------------------------------------------------------------
    baseline_kv_pool_bytes: int = Field(
        description="KV cache a single vLLM instance with defaults reserves on this GPU."
    )
    kv_in_use_bytes: int = Field(description="KV cache in use at B_opt (measured peak when known).")
    memory_freed_bytes: int = Field(description="baseline_kv_pool_bytes - kv_in_use_bytes (not below 0).")
    memory_freed_fraction: float = Field(description="memory_freed_bytes / the GPU's memory.")

    # What to run -----------------------------------------------------------------------------
    vllm_args: list[str] = Field(description="Flags each vLLM replica is started with.")
    explanation: str = Field(description="Why, in sentences.")
    notes: list[str] = Field(default_factory=list, description="Caveats worth reading.")

    def verdict(self, max_num_seqs: int) -> CandidateVerdict | None:
        for candidate in self.candidates:
            if candidate.max_num_seqs == max_num_seqs:
                return candidate
        return None
