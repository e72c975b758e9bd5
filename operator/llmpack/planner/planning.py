"""From spec + profile + recommendation + cluster offers to a ServingPlan or a ProfilingPlan.

Pure. The decisions a user reads in `kubectl get llmd` are made here: which sharing mode, how
many replicas per GPU, which vLLM flags each replica gets.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmpack.advisor import memory
from llmpack.advisor.memory import MIB
from llmpack.advisor.options import known_context_limit
from llmpack.advisor.parallelism import Parallelism
from llmpack.advisor.replica_memory import (
    ReplicaDoesNotFit,
    ReplicaMemory,
    replica_memory,
)
from llmpack.api.engine_flags import engine_flags
from llmpack.api.llmdeployment import AVAILABLE, LLMDeploymentSpec, MPSProvider, RecommendationStatus, SLOSpec
from llmpack.hardware import GPU
from llmpack.hardware.cluster import Offers
from llmpack.hardware.sharing import (
    MIG,
    Exclusive,
    MPSThroughDevicePlugin,
    MPSThroughDRA,
    ServingMode,
    Sharing,
)
from llmpack.planner.refusal import Refused
from llmpack.render.plan import (
    DEFAULT_AUTOSCALING_METRIC,
    MAX_NAME,
    AutoscalingPlan,
    InferencePoolPlan,
    ModelCachePlan,
    OwnerRef,
    ProfilingPlan,
    SecretKey,
    ServingPlan,
    kube_name,
    model_cache_name,
    stable_hash,
)


@dataclass(frozen=True)
class Candidate:
    """One way to serve: a sharing mode, its packing, and its predicted figures."""

    sharing: Sharing
    replicas_per_gpu: int
    memory: ReplicaMemory  # what one replica's process sees, its --gpu-memory-utilization
    tokens_per_s_per_gpu: float | None
    itl_ms: float | None
    replica_limit: int | None = None  # MIG: slices of this profile the cluster offers
    gpus_per_replica: int = 1  # GPUs one replica's engine spans (tensor x pipeline parallel)

    @property
    def mode(self) -> ServingMode:
        return self.sharing.mode

    @property
    def provider(self) -> MPSProvider | None:
        return self.sharing.provider

    @property
    def mig_profile(self) -> str | None:
        return self.sharing.mig.name if self.sharing.mig else None

    @property
    def label(self) -> str:
        return self.sharing.label


# predict(replicas_per_gpu, mig_profile) -> (tokens/s per GPU, mean ITL ms per replica)
Predictor = Callable[[int, str | None], tuple[float | None, float | None]]


def effective_sweep(spec: LLMDeploymentSpec) -> str:
    """The adaptive sweep stops where the advisor's default rule (efficiency, epsilon 0.2, L = 5,
    no SLO) would; other settings may want points it skips, so they get the exhaustive sweep."""
    advisor = spec.advisor
    defaults = (
        advisor.policy == "efficiency"
        and advisor.epsilon in (None, 0.2)
        and advisor.latency_factor == 5.0
        and spec.slo == SLOSpec()  # any SLO may bind below where the default rule stops
    )
    return spec.profiling.sweep if defaults else "exhaustive"


def context_refusal(spec: LLMDeploymentSpec) -> str | None:
    """Why vLLM would refuse this spec's context, said before anything is profiled: a
    model.maxModelLen or a typical request (workload) longer than the model allows. None when
    neither is, or when the operator does not know the model's limit (the profiler then refuses
    with the same words)."""
    known = known_context_limit(spec)
    if known is None:
        return None
    limit, source = known
    fixed = spec.model.max_model_len
    workload = spec.workload
    return memory.context_problem(
        spec.model.name,
        limit,
        source,
        length=(fixed, "model.maxModelLen") if fixed is not None else None,
        workload=(
            spec.workload_tokens(),
            f"workload.promptTokens {workload.prompt_tokens} + "
            f"workload.outputTokens {workload.output_tokens}",
        ),
        workload_fix="the workload",
    )


def profiling_max_model_len(spec: LLMDeploymentSpec) -> int | None:
    """--max-model-len of the profiling run: model.maxModelLen where set; else the serving rule
    (the longest context the model allows that the run's KV pool holds; that pool is sized for the
    largest candidate batch of the workload, advisor/memory.py profiling_max_model_len) where the
    operator knows the model's limit; else None for the vllm backend, whose profiler applies the
    same rule with the limit of the model's config.json; else (simulated, limit unknown) the
    typical request rounded up to 256. The profile key hashes this value."""
    if spec.model.max_model_len is not None:
        return spec.model.max_model_len
    known = known_context_limit(spec)
    prompt, output = spec.workload.prompt_tokens, spec.workload.output_tokens
    flags = engine_flags(spec.serving.extra_args)
    budget = flags.max_num_batched_tokens if flags.chunked_prefill is False else None
    if known is not None:
        length = memory.profiling_max_model_len(known[0], prompt, output, max(profiling_candidates(spec)))
    elif spec.profiling.backend == "vllm":
        return budget  # None: the profiler's rule on the model's config.json
    else:
        length = memory.unknown_context_for_profiling(prompt, output)
    # without chunked prefill vLLM refuses a context above --max-num-batched-tokens
    return length if budget is None else min(length, budget)


def profiling_candidates(spec: LLMDeploymentSpec) -> list[int]:
    """The batches the profiling Job measures: advisor.candidateBatchSizes within the scheduler's
    token budget the spec fixes (--max-num-batched-tokens; vLLM refuses a --max-num-seqs above it,
    vllm/config/scheduler.py), the budget itself the largest."""
    sizes = list(spec.advisor.candidate_batch_sizes)
    budget = engine_flags(spec.serving.extra_args).max_num_batched_tokens
    if budget is None or max(sizes) <= budget:
        return sizes
    return sorted({b for b in sizes if b < budget} | {budget})


def profile_key(
    spec: LLMDeploymentSpec, profiler_image: str, owner_uid: str | None = None, *, scope: str | None = None
) -> str:
    """Hash of everything that changes a measurement. Serving-only fields are deliberately out:
    changing them rolls the pods without profiling again. `scope`: the namespace whose
    measurements the profile may serve (None: shared across namespaces, as the cluster admin
    chooses); a scoped key is a different key in every namespace."""
    data: dict[str, Any] = {
        "model": spec.model.name,
        "revision": spec.model.revision,
        "dtype": spec.model.dtype,
        "architecture": spec.model.architecture.to_k8s() if spec.model.architecture else None,
        "maxModelLen": profiling_max_model_len(spec),
        "gpu": spec.gpu.product,
        "mig": spec.sharing.forced_mig_profile,
        "engine": profiler_image,
        "backend": spec.profiling.backend,
        "workload": spec.workload.to_k8s(),
        "sweep": effective_sweep(spec),
        "candidates": profiling_candidates(spec),
    }
    if spec.serving.engine_args():  # only when set: keys of specs without them stay as they were
        data["engineArgs"] = spec.serving.engine_args()
    if not spec.profiling.reuse_cached_profile:
        data["owner"] = owner_uid  # a profile of its own, measured once
    if scope is not None:  # only when set: shared keys stay as they were
        data["namespace"] = scope
    return stable_hash(data)[:40]


def profiling_job_name(name: str, key: str) -> str:
    """The profiling Job of the LLMDeployment `name` for the profile `key`: stable, so that every
    pass finds the Job an earlier one started; short enough for its result ConfigMap's name."""
    return kube_name(name, "profile", key[:8], limit=MAX_NAME - len(ProfilingPlan.result_configmap_for("")))


def profiling_plan(
    *,
    name: str,
    namespace: str,
    owner: OwnerRef,
    spec: LLMDeploymentSpec,
    key: str,
    image: str,
    dra: bool = False,
) -> ProfilingPlan:
    """The profiling Job for `spec`; `dra`: take the GPU through a DRA claim (the caller knows
    whether the device plugin offers the product at all)."""
    context = profiling_max_model_len(spec)
    job = profiling_job_name(name, key)
    args = [
        "--backend",
        spec.profiling.backend,
        "--model",
        spec.model.name,
        "--gpu",
        spec.gpu.product,
        "--dtype",
        spec.model.dtype,
        # none: the profiler takes the model's limit from its config.json, by the same rule
        *(["--max-model-len", str(context)] if context is not None else []),
        "--prompt-tokens",
        str(spec.workload.prompt_tokens),
        "--output-tokens",
        str(spec.workload.output_tokens),
        "--sweep",
        effective_sweep(spec),
        "--candidates",
        ",".join(str(b) for b in profiling_candidates(spec)),
        "--result-configmap",
        ProfilingPlan.result_configmap_for(job),
        "--profile-key",
        key,
    ]
    if spec.model.revision:
        args += ["--revision", spec.model.revision]
    if spec.serving.engine_args():
        # one item, with `=`: its value starts with a dash (the profiler splits it like a shell)
        args.append("--engine-args=" + shlex.join(spec.serving.engine_args()))
    arch = spec.model.architecture
    if arch:
        args += [
            "--num-layers",
            str(arch.num_layers),
            "--num-kv-heads",
            str(arch.num_kv_heads),
            "--head-dim",
            str(arch.head_dim),
            "--weight-bytes",
            str(arch.parameter_bytes),
            *arch.layout_args(),
        ]
    secret = spec.model.hf_token_secret_ref
    return ProfilingPlan(
        name=job,
        namespace=namespace,
        owner=owner,
        profile_key=key,
        image=spec.profiling.image or image,
        args=args,
        gpu_product=spec.gpu.product,
        gpus=Parallelism.of(engine_flags(spec.serving.extra_args)).world_size,
        mig_profile=spec.sharing.forced_mig_profile,
        dra=dra and not spec.sharing.forced_mig_profile,
        node_selector=spec.gpu.node_selector,
        tolerations=[t.to_k8s() for t in spec.gpu.tolerations],
        active_deadline_seconds=spec.profiling.timeout_seconds,
        backoff_limit=spec.profiling.backoff_limit,
        hf_token_secret=SecretKey(name=secret.name, key=secret.key) if secret else None,
        model_cache_claim=model_cache_claim(name, spec),
    )


def model_cache_claim(owner: str, spec: LLMDeploymentSpec) -> str | None:
    """The claim of spec.model.cache (the admin's shared one, or the operator's own), or None
    without one."""
    if spec.model.cache is None:
        return None
    return spec.model.cache.claim_name or model_cache_name(owner, spec.model.name, spec.model.revision)


def model_cache_plan(
    *,
    name: str,
    namespace: str,
    owner: OwnerRef,
    spec: LLMDeploymentSpec,
    image: str,
    claim_uid: str | None = None,
) -> ModelCachePlan | None:
    """The cache of spec.model.cache, filled in the profiler's image (which has the fill command),
    the LLMDeployment's own where it names one; a shared claim (`claim_uid`: its uid as observed)
    is checked in the operator's, as the check is the operator's, not the tenant's."""
    cache, claim = spec.model.cache, model_cache_claim(name, spec)
    if cache is None or claim is None:
        return None
    secret = spec.model.hf_token_secret_ref
    return ModelCachePlan(
        name=claim,
        namespace=namespace,
        owner=owner,
        model=spec.model.name,
        revision=spec.model.revision,
        shared=cache.claim_name is not None,
        claim_uid=claim_uid if cache.claim_name is not None else None,
        size=None if cache.size is None else str(cache.size),
        storage_class_name=cache.storage_class_name,
        access_mode=cache.access_mode or "ReadWriteMany",
        image=image if cache.claim_name is not None else (spec.profiling.image or image),
        hf_token_secret=SecretKey(name=secret.name, key=secret.key) if secret else None,
    )


def candidates(
    spec: LLMDeploymentSpec,
    gpu: GPU,
    offers: Offers,
    per_replica_bytes: int,
    replicas_per_gpu: int,
    predict: Predictor,
    refusals: list[str] | None = None,
    *,
    auto_colocates_namespaces: bool = True,
) -> list[Candidate]:
    """Every way the cluster can serve this deployment, with its predicted tokens/s per GPU. A mode
    the cluster offers but that cannot hold a replica is explained in `refusals`.
    `auto_colocates_namespaces`: whether sharing.mode auto may choose a mode that puts pods of
    different namespaces on one GPU (the cluster admin's choice; a spec naming the mode gets it)."""
    wanted, provider = spec.sharing.mode, spec.sharing.mps_provider
    found: list[Candidate] = []
    refusals = [] if refusals is None else refusals

    def add(sharing: Sharing, rpg: int, *, gpus_per_replica: int = 1) -> None:
        if wanted == "auto" and sharing.colocates_namespaces and not auto_colocates_namespaces:
            refusals.append(
                f"sharing.mode auto does not choose {sharing.label}: the cluster admin keeps auto from "
                "putting different namespaces' pods on one GPU (name the mode to use it)"
            )
            return
        try:
            memory = replica_memory(sharing, gpu, per_replica_bytes, replicas_per_gpu=rpg)
        except ReplicaDoesNotFit as err:
            refusals.append(str(err))
            return
        mig = sharing.mig
        tps, itl = predict(rpg, mig.name if mig else None)
        limit = offers.mig_slices.get(mig.name) if mig else None
        found.append(Candidate(sharing, rpg, memory, tps, itl, limit, gpus_per_replica))

    world = Parallelism.of(engine_flags(spec.serving.extra_args)).world_size
    if world > 1:
        # One engine on several whole GPUs: only exclusive holds it (decide.check_parallelism
        # refused mps and mig already), on one node with that many GPUs.
        if not offers.exclusive_gpus:
            refusals.append(f"a replica of {world} GPUs needs whole GPUs (nvidia.com/gpu)")
        elif offers.most_gpus_on_a_node < world:
            refusals.append(
                f"a replica of {world} GPUs needs them on one node, and the most one node offers is "
                f"{offers.most_gpus_on_a_node}"
            )
        elif Exclusive.requested_by(wanted, provider):
            add(Exclusive(), 1, gpus_per_replica=world)
        return found
    if Exclusive.requested_by(wanted, provider) and offers.exclusive_gpus:
        add(Exclusive(), 1)
    if MPSThroughDRA.requested_by(wanted, provider) and offers.mps_dra_gpus:
        add(MPSThroughDRA(), replicas_per_gpu)
    slices = offers.device_plugin_mps_replicas
    if MPSThroughDevicePlugin.requested_by(wanted, provider) and offers.device_plugin_mps_gpus and slices:
        # The device plugin caps every client at total/replicas: a replica fits only if its
        # whole footprint does (FACTS.md 3.2); it cannot take two slices' memory.
        add(MPSThroughDevicePlugin(slices), min(slices, replicas_per_gpu))
    if MIG.requested_by(wanted, provider) and offers.mig_slices:
        profile = _mig_profile_for(spec, gpu, offers, per_replica_bytes, refusals)
        if profile:
            per_gpu = gpu.mig_profile(profile).max_instances
            add(MIG(gpu.mig_profile(profile)), min(per_gpu, spec.sharing.max_replicas_per_gpu))
    return found


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def _mib(size: int) -> str:
    return f"{math.ceil(size / MIB):,} MiB"


def _mig_bytes(gpu: GPU, profile: str) -> int:
    return gpu.mig_profile(profile).memory_bytes


def _mig_profile_for(
    spec: LLMDeploymentSpec, gpu: GPU, offers: Offers, per_replica_bytes: int, refusals: list[str]
) -> str | None:
    offered = ", ".join(f"{p} x{n}" for p, n in sorted(offers.mig_slices.items()))
    forced = spec.sharing.mig_profile
    if forced:
        if forced not in offers.mig_slices:
            refusals.append(f"mig: sharing.migProfile {forced} is not offered (offered: {offered})")
            return None
        if _mig_bytes(gpu, forced) < per_replica_bytes:
            refusals.append(
                f"mig: sharing.migProfile {forced} holds {_gib(_mig_bytes(gpu, forced))} but one replica "
                f"needs {_gib(per_replica_bytes)}"
            )
            return None
        return forced
    known = [p for p in offers.mig_slices if p in {m.name for m in gpu.mig_profiles}]
    fitting = [p for p in known if _mig_bytes(gpu, p) >= per_replica_bytes]
    if known and not fitting:
        largest = max(known, key=lambda p: _mig_bytes(gpu, p))
        refusals.append(
            f"mig: one replica needs {_gib(per_replica_bytes)}; the largest offered slice, {largest}, "
            f"holds {_gib(_mig_bytes(gpu, largest))}"
        )
    return min(fitting, key=lambda p: _mig_bytes(gpu, p), default=None)


def choose(
    spec: LLMDeploymentSpec, found: list[Candidate], offers: Offers, refusals: list[str] | None = None
) -> Candidate | Refused:
    """The candidate to serve with; refused where the cluster offers none that holds a replica
    (the cluster may change: retryable)."""
    if not found:
        mode = spec.sharing.requested
        if refusals:
            return Refused(
                AVAILABLE,
                "NoMatchingNodes",
                f"no node can serve {spec.gpu.product} with sharing mode {mode}: {'; '.join(refusals)}. "
                "Lower workload tokens or the batch size, choose another sharing.mode, or add nodes",
                retryable=True,
            )
        return Refused(
            AVAILABLE,
            "NoMatchingNodes",
            f"no node offers {spec.gpu.product} for sharing mode {mode}; the cluster offers "
            f"{offers.describe()} for it. Change sharing.mode or gpu.product, or add nodes",
            retryable=True,
        )
    if len(found) == 1:
        return found[0]
    # auto: the most predicted tokens/s per GPU; a mode without a prediction ranks last, and
    # ties go to the simpler mode (the order candidates() lists them in).
    return max(found, key=lambda c: c.tokens_per_s_per_gpu or -1.0)


# A serving pod's /tmp holds the model download (safetensors as published: up to twice the bytes
# on the GPU where the engine quantizes at load, e.g. --quantization fp8 of a bf16 checkpoint), and
# per vLLM process its torch.compile and Triton caches and logs.
SCRATCH_PER_PROCESS_BYTES = 1 << 30
SCRATCH_BASE_BYTES = 4 << 30


def scratch_bytes(weight_bytes: int, *, processes: int) -> int:
    """The sizeLimit of a serving pod's /tmp emptyDir, in bytes: 2 x the weights' bytes on the GPU
    (the download), 4 GiB, and 1 GiB per vLLM process in the pod."""
    return 2 * weight_bytes + SCRATCH_BASE_BYTES + processes * SCRATCH_PER_PROCESS_BYTES


def serving_plan(
    *,
    name: str,
    namespace: str,
    owner: OwnerRef,
    spec: LLMDeploymentSpec,
    chosen: Candidate,
    vllm_args: list[str],
    per_replica_bytes: int,
    image: str,
    b_opt: int,
    autoscaling_metric: str = DEFAULT_AUTOSCALING_METRIC,
    weight_bytes: int | None = None,
    network_policy_from: str | None = None,
    endpoint_picker: str | None = None,
) -> ServingPlan:
    autoscaling = spec.autoscaling
    gpus = spec.gpu.count
    if autoscaling is not None:
        # The autoscaler keeps gpu.count within its bounds; until its first pass (or after a hand
        # edit) the operator serves within them too.
        gpus = min(max(gpus, autoscaling.min_gpus), autoscaling.max_gpus)
    replicas = gpus * chosen.replicas_per_gpu
    per_replica = chosen.gpus_per_replica
    if per_replica > 1:
        # A replica spans several GPUs: whole replicas, rounded up (decide.check_parallelism keeps
        # gpu.count and the autoscaler's bounds multiples of them; the autoscaler's count may not be).
        replicas = math.ceil(gpus / per_replica)
        gpus = replicas * per_replica
    if chosen.replica_limit is not None and replicas > chosen.replica_limit:
        # MIG: the slices are partitioned by the cluster admin; serve on what exists.
        replicas = chosen.replica_limit
        gpus = math.ceil(replicas / chosen.replicas_per_gpu)
    secret, api_key = spec.model.hf_token_secret_ref, spec.serving.api_key_secret_ref
    rpg = chosen.replicas_per_gpu
    extra: dict[str, Any] = {}
    if chosen.sharing.pinned_by_llmpack:
        extra = {
            "mps_pinned_memory_bytes": chosen.memory.mps_pinned_memory_bytes,
            # No thread cap: the paper's gain comes from replicas filling each other's idle gaps
            # between decode steps; capping each to 1/R of the SMs would forbid exactly that.
            "mps_active_thread_percentage": 100,
        }
    if chosen.sharing.gpu_slices_per_replica:
        extra = {"gpu_slices_per_replica": chosen.sharing.gpu_slices_per_replica}
    return ServingPlan(
        name=name,
        namespace=namespace,
        owner=owner,
        model=spec.model.name,
        revision=spec.model.revision,
        dtype=spec.model.dtype,
        hf_token_secret=SecretKey(name=secret.name, key=secret.key) if secret else None,
        api_key_secret=SecretKey(name=api_key.name, key=api_key.key) if api_key else None,
        model_cache_claim=model_cache_claim(name, spec),
        mode=chosen.mode,
        mps_provider=chosen.provider,
        gpu_product=spec.gpu.product,
        gpus=gpus,
        replicas_per_gpu=chosen.replicas_per_gpu,
        replicas=replicas,
        gpus_per_replica=per_replica,
        mig_profile=chosen.mig_profile,
        vllm_args=[*vllm_args, *spec.serving.extra_args],
        image=spec.serving.image or image,
        env=[e.to_k8s() for e in spec.serving.env],
        resources=spec.serving.resources,
        port=spec.serving.port,
        node_selector=spec.gpu.node_selector,
        tolerations=[t.to_k8s() for t in spec.gpu.tolerations],
        scratch_limit_bytes=None
        if weight_bytes is None
        # weight_bytes is one GPU's share: the pod downloads the whole checkpoint
        else scratch_bytes(weight_bytes * per_replica, processes=rpg // chosen.sharing.pods_per_gpu(rpg)),
        network_policy_from=None if network_policy_from is None else json.loads(network_policy_from),
        inference_pool=inference_pool_plan(spec, endpoint_picker),
        autoscaling=None
        if autoscaling is None
        else AutoscalingPlan(
            min_gpus=autoscaling.min_gpus,
            max_gpus=autoscaling.max_gpus,
            metric=autoscaling_metric,
            target_per_gpu=autoscaling.target_utilization * b_opt * chosen.replicas_per_gpu / per_replica,
            pods_per_gpu=chosen.sharing.pods_per_gpu(chosen.replicas_per_gpu),
            gpus_per_pod=per_replica,
            behavior=autoscaling.behavior,
        ),
        **extra,
    )


def recommendation_status(
    *,
    plan: ServingPlan,
    chosen: Candidate,
    b_opt: int,
    kv_cache_bytes: int,
    gpu_memory_utilization: float,
    max_model_len: int,
    per_replica_bytes: int,
    baseline_tokens_per_s: float | None,
    memory_freed_fraction: float | None,
    vllm_args: list[str],
    explanation: str,
) -> RecommendationStatus:
    gain = None
    if chosen.tokens_per_s_per_gpu and baseline_tokens_per_s:
        gain = chosen.tokens_per_s_per_gpu / baseline_tokens_per_s - 1
    return RecommendationStatus(
        mode=chosen.mode,
        mps_provider=chosen.provider,
        mig_profile=chosen.mig_profile,
        max_num_seqs=b_opt,
        kv_cache_bytes=kv_cache_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        replicas_per_gpu=chosen.replicas_per_gpu,
        gpus=plan.gpus,
        gpus_per_replica=plan.gpus_per_replica,
        replicas=plan.replicas,
        per_replica_memory_bytes=per_replica_bytes,
        predicted_tokens_per_second_per_gpu=_round(chosen.tokens_per_s_per_gpu),
        baseline_tokens_per_second_per_gpu=_round(baseline_tokens_per_s),
        predicted_gain_fraction=None if gain is None or math.isnan(gain) else round(gain, 4),
        predicted_itl_ms=_round(chosen.itl_ms, 2),
        concurrency_per_gpu=math.ceil(b_opt * chosen.replicas_per_gpu / plan.gpus_per_replica),
        memory_freed_fraction=None if memory_freed_fraction is None else round(memory_freed_fraction, 4),
        vllm_args=vllm_args,
        explanation=explanation,
    )


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def inference_pool_plan(spec: LLMDeploymentSpec, endpoint_picker: str | None) -> InferencePoolPlan | None:
    """The InferencePool of spec.serving.inferencePool, its picker the spec's or else the cluster
    admin's `endpoint_picker` ("SERVICE:PORT"); None without one (decide.admit refuses a pool
    with no picker anywhere)."""
    pool = spec.serving.inference_pool
    if pool is None:
        return None
    ref = pool.endpoint_picker_ref
    if ref is not None:
        return InferencePoolPlan(
            endpoint_picker=ref.name, endpoint_picker_port=ref.port, failure_mode=ref.failure_mode
        )
    if not endpoint_picker:
        return None
    name, _, port = endpoint_picker.rpartition(":")
    return InferencePoolPlan(endpoint_picker=name, endpoint_picker_port=int(port))
