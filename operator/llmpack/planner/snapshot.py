"""What one pass of the operator observed about one LLMDeployment: the input of its decision.

The controller builds a Snapshot with I/O only (the watch caches, the profile cache, the live
cluster facts read once) and hands it to planner/reconcile.py `decide`, which reads nothing else.
Objects the watches delivered appear as the API server's JSON (dicts); the decision reads them and
never changes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmpack.api.profile import Profile
from llmpack.planner.decide import Admitted, Context
from llmpack.planner.refusal import Refused
from llmpack.render.plan import DEFAULT_AUTOSCALING_METRIC

Object = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """The operator's own settings (flags and chart values), fixed for its lifetime."""

    operator_namespace: str = "llmpack-system"
    profiler_image: str = "ghcr.io/llmpack/llmpack-profiler:0.1.0"
    serving_image: str = "ghcr.io/llmpack/llmpack-serving:0.1.0"
    autoscaling_metric: str = DEFAULT_AUTOSCALING_METRIC
    retry_seconds: float = 30.0  # how soon to look again where no event will say
    # A profile measured for one namespace serves others: the cluster admin's choice (chart value
    # profiles.shareAcrossNamespaces). Off, a tenant who forges its own profiling result harms
    # only its own namespace.
    share_profiles: bool = False
    # sharing.mode auto may choose MPS through the device plugin, which puts pods of different
    # namespaces on one GPU (chart value sharing.autoColocatesNamespaces).
    auto_colocates_namespaces: bool = True
    # A NetworkPolicy per LLMDeployment admitting these peers (JSON array, "[]": any source) to the
    # serving port only; None: none rendered (chart value networkPolicy).
    network_policy_from: str | None = None
    # The endpoint picker ("SERVICE:PORT") of InferencePools whose spec names none (chart value
    # inferencePool.endpointPicker).
    endpoint_picker: str | None = None
    # Price of one GPU-hour per product and its currency (chart values cost.gpuHourPrices,
    # cost.currency): the status then says what each deployment costs.
    gpu_hour_prices: tuple[tuple[str, float], ...] = ()
    currency: str = "USD"


@dataclass(frozen=True)
class CachedProfile:
    """The profile cache's entry for the spec's key: a validated profile, nothing, or an entry
    that exists but cannot be used (`problem` says why)."""

    profile: Profile | None = None
    problem: str | None = None


@dataclass(frozen=True)
class JobSeen:
    """One profiling Job of this LLMDeployment as the watch cache holds it, the data of its
    result ConfigMap, and its pods."""

    name: str
    job: Object
    result: dict[str, str] = field(default_factory=dict)
    pods: tuple[Object, ...] = ()


@dataclass(frozen=True)
class ServingSeen:
    """The serving objects of this LLMDeployment the watch caches hold.

    `owned`: (kind, name) of every object of a kind a plan may leave behind (claim templates,
    autoscalers, Deployments), labelled as this LLMDeployment's serving objects; `stall`: what the
    Deployment's own conditions say stops its rollout (reason, message), read by the controller."""

    deployment: Object | None = None
    deployments: tuple[Object, ...] = ()  # every serving Deployment it owns (a pool member has several)
    pods: tuple[Object, ...] = ()
    owned: tuple[tuple[str, str], ...] = ()
    stall: tuple[str, str] | None = None


@dataclass(frozen=True)
class ApplyRefusal:
    """The API server refused to apply an object in this pass: `reason` is the error's class
    (AdmissionDenied, QuotaExceeded, ObjectRejected, Forbidden), `retry` whether to look again at
    a slow pace (nobody fixing a policy, quota or grant touches the spec)."""

    kind: str
    name: str
    reason: str
    message: str
    retry: bool


@dataclass(frozen=True)
class Snapshot:
    """Everything one decision reads. `admission`: the spec parsed and admitted (planner.admit) or
    refused; a spec that does not parse is refused here too (reason InvalidSpec)."""

    context: Context
    generation: int | None
    status: Object  # the prior status as stored
    admission: Admitted | Refused
    now: str  # the pass's time (RFC 3339), for conditions' lastTransitionTime
    cached: CachedProfile = CachedProfile()
    jobs: tuple[JobSeen, ...] = ()  # every profiling Job this LLMDeployment owns
    serving: ServingSeen = ServingSeen()
    refused: ApplyRefusal | None = None  # set when acting on this pass's outcome was refused
    pool: Object | None = None  # the GPUPool of spec.gpuPoolRef as the watch cache holds it
    model_caches: tuple[JobSeen, ...] = ()  # the fill Jobs of model caches this LLMDeployment owns
    model_cache_claims: tuple[str, ...] = ()  # the PersistentVolumeClaims of those caches
    # claims deleted but still held by pods that mount them (kubernetes.io/pvc-protection)
    model_cache_claims_deleted: tuple[str, ...] = ()
    # the cluster admin's claim of spec.model.cache.claimName as the API server has it (a GET: it
    # carries none of llmpack's labels, so no watch of the operator's holds it); None: not found
    shared_cache_claim: Object | None = None
