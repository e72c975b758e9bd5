"""The one decision: (spec, profile or none, cluster facts) -> a profiling plan or a serving plan.

    admit(spec, cluster, context) -> Admitted | Refused
        the refusals no profile can change (an unknown GPU, a context beyond the model's limit, a
        model the simulated profiler cannot describe), and what every later step reads: the GPU as
        the cluster reports it, what the cluster offers for it (read once), the profile key
    decide_admitted(admitted, profile, context)
        -> Refused                     the spec cannot be served here; the message says what to change
        -> ProfilingDecision           no profile yet: the profiling Job to run (or refused up front)
        -> ServingDecision             the recommendation, the final replicas per GPU, the mode, the
                                       predicted gain, the binding constraints, the explanation, and
                                       the ServingPlan that render/ turns into objects
    decide(spec, profile, cluster, context): both

A refusal is a value (Refused), returned, never raised. The operator's pass (planner/reconcile.py)
admits the spec while it observes and decides on the admitted spec; `llmpack plan` and `llmpack
advise` call the same functions, so the three give the same decision for the same inputs. Pure:
no kopf, no Kubernetes client, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmpack.advisor import AdvisorError, advise
from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.engine_memory import ONLINE_QUANTIZATION, engine_memory
from llmpack.advisor.memory import GIB, kv_bytes_per_token, vllm_args
from llmpack.advisor.options import options_for_spec
from llmpack.advisor.parallelism import Parallelism, per_worker, tensor_parallel_to_fit
from llmpack.advisor.parallelism import refusal as parallelism_refusal
from llmpack.api.engine_flags import BATCHED_TOKENS_FLAG, QUANTIZATION_FLAG, EngineFlags, engine_flags
from llmpack.api.llmdeployment import (
    ADVISED,
    AVAILABLE,
    PROFILE_READY,
    PROGRESSING,
    LLMDeploymentSpec,
    RecommendationStatus,
)
from llmpack.api.profile import ModelFacts, Profile
from llmpack.api.recommendation import Recommendation
from llmpack.hardware import GPU, UnknownGPUError, lookup_gpu
from llmpack.hardware.cluster import ClusterFacts, Offers
from llmpack.hardware.gpus import GPUS
from llmpack.hardware.sharing import MIG, Exclusive
from llmpack.planner.cost import basis, cost_status
from llmpack.planner.planning import (
    Candidate,
    candidates,
    choose,
    context_refusal,
    model_cache_plan,
    profile_key,
    profiling_job_name,
    profiling_plan,
    recommendation_status,
    serving_plan,
)
from llmpack.planner.prediction import Predictions
from llmpack.planner.refusal import Refused
from llmpack.render.plan import (
    DEFAULT_AUTOSCALING_METRIC,
    ModelCachePlan,
    OwnerRef,
    ProfilingPlan,
    ServingPlan,
)


@dataclass(frozen=True)
class Admitted:
    """A spec no early refusal stops, with what the later steps read: the GPU as the cluster
    reports it, what the cluster offers for it (one reading of the live cluster per pass), and
    the profile key and the name of the Job that measures it."""

    spec: LLMDeploymentSpec
    gpu: GPU
    offers: Offers
    key: str
    job: str


@dataclass(frozen=True)
class Context:
    """Who the objects are for and which images they run."""

    name: str
    namespace: str
    owner: OwnerRef
    profiler_image: str
    serving_image: str
    autoscaling_metric: str = DEFAULT_AUTOSCALING_METRIC  # what the cluster's metrics adapter exposes
    # Whose measurements a profile may serve: the namespace (the default: a profile measured in
    # one tenant's namespace, where that tenant can write the Job's result, never serves another),
    # or None where the cluster admin shares profiles across namespaces.
    profile_scope: str | None = None
    # Whether sharing.mode auto may choose a mode that puts different namespaces' pods on one GPU
    # (MPS through the device plugin): the cluster admin's choice (chart value
    # sharing.autoColocatesNamespaces).
    auto_colocates_namespaces: bool = True
    # The serving NetworkPolicy's admitted peers as a JSON array ("[]": any source), or None for no
    # NetworkPolicy: the cluster admin's choice (chart value networkPolicy).
    network_policy_from: str | None = None
    # The endpoint picker ("SERVICE:PORT" in the LLMDeployment's namespace) of an InferencePool
    # whose spec names none: the cluster admin's (chart value inferencePool.endpointPicker).
    endpoint_picker: str | None = None
    # Price of one GPU-hour per product (nvidia.com/gpu.product -> currency units), and the
    # currency: the cluster admin's (chart values cost.gpuHourPrices, cost.currency).
    gpu_hour_prices: tuple[tuple[str, float], ...] = ()
    currency: str = "USD"


@dataclass(frozen=True)
class ProfilingDecision:
    key: str
    plan: ProfilingPlan
    # Why no node could run the Job now (None: one can). Heeded by whoever starts the Job: the
    # operator does not refuse a Job that is already running because a node left meanwhile.
    capacity_refusal: Refused | None = None


@dataclass
class ServingDecision:
    recommendation: Recommendation  # the advisor's view: B_opt, KV, memory fit
    chosen: Candidate  # the mode, replicas per GPU and GPUs after the performance model
    plan: ServingPlan
    status: RecommendationStatus  # what `kubectl get llmd` and the Advised condition say
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) for events

    @property
    def explanation(self) -> str:
        return self.status.explanation


def offers_for(spec: LLMDeploymentSpec, cluster: ClusterFacts) -> Offers:
    return cluster.offers(spec.gpu.product, spec.gpu.node_selector)


def target_gpu(spec: LLMDeploymentSpec, cluster: ClusterFacts) -> GPU | Refused:
    """The GPU as the cluster reports it: the catalogue entry with the memory the nodes'
    nvidia.com/gpu.memory label says (the NVML total the device plugin divides), where one does."""
    return _reported_gpu(spec, offers_for(spec, cluster))


def _reported_gpu(spec: LLMDeploymentSpec, offers: Offers) -> GPU | Refused:
    try:
        gpu = lookup_gpu(spec.gpu.product)
    except UnknownGPUError as err:
        return Refused(PROGRESSING, "UnknownGPU", f"gpu.product: {err}")
    reported = offers.gpu_memory_mib
    return gpu.with_reported_memory(reported) if reported else gpu


def check_model(spec: LLMDeploymentSpec) -> Refused | None:
    """Refusals before any profiling: a context beyond the model's limit (vLLM refuses that
    --max-model-len, and rejects every longer request), and a model the simulated backend cannot
    describe. The vllm profiler reads the model's own config.json where it runs (a local path or
    the Hub) and refuses with the same words where the operator does not know the limit."""
    refusal = context_refusal(spec)
    if refusal is not None:
        return Refused(PROGRESSING, "ContextTooLong", refusal)
    if spec.profiling.backend == "vllm":
        return None
    if spec.model.architecture is None and find_architecture(spec.model.name) is None:
        return Refused(
            PROGRESSING,
            "UnknownModel",
            f"model {spec.model.name} is not in llmpack's catalogue and the simulated profiler cannot "
            "read its config: set spec.model.architecture (numLayers, numKvHeads, headDim, "
            "parameterBytes) from the model's config.json, or profile with backend vllm",
        )
    return None


def admit(spec: LLMDeploymentSpec, cluster: ClusterFacts, context: Context) -> Admitted | Refused:
    """The refusals no profile can change (an unknown GPU, a context beyond the model's limit, a
    model the simulated profiler cannot describe), made first, so that such a spec costs no API
    call; and the facts every later step reads, computed once."""
    offers = offers_for(spec, cluster)
    gpu = _reported_gpu(spec, offers)
    if isinstance(gpu, Refused):
        return gpu
    refusal = (
        check_model(spec)
        or check_engine_flags(spec)
        or check_weights(spec, gpu)
        or check_inference_pool(spec, context)
    )
    if refusal is not None:
        return refusal
    key = key_of(spec, context)
    return Admitted(spec=spec, gpu=gpu, offers=offers, key=key, job=profiling_job_name(context.name, key))


def check_engine_flags(spec: LLMDeploymentSpec) -> Refused | None:
    """Engine flags of serving.extraArgs that no plan can honour, refused before any Job: a vLLM
    spanning several GPUs (llmpack plans replicas of one GPU or less), and a scheduler budget
    (--max-num-batched-tokens) below what the spec fixes elsewhere (vLLM refuses max_num_seqs or,
    without chunked prefill, max_model_len above it: vllm/config/scheduler.py)."""
    flags = engine_flags(spec.serving.extra_args)
    if unreadable := flags.unreadable():
        return Refused(
            PROGRESSING,
            "InvalidSpec",
            f"serving.extraArgs {', '.join(unreadable)}: vLLM takes a whole number of at least 1 there "
            "(a --max-num-batched-tokens may be written 8k or 8K)",
        )
    if (parallel := check_parallelism(spec, flags)) is not None:
        return parallel
    budget = flags.max_num_batched_tokens
    if budget is None:
        return None
    spelled = flags.given[BATCHED_TOKENS_FLAG].spelling
    fixed_batch = spec.advisor.max_num_seqs
    if fixed_batch is not None and fixed_batch > budget:
        return Refused(
            PROGRESSING,
            "InvalidSpec",
            f"advisor.maxNumSeqs {fixed_batch} is above serving.extraArgs {spelled} {budget}: vLLM requires "
            "max_num_batched_tokens >= max_num_seqs; raise the one or lower the other",
        )
    if flags.chunked_prefill is False:
        request = spec.workload.prompt_tokens + spec.workload.output_tokens
        length = spec.model.max_model_len
        if (length or request) > budget:
            what = (
                f"model.maxModelLen {length} exceeds"
                if length
                else f"the typical request's {request} tokens exceed"
            )
            return Refused(
                PROGRESSING,
                "InvalidSpec",
                f"{what} serving.extraArgs {spelled} {budget}, and without chunked prefill "
                "vLLM schedules a whole prompt in one step: raise the budget or drop "
                "--no-enable-chunked-prefill",
            )
    return None


def check_parallelism(spec: LLMDeploymentSpec, flags: EngineFlags) -> Refused | None:
    """Parallel flags of serving.extraArgs: tensor and pipeline parallelism make one replica an
    engine of that many GPUs, which only sharing.mode exclusive (or auto, which then chooses it)
    can place, on a whole number of replicas' GPUs; data parallelism is what llmpack's replicas
    already are, and context parallelism splits the KV cache in a way llmpack does not size."""
    if flags.data_parallel_engines > 1:
        given = flags.text_of_flags("--data-parallel-size", "--data-parallel-size-local")
        return _parallelism_refused(
            f"serving.extraArgs {given} starts several vLLM engines in one replica; llmpack's replicas "
            "already are data-parallel engines (each its own GPUs, behind the deployment's Service): "
            "remove the flag and raise gpu.count (or let the autoscaler)"
        )
    if flags.context_parallel > 1:
        given = flags.text_of_flags("--prefill-context-parallel-size", "--decode-context-parallel-size")
        return _parallelism_refused(
            f"serving.extraArgs {given}: context parallelism splits each request's KV cache over GPUs, "
            "which llmpack does not size; remove the flag (tensor or pipeline parallelism it does size)"
        )
    parallelism = Parallelism.of(flags)
    world = parallelism.world_size
    if world == 1:
        return None
    given = flags.parallelism_text()
    mode = spec.sharing.mode
    if spec.gpu_pool_ref is not None:
        return _parallelism_refused(
            f"serving.extraArgs {given} makes each vllm serve use {world} GPUs, and a member of the "
            f"GPUPool {spec.gpu_pool_ref.name} runs each replica on a share of one GPU: remove the flag, "
            "or remove spec.gpuPoolRef and set sharing.mode exclusive"
        )
    if mode in ("mps", "mig"):
        return _parallelism_refused(
            f"serving.extraArgs {given} makes each vllm serve use {world} GPUs, and sharing.mode {mode} "
            "gives each replica one GPU or less (an MPS share or a MIG slice): set sharing.mode "
            "exclusive (a replica then holds its GPUs whole), or remove the flag and let llmpack pack "
            "replicas of a model that fits one GPU"
        )
    facts = _facts_before_profiling(spec)
    if facts is not None and (problem := parallelism_refusal(facts, parallelism)) is not None:
        return Refused(PROGRESSING, "InvalidSpec", f"serving.extraArgs {given}: {problem}")
    scaling = spec.autoscaling
    # with an autoscaler, gpu.count is its to set (the serving plan rounds it up to whole replicas)
    counts = (
        [("gpu.count", spec.gpu.count)]
        if scaling is None
        else [("autoscaling.minGPUs", scaling.min_gpus), ("autoscaling.maxGPUs", scaling.max_gpus)]
    )
    for name, count in counts:
        if count % world:
            lower, higher = count // world * world, (count // world + 1) * world
            fits = f"{lower} or {higher}" if lower else str(higher)
            return Refused(
                PROGRESSING,
                "InvalidSpec",
                f"{name} {count} is not a whole number of replicas of {world} GPUs (serving.extraArgs "
                f"{given}): set it to {fits}",
            )
    return None


def _parallelism_refused(message: str) -> Refused:
    return Refused(PROGRESSING, "ParallelismNotSupported", message)


def check_weights(spec: LLMDeploymentSpec, gpu: GPU) -> Refused | None:
    """A model whose weights alone exceed what one GPU offers a process, refused before any
    profiling, naming what would serve it. Only where the weights are known before profiling
    (spec.model.architecture, or the catalogue at the served dtype), as the engine flags change
    them (advisor/engine_memory.py: online quantization, LoRA slots, a draft model) and as
    tensor or pipeline parallelism divide them over GPUs (advisor/parallelism.py); a checkpoint
    quantized ahead of time publishes bytes llmpack cannot know, so profiling decides."""
    flags = engine_flags(spec.serving.extra_args)
    method = flags.text_of(QUANTIZATION_FLAG)
    if method and method.strip().lower() not in ONLINE_QUANTIZATION:
        return None
    whole = _facts_before_profiling(spec)
    if whole is None:
        return None
    parallelism = Parallelism.of(flags)
    served = engine_memory(per_worker(whole, parallelism), flags)
    weights = served.weight_bytes + served.lora_bytes
    if weights < gpu.usable_memory_bytes:
        return None
    larger = sorted(
        (g for g in GPUS.values() if g.usable_memory_bytes > weights * 1.1),
        key=lambda g: g.usable_memory_bytes,
    )
    bigger = (
        f"serve it on a GPU with more memory ({', '.join(g.product for g in larger[:3])}), "
        if larger
        else "no GPU in llmpack's catalogue holds them; serve it "
    )
    world = parallelism.world_size
    if world > 1:
        whose = f" per GPU of {world} ({flags.parallelism_text()})"
        parallel = "or with more GPUs per replica (a larger --tensor-parallel-size)"
    else:
        whose = ""
        split = tensor_parallel_to_fit(
            whole.model_copy(update={"weight_bytes": weights}), gpu.usable_memory_bytes
        )
        parallel = (
            f"or with tensor parallelism over {split} GPUs per replica (sharing.mode exclusive, "
            f'serving.extraArgs ["--tensor-parallel-size", "{split}"], gpu.count a multiple of {split})'
            if split
            else "or with tensor parallelism across more GPUs than one node has"
        )
    return Refused(
        PROGRESSING,
        "WeightsDoNotFit",
        f"the weights of {spec.model.name} take {weights / GIB:.1f} GiB{whose}"
        + (f" ({'; '.join(served.notes)})" if served.notes else "")
        + f" and one {gpu.product} offers a "
        f"process {gpu.usable_memory_bytes / GIB:.1f} GiB: {bigger}from a quantized checkpoint (FP8 "
        f"halves 16-bit weights, 4-bit AWQ or GPTQ quarters them), {parallel}",
    )


def _facts_before_profiling(spec: LLMDeploymentSpec) -> ModelFacts | None:
    """The model as the catalogue or spec.model.architecture describe it (None: neither does),
    the architecture's bytes winning over the catalogue's."""
    arch, known = spec.model.architecture, find_architecture(spec.model.name)
    dtype = spec.model.dtype
    if known is not None and (arch is None or arch.num_layers == known.num_layers):
        facts = known.model_facts(name=spec.model.name, dtype=dtype)
        return facts if arch is None else facts.model_copy(update={"weight_bytes": arch.parameter_bytes})
    if arch is None:
        return None
    return ModelFacts(
        name=spec.model.name,
        dtype=dtype,
        num_layers=arch.num_layers,
        num_kv_heads=arch.num_kv_heads,
        head_dim=arch.head_dim,
        weight_bytes=arch.parameter_bytes,
        kv_bytes_per_token=kv_bytes_per_token(arch.num_layers, arch.num_kv_heads, arch.head_dim),
        max_model_len=arch.max_position_embeddings or 1,
    )


def check_inference_pool(spec: LLMDeploymentSpec, context: Context) -> Refused | None:
    """An InferencePool needs an endpoint picker, from the spec or the cluster admin."""
    pool = spec.serving.inference_pool
    if pool is None or pool.endpoint_picker_ref is not None or context.endpoint_picker:
        return None
    return Refused(
        PROGRESSING,
        "NoEndpointPicker",
        "serving.inferencePool needs an endpoint picker and the cluster admin named none: set "
        "serving.inferencePool.endpointPickerRef.name to the picker's Service (the chart's "
        "inferencePool.endpointPicker sets a default for all)",
    )


def key_of(spec: LLMDeploymentSpec, context: Context) -> str:
    image = spec.profiling.image or context.profiler_image
    return profile_key(spec, image, context.owner.uid, scope=context.profile_scope)


def model_cache(
    spec: LLMDeploymentSpec, context: Context, *, claim_uid: str | None = None
) -> ModelCachePlan | None:
    """The model cache of spec.model.cache, filled (or the admin's shared one checked: `claim_uid`
    is its uid as observed) before anything loads the model."""
    return model_cache_plan(
        name=context.name,
        namespace=context.namespace,
        owner=context.owner,
        spec=spec,
        image=context.profiler_image,
        claim_uid=claim_uid,
    )


def profiling(spec: LLMDeploymentSpec, cluster: ClusterFacts, context: Context) -> ProfilingDecision:
    """The profiling Job for `spec` (its name is stable: the controller finds a running one by it)."""
    offers = offers_for(spec, cluster)
    return _profiling(spec, offers, key_of(spec, context), context)


def _profiling(spec: LLMDeploymentSpec, offers: Offers, key: str, context: Context) -> ProfilingDecision:
    plan = profiling_plan(
        name=context.name,
        namespace=context.namespace,
        owner=context.owner,
        spec=spec,
        key=key,
        image=context.profiler_image,
        dra=not offers.exclusive_gpus and bool(offers.mps_dra_gpus),
    )
    return ProfilingDecision(
        key=key, plan=plan, capacity_refusal=check_profiling_capacity(spec, offers, plan)
    )


def check_profiling_capacity(spec: LLMDeploymentSpec, offers: Offers, plan: ProfilingPlan) -> Refused | None:
    """Refuse to profile where no node offers what the Job asks for: its pod would sit Pending
    until the profiling deadline. The Job takes a whole GPU (through the device plugin, or a
    DRA claim where only DRA offers the product) or the forced MIG slice; a GPU shared through
    the device plugin's MPS or cut into MIG slices cannot measure the whole GPU."""
    mig_profile = plan.mig_profile
    if plan.gpus > 1 and offers.most_gpus_on_a_node < plan.gpus:
        problem = (
            f"one engine of serving.extraArgs {engine_flags(spec.serving.extra_args).parallelism_text()} "
            f"needs {plan.gpus} whole {spec.gpu.product} (nvidia.com/gpu) on one node, and the most one "
            f"node offers is {offers.most_gpus_on_a_node}"
        )
    elif mig_profile and not offers.mig_slices.get(mig_profile):
        offered = ", ".join(sorted(offers.mig_slices)) or "none"
        problem = f"no node offers the MIG slice nvidia.com/mig-{mig_profile} (offered slices: {offered})"
    elif not offers.modes:
        problem = f"no node offers {spec.gpu.product} (the cluster offers nothing for it)"
        if spec.gpu.node_selector:
            problem = (
                f"no node matching gpu.nodeSelector {selector_text(spec.gpu.node_selector)} offers "
                f"{spec.gpu.product}"
            )
    elif not mig_profile and not offers.exclusive_gpus and not offers.mps_dra_gpus:
        problem = (
            f"profiling needs a whole {spec.gpu.product} (nvidia.com/gpu or a DRA claim), and the "
            f"cluster offers it only as {offers.describe()}"
        )
        if offers.mig_slices:
            problem += (
                ". To profile on a MIG slice, set sharing.mode mig and sharing.migProfile to the slice "
                "it will serve on"
            )
    else:
        return None
    return Refused(
        PROFILE_READY,
        "NoMatchingNodes",
        f"cannot profile: {problem}. Change sharing.mode or gpu.product (nvidia.com/gpu.product of a "
        "node), change sharing.migProfile, or add nodes",
        retryable=True,
    )


def recommend(spec: LLMDeploymentSpec, profile: Profile, gpu: GPU) -> Recommendation | Refused:
    """The advisor on the profile, with the spec's settings; its refusal (AdvisorError, the
    advisor's own exception) becomes the planner's value here."""
    try:
        return advise(profile, options_for_spec(spec), gpu)
    except AdvisorError as err:
        return Refused(ADVISED, "AdvisorRefused", str(err))


def serving(
    spec: LLMDeploymentSpec, profile: Profile, cluster: ClusterFacts, context: Context
) -> ServingDecision | Refused:
    """The serving decision for a profiled spec (see serving_for)."""
    admitted = admit(spec, cluster, context)
    return admitted if isinstance(admitted, Refused) else serving_for(admitted, profile, context)


# The candidates of one recommendation: their predictions, the refusals of modes that cannot
# hold a replica, and the candidates themselves.
Ways = tuple[Predictions, list[str], list[Candidate]]


def _ways_to_serve(admitted: Admitted, profile: Profile, rec: Recommendation, context: Context) -> Ways:
    """The candidates for `rec`, their predictions and the refusals of modes that cannot hold it."""
    predictions = Predictions.build(profile, rec, admitted.gpu)
    refusals: list[str] = []
    found = candidates(
        admitted.spec,
        admitted.gpu,
        admitted.offers,
        rec.per_replica_memory_bytes,
        rec.replicas_per_gpu,
        predictions.predict,
        refusals,
        auto_colocates_namespaces=context.auto_colocates_namespaces,
    )
    return predictions, refusals, found


def _largest_batch_on_a_mig_slice(
    admitted: Admitted, profile: Profile, rec: Recommendation, context: Context
) -> tuple[Recommendation, Ways] | None:
    """Where MIG is asked for (mig, or auto with nothing else able) and one replica at B_opt fits
    no offered slice: the advice at the largest batch below B_opt whose replica fits one (a
    replica's memory grows with its batch, so a bisection finds it), and its candidates; None
    where not even B = 1 fits, or the user fixed the batch."""
    spec = admitted.spec
    if not admitted.offers.mig_slices or spec.advisor.max_num_seqs is not None:
        return None
    if not MIG.requested_by(spec.sharing.mode, spec.sharing.mps_provider):
        return None
    options = options_for_spec(spec)

    def on_a_slice(batch: int) -> tuple[Recommendation, Ways] | None:
        try:
            smaller = advise(profile, options.model_copy(update={"max_batch": batch}), admitted.gpu)
        except AdvisorError:
            return None
        ways = _ways_to_serve(admitted, profile, smaller, context)
        return (smaller, ways) if any(c.sharing.mode == "mig" for c in ways[2]) else None

    best, low, high = None, 1, rec.b_opt - 1
    while low <= high:
        middle = (low + high) // 2
        fits = on_a_slice(middle)
        if fits is None:
            high = middle - 1
        else:
            best, low = fits, middle + 1
    return best


def serving_for(admitted: Admitted, profile: Profile, context: Context) -> ServingDecision | Refused:
    """The serving decision for an admitted, profiled spec: advise (B_opt, KV, the replicas per
    GPU that pay under MPS), pick the mode the cluster offers by predicted tokens/s per GPU, size
    what each replica's process may hold in that mode."""
    spec, gpu, offers = admitted.spec, admitted.gpu, admitted.offers
    rec = recommend(spec, profile, gpu)
    if isinstance(rec, Refused):
        return rec
    predictions, refusals, found = _ways_to_serve(admitted, profile, rec, context)
    smaller = None if found else _largest_batch_on_a_mig_slice(admitted, profile, rec, context)
    reduced = ""
    if smaller is not None:
        reduced = (
            f"B_opt = {rec.b_opt} does not fit the largest MIG slice offered ({'; '.join(refusals)}): "
            f"serving B = {smaller[0].b_opt}, the largest batch one replica holds on a slice."
        )
        rec, (predictions, refusals, found) = smaller
    chosen = choose(spec, found, offers, refusals)
    if isinstance(chosen, Refused):
        if spec.gpu.node_selector:
            where = f" (only nodes matching gpu.nodeSelector {selector_text(spec.gpu.node_selector)} count)"
            return Refused(AVAILABLE, chosen.reason, chosen.message + where, retryable=True)
        return chosen
    # One decision (planning.replica_memory): what the chosen mode presents to each replica's
    # process, so that vLLM's start-up check of free memory passes under an MPS cap too.
    utilization = chosen.memory.gpu_memory_utilization
    args = vllm_args(
        max_num_seqs=rec.b_opt,
        kv_cache_bytes=rec.kv_cache_bytes,
        gpu_memory_utilization=utilization,
        max_model_len=rec.max_model_len,
    )
    plan = serving_plan(
        name=context.name,
        namespace=context.namespace,
        owner=context.owner,
        spec=spec,
        chosen=chosen,
        vllm_args=args,
        per_replica_bytes=rec.per_replica_memory_bytes,
        image=context.serving_image,
        b_opt=rec.b_opt,
        autoscaling_metric=context.autoscaling_metric,
        weight_bytes=profile.model.weight_bytes,
        network_policy_from=context.network_policy_from,
        endpoint_picker=context.endpoint_picker,
    )
    warnings: list[tuple[str, str]] = [("BatchReducedToFitMIG", reduced)] if reduced else []
    explanation = _explanation(rec, chosen, predictions, plan, found, utilization)
    figures = basis(profile, spec.gpu.product)
    if figures != "measured":
        explanation += f" The figures (tokens/s, gain, ITL, cost) are {figures}: " + (
            "the simulated profiler's, not a measurement."
            if figures == "simulated"
            else f"a profile measured on other hardware, not a measurement of {spec.gpu.product}."
        )
    if (disagreement := kv_disagreement(profile)) is not None:
        explanation = f"{explanation} {disagreement}"
        warnings.append(("KVBytesPerTokenDisagree", disagreement))
    status = recommendation_status(
        plan=plan,
        chosen=chosen,
        b_opt=rec.b_opt,
        kv_cache_bytes=rec.kv_cache_bytes,
        gpu_memory_utilization=utilization,
        max_model_len=rec.max_model_len,
        per_replica_bytes=rec.per_replica_memory_bytes,
        baseline_tokens_per_s=predictions.baseline_tokens_per_s,
        memory_freed_fraction=rec.memory_freed_fraction,
        vllm_args=args,
        explanation=explanation,
    )
    price = dict(context.gpu_hour_prices).get(spec.gpu.product)
    cost = None
    if price is not None:
        cost = cost_status(recommendation=status, gpu_hour_price=price, currency=context.currency)
    status = status.model_copy(update={"basis": figures, "cost": cost})
    return ServingDecision(recommendation=rec, chosen=chosen, plan=plan, status=status, warnings=warnings)


def decide(
    spec: LLMDeploymentSpec, profile: Profile | None, cluster: ClusterFacts, context: Context
) -> ProfilingDecision | ServingDecision | Refused:
    """The whole decision; a refusal says what to change."""
    admitted = admit(spec, cluster, context)
    if isinstance(admitted, Refused):
        return admitted
    return decide_admitted(admitted, profile, context)


def decide_admitted(
    admitted: Admitted, profile: Profile | None, context: Context
) -> ProfilingDecision | ServingDecision | Refused:
    """The decision for a spec `admit` let through: profile it, or serve it from `profile`."""
    if profile is None:
        return _profiling(admitted.spec, admitted.offers, admitted.key, context)
    return serving_for(admitted, profile, context)


def _explanation(
    rec: Recommendation,
    chosen: Candidate,
    predictions: Predictions,
    plan: ServingPlan,
    found: list[Candidate],
    utilization: float,
) -> str:
    explanation = f"{chosen.label}: {rec.explanation}"
    if isinstance(chosen.sharing, Exclusive) and plan.gpus_per_replica > 1:
        explanation += (
            f" Deployed one replica per {plan.gpus_per_replica} GPUs (one vLLM engine over them, "
            f"tensor x pipeline parallel), {plan.replicas} in all on {plan.gpus} GPUs; memory figures are "
            f"one GPU's share, tokens/s per GPU the engine's over its GPUs (--gpu-memory-utilization "
            f"{utilization:.3f} of each)."
        )
    elif isinstance(chosen.sharing, Exclusive):
        explanation += f" Deployed one replica per GPU (--gpu-memory-utilization {utilization:.3f})."
    elif isinstance(chosen.sharing, MIG):
        explanation += (
            f" Deployed one replica per {chosen.mig_profile} slice, {plan.replicas} in all "
            f"(--gpu-memory-utilization {utilization:.3f} of the slice)."
        )
    else:
        explanation += (
            f" Each replica's process sees {chosen.memory.presented}, so it runs with "
            f"--gpu-memory-utilization {utilization:.3f} (vLLM checks at start-up that this "
            "fraction of the GPU's total is free"
            + (
                f"; the {rec.gpu_memory_utilization:.3f} above is an uncapped slot's)."
                if f"{rec.gpu_memory_utilization:.3f}" != f"{utilization:.3f}"
                else ")."
            )
        )
    if len(found) > 1:
        explanation += (
            " Modes compared (tokens/s per GPU): "
            + ", ".join(
                f"{c.label} {c.tokens_per_s_per_gpu:,.0f}" if c.tokens_per_s_per_gpu else f"{c.label} n/a"
                for c in found
            )
            + "."
        )
    return explanation


def kv_disagreement(profile: Profile) -> str | None:
    """A sentence for the status when the engine's measured KV capacity disagreed with llmpack's
    reading of the model's config (the profile then carries the engine's figure, which sized it)."""
    model = profile.model
    if model.kv_bytes_per_token_config is None or model.kv_bytes_per_token_config == model.kv_bytes_per_token:
        return None
    return (
        f"KV cache per token: the engine measured {model.kv_bytes_per_token:,} bytes, llmpack's reading "
        f"of the model's config gives {model.kv_bytes_per_token_config:,}; the engine's figure sized "
        "this deployment."
    )


def gpus_for(tokens_per_s: float, status: RecommendationStatus) -> int | Refused:
    """GPUs that serve `tokens_per_s` (prompt + output) at the predicted tokens/s per GPU of this
    decision, i.e. at B_opt within the SLO: the same figure `kubectl get llmd -o wide` shows and
    the autoscaler's target is sized from. Refused when the profile gave no prediction."""
    per_gpu = status.predicted_tokens_per_second_per_gpu
    if not per_gpu:
        return Refused(
            ADVISED,
            "NoPrediction",
            "the performance model could not calibrate on this profile, so there is no tokens/s per "
            "GPU to size a fleet from; profile more batch sizes (advisor.candidateBatchSizes)",
        )
    return max(1, math.ceil(tokens_per_s / per_gpu))


def selector_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
