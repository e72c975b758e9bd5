"""The `LLMDeployment` custom resource (group llmpack.io, version v1alpha1).

These pydantic models are the single source of truth for the API: the CRD's OpenAPI schema is
generated from them (`llmpack crd`), `kubectl explain` shows their descriptions, and the operator
validates every object it reads with them. Field names are camelCase in YAML, as Kubernetes does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict

from llmpack.api.profile import MAX_MEMORY_BYTES, MAX_TOKENS
from llmpack.api.quantity import Quantity, quantity_value
from llmpack.api.rules import Rule, cel_validations, first_broken

GROUP = "llmpack.io"
VERSION = "v1alpha1"
KIND: Final = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ["llmd"]
# Spelled out, not f"{GROUP}/{VERSION}", so that its type is the literal LLMDeployment.api_version
# has; the assert keeps the two spellings one fact.
API_VERSION: Final = "llmpack.io/v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION

# vLLM's default candidate batch sizes for a sweep: powers of two with the paper's extra points
# between 64 and 512, where the throughput plateau of small models usually starts.
DEFAULT_CANDIDATE_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512]
MPS_MAX_CLIENTS = 48  # NVIDIA MPS client limit on compute capability >= 7.5 (FACTS.md 3.1)
MAX_NUM_SEQS = 4096  # the largest batch (--max-num-seqs) a spec may fix or have profiled
MAX_GPUS = 4096
# Latency objectives beyond these mean nothing for interactive serving; they bound what the
# advisor compares with measured figures.
MAX_ITL_MS = 60_000.0
MAX_TTFT_MS = 3_600_000.0

Phase = Literal["Pending", "Profiling", "Deploying", "Ready", "Degraded", "Failed"]
SharingMode = Literal["auto", "mps", "mig", "exclusive"]
MPSProvider = Literal["dra", "devicePlugin"]
ConditionStatus = Literal["True", "False", "Unknown"]
Policy = Literal["efficiency", "plateau"]
Backend = Literal["vllm", "simulated"]
Sweep = Literal["adaptive", "exhaustive"]
DType = Literal["auto", "float16", "bfloat16", "float32"]

PositiveInt = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1, max_length=253)]
# Object names the pods reference (a Secret): a DNS subdomain, as the API server requires.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
# A label value (nodeSelector values, the GPU product label): up to 63 characters.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
# A label or taint key: an optional DNS-subdomain prefix and a name of up to 63 characters.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
QualifiedName = Annotated[str, Field(min_length=1, max_length=317, pattern=QUALIFIED_NAME)]
# A container image reference: no whitespace (the kubelet would refuse it).
ImageRef = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^\S+$")]


ModelT = TypeVar("ModelT", bound=BaseModel)


def _check(rules: tuple[Rule[ModelT], ...], value: ModelT) -> ModelT:
    broken = first_broken(rules, value)
    if broken is not None:
        raise ValueError(broken)
    return value


def k8s_field_name(name: str) -> str:
    """snake_case -> camelCase, keeping the initialism GPU upper-case as Kubernetes APIs do."""
    camel = to_camel(name)
    return camel[:1] + camel[1:].replace("Gpu", "GPU")


class CamelModel(BaseModel):
    """Base: camelCase aliases, unknown fields refused (a typo in YAML is an error, not a no-op)."""

    # allow_inf_nan: JSON has no infinity or NaN, so the API server can never hold one; a spec read
    # from YAML by `llmpack plan` (.inf, .nan) is refused the same way.
    model_config = ConfigDict(
        alias_generator=k8s_field_name,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
    )

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(CamelModel):
    """A key in a Secret of the LLMDeployment's namespace."""

    name: ObjectName = Field(description="Name of the Secret in the LLMDeployment's namespace.")
    key: str = Field(
        "token",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret. Default: token.",
    )


ARCHITECTURE_RULES: tuple[Rule[Architecture], ...] = (
    Rule(
        cel="has(self.slidingWindow) == has(self.slidingWindowLayers)",
        holds=lambda a: (a.sliding_window is None) == (a.sliding_window_layers is None),
        message="architecture.slidingWindow and slidingWindowLayers go together: give the window and how "
        "many layers keep it (config.json layer_types: sliding_attention), or neither",
    ),
    Rule(
        cel="has(self.attentionChunkSize) == has(self.chunkedAttentionLayers)",
        holds=lambda a: (a.attention_chunk_size is None) == (a.chunked_attention_layers is None),
        message="architecture.attentionChunkSize and chunkedAttentionLayers go together: give the chunk "
        "and how many layers use it, or neither",
    ),
    Rule(
        cel="has(self.stateBytesPerLayer) == has(self.stateLayers)",
        holds=lambda a: (a.state_bytes_per_layer is None) == (a.state_layers is None),
        message="architecture.stateLayers and stateBytesPerLayer go together: give how many layers are "
        "linear attention or Mamba and the bytes of one layer's state per request, or neither",
    ),
    Rule(
        cel="(has(self.slidingWindowLayers) ? self.slidingWindowLayers : 0)"
        " + (has(self.chunkedAttentionLayers) ? self.chunkedAttentionLayers : 0)"
        " + (has(self.stateLayers) ? self.stateLayers : 0) <= self.numLayers",
        holds=lambda a: a.special_layers <= a.num_layers,
        message="architecture: slidingWindowLayers + chunkedAttentionLayers + stateLayers exceed numLayers; "
        "each layer is of one kind",
    ),
    Rule(
        cel="!has(self.stateLayers) || self.stateLayers < self.numLayers",
        holds=lambda a: a.state_layers is None or a.state_layers < a.num_layers,
        message="architecture.stateLayers must leave at least one attention layer (llmpack sizes "
        "models with a KV cache)",
    ),
)


class Architecture(CamelModel):
    """Model shape, for models the operator cannot look up in its built-in catalogue."""

    model_config = ConfigDict(json_schema_extra=cel_validations(ARCHITECTURE_RULES))

    num_layers: PositiveInt = Field(
        le=1024, description="Transformer layers (config.json num_hidden_layers)."
    )
    num_kv_heads: PositiveInt = Field(
        le=1024,
        description="Key/value attention heads (num_key_value_heads; equals the attention heads "
        "without grouped-query attention).",
    )
    head_dim: PositiveInt = Field(
        le=4096,
        description="Dimension of one KV head as vLLM reads it: config.json's head_dim where the config "
        "sets it (Qwen3 sets 128 where hidden_size / heads is 64), else hidden_size / "
        "num_attention_heads. Models with latent attention (DeepSeek-V2/V3: kv_lora_rank) need no "
        "architecture here: profile them with the vllm backend, which reads their config.",
    )
    parameter_bytes: PositiveInt = Field(
        le=MAX_MEMORY_BYTES,
        description="Bytes of the weights as served (parameters x bytes per parameter of the dtype).",
    )
    max_position_embeddings: PositiveInt | None = Field(
        None,
        le=MAX_TOKENS,
        description="Longest sequence the model supports (config.json max_position_embeddings, "
        "times a linear or dynamic RoPE scaling factor, as vLLM reads it). The operator refuses "
        "a longer model.maxModelLen or workload before profiling, and caps the default context at it.",
    )
    sliding_window: PositiveInt | None = Field(
        None,
        le=MAX_TOKENS,
        description="Tokens a sliding-window layer attends to (config.json sliding_window); vLLM keeps "
        "only those in its KV cache. With slidingWindowLayers.",
    )
    sliding_window_layers: PositiveInt | None = Field(
        None, le=1024, description="Layers with the sliding window (layer_types: sliding_attention)."
    )
    attention_chunk_size: PositiveInt | None = Field(
        None,
        le=MAX_TOKENS,
        description="Chunk of chunked local attention (Llama-4 attention_chunk_size). With "
        "chunkedAttentionLayers.",
    )
    chunked_attention_layers: PositiveInt | None = Field(
        None, le=1024, description="Layers with chunked local attention (those with RoPE in Llama-4)."
    )
    state_layers: PositiveInt | None = Field(
        None,
        le=1024,
        description="Linear-attention or Mamba layers (layer_types: linear_attention, mamba): a fixed "
        "state per request instead of a KV cache. With stateBytesPerLayer. The other layers count "
        "as full attention.",
    )
    state_bytes_per_layer: PositiveInt | None = Field(
        None,
        le=1 << 34,
        description="Bytes of one such layer's state for one request (vLLM's MambaSpec page: the "
        "convolution and recurrent states).",
    )

    @property
    def special_layers(self) -> int:
        return (
            (self.sliding_window_layers or 0)
            + (self.chunked_attention_layers or 0)
            + (self.state_layers or 0)
        )

    def layout_args(self) -> list[str]:
        """The profiler's flags for the layers that keep less than the whole context."""
        args: list[str] = []
        for flag, value in (
            ("--sliding-window", self.sliding_window),
            ("--sliding-window-layers", self.sliding_window_layers),
            ("--attention-chunk-size", self.attention_chunk_size),
            ("--chunked-attention-layers", self.chunked_attention_layers),
            ("--state-layers", self.state_layers),
            ("--state-bytes-per-layer", self.state_bytes_per_layer),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args

    @model_validator(mode="after")
    def _rules(self) -> Architecture:
        return _check(ARCHITECTURE_RULES, self)


# The model's name and revision reach vLLM's command line (`vllm serve NAME --revision REV`): one
# that starts with "-" would be read as a flag.
MODEL_RULES: tuple[Rule[ModelSpec], ...] = (
    Rule(
        cel="!self.name.startsWith('-')",
        holds=lambda m: not m.name.startswith("-"),
        message="model.name must not start with '-' (vLLM would read it as a flag): give the Hugging "
        "Face id (org/name) or the model's path (./-name for a relative one)",
    ),
    Rule(
        cel="!has(self.revision) || !self.revision.startsWith('-')",
        holds=lambda m: m.revision is None or not m.revision.startswith("-"),
        message="model.revision must not start with '-' (vLLM would read it as a flag): give a branch, "
        "tag or commit",
    ),
)


# A cache is one of two kinds: a claim the operator makes and fills in the LLMDeployment's
# namespace (size), or a claim the cluster admin filled and shares (claimName).
MODEL_CACHE_RULES: tuple[Rule[ModelCacheSpec], ...] = (
    Rule(
        cel="has(self.size) != has(self.claimName)",
        holds=lambda c: (c.size is None) != (c.claim_name is None),
        message="model.cache takes one of size (the operator makes a claim of that size in this "
        "namespace and fills it) or claimName (a claim the cluster admin filled and shares with this "
        "namespace)",
    ),
    Rule(
        cel="!has(self.claimName) || (!has(self.storageClassName) && !has(self.accessMode))",
        holds=lambda c: c.claim_name is None or (c.storage_class_name is None and c.access_mode is None),
        message="model.cache.storageClassName and accessMode are for a claim the operator makes "
        "(size); the claim of claimName already has its own: remove them",
    ),
)


class ModelCacheSpec(CamelModel):
    """Where the model's files are cached, so that the profiling Job and every serving pod mount
    them read-only and load offline instead of downloading the model at every start: a
    PersistentVolumeClaim the operator makes and fills once (a Job running `llmpack
    fill-model-cache`), or one the cluster admin filled and shares with the namespace, which the
    operator checks (`llmpack fill-model-cache --verify-only`) and never writes or deletes."""

    model_config = ConfigDict(json_schema_extra=cel_validations(MODEL_CACHE_RULES))

    size: Quantity | None = Field(
        None,
        description="Storage to claim: room for the weights as published (safetensors; twice the bytes "
        "on the GPU where the engine quantizes at load), e.g. 20Gi for a 7B model in bf16. The "
        "operator makes the claim in this namespace and fills it. One of size and claimName.",
    )
    claim_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="An existing PersistentVolumeClaim of this namespace holding the model, filled by "
        "`llmpack fill-model-cache` (the cluster admin's shared cache: one volume bound into several "
        "namespaces). Checked against the record the fill left before anything loads from it; a gated "
        "or private model also needs hfTokenSecretRef, with a token the Hub lets read it. Never "
        "written or deleted by the operator. One of size and claimName.",
    )
    storage_class_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="With size: StorageClass of the claim. Default: the cluster's default StorageClass.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] | None = Field(
        None,
        description="With size: ReadWriteMany (the default) lets pods on every node mount the cache; "
        "with ReadWriteOnce every pod that mounts it must run on the one node the volume attaches to.",
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelCacheSpec:
        return _check(MODEL_CACHE_RULES, self)


class ModelSpec(CamelModel):
    model_config = ConfigDict(json_schema_extra=cel_validations(MODEL_RULES))

    name: Name = Field(
        description="Hugging Face model id (e.g. facebook/opt-1.3b) or a local path in the image; "
        "must not start with '-'."
    )
    revision: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Model revision (branch, tag or commit) to serve; must not start with '-'.",
    )
    dtype: DType = Field(
        "auto", description="Weight and KV-cache dtype passed to vLLM --dtype. auto: the model's own."
    )
    max_model_len: PositiveInt | None = Field(
        None,
        le=MAX_TOKENS,
        description="Longest prompt + output one request may have, in tokens (vLLM --max-model-len); "
        "at most what the model allows (its config.json's max_position_embeddings, read as vLLM "
        "does): a longer one is refused before profiling where the operator knows the model's "
        "limit, else by the profiler. Default: the longest context the model allows that one "
        "replica's KV cache holds; that cache is sized for B_opt typical requests (workload), so "
        "the default never enlarges it (status.recommendation.maxModelLen and its explanation say "
        "the value). Set it to reserve KV cache for one request this long on top.",
    )
    architecture: Architecture | None = Field(
        None, description="Shape of the model when it is not in the operator's built-in catalogue."
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding a Hugging Face token, for gated models."
    )
    cache: ModelCacheSpec | None = Field(
        None,
        description="Load the model from a PersistentVolumeClaim of this namespace that the profiling "
        "Job and the serving pods mount read-only (HF_HUB_OFFLINE): one the operator fills once "
        "(size), or one the cluster admin filled and shares (claimName). Default: each pod downloads "
        "the model into its own scratch volume at every start.",
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelSpec:
        return _check(MODEL_RULES, self)


class WorkloadSpec(CamelModel):
    """The typical request: the KV-cache budget and the profile depend on it."""

    prompt_tokens: PositiveInt = Field(256, le=1_048_576, description="Typical prompt length in tokens.")
    output_tokens: PositiveInt = Field(256, le=1_048_576, description="Typical output length in tokens.")


class SLOSpec(CamelModel):
    """Latency objectives, each bounding one figure the profile measures at every batch size (with
    B requests in flight). A batch size whose measured figure exceeds an objective, or that lacks
    the figure, is never chosen; a spec no measured batch size meets is refused (AdvisorRefused)
    with the best value measured. Every field here must have its objective in
    llmpack.advisor.bca.OBJECTIVES (a unit test checks)."""

    itl_mean_ms: float | None = Field(
        None,
        gt=0,
        le=MAX_ITL_MS,
        description="Upper bound on mean inter-token latency, in milliseconds. Replaces the "
        "derived latency cap (advisor.latencyFactor).",
    )
    itl_p99_ms: float | None = Field(
        None, gt=0, le=MAX_ITL_MS, description="Upper bound on p99 inter-token latency, in milliseconds."
    )
    ttft_p99_ms: float | None = Field(
        None,
        gt=0,
        le=MAX_TTFT_MS,
        description="Upper bound on p99 time to first token, in milliseconds, as the profile "
        "measures it (as many requests in flight as the batch size).",
    )


class AdvisorSpec(CamelModel):
    """How the Batching Configuration Advisor picks the batch size (arXiv 2503.08311)."""

    policy: Policy = Field(
        "efficiency",
        description="efficiency: the paper's rule, the largest batch whose per-sequence efficiency "
        "T(B)/(B*T(1)) stays above epsilon within the latency cap. plateau: the smallest batch "
        "reaching (1-epsilon) of the best throughput within the SLO.",
    )
    epsilon: float | None = Field(
        None, gt=0, lt=1, description="Threshold of the policy. Default: 0.2 (efficiency), 0.05 (plateau)."
    )
    latency_factor: float = Field(
        5.0,
        gt=1,
        le=1000,
        description="Without an SLO, the latency cap is this factor times the mean ITL measured at "
        "the batch size nearest 32.",
    )
    candidate_batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_NUM_SEQS)]] = Field(
        default_factory=lambda: list(DEFAULT_CANDIDATE_BATCH_SIZES),
        min_length=1,
        max_length=64,
        description="Values of --max-num-seqs the profiler may measure.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    min_replica_gain: float = Field(
        0.05,
        ge=0,
        lt=10,
        description="Stop adding replicas to a GPU when one more is predicted to add less than this "
        "fraction of tokens/s.",
    )
    max_num_seqs: PositiveInt | None = Field(
        None, le=MAX_NUM_SEQS, description="Fixed --max-num-seqs: skips the advisor's choice of batch size."
    )
    replicas_per_gpu: PositiveInt | None = Field(
        None, le=MPS_MAX_CLIENTS, description="Fixed replicas per GPU: skips the packing decision."
    )

    @field_validator("candidate_batch_sizes")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        return sorted(set(value))


SHARING_RULES: tuple[Rule[SharingSpec], ...] = (
    Rule(
        cel="!has(self.migProfile) || self.mode == 'mig' || self.mode == 'auto'",
        holds=lambda s: not s.mig_profile or s.mode in ("mig", "auto"),
        message="migProfile applies only to mode mig (or auto); remove it or set mode: mig",
    ),
)


class SharingSpec(CamelModel):
    """How replicas share a GPU."""

    model_config = ConfigDict(json_schema_extra=cel_validations(SHARING_RULES))

    mode: SharingMode = Field(
        "auto",
        description="auto: pick among what the cluster offers by predicted tokens/s per GPU. "
        "mps: several replicas per GPU under NVIDIA MPS. mig: one replica per MIG slice. "
        "exclusive: one replica per whole GPU with vLLM defaults (the baseline).",
    )
    mps_provider: MPSProvider = Field(
        "dra",
        description="dra: one pod per GPU whose replicas share a DRA ResourceClaim configured for "
        "MPS (NVIDIA DRA driver). devicePlugin: one pod per replica on nodes whose device plugin "
        "shares GPUs with MPS (label nvidia.com/gpu.sharing-strategy=mps).",
    )
    max_replicas_per_gpu: PositiveInt = Field(
        8, le=MPS_MAX_CLIENTS, description="Upper bound on replicas packed onto one GPU."
    )
    mig_profile: str | None = Field(
        None,
        max_length=16,
        pattern=r"^[1-7]g\.[0-9]{1,4}gb(\.me)?$",
        description="Force a MIG profile (e.g. 1g.10gb) instead of the smallest that holds a replica.",
    )

    @model_validator(mode="after")
    def _rules(self) -> SharingSpec:
        return _check(SHARING_RULES, self)

    @property
    def forced_mig_profile(self) -> str | None:
        """The MIG profile the spec fixes (mode mig with migProfile), which the profile measures."""
        return self.mig_profile if self.mode == "mig" else None

    @property
    def requested(self) -> str:
        """The mode asked for, in words: e.g. "mps (dra)"."""
        return self.mode + (f" ({self.mps_provider})" if self.mode == "mps" else "")


# What the API server checks in a pod's tolerations, checked here at admission instead of when
# the operator's Deployment or Job is refused.
TOLERATION_RULES: tuple[Rule[Toleration], ...] = (
    Rule(
        cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        holds=lambda t: t.operator != "Exists" or not t.value,
        message="a toleration with operator Exists matches any value: remove gpu.tolerations[].value",
    ),
    Rule(
        cel="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        holds=lambda t: bool(t.key) or t.operator == "Exists",
        message="a toleration without a key must have operator Exists: set gpu.tolerations[].key or "
        "operator Exists",
    ),
    Rule(
        cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        holds=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        message="tolerationSeconds applies only to effect NoExecute: set gpu.tolerations[].effect "
        "NoExecute or remove tolerationSeconds",
    ),
)


class Toleration(CamelModel):
    model_config = ConfigDict(json_schema_extra=cel_validations(TOLERATION_RULES))

    key: QualifiedName | None = Field(None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal.")
    value: LabelValue | None = Field(None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        None,
        ge=0,
        le=31_536_000,
        description="How long a NoExecute taint is tolerated, in seconds (at most a year).",
    )

    @model_validator(mode="after")
    def _rules(self) -> Toleration:
        return _check(TOLERATION_RULES, self)


def _bad_label_keys(selector: dict[str, str]) -> list[str]:
    return [k for k in selector if len(k) > 317 or not re.match(QUALIFIED_NAME, k)]


GPU_RULES: tuple[Rule[GPUSpec], ...] = (
    Rule(
        cel="!has(self.nodeSelector) || self.nodeSelector.all(k, size(k) <= 317 "
        f"&& k.matches(r'{QUALIFIED_NAME}'))",
        holds=lambda g: not _bad_label_keys(g.node_selector),
        culprit=lambda g: ", ".join(_bad_label_keys(g.node_selector)),
        message="gpu.nodeSelector keys must be label keys: an optional DNS prefix and '/', then up to "
        "63 letters, digits, '-', '_' or '.'",
    ),
)


class GPUSpec(CamelModel):
    model_config = ConfigDict(json_schema_extra=cel_validations(GPU_RULES))

    product: LabelValue = Field(
        "NVIDIA-H100-80GB-HBM3",
        min_length=1,
        description="GPU product as in the node label nvidia.com/gpu.product "
        "(set by NVIDIA GPU Feature Discovery), e.g. NVIDIA-H100-80GB-HBM3.",
    )
    count: PositiveInt = Field(1, le=MAX_GPUS, description="How many GPUs to serve the model on.")
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra node labels the serving and profiling pods require (label keys and values).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Tolerations for the serving and profiling pods."
    )

    @model_validator(mode="after")
    def _rules(self) -> GPUSpec:
        return _check(GPU_RULES, self)


class HPAScalingPolicy(TypedDict):
    """One autoscaling/v2 HPAScalingPolicy."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    type: Annotated[Literal["Pods", "Percent"], Field(description="Pods or Percent.")]
    value: Annotated[int, Field(ge=1, le=100_000, description="Pods, or percent of the current ones.")]
    periodSeconds: Annotated[int, Field(ge=1, le=1800, description="Window the policy holds for.")]


class HPAScalingRules(TypedDict, total=False):
    """One autoscaling/v2 HPAScalingRules (scaleUp or scaleDown), with the API server's bounds."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    stabilizationWindowSeconds: Annotated[
        int, Field(ge=0, le=3600, description="Past recommendations considered, in seconds.")
    ]
    selectPolicy: Annotated[
        Literal["Max", "Min", "Disabled"], Field(description="Which policy wins; Disabled: no scaling.")
    ]
    policies: Annotated[
        list[HPAScalingPolicy], Field(max_length=16, description="How fast the GPU count may change.")
    ]
    tolerance: Annotated[Quantity, Field(description="Ratio of metric to target that causes no change.")]


class HPABehavior(TypedDict, total=False):
    """autoscaling/v2 HorizontalPodAutoscalerBehavior."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    scaleUp: HPAScalingRules
    scaleDown: HPAScalingRules


# As ResourcesField below: a plain mapping to the planner and the renderer.
if TYPE_CHECKING:
    BehaviorField = dict[str, Any]
else:
    BehaviorField = HPABehavior


class AutoscalingSpec(CamelModel):
    """Scale the number of GPUs on load: the operator renders an autoscaling/v2
    HorizontalPodAutoscaler that drives this LLMDeployment's scale subresource (spec.gpu.count)."""

    min_gpus: PositiveInt = Field(1, le=MAX_GPUS, description="Fewest GPUs to serve on.")
    max_gpus: PositiveInt = Field(description="Most GPUs to serve on.", le=MAX_GPUS)
    target_utilization: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Fraction of the advised concurrency (B_opt x the replicas on one GPU) that the "
        "requests running plus waiting per GPU should average; above it the autoscaler adds GPUs, "
        "below it removes them.",
    )
    behavior: BehaviorField | None = Field(
        None,
        description="The HorizontalPodAutoscaler's spec.behavior (autoscaling/v2: scaleUp and "
        "scaleDown policies, stabilization windows, tolerance), passed through as written.",
    )


class ProfilingSpec(CamelModel):
    backend: Backend = Field(
        "vllm",
        description="vllm: measure the model with vLLM on the GPU. simulated: derive the profile from "
        "the performance model (no GPU work; for tests and dry runs).",
    )
    image: ImageRef | None = Field(
        None, description="Profiler image. Default: the operator's configured one."
    )
    sweep: Sweep = Field(
        "adaptive",
        description="adaptive: double the batch until the advisor's stop test holds, then refine. "
        "exhaustive: measure every candidate batch size.",
    )
    timeout_seconds: PositiveInt = Field(
        3600, le=86_400, description="Deadline of the profiling Job (activeDeadlineSeconds)."
    )
    backoff_limit: int = Field(2, ge=0, le=10, description="Retries of a failed profiling pod.")
    reuse_cached_profile: bool = Field(
        True, description="Reuse a cached profile measured with the same model, GPU, engine and workload."
    )


class KeyRef(CamelModel):
    name: ObjectName = Field(description="Name of the object in the LLMDeployment's namespace.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in it.")
    optional: bool | None = Field(None, description="Whether the object or its key may be missing.")


class FieldRef(CamelModel):
    field_path: str = Field(min_length=1, max_length=256, description="Field of the pod, e.g. metadata.name.")
    api_version: str | None = Field(None, max_length=64, description="Version of that field path's schema.")


class ResourceFieldRef(CamelModel):
    resource: str = Field(min_length=1, max_length=64, description="e.g. limits.memory.")
    container_name: str | None = Field(None, max_length=63, description="Container whose resource to read.")
    divisor: Quantity | None = Field(None, description="Unit the value is given in (default 1).")


ENV_SOURCE_RULES: tuple[Rule[EnvVarSource], ...] = (
    Rule(
        cel="[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), "
        "has(self.resourceFieldRef)].filter(x, x).size() == 1",
        holds=lambda v: (
            sum(
                x is not None
                for x in (v.secret_key_ref, v.config_map_key_ref, v.field_ref, v.resource_field_ref)
            )
            == 1
        ),
        message="serving.env[].valueFrom names one source: set exactly one of secretKeyRef, "
        "configMapKeyRef, fieldRef or resourceFieldRef",
    ),
)


class EnvVarSource(CamelModel):
    """Where a variable's value comes from (a container's env[].valueFrom)."""

    model_config = ConfigDict(json_schema_extra=cel_validations(ENV_SOURCE_RULES))

    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(None, description="A field of the pod.")
    resource_field_ref: ResourceFieldRef | None = Field(None, description="A resource of a container.")

    @model_validator(mode="after")
    def _rules(self) -> EnvVarSource:
        return _check(ENV_SOURCE_RULES, self)


ENV_RULES: tuple[Rule[EnvVar], ...] = (
    Rule(
        cel="!has(self.value) || self.value == '' || !has(self.valueFrom)",
        holds=lambda e: not e.value or e.value_from is None,
        message="serving.env[] sets value or valueFrom, not both: remove one",
    ),
)


class EnvVar(CamelModel):
    model_config = ConfigDict(json_schema_extra=cel_validations(ENV_RULES))

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[!-<>-~]+$",
        description="Environment variable name (printable ASCII, no '=' or space).",
    )
    value: str | None = Field(None, max_length=32_768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        None, description="Source of the value (as in a container's env[].valueFrom)."
    )

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        return _check(ENV_RULES, self)


# Flags the operator renders from its decision or that would take the replica away from where the
# operator (and the launcher, FLAGS_OWNED_BY_LAUNCHER) puts it, mapped to the flag vLLM reads them
# as. vLLM 0.32's parser (`vllm serve --help`; tests/engine/test_vllm_args.py) has no short alias
# for any of them; --device-memory-utilization is its alias of --gpu-memory-utilization.
OWNED_FLAGS = {
    "--max-num-seqs": "--max-num-seqs",
    "--kv-cache-memory-bytes": "--kv-cache-memory-bytes",
    "--gpu-memory-utilization": "--gpu-memory-utilization",
    "--device-memory-utilization": "--gpu-memory-utilization",
    "--max-model-len": "--max-model-len",
    "--model": "--model",
    "--port": "--port",
    "--host": "--host",
    "--uds": "--uds",
}
OWNED_FLAGS_TEXT = ", ".join(OWNED_FLAGS)


def owned_flag(arg: str) -> str | None:
    """The operator's flag that `arg` would set in vLLM's parser, or None. vLLM's parser reads
    `--max_num_seqs` as `--max-num-seqs` (underscores become dashes) and, like argparse, any
    unambiguous prefix of a flag as the flag (`--kv-cache-memory`), so both count; so do
    `--flag value` and `--flag=value`. OWNED_FLAGS_CEL is the same test for the API server."""
    if not arg.startswith("--"):
        return None
    name = arg.split("=", 1)[0].replace("_", "-")
    if len(name) <= 2:
        return None
    for flag, target in OWNED_FLAGS.items():
        if flag.startswith(name):
            return target
    return None


def _owned_in(extra_args: list[str]) -> list[str]:
    found = []
    for arg in extra_args:
        target = owned_flag(arg)
        if target is not None:
            given = arg.split("=", 1)[0]
            found.append(given if given == target else f"{given}, which vLLM reads as {target}")
    return found


OWNED_FLAGS_CEL = (
    "!has(self.extraArgs) || self.extraArgs.all(a, !a.startsWith('--') || size(a.split('=')[0]) <= 2"
    f" || ![{', '.join(repr(f) for f in OWNED_FLAGS)}]"
    ".exists(f, f.startsWith(a.split('=')[0].replace('_', '-'))))"
)

# The GPUs a container sees are the device plugin's or the DRA driver's business: these variables
# would widen it beyond what MIG, MPS or a claim allocated (FACTS.md 3.1, 3.2).
RESERVED_ENV_PREFIXES = ("NVIDIA_", "CUDA_MPS_", "CUDA_VISIBLE_DEVICES")
RESERVED_ENV_TEXT = ", ".join(p + "*" if p.endswith("_") else p for p in RESERVED_ENV_PREFIXES[:-1])
RESERVED_ENV_TEXT += f" or {RESERVED_ENV_PREFIXES[-1]}"

# The container resources a spec may set (GPUs are the plan's); the CEL below spells
# ephemeral-storage as CEL escapes it.
RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")


def _cel_field(name: str) -> str:
    return name.replace("-", "__dash__")


def _requests_over_limits(resources: Mapping[str, Any] | None) -> list[str]:
    requests, limits = (resources or {}).get("requests") or {}, (resources or {}).get("limits") or {}
    return [
        f"{name} {requests[name]} > {limits[name]}"
        for name in RESOURCE_NAMES
        if name in requests
        and name in limits
        and quantity_value(requests[name]) > quantity_value(limits[name])
    ]


# Flags and variables that carry a secret: container args and literal env values are readable by
# anyone who can `get` the pod (the built-in `view` role), so the key comes from a Secret instead.
# vLLM reads the same key from VLLM_API_KEY (vllm/envs.py; entrypoints/serve/middleware/register.py).
SECRET_FLAGS = ("--api-key",)
SECRET_ENV = "VLLM_API_KEY"


def _secret_flags_in(extra_args: list[str]) -> list[str]:
    """Items of `extra_args` vLLM's parser would read as a SECRET_FLAGS flag (any spelling, as
    owned_flag: underscores, `=value`, an unambiguous prefix)."""
    found = []
    for arg in extra_args:
        name = arg.split("=", 1)[0].replace("_", "-")
        if (
            arg.startswith("--")
            and len(name) > len("--api")
            and any(f.startswith(name) for f in SECRET_FLAGS)
        ):
            found.append(arg.split("=", 1)[0])
    return found


SERVING_RULES: tuple[Rule[ServingSpec], ...] = (
    Rule(
        cel="!has(self.env) || self.env.all(e, "
        + " && ".join(f"!e.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
        + ")",
        holds=lambda s: not any(e.name.startswith(RESERVED_ENV_PREFIXES) for e in s.env),
        culprit=lambda s: ", ".join(e.name for e in s.env if e.name.startswith(RESERVED_ENV_PREFIXES)),
        message=f"serving.env must not set {RESERVED_ENV_TEXT}: the GPUs a replica sees come from its "
        "MIG slice, MPS share or claim",
    ),
    Rule(
        cel=OWNED_FLAGS_CEL,
        holds=lambda s: not _owned_in(s.extra_args),
        culprit=lambda s: "; ".join(_owned_in(s.extra_args)),
        message=f"serving.extraArgs must not set a flag the operator owns: {OWNED_FLAGS_TEXT}, as "
        "--flag value, --flag=value, with underscores or abbreviated (use advisor.maxNumSeqs, "
        "model.maxModelLen, model.name or serving.port instead)",
    ),
    Rule(
        cel="!has(self.resources) || !has(self.resources.requests) || !has(self.resources.limits) || ("
        + " && ".join(
            f"(!has(self.resources.requests.{_cel_field(n)}) || !has(self.resources.limits.{_cel_field(n)})"
            f" || quantity(string(self.resources.requests.{_cel_field(n)}))"
            f".compareTo(quantity(string(self.resources.limits.{_cel_field(n)}))) <= 0)"
            for n in RESOURCE_NAMES
        )
        + ")",
        holds=lambda s: not _requests_over_limits(s.resources),
        culprit=lambda s: ", ".join(_requests_over_limits(s.resources)),
        message="serving.resources.requests must not exceed serving.resources.limits: lower the request "
        "or raise the limit",
    ),
    Rule(
        cel="!has(self.extraArgs) || self.extraArgs.all(a, !a.startsWith('--')"
        " || size(a.split('=')[0]) <= 5"
        f" || ![{', '.join(repr(f) for f in SECRET_FLAGS)}]"
        ".exists(f, f.startsWith(a.split('=')[0].replace('_', '-'))))",
        holds=lambda s: not _secret_flags_in(s.extra_args),
        culprit=lambda s: ", ".join(_secret_flags_in(s.extra_args)),
        message="serving.extraArgs must not carry --api-key: container arguments are readable by "
        "anyone who can view the pods; put the key in a Secret and name it in serving.apiKeySecretRef",
    ),
    Rule(
        cel=f"!has(self.env) || self.env.all(e, e.name != '{SECRET_ENV}' || !has(e.value))",
        holds=lambda s: not any(e.name == SECRET_ENV and e.value is not None for e in s.env),
        message=f"serving.env must not set {SECRET_ENV} as a literal value: put the key in a Secret and "
        "name it in serving.apiKeySecretRef",
    ),
)

ResourceList = TypedDict(
    "ResourceList",
    {
        "cpu": Annotated[Quantity, Field(description="CPU cores, e.g. 4 or 500m.")],
        "memory": Annotated[Quantity, Field(description="Memory in bytes, e.g. 16Gi.")],
        "ephemeral-storage": Annotated[Quantity, Field(description="Local scratch space in bytes.")],
    },
    total=False,
)
ResourceList.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]


class ContainerResources(TypedDict, total=False):
    """Requests and limits of cpu, memory and ephemeral-storage (GPUs are set by the operator)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    requests: Annotated[ResourceList, Field(description="What the scheduler reserves.")]
    limits: Annotated[ResourceList, Field(description="What the container may use at most.")]


# The planner and the renderer pass these on as plain mappings (a TypedDict is a dict at run time);
# to the type checker they are what those layers declare.
if TYPE_CHECKING:
    ResourcesField = dict[str, Any]
else:
    ResourcesField = ContainerResources


# An InferencePool routes to at most this many ports of a pod (inference.networking.k8s.io/v1,
# spec.targetPorts maxItems, gateway-api-inference-extension v1.6.2).
INFERENCE_POOL_MAX_TARGET_PORTS = 8


class EndpointPickerRef(CamelModel):
    """The endpoint picker (a Service) an InferencePool hands each request to."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Name of the picker's Service, in the LLMDeployment's namespace.",
    )
    port: int = Field(9002, ge=1, le=65535, description="The picker's gRPC (ext-proc) port on that Service.")
    failure_mode: Literal["FailClose", "FailOpen"] = Field(
        "FailClose",
        description="What the Gateway does when the picker does not answer: FailClose refuses the "
        "request, FailOpen sends it to an endpoint of its own choice.",
    )


class InferencePoolSpec(CamelModel):
    endpoint_picker_ref: EndpointPickerRef | None = Field(
        None,
        description="The endpoint picker of the pool. Default: the one the cluster admin named "
        "(chart value inferencePool.endpointPicker).",
    )


class ServingSpec(CamelModel):
    model_config = ConfigDict(json_schema_extra=cel_validations(SERVING_RULES))

    image: ImageRef | None = Field(None, description="Serving image. Default: the operator's configured one.")
    extra_args: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list,
        max_length=128,
        description="Extra vLLM arguments for every replica. The operator owns "
        f"{OWNED_FLAGS_TEXT} (refused in any spelling vLLM reads). Every flag "
        "here except the API server's own (--served-model-name, --chat-template, logging, "
        "TLS, tool parsers...) also reaches the profiling run and its cache key, because it changes "
        "the engine that is measured (--kv-cache-dtype, --quantization, --enforce-eager, --block-size, "
        "--enable-prefix-caching, --max-num-batched-tokens...).",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment of the vLLM containers."
    )
    resources: ResourcesField | None = Field(
        None,
        description="CPU, memory and ephemeral-storage requests/limits of each vLLM container, as "
        "Kubernetes quantities (GPU resources are set by the operator).",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret holding the API key every replica requires (vLLM's VLLM_API_KEY: "
        "requests to /v1 without `Authorization: Bearer <key>` get 401; /health and /metrics stay "
        "open for probes and Prometheus). The key never appears in a rendered object.",
    )
    port: int = Field(
        8000,
        ge=1024,
        le=65000,
        description="Port of the Service in front of the replicas. Replicas sharing a pod listen on "
        "the ports right above it, hence the upper bound.",
    )
    inference_pool: InferencePoolSpec | None = Field(
        None,
        description="Also render a Gateway API InferencePool (inference.networking.k8s.io/v1) over "
        "the serving pods, one endpoint per vLLM replica (each replica port of a pod that packs "
        "several), for a Gateway whose endpoint picker routes by KV cache and load. The Service and "
        "the in-pod router stay. Needs the Gateway API Inference Extension's CRDs in the cluster.",
    )

    @model_validator(mode="after")
    def _rules(self) -> ServingSpec:
        return _check(SERVING_RULES, self)

    def engine_args(self) -> list[str]:
        """extra_args without the API server's own flags: what changes the engine a profile measures."""
        return engine_args(self.extra_args)


# Flags of vLLM's OpenAI API server (vllm/entrypoints/openai/cli_args.py, 0.32) that change what
# the server answers but not the engine behind it: left out of profiling and its cache key. Any
# other flag is taken to change the engine, so a flag missing here costs a profile, never a wrong one.
SERVER_ONLY_FLAGS = frozenset(
    {
        "--served-model-name",
        "--api-key",
        "--chat-template",
        "--chat-template-content-format",
        "--response-role",
        "--enable-log-requests",
        "--no-enable-log-requests",
        "--enable-log-outputs",
        "--disable-log-stats",
        "--uvicorn-log-level",
        "--disable-uvicorn-access-log",
        "--allowed-origins",
        "--allowed-methods",
        "--allowed-headers",
        "--allow-credentials",
        "--root-path",
        "--middleware",
        "--ssl-keyfile",
        "--ssl-certfile",
        "--ssl-ca-certs",
        "--ssl-cert-reqs",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "--tool-parser-plugin",
        "--reasoning-parser",
        "--max-log-len",
        "--enable-prompt-tokens-details",
        "--enable-server-load-tracking",
        "--enable-force-include-usage",
        "--return-tokens-as-token-ids",
        "--disable-fastapi-docs",
    }
)


def _is_flag(arg: str) -> bool:
    """Whether vLLM's parser reads `arg` as an option (`--flag`, `-O0`, `-tp`), not as a value: as
    argparse does, a negative number is a value (vLLM has no option that looks like one)."""
    return arg.startswith("-") and arg != "-" and not re.match(r"^-\d+$|^-\d*\.\d+$", arg)


def engine_args(extra_args: list[str]) -> list[str]:
    """`extra_args` without SERVER_ONLY_FLAGS and their values (a value is the next item when it
    is not an option; `--flag=value` is one item). A short option (`-O0`, `-tp 2`) is never a
    server-only flag's value: it reaches the profile and its key."""
    kept: list[str] = []
    skipping = False
    for arg in extra_args:
        if _is_flag(arg):
            skipping = arg.split("=", 1)[0].replace("_", "-") in SERVER_ONLY_FLAGS
            if not skipping:
                kept.append(arg)
        elif not skipping:
            kept.append(arg)
    return kept


DEFAULT_WORKLOAD = (
    WorkloadSpec.model_fields["prompt_tokens"].default,
    WorkloadSpec.model_fields["output_tokens"].default,
)
SPEC_RULES: tuple[Rule[LLMDeploymentSpec], ...] = (
    Rule(
        cel="!has(self.advisor) || !has(self.advisor.replicasPerGPU) || !has(self.sharing)"
        " || self.sharing.mode != 'exclusive' || self.advisor.replicasPerGPU == 1",
        holds=lambda s: s.advisor.replicas_per_gpu in (None, 1) or s.sharing.mode != "exclusive",
        message="sharing.mode exclusive runs one replica per GPU: remove advisor.replicasPerGPU or "
        "choose mode mps or auto",
    ),
    Rule(
        cel="!has(self.advisor) || !has(self.advisor.replicasPerGPU) || !has(self.sharing)"
        " || !has(self.sharing.maxReplicasPerGPU)"
        " || self.advisor.replicasPerGPU <= self.sharing.maxReplicasPerGPU",
        holds=lambda s: (
            s.advisor.replicas_per_gpu is None or s.advisor.replicas_per_gpu <= s.sharing.max_replicas_per_gpu
        ),
        message="advisor.replicasPerGPU must not exceed sharing.maxReplicasPerGPU",
    ),
    Rule(
        cel="!has(self.autoscaling) || !has(self.autoscaling.minGPUs) "
        "|| self.autoscaling.minGPUs <= self.autoscaling.maxGPUs",
        holds=lambda s: s.autoscaling is None or s.autoscaling.min_gpus <= s.autoscaling.max_gpus,
        message="autoscaling.minGPUs must not exceed autoscaling.maxGPUs",
    ),
    Rule(
        cel="!has(self.model.maxModelLen) || !has(self.workload) "
        f"|| (has(self.workload.promptTokens) ? self.workload.promptTokens : {DEFAULT_WORKLOAD[0]}) + "
        f"(has(self.workload.outputTokens) ? self.workload.outputTokens : {DEFAULT_WORKLOAD[1]})"
        " <= self.model.maxModelLen",
        holds=lambda s: (
            s.model.max_model_len is None
            or s.workload.prompt_tokens + s.workload.output_tokens <= s.model.max_model_len
        ),
        message="model.maxModelLen must hold workload.promptTokens + workload.outputTokens",
    ),
    Rule(
        cel="!has(self.serving) || !has(self.serving.inferencePool) || !has(self.sharing)"
        " || !has(self.sharing.maxReplicasPerGPU)"
        f" || self.sharing.maxReplicasPerGPU <= {INFERENCE_POOL_MAX_TARGET_PORTS}",
        holds=lambda s: (
            s.serving.inference_pool is None
            or s.sharing.max_replicas_per_gpu <= INFERENCE_POOL_MAX_TARGET_PORTS
        ),
        message=f"an InferencePool has at most {INFERENCE_POOL_MAX_TARGET_PORTS} target ports, one per "
        f"replica of a pod: set sharing.maxReplicasPerGPU to {INFERENCE_POOL_MAX_TARGET_PORTS} or less, or "
        "remove serving.inferencePool",
    ),
)


class GPUPoolRef(CamelModel):
    """A GPUPool of the LLMDeployment's namespace (api/gpupool.py)."""

    name: ObjectName = Field(description="Name of the GPUPool in the LLMDeployment's namespace.")


class LLMDeploymentSpec(CamelModel):
    model_config = ConfigDict(json_schema_extra=cel_validations(SPEC_RULES))

    model: ModelSpec = Field(description="The model to serve.")
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec, description="The typical request.")
    slo: SLOSpec = Field(default_factory=SLOSpec, description="Latency objectives.")
    advisor: AdvisorSpec = Field(default_factory=AdvisorSpec, description="Batch-size advisor settings.")
    sharing: SharingSpec = Field(default_factory=SharingSpec, description="How replicas share GPUs.")
    gpu: GPUSpec = Field(default_factory=GPUSpec, description="Which GPUs, and how many.")
    profiling: ProfilingSpec = Field(default_factory=ProfilingSpec, description="How the model is profiled.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="The vLLM serving containers.")
    autoscaling: AutoscalingSpec | None = Field(
        None,
        description="Scale GPUs on load with a HorizontalPodAutoscaler llmpack renders and sizes from "
        "the profile. Without it, gpu.count (or `kubectl scale llmd NAME --replicas N`) decides.",
    )
    gpu_pool_ref: GPUPoolRef | None = Field(
        None,
        description="Serve as a member of this GPUPool: the pool's GPUs (product, node selector, "
        "tolerations, sharing) replace gpu.product, gpu.nodeSelector, gpu.tolerations and sharing, "
        "and the pool places this model's replicas (gpu.count GPUs' worth of its own packing) on "
        "GPUs it shares with its other members.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> LLMDeploymentSpec:
        # The CRD's CEL rules (api/rules.py), for objects read before the CRD had them and for
        # `llmpack` commands that take a spec from a file. SharingSpec and ServingSpec check
        # their own rows.
        return _check(SPEC_RULES, self)

    def effective_max_model_len(self) -> int | None:
        """The --max-model-len the user fixed, or None: the advisor then serves the longest
        context the model allows that one replica's KV cache (sized for B_opt typical requests)
        holds, and profiling runs by the same rule (render/planning.py profiling_max_model_len).
        That default is no function of the spec alone: it follows the model's limit and B_opt."""
        return self.model.max_model_len

    def workload_tokens(self) -> int:
        """Prompt + output tokens of the typical request."""
        return self.workload.prompt_tokens + self.workload.output_tokens


# --- status -----------------------------------------------------------------------------------


# The status' condition types: the story of one LLMDeployment, step by step.
MODEL_CACHED = "ModelCached"
PROFILE_READY = "ProfileReady"
ADVISED = "Advised"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (MODEL_CACHED, PROFILE_READY, ADVISED, AVAILABLE, PROGRESSING, DEGRADED)


class Condition(CamelModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(
        description="ModelCached (with spec.model.cache), ProfileReady, Advised, Available, Progressing "
        "or Degraded."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word a program can match on.")
    message: str = Field("", description="What happened, and what to change if it is a problem.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="The spec generation this reflects.")


class ProfileRef(CamelModel):
    config_map: str = Field(description="ConfigMap holding the cached profile.")
    namespace: str = Field(description="Namespace of that ConfigMap (the operator's).")
    key: str = Field(description="Profile cache key (hash of what changes a measurement).")
    cache_hit: bool = Field(False, description="Whether the profile came from the cache.")


class CostStatus(CamelModel):
    """What the deployment costs at the cluster admin's price of a GPU-hour of its product (chart
    value cost.gpuHourPrices), from the recommendation's own figures: predictions at B_opt per
    replica (the advised load), derived like them (recommendation.basis says from what)."""

    currency: str = Field(description="Currency of every price here (chart value cost.currency).")
    gpu_hour_price: float = Field(description="Price of one GPU-hour of the product.")
    gpu_hours_per_hour: float = Field(
        description="GPU-hours the replicas take per hour of serving: replicas / replicas per GPU "
        "(whole GPUs, or MIG slices as their share of a GPU)."
    )
    cost_per_hour: float = Field(description="gpuHoursPerHour x gpuHourPrice.")
    cost_per_million_tokens: float | None = Field(
        None,
        description="Predicted price of a million prompt+output tokens at the advised load: "
        "gpuHourPrice / (predictedTokensPerSecondPerGPU x 3600) x 10^6.",
    )
    baseline_cost_per_million_tokens: float | None = Field(
        None, description="The same for one vLLM instance per GPU with its defaults (the baseline)."
    )
    saving: str | None = Field(
        None, description="1 - costPerMillionTokens / baselineCostPerMillionTokens, as a percentage."
    )
    pool_share: str | None = Field(
        None,
        description="A GPUPool member: it pays its share of the memory in use on each pool GPU it "
        "sits on (gpuHoursPerHour is the sum of those shares), at the tokens/s the pool predicts for it.",
    )


class RecommendationStatus(CamelModel):
    mode: str = Field(description="Sharing mode in use: mps, mig or exclusive.")
    mps_provider: str | None = Field(None, description="dra or devicePlugin when mode is mps.")
    mig_profile: str | None = Field(None, description="MIG profile of each replica when mode is mig.")
    max_num_seqs: int = Field(description="B_opt: the batch size (--max-num-seqs) of each replica.")
    kv_cache_bytes: int = Field(description="KV cache of each replica (--kv-cache-memory-bytes).")
    gpu_memory_utilization: float = Field(description="--gpu-memory-utilization of each replica.")
    max_model_len: int = Field(description="--max-model-len of each replica.")
    replicas_per_gpu: int = Field(description="Replicas sharing one GPU (1 for exclusive and mig).")
    gpus: int = Field(description="GPUs (or MIG slices' parent GPUs) the deployment uses.")
    replicas: int = Field(description="vLLM replicas in total.")
    gpus_per_replica: int = Field(
        1,
        description="Whole GPUs one replica's engine spans: --tensor-parallel-size x "
        "--pipeline-parallel-size of serving.extraArgs (exclusive mode only); memory figures are "
        "then one GPU's share.",
    )
    per_replica_memory_bytes: int | None = Field(None, description="Memory one replica needs.")
    predicted_tokens_per_second_per_gpu: float | None = Field(
        None, description="Predicted prompt+output tokens/s per GPU with this packing."
    )
    baseline_tokens_per_second_per_gpu: float | None = Field(
        None, description="Predicted tokens/s per GPU of one replica with vLLM defaults."
    )
    predicted_gain: str | None = Field(
        None, description="predictedGainFraction as a percentage, e.g. +33.7% (for kubectl get)."
    )
    predicted_gain_fraction: float | None = Field(
        None, description="Predicted gain in tokens/s per GPU over the baseline, as a fraction."
    )
    predicted_itl_ms: float | None = Field(None, description="Predicted mean ITL of each replica.")
    concurrency_per_gpu: int | None = Field(
        None,
        description="Concurrent sequences one GPU serves within the SLO: B_opt x the replicas on it "
        "(MIG: on its slices; a replica spanning several GPUs: B_opt over them, rounded up).",
    )

    memory_freed_fraction: float | None = Field(
        None, description="GPU memory a replica leaves free versus vLLM's default KV reservation."
    )
    vllm_args: list[str] = Field(default_factory=list, description="Flags each vLLM replica gets.")
    explanation: str = Field("", description="Why the advisor chose this.")
    basis: str | None = Field(
        None,
        description="What the figures (tokens/s, gain, ITL, cost) rest on: `measured` (a profile of "
        "this GPU product), `rescaled from <product or cpu>` (a profile measured on other hardware, "
        "rescaled by memory bandwidth: not a measurement of this GPU), or `simulated`.",
    )
    cost: CostStatus | None = Field(
        None, description="What it costs, where the cluster admin set a price for the GPU product."
    )

    @model_validator(mode="before")
    @classmethod
    def _gain_text(cls, data: Any) -> Any:
        """predictedGain is derived from predictedGainFraction, never set on its own."""
        if isinstance(data, dict):
            fraction = data.get("predicted_gain_fraction", data.get("predictedGainFraction"))
            data = {k: v for k, v in data.items() if k not in ("predicted_gain", "predictedGain")}
            data["predictedGain"] = None if fraction is None else f"{fraction * 100:+.1f}%"
        return data


class ModelCacheStatus(CamelModel):
    claim: str = Field(description="The PersistentVolumeClaim holding the model's files.")
    job: str = Field(
        description="The Job that fills it, or checks a shared one (kept: its success is the record "
        "that the cache is full)."
    )
    shared: bool = Field(
        False,
        description="The claim is the cluster admin's (spec.model.cache.claimName): checked, never "
        "written or deleted.",
    )
    phase: Literal["Filling", "Verifying", "Waiting", "Ready", "Failed"] = Field(
        description="Filling (the operator's own claim), Verifying (a shared claim being checked), "
        "Waiting (a shared claim not there to read: missing, unbound or being deleted), Ready or Failed."
    )
    message: str = Field("", description="What the fill is doing, or why it failed.")


class ProfilingProgress(CamelModel):
    job: str | None = Field(None, description="The profiling Job.")
    message: str = Field("", description="Last progress line of the profiler, e.g. point 4/9.")
    attempts: int = Field(0, description="Profiling pods that failed so far.")


class PoolGPUShare(CamelModel):
    """This member's replicas on one GPU of its pool."""

    gpu: int = Field(description="The pool's GPU index (its ResourceClaim is <pool>-gpu-<index>-...).")
    replicas: int = Field(description="vLLM replicas of this member on that GPU.")


class PoolRequest(CamelModel):
    """What this member asks its GPUPool for, from its own profile and advice."""

    replicas: int = Field(description="Replicas wanted: gpu.count x its own replicas per GPU.")
    max_num_seqs: int = Field(description="B_opt of each replica.")
    memory_bytes: int = Field(description="One replica's MPS pinned memory limit, in bytes.")
    itl_cap_ms: float | None = Field(
        None, description="The mean ITL each replica must keep (the SLO's, or the advisor's derived cap)."
    )
    mig_profile: str | None = Field(None, description="mode mig: the MIG profile of each replica's slice.")
    revision: str = Field(description="Hash of the above: a change places the member again.")


class PoolMembershipStatus(CamelModel):
    """This member's place in its GPUPool."""

    name: str = Field(description="The GPUPool.")
    request: PoolRequest | None = Field(None, description="What this member asks the pool for.")
    gpus: list[PoolGPUShare] = Field(default_factory=list, description="Replicas per pool GPU.")
    placed: str = Field("", description="What the pool placed, or why it placed nothing.")


class LLMDeploymentStatus(CamelModel):
    model_config = ConfigDict(extra="ignore")

    phase: Phase = Field("Pending", description="Where the deployment is in its lifecycle.")
    message: str = Field("", description="A one-line summary of the current state.")
    observed_generation: int | None = Field(None, description="The spec generation last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    profile_ref: ProfileRef | None = Field(None, description="The profile the recommendation rests on.")
    model_cache: ModelCacheStatus | None = Field(None, description="The model cache of spec.model.cache.")
    profiling: ProfilingProgress | None = Field(None, description="Progress of the profiling Job.")
    recommendation: RecommendationStatus | None = Field(None, description="What the advisor decided.")
    replicas: int | None = Field(None, description="vLLM replicas wanted.")
    ready_replicas: int | None = Field(None, description="vLLM replicas serving.")
    ready: str | None = Field(None, description="Ready replicas over wanted, e.g. 2/4.")
    gpus: int | None = Field(
        None,
        description="GPUs the serving pods occupy now (the scale subresource's status.replicas; the "
        "desired count is spec.gpu.count).",
    )
    selector: str | None = Field(
        None, description="Label selector of the serving pods (the scale subresource's, for autoscalers)."
    )
    autoscaler: str | None = Field(
        None, description="The HorizontalPodAutoscaler llmpack rendered for spec.autoscaling, if any."
    )
    pool: PoolMembershipStatus | None = Field(
        None, description="Where the GPUPool of spec.gpuPoolRef placed this member's replicas."
    )


class LLMDeployment(CamelModel):
    """A small LLM served by vLLM, profiled and packed onto GPUs by llmpack."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["llmpack.io/v1alpha1"] = API_VERSION
    kind: Literal["LLMDeployment"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus | None = None
