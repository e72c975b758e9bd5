"""What the caller tells the advisor: the policy, its thresholds, the SLO, the workload to size
the KV cache for, and fixed choices that skip parts of the advice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from llmpack.advisor.architectures import find_architecture
from llmpack.api.engine_flags import engine_flags
from llmpack.api.llmdeployment import Policy
from llmpack.hardware import MPS_MAX_CLIENTS

if TYPE_CHECKING:
    from llmpack.api.llmdeployment import LLMDeploymentSpec, SLOSpec


# efficiency: the paper's threshold on T(B)/(B*T(B_min)).
# plateau: accept up to 5% less than the best throughput within the SLO. On the paper's
# measurements this lands on the knee of the curve (e.g. OPT-1.3B: 192, whose throughput is 95.4%
# of the best point within the cap) while the efficiency rule stops earlier (96); a looser value
# such as 0.2 would accept batches well before the plateau, defeating the policy's purpose.
DEFAULT_EPSILON: dict[str, float] = {"efficiency": 0.2, "plateau": 0.05}

DEFAULT_LATENCY_FACTOR = 5.0  # the paper's L
LATENCY_REFERENCE_BATCH = 32  # the cap without an SLO is L x the mean ITL at the batch nearest this


class AdvisorOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    policy: Policy = "efficiency"
    epsilon: float | None = Field(None, gt=0, lt=1, description="Default: 0.2 (efficiency), 0.05 (plateau).")
    slo_itl_mean_ms: float | None = Field(None, gt=0, description="Cap on mean inter-token latency.")
    slo_itl_p99_ms: float | None = Field(None, gt=0, description="Cap on p99 inter-token latency.")
    slo_ttft_p99_ms: float | None = Field(None, gt=0, description="Cap on p99 time to first token.")
    latency_factor: float = Field(DEFAULT_LATENCY_FACTOR, gt=1, description="L of the derived cap.")
    max_replicas_per_gpu: int = Field(8, ge=1, le=MPS_MAX_CLIENTS)
    prompt_tokens: int | None = Field(None, ge=1, description="Default: the profile's workload.")
    output_tokens: int | None = Field(None, ge=1, description="Default: the profile's workload.")
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="Fixed --max-model-len: the KV cache grows to hold one such sequence. Default: the "
        "longest context the model allows that the KV cache sized for B_opt holds.",
    )
    context_limit: int | None = Field(
        None,
        ge=1,
        description="The model's own context limit where the profile records none (e.g. "
        "spec.model.architecture.maxPositionEmbeddings); the profile's, read from config.json, wins.",
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Fixed batch size: skips the choice of B_opt.")
    max_num_batched_tokens: int | None = Field(
        None,
        ge=1,
        description="The scheduler's token budget the spec fixes (--max-num-batched-tokens): vLLM "
        "refuses a --max-num-seqs above it (vllm/config/scheduler.py), so B_opt stays within it.",
    )
    chunked_prefill: bool = Field(
        True,
        description="False where the spec turns chunked prefill off: then --max-model-len stays within "
        "max_num_batched_tokens (vllm/config/scheduler.py).",
    )
    async_scheduling: bool = Field(
        True,
        description="False where the spec turns vLLM's asynchronous scheduling off: one batch in flight "
        "instead of two (sliding-window layers hold the tokens in flight).",
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        description="The largest batch one replica can hold in the memory offered (a MIG slice): "
        "B_opt is lowered to it, and the explanation says so.",
    )
    replicas_per_gpu: int | None = Field(
        None, ge=1, le=MPS_MAX_CLIENTS, description="Fixed replicas per GPU: skips the packing decision."
    )
    min_replica_gain: float = Field(
        0.05,
        ge=0,
        lt=10,
        description="Pack no further when one more replica is predicted to add less than this "
        "fraction of tokens/s per GPU (spec.advisor.minReplicaGain).",
    )

    @property
    def effective_epsilon(self) -> float:
        return self.epsilon if self.epsilon is not None else DEFAULT_EPSILON[self.policy]


def slo_options(slo: SLOSpec) -> dict[str, float | None]:
    """The AdvisorOptions fields of a spec's `slo`: each field `x` becomes `slo_x`, so a field added
    to the SLO reaches the advisor (or fails AdvisorOptions' extra="forbid") without a caller
    naming it. Build options as `AdvisorOptions(..., **slo_options(spec.slo))`."""
    return {f"slo_{name}": getattr(slo, name) for name in type(slo).model_fields}


def options_for_spec(spec: LLMDeploymentSpec) -> AdvisorOptions:
    """The advisor's options for an LLMDeployment: the one mapping the operator, `llmpack plan` and
    `llmpack advise -f` use."""
    advisor = spec.advisor
    known = known_context_limit(spec)
    flags = engine_flags(spec.serving.extra_args)
    return AdvisorOptions(
        policy=advisor.policy,
        epsilon=advisor.epsilon,
        latency_factor=advisor.latency_factor,
        **slo_options(spec.slo),
        max_replicas_per_gpu=spec.sharing.max_replicas_per_gpu,
        prompt_tokens=spec.workload.prompt_tokens,
        output_tokens=spec.workload.output_tokens,
        max_model_len=spec.effective_max_model_len(),
        context_limit=known[0] if known else None,
        max_num_seqs=advisor.max_num_seqs,
        max_batch=None,  # the planner's, where a MIG slice holds less than B_opt
        max_num_batched_tokens=flags.max_num_batched_tokens,
        chunked_prefill=flags.chunked_prefill is not False,
        async_scheduling=flags.async_scheduling,
        replicas_per_gpu=advisor.replicas_per_gpu,
        min_replica_gain=advisor.min_replica_gain,
    )


def known_context_limit(spec: LLMDeploymentSpec) -> tuple[int, str] | None:
    """The longest context the model allows, where the operator knows it before profiling, and
    where that figure comes from: spec.model.architecture.maxPositionEmbeddings, else the built-in
    catalogue. None for other models: the profiler reads their limit from config.json."""
    arch = spec.model.architecture
    if arch is not None and arch.max_position_embeddings is not None:
        return arch.max_position_embeddings, "spec.model.architecture.maxPositionEmbeddings"
    known = find_architecture(spec.model.name)
    if known is not None:
        return (
            known.max_position_embeddings,
            "max_position_embeddings of its config.json, from llmpack's catalogue",
        )
    return None
