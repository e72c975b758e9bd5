"""Plans: everything the render layer needs to produce Kubernetes objects, as plain data.

The controller builds a plan from the spec, the recommendation and what the cluster offers; the
render functions turn it into manifests. Neither side talks to the API server here.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmpack.api.llmdeployment import MPSProvider
from llmpack.hardware.sharing import ServingMode, Sharing, sharing_type

MANAGED_BY = "llmpack"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_DEPLOYMENT = "llmpack.io/llmdeployment"
LABEL_PROFILE_KEY = "llmpack.io/profile-key"
ANNOTATION_CONFIG_HASH = "llmpack.io/config-hash"
# On the check Job of a shared model cache: the uid of the claim it checks (one made again is not
# what was checked).
ANNOTATION_CLAIM_UID = "llmpack.io/claim-uid"

MAX_NAME = 63
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OwnerRef(Frozen):
    """The LLMDeployment every rendered object belongs to (garbage collection does deletion)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def to_k8s(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


class SecretKey(Frozen):
    name: str
    key: str = "token"


# The per-pod metric an autoscaler reads by default: requests running plus waiting in a serving pod's
# vLLM replicas, as the README's prometheus-adapter rule names it (the chart's
# autoscaling.metricName, the operator's --autoscaling-metric, changes it).
DEFAULT_AUTOSCALING_METRIC = "vllm_requests_in_flight"


class InferencePoolPlan(Frozen):
    """A Gateway API InferencePool over the serving pods, one endpoint per vLLM replica port."""

    endpoint_picker: str = Field(description="Name of the endpoint picker's Service.")
    endpoint_picker_port: int = Field(ge=1, le=65535)
    failure_mode: str = "FailClose"


class AutoscalingPlan(Frozen):
    """A HorizontalPodAutoscaler on the LLMDeployment's scale subresource (GPUs)."""

    min_gpus: int = Field(ge=1)
    max_gpus: int = Field(ge=1)
    metric: str = Field(min_length=1, description="Requests running + waiting, per pod or in total.")
    target_per_gpu: float = Field(
        gt=0, description="Requests in flight per GPU to hold: u x B_opt x replicas."
    )
    pods_per_gpu: int = Field(ge=1, description="Serving pods on one GPU (1: a DRA MPS pod, or exclusive).")
    gpus_per_pod: int = Field(1, ge=1, description="GPUs one serving pod holds (a replica spanning several).")
    behavior: dict[str, Any] | None = None


class PoolSlot(Frozen):
    """A pool member's replicas on one GPU of its GPUPool: the claim its pod shares with the
    other members' pods on that GPU."""

    gpu: int = Field(ge=0, description="The pool's GPU index.")
    claim: str = Field(description="The pool's ResourceClaim for that GPU.")
    replicas: int = Field(ge=1)


class ServingPlan(Frozen):
    """How one LLMDeployment is served: which objects, which flags, on which GPUs."""

    name: str
    namespace: str
    owner: OwnerRef
    model: str
    revision: str | None = None
    dtype: str = "auto"
    hf_token_secret: SecretKey | None = None
    api_key_secret: SecretKey | None = Field(None, description="VLLM_API_KEY of every replica.")
    model_cache_claim: str | None = Field(
        None, description="PersistentVolumeClaim of the model's files, mounted read-only (offline load)."
    )

    mode: ServingMode
    mps_provider: MPSProvider | None = None
    gpu_product: str
    gpus: int = Field(ge=1, description="Whole GPUs (exclusive, mps) the replicas occupy.")
    replicas_per_gpu: int = Field(ge=1)
    replicas: int = Field(ge=1, description="vLLM replicas in total.")
    gpus_per_replica: int = Field(
        1,
        ge=1,
        description="Whole GPUs one replica's engine spans (tensor x pipeline parallel; exclusive only).",
    )
    mig_profile: str | None = None
    gpu_slices_per_replica: int | None = Field(
        None, description="devicePlugin MPS: nvidia.com/gpu slices one replica's pod asks for."
    )
    mps_pinned_memory_bytes: int | None = Field(None, description="MPS per-client pinned memory limit.")
    mps_active_thread_percentage: int | None = Field(None, ge=1, le=100)

    vllm_args: list[str] = Field(
        description="Flags of every replica after `vllm serve MODEL`, without --port (the renderer "
        "assigns ports)."
    )
    image: str
    env: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] | None = None
    port: int = 8000
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    autoscaling: AutoscalingPlan | None = None
    scratch_limit_bytes: int | None = Field(
        None, ge=1, description="sizeLimit of each serving pod's /tmp emptyDir (the model download)."
    )
    network_policy_from: list[dict[str, Any]] | None = Field(
        None,
        description="NetworkPolicy peers admitted to the serving port ([]: any source); None: no "
        "NetworkPolicy (the cluster admin's choice, chart value networkPolicy).",
    )
    inference_pool: InferencePoolPlan | None = Field(
        None, description="An InferencePool over the replicas (spec.serving.inferencePool); None: none."
    )
    pool_slots: tuple[PoolSlot, ...] | None = Field(
        None,
        description="A GPUPool member: one pod per pool GPU it was placed on, each on that GPU's "
        "shared claim; None: not a member (the mode's own pods).",
    )

    @property
    def sharing(self) -> type[Sharing]:
        """The sharing mode's type (hardware/sharing.py), from the fields that name it."""
        return sharing_type(self.mode, self.mps_provider)

    def config_hash(self) -> str:
        """Changes whenever a rendered pod would change, so pods roll on any serving change; not on
        a change of scale (how many GPUs, replicas, the autoscaler's bounds), which adds or removes
        whole pods and leaves the others serving, nor of the NetworkPolicy or the InferencePool,
        separate objects (except where the pool makes a router's replicas listen on the pod IP)."""
        outside_pods = {
            "owner",
            "gpus",
            "replicas",
            "autoscaling",
            "network_policy_from",
            "inference_pool",
            "pool_slots",  # a slot's pod is hashed with its own replica count (pool_deployment)
        }
        if self.model_cache_claim is None:
            outside_pods.add("model_cache_claim")  # plans without a cache hash as they did before it
        if self.gpus_per_replica == 1:
            outside_pods.add("gpus_per_replica")  # likewise for plans of one GPU per replica
        pods = self.model_dump(mode="json", exclude=outside_pods)
        if self.inference_pool is not None and self.sharing.replicas_behind_router:
            pods["replicas_exposed"] = True  # the pool reaches replicas through the pod IP
        return stable_hash(pods)[:16]


class ProfilingPlan(Frozen):
    """One profiling Job and the least-privileged identity it publishes its result with."""

    name: str = Field(description="Name of the Job, its ServiceAccount, Role and result ConfigMap.")
    namespace: str
    owner: OwnerRef
    profile_key: str
    image: str
    args: list[str] = Field(description="Arguments of `llmpack profile` (the image's entrypoint).")
    gpu_product: str
    gpus: int = Field(
        1, ge=1, description="Whole GPUs the profiled engine spans (tensor x pipeline parallel)."
    )
    mig_profile: str | None = None
    dra: bool = Field(
        False,
        description="Take the whole GPU through a DRA ResourceClaim (no sharing configured) instead of "
        "the device plugin's nvidia.com/gpu: for products that DRA alone offers.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    active_deadline_seconds: int = Field(ge=1)
    backoff_limit: int = Field(ge=0)
    hf_token_secret: SecretKey | None = None
    model_cache_claim: str | None = Field(None, description="PersistentVolumeClaim of the model's files.")

    @property
    def result_configmap(self) -> str:
        return self.result_configmap_for(self.name)

    @staticmethod
    def result_configmap_for(job: str) -> str:
        return f"{job}-result"


class ModelCachePlan(Frozen):
    """The model cache of one LLMDeployment: a PersistentVolumeClaim and the Job that fills it,
    or, for a claim the cluster admin shares, the Job that checks it."""

    name: str = Field(description="Name of the claim and of its fill Job.")
    namespace: str
    owner: OwnerRef
    model: str
    revision: str | None = None
    shared: bool = Field(
        False,
        description="The claim is the cluster admin's (spec.model.cache.claimName): checked, never written.",
    )
    claim_uid: str | None = Field(
        None, description="A shared claim's uid as observed, None where it is not there."
    )
    size: str | None = Field(
        None, description="The claim's storage request, a Kubernetes quantity (not shared)."
    )
    storage_class_name: str | None = None
    access_mode: str = "ReadWriteMany"
    image: str = Field(description="An image with `llmpack fill-model-cache` (the profiler's).")
    hf_token_secret: SecretKey | None = None

    @property
    def job(self) -> str:
        """The fill Job, or the check Job of a shared claim: `<claim>-<hash of what it does>`. A
        Job's pod template is immutable, so a new token Secret or image is a new Job (the old one
        pruned), while a failed Job of the same inputs stays failed until deleted (its failure is
        the status)."""
        how = self.model_dump(mode="json", include={"model", "revision", "image", "hf_token_secret"})
        if self.shared:
            how["verifyOnly"] = True
        return kube_name(self.name, stable_hash(how)[:6])


def model_cache_name(owner: str, model: str, revision: str | None) -> str:
    """`<owner>-model-<hash of model and revision>`: a new model or revision is a new cache (the
    old one is pruned once nothing needs it)."""
    return kube_name(owner, "model", stable_hash({"model": model, "revision": revision})[:8])


# The key of a published Profile's JSON in a ConfigMap: the profiling Job's result and the cache.
PROFILE_DATA_KEY = "profile.json"


def profile_cache_name(key: str) -> str:
    """The profile cache's ConfigMap (in the operator's namespace) for the profile `key`."""
    return f"llmpack-profile-{key[:40]}"


def stable_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def kube_name(*parts: str, limit: int = MAX_NAME) -> str:
    """`parts` joined by '-' as an object name valid everywhere (a DNS-1035 label: Service names
    need it, and pod names, container names and label values derive from it). A name that is valid
    already is kept as is; any other is cleaned, shortened and suffixed with a hash of the original,
    so two different inputs never end up with the same name."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit and _DNS_1035_LABEL.fullmatch(name):
        return name
    digest = stable_hash(name)[:8]
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not clean[:1].isalpha():
        clean = f"llm-{clean}".rstrip("-")
    return f"{clean[: limit - len(digest) - 1].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """`value` as a label value (63 characters at most, alphanumeric at both ends), shortened with
    a hash suffix when it is not one already."""
    if len(value) <= MAX_NAME and _LABEL_VALUE.fullmatch(value):
        return value
    digest = stable_hash(value)[:8]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[: MAX_NAME - len(digest) - 1].strip("-._")
    return f"{clean}-{digest}" if clean else digest
