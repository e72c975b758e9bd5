"""advise(profile, options) -> Recommendation: the whole advisor in one pure function.

points --(bca)--> B_opt --(memory)--> KV cache and per-replica memory
       --(packing)--> replicas memory holds --(perfmodel)--> replicas that pay, MIG slice
       --(replica_memory)--> --gpu-memory-utilization --> memory freed, vLLM flags

The replicas per GPU and the flags here are the ones the operator deploys under MPS through a DRA
claim (planner/decide.py uses this recommendation; it only picks the mode the cluster offers).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor import bca, kv_layout, memory, packing, perfmodel, perfmodel_packing
from llmpack.advisor.architectures import find_architecture
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.gpus import gpu_for_profile
from llmpack.advisor.options import AdvisorOptions
from llmpack.advisor.replica_memory import replica_memory
from llmpack.api.profile import Profile
from llmpack.api.recommendation import BOptSource, CandidateVerdict, Recommendation
from llmpack.hardware import GPU
from llmpack.hardware.sharing import MIG, MPSThroughDRA

GIB = memory.GIB


def advise(profile: Profile, options: AdvisorOptions | None = None, gpu: GPU | None = None) -> Recommendation:
    """Recommend --max-num-seqs, the KV cache, and replicas per GPU for one profile.

    `gpu` is the GPU to pack onto (default: the one the profile was measured on). Raises
    AdvisorError with a message a user can act on when no point is usable, no point meets the
    SLO, or one replica does not fit the GPU."""
    options = options or AdvisorOptions()
    model = profile.model
    measured_gpu = gpu_for_profile(profile)
    target = gpu or measured_gpu
    same_gpu = target.product == measured_gpu.product
    notes = list(profile.notes)
    if not same_gpu:
        notes.append(
            f"throughput and latency were measured on {measured_gpu.product}; memory and packing are "
            f"computed for {target.product}"
        )
    batch = choose_batch(profile, options)
    size = size_replica(profile, options, target, batch.b_opt)
    placed = place_replicas(profile, options, target, batch.b_opt, size.per_replica)
    freed = free_memory(profile, target, same_gpu, size, batch.b_opt)
    point = profile.point(batch.b_opt)
    args = memory.vllm_args(
        max_num_seqs=batch.b_opt,
        kv_cache_bytes=size.budget.bytes,
        gpu_memory_utilization=placed.utilization,
        max_model_len=size.max_model_len,
    )
    if not size.non_kv.measured:
        notes.append(
            "memory besides the KV cache is an estimate (the profile measured none); a profile with "
            "peak GPU memory per point gives a tighter packing"
        )
    return Recommendation(
        model_name=model.name,
        policy=options.policy,
        epsilon=options.effective_epsilon,
        latency_cap_ms=batch.cap,
        latency_cap_source=batch.cap_source,
        itl_p99_cap_ms=options.slo_itl_p99_ms,
        b_min=batch.b_min,
        b_opt=batch.b_opt,
        b_opt_source=batch.source,
        candidates=batch.candidates,
        measured_tokens_per_s=point.total_tokens_per_s if point and same_gpu else None,
        measured_itl_mean_ms=point.itl_or_tpot_mean_ms if point and same_gpu else None,
        prompt_tokens=size.prompt,
        output_tokens=size.output,
        max_model_len=size.max_model_len,
        kv_tokens=size.budget.tokens,
        kv_cache_bytes=size.budget.bytes,
        kv_sizing=size.budget.sizing,
        weight_bytes=model.weight_bytes,
        non_kv_memory_bytes=size.non_kv.bytes,
        non_kv_memory_source=size.non_kv.source,
        per_replica_memory_bytes=size.per_replica,
        gpu_product=target.product,
        gpu_memory_bytes=target.memory_bytes,
        gpu_usable_memory_bytes=target.usable_memory_bytes,
        replicas_per_gpu=placed.shared.replicas,
        replicas_memory_fit=placed.fit.replicas_per_gpu,
        replicas_limited_by=placed.shared.limited_by,
        packing_reason=placed.shared.reason,
        slot_bytes=packing.slot_bytes(target.usable_memory_bytes, placed.shared.replicas),
        gpu_memory_utilization=placed.utilization,
        mig_profile=placed.mig.profile.name if placed.mig else None,
        mig_instances_per_gpu=placed.mig.instances_per_gpu if placed.mig else None,
        mig_gpu_memory_utilization=placed.mig_utilization,
        baseline_kv_pool_bytes=freed.baseline_kv_pool_bytes,
        kv_in_use_bytes=freed.kv_in_use_bytes,
        memory_freed_bytes=freed.freed_bytes,
        memory_freed_fraction=freed.fraction,
        vllm_args=args,
        explanation=" ".join(
            [
                batch.text,
                size.describe(),
                placed.describe(target),
                _freed_text(freed, target),
            ]
        ),
        notes=notes,
    )


def _freed_text(freed: packing.MemoryFreed, target: GPU) -> str:
    return (
        f"Versus one vLLM instance with defaults (KV pool {freed.baseline_kv_pool_bytes / GIB:.2f} GiB) "
        f"this frees {freed.freed_bytes / GIB:.2f} GiB, {freed.fraction:.1%} of the GPU's "
        f"{target.memory_bytes / GIB:.0f} GiB."
    )


# 1. The batch size ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchChoice:
    b_opt: int
    source: BOptSource
    candidates: list[CandidateVerdict]
    cap: float | None  # the mean ITL cap, ms
    cap_source: str
    b_min: int | None
    text: str  # the explanation's sentences


def choose_batch(profile: Profile, options: AdvisorOptions) -> BatchChoice:
    """B_opt by the BCA (bca.select_batch), or the user's fixed advisor.maxNumSeqs with the
    advisor's verdicts shown beside it and any SLO it breaks named."""
    if options.max_num_seqs is None:
        selection = bca.select_batch(profile.points, options)
        cap = _batch_cap(options, selection.b_opt)
        if cap is not None:
            batch, source, why = cap
            return BatchChoice(
                batch,
                source,
                [v.model_copy(update={"chosen": False}) for v in selection.verdicts],
                selection.latency_cap_ms,
                selection.latency_cap_source,
                selection.b_min,
                f"B = {batch}: {why} {selection.explanation}",
            )
        return BatchChoice(
            selection.b_opt,
            "advisor",
            selection.verdicts,
            selection.latency_cap_ms,
            selection.latency_cap_source,
            selection.b_min,
            selection.explanation,
        )
    b_opt = options.max_num_seqs
    text = f"B = {b_opt}: fixed by the user (advisor.maxNumSeqs); the advisor's choice was skipped."
    broken = _slos_broken_at(profile, b_opt, options)
    if broken:
        text += f" Warning: the fixed B={b_opt} does not honour the SLO: {broken}."
    try:
        selection = bca.select_batch(profile.points, options)
    except AdvisorError:
        return BatchChoice(b_opt, "override", [], None, "", None, text)
    verdicts = [v.model_copy(update={"chosen": v.max_num_seqs == b_opt}) for v in selection.verdicts]
    return BatchChoice(
        b_opt,
        "override",
        verdicts,
        selection.latency_cap_ms,
        selection.latency_cap_source,
        selection.b_min,
        text,
    )


def _batch_cap(options: AdvisorOptions, b_opt: int) -> tuple[int, BOptSource, str] | None:
    """The tightest bound below the advisor's B_opt, its source and why: the scheduler's token
    budget the spec fixes (vLLM requires max_num_batched_tokens >= max_num_seqs), or the largest
    batch the memory offered holds (a MIG slice); the budget where both bind equally."""
    caps: list[tuple[int, BOptSource, str]] = []
    if options.max_num_batched_tokens is not None:
        budget = options.max_num_batched_tokens
        caps.append(
            (
                budget,
                "scheduler",
                f"--max-num-batched-tokens {budget} bounds it (vLLM requires max_num_batched_tokens >= "
                f"max_num_seqs); the advisor's B_opt = {b_opt}.",
            )
        )
    if options.max_batch is not None:
        caps.append(
            (
                options.max_batch,
                "memory",
                f"the largest batch one replica holds in the memory offered; the advisor's B_opt = {b_opt} "
                "does not fit.",
            )
        )
    binding = [c for c in caps if c[0] < b_opt]
    return min(binding, key=lambda c: c[0]) if binding else None


# 2. The KV cache and the memory of one replica -------------------------------------------------


@dataclass(frozen=True)
class ReplicaSize:
    prompt: int
    output: int
    same_workload: bool  # the workload sized for is the one profiled
    budget: memory.KVBudget
    non_kv: memory.NonKVMemory
    max_model_len: int
    context_text: str

    @property
    def per_replica(self) -> int:
        return self.non_kv.bytes + self.budget.bytes

    def describe(self) -> str:
        budget, non_kv = self.budget, self.non_kv
        return (
            f"Its KV cache holds {budget.describe()} ({budget.bytes / GIB:.2f} GiB; sized by "
            f"{budget.sizing}); with {non_kv.bytes / GIB:.2f} GiB besides ({non_kv.source}) one "
            f"replica needs {self.per_replica / GIB:.2f} GiB. {self.context_text}"
        )


def size_replica(profile: Profile, options: AdvisorOptions, target: GPU, b_opt: int) -> ReplicaSize:
    """The KV cache of one replica of B_opt and the context it allows; raises AdvisorError when the
    workload or a fixed --max-model-len is beyond the model's limit."""
    model = profile.model
    prompt = options.prompt_tokens or profile.workload.prompt_tokens
    output = options.output_tokens or profile.workload.output_tokens
    fixed_len = options.max_model_len
    limit = _context_limit(profile, options)
    if limit.known:
        problem = memory.context_problem(
            model.name,
            limit.tokens,
            limit.source,
            length=(fixed_len, "--max-model-len") if fixed_len is not None else None,
            workload=(prompt + output, f"the typical request's {prompt} + {output} tokens"),
        )
        if problem is not None:
            raise AdvisorError(problem)
    same_workload = (prompt, output) == (profile.workload.prompt_tokens, profile.workload.output_tokens)
    layout = kv_layout.layout_of(model)
    in_flight = in_flight_tokens(options, target)
    non_kv = memory.non_kv_memory(profile, b_opt)
    if layout.is_full_attention:
        measured_peak = _measured_peak_tokens(profile, b_opt) if same_workload else None
        budget = memory.kv_budget(
            batch=b_opt,
            prompt_tokens=prompt,
            output_tokens=output,
            bytes_per_token=model.kv_bytes_per_token,
            max_model_len=fixed_len,  # None: the pool is sized by the batch; the context follows it
            block_size=profile.block_size,
            measured_peak_tokens=measured_peak,
        )
        budget = _fit_measured_batch(
            budget, non_kv.bytes, target, measured_peak, model.kv_bytes_per_token, profile.block_size
        )
    else:
        budget = memory.layout_kv_budget(
            layout,
            batch=b_opt,
            prompt_tokens=prompt,
            output_tokens=output,
            in_flight_tokens=in_flight,
            max_model_len=fixed_len,
            block_size=profile.block_size,
        )
    if fixed_len is not None:
        max_model_len = fixed_len
        context_text = (
            f"Requests may hold up to {fixed_len:,} tokens (prompt + output; --max-model-len as fixed, "
            f"{limit.describe()}); the KV cache holds at least one such request."
        )
    else:
        if layout.is_full_attention:
            max_model_len = memory.context_for_pool(limit.tokens, budget.tokens, profile.block_size)
        else:
            max_model_len = layout.longest_context(
                budget.bytes, limit=limit.tokens, block_size=profile.block_size, in_flight_tokens=in_flight
            )
        context_text = (
            f"Requests may hold up to {max_model_len:,} tokens (prompt + output; --max-model-len): "
            f"{limit.describe()} and one replica's KV cache holds "
            + (f"{budget.tokens:,}." if layout.is_full_attention else "one such request.")
        )
        scheduled = options.max_num_batched_tokens
        if not options.chunked_prefill and scheduled is not None and max_model_len > scheduled:
            # without chunked prefill a prompt is scheduled whole: vLLM refuses a longer context
            max_model_len = scheduled
            context_text += (
                f" Without chunked prefill --max-num-batched-tokens {scheduled:,} bounds it to {scheduled:,}."
            )
    return ReplicaSize(prompt, output, same_workload, budget, non_kv, max_model_len, context_text)


# 3. Packing: what memory holds, then as many as the performance model says still pay ---------


@dataclass(frozen=True)
class Placement:
    fit: packing.Packing  # what memory holds
    shared: SharedReplicas  # what pays
    utilization: float  # --gpu-memory-utilization under MPS through a DRA claim
    mig: packing.MIGPlacement | None
    mig_utilization: float | None

    def describe(self, target: GPU) -> str:
        fit, shared = self.fit, self.shared
        return (
            f"{fit.replicas_per_gpu} replica{'s fit' if fit.replicas_per_gpu != 1 else ' fits'} on one "
            f"{target.product} (limited by {fit.limited_by}). Packing: {shared.reason.rstrip('.')}, so "
            + (f"{shared.replicas} share a GPU" if shared.replicas > 1 else "one replica runs per GPU")
            + f" under MPS, each with --gpu-memory-utilization {self.utilization:.3f}."
        )


def place_replicas(
    profile: Profile, options: AdvisorOptions, target: GPU, b_opt: int, per_replica: int
) -> Placement:
    fit = packing.pack_replicas(
        per_replica,
        target.usable_memory_bytes,
        max_replicas_per_gpu=options.max_replicas_per_gpu,
        fixed_replicas=options.replicas_per_gpu,
        device_name=target.product,
    )
    shared = shared_replicas(profile, target, b_opt, fit, options)
    # What the replica's process is started with: one decision (replica_memory), for MPS through
    # a DRA claim pinned to the replica's memory, the mode the paper measured.
    utilization = replica_memory(
        MPSThroughDRA(), target, per_replica, replicas_per_gpu=shared.replicas
    ).gpu_memory_utilization
    mig = packing.smallest_mig_profile(per_replica, target)
    mig_utilization = (
        replica_memory(MIG(mig.profile), target, per_replica).gpu_memory_utilization if mig else None
    )
    return Placement(fit, shared, utilization, mig, mig_utilization)


# 4. Memory freed versus one instance with vLLM's defaults ---------------------------------------


def free_memory(
    profile: Profile, target: GPU, same_gpu: bool, size: ReplicaSize, b_opt: int
) -> packing.MemoryFreed:
    model = profile.model
    if same_gpu and profile.kv_capacity_tokens is not None and model.kv_layout is None:
        baseline_pool = profile.kv_capacity_tokens * model.kv_bytes_per_token
    else:
        gmu = profile.gpu_memory_utilization or memory.VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
        baseline_pool = packing.default_kv_pool_bytes(target.usable_memory_bytes, size.non_kv.bytes, gmu)
    # KV in use at B_opt: the paper's definition, which reproduces its Fig. 12 figures to 0.05
    # points, is the measured peak usage fraction times the default instance's pool. (The run at
    # B_opt had its own pool, < 0.5% smaller; applying the fraction to that pool instead gives
    # 63.3 / 45.2 / 10.6% rather than the paper's 63.2 / 45.1 / 10.5%.)
    point = profile.point(b_opt)
    usage = point.kv_cache_usage_peak if point is not None else None
    if same_gpu and size.same_workload and usage is not None and profile.kv_capacity_tokens is not None:
        in_use = round(usage * baseline_pool)
    else:
        in_use = size.budget.bytes
    return packing.memory_freed(baseline_pool, in_use, target.memory_bytes)


@dataclass(frozen=True)
class SharedReplicas:
    """Replicas of B_opt per GPU under MPS, and why no more."""

    replicas: int
    limited_by: str  # packing.Packing's reasons, or "min_replica_gain" / "slo" (the performance model)
    reason: str  # a sentence


def shared_replicas(
    profile: Profile, target: GPU, b_opt: int, fit: packing.Packing, options: AdvisorOptions
) -> SharedReplicas:
    """As many replicas as memory holds (`fit`), trimmed to where one more is still predicted to add
    `options.min_replica_gain` tokens/s per GPU and the mean ITL stays within the SLO
    (perfmodel_packing.pack). A fixed count (advisor.replicasPerGPU) wins; a profile the performance model
    cannot calibrate packs by memory and says so."""
    if options.replicas_per_gpu is not None:
        return SharedReplicas(fit.replicas_per_gpu, fit.limited_by, "replicas per GPU fixed by the user.")
    try:
        model = perfmodel.calibrate(profile, gpu=target)  # another GPU: rescaled by bandwidth
    except AdvisorError as err:
        reason = f"no performance prediction ({err}); packed by memory."
        return SharedReplicas(fit.replicas_per_gpu, fit.limited_by, reason)
    decision = perfmodel_packing.pack(
        model,
        b_opt,
        max_replicas=options.max_replicas_per_gpu,
        min_gain=options.min_replica_gain,
        slo_itl_ms=options.slo_itl_mean_ms,
        memory_fit=fit.fit_by_memory,
    )
    replicas = max(1, decision.replicas)
    if replicas >= fit.replicas_per_gpu:
        return SharedReplicas(fit.replicas_per_gpu, fit.limited_by, decision.reason)
    limited_by = "min_replica_gain" if decision.limited_by == "min_gain" else decision.limited_by
    return SharedReplicas(replicas, limited_by, decision.reason)


@dataclass(frozen=True)
class ContextLimit:
    """The longest context the model allows, as far as the advisor can tell."""

    tokens: int
    source: str  # where the figure comes from, for people
    known: bool  # False: the model's own limit is unknown and `tokens` is the profiled context

    def describe(self) -> str:
        if self.known:
            return f"the model allows {self.tokens:,}"
        return f"the model's own limit is unknown, so no more than the {self.tokens:,} it was profiled with"


def _context_limit(profile: Profile, options: AdvisorOptions) -> ContextLimit:
    """The model's context limit: what the profiler read from its config.json (vLLM's rules) or
    the catalogue, else the caller's (spec.model.architecture), else the catalogue's for its name,
    else the context it was profiled with (which the engine accepted)."""
    model = profile.model
    if model.max_position_embeddings is not None:
        return ContextLimit(model.max_position_embeddings, "as its profile records", True)
    if options.context_limit is not None:
        return ContextLimit(options.context_limit, "as given", True)
    arch = find_architecture(model.name)
    if arch is not None:
        catalogue = "max_position_embeddings in llmpack's catalogue"
        return ContextLimit(arch.max_position_embeddings, catalogue, True)
    return ContextLimit(model.max_model_len, "the profiled --max-model-len", False)


def _slos_broken_at(profile: Profile, batch: int, options: AdvisorOptions) -> str:
    """A fixed batch size skips the advisor, so it may break an SLO; say which, from the profile's
    point at that batch ("" when none is broken or the batch was not measured)."""
    point = profile.point(batch)
    if point is None:
        return ""
    limits = [limit for limit in bca.latency_limits(profile.points, options) if limit.from_slo]
    return "; ".join(f for limit in limits if (f := limit.failure(point)) is not None)


def _fit_measured_batch(
    budget: memory.KVBudget,
    non_kv_bytes: int,
    gpu: GPU,
    measured_peak: int | None,
    bytes_per_token: int,
    block_size: int,
) -> memory.KVBudget:
    """B x (prompt + output) assumes every sequence is at full length at once. When that does not
    fit on one GPU but the KV peak measured at this batch does, the replica gets all the KV cache
    one GPU can offer instead: the batch demonstrably ran in less, and running short of KV makes
    vLLM preempt (slower), not fail."""
    if packing.fit_by_memory(non_kv_bytes + budget.bytes, gpu.usable_memory_bytes) >= 1:
        return budget
    if measured_peak is None:
        return budget  # packing reports that it does not fit
    room = gpu.usable_memory_bytes - packing.STARTUP_RESERVE_BYTES - non_kv_bytes
    tokens = max(room // bytes_per_token // block_size * block_size, 0)
    if tokens < memory.round_up_to_block(measured_peak, block_size):
        return budget
    return memory.KVBudget(
        tokens=tokens,
        bytes=tokens * bytes_per_token,
        sizing=f"all the KV cache one GPU offers ({budget.sizing} would need "
        f"{budget.bytes / GIB:.2f} GiB; the peak measured at this batch, {measured_peak:,} tokens, fits)",
    )


def in_flight_tokens(options: AdvisorOptions, target: GPU) -> int:
    """Tokens a replica's vLLM schedules but has not settled (kv_layout.in_flight_tokens): its
    --max-num-batched-tokens as the user fixed it, else vLLM's default for the device, twice under
    asynchronous scheduling (vLLM's default)."""
    budget = options.max_num_batched_tokens or kv_layout.vllm_default_max_num_batched_tokens(
        target.memory_bytes, target.product
    )
    return kv_layout.in_flight_tokens(budget, async_scheduling=options.async_scheduling)


def _measured_peak_tokens(profile: Profile, batch: int) -> int | None:
    """Peak KV tokens in use at `batch` (sizes the KV cache): the run's peak usage fraction times
    that run's own capacity."""
    point = profile.point(batch)
    if point is None or point.kv_cache_usage_peak is None:
        return None
    capacity = point.kv_capacity_tokens or profile.kv_capacity_tokens
    if capacity is None:
        return None
    return round(point.kv_cache_usage_peak * capacity)


__all__ = ["CandidateVerdict", "advise"]
