"""GPUs a mixed fleet of small-model services needs: exclusive, per deployment, the pool, the bound.

    python -m bench.fleet_packing [--paper-data DIR] [--results-dir DIR]

The fleet (FLEET below): 15 services of OPT-1.3B, OPT-2.7B, Llama-2-7B, Qwen2.5-0.5B and
Llama-3.2-1B with different workloads, latency SLOs (mean ITL) and demands in required tokens/s
(prompt + output), served on NVIDIA H100 80GB HBM3. Each service's profile is the paper's
measured one (H100 64 GB; the performance model rescales it to the H100 80GB by bandwidth) or, for
the two models the paper did not measure, the `simulated` profiler backend's on the H100 80GB.

Per service, as the operator decides it (`advise` + `perfmodel_packing.pack`): B_opt within the
SLO (or, without one, the advisor's latency cap), the memory of one replica (its MPS memory cap),
how many fit on a GPU, and how many of them to pack on a GPU of its own. Then, for the demand
(every service's tokens/s times 0.25, 0.5, 1, 2 and 4), the GPUs needed:

- exclusive, vLLM defaults (the baseline): one instance per GPU at vLLM's defaults
  (--max-num-seqs 1024 on this GPU, the default KV pool), ceil(demand / its predicted tokens/s);
  its predicted ITL is shown against the SLO, which the defaults often break;
- exclusive at B_opt: one advisor-sized replica per GPU (the operator's `exclusive` mode);
- packed, per deployment: R replicas per GPU, each deployment on GPUs of its own (MPS through
  DRA, one pod per GPU); replicas = ceil(demand / (predicted tokens/s per GPU / R));
- the pool: the operator's own GPUPool placement, `llmpack.planner.pool.place`, the planner's
  code, not a model of it. Every service is one member (its calibrated performance model on this
  GPU, B_opt, one replica's MPS cap, its ITL cap: the SLO, else the advisor's latency cap; one
  replica at least and the demand in tokens/s); the placement adds replicas first-fit until each
  member's predicted tokens/s reach its demand, a GPU taking a replica only while the replicas'
  caps fit and every member on it stays within its cap. Replicas of different services on one GPU
  are predicted by the multi-class model (advisor/perfmodel_colocated.py) with no measurement of
  such mixed co-location behind it;
- the memory bound: the memory caps of the replicas the pool placed over one GPU's memory (the
  device total CUDA sees), rounded up; no placement of those replicas needs fewer GPUs.

Ratios: exclusive (defaults) / pool (goals: >= 1.8x for the whole fleet at 1x demand, >= 2x at
0.25x) and pool / memory bound (goal <= 1.15x); and whether every member's predicted mean ITL is
within its cap and its predicted tokens/s meet its demand in every run.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache

from bench.common import Result, Table, paper_data_main
from llmpack.advisor import AdvisorOptions, advise, perfmodel, perfmodel_packing
from llmpack.advisor.loaders import load_paper_profile
from llmpack.api.llmdeployment import DEFAULT_CANDIDATE_BATCH_SIZES
from llmpack.api.profile import Profile
from llmpack.hardware import GPU, lookup_gpu
from llmpack.planner.pool import Placement, PoolMember, place

TARGET_GPU = "NVIDIA-H100-80GB-HBM3"
MIN_REPLICA_GAIN = 0.05  # spec.advisor.minReplicaGain's default
MAX_REPLICAS_PER_GPU = 8  # spec.sharing.maxReplicasPerGPU's default
POOL_MAX_GPUS = 64  # the pool's spec.gpu.maxGPUs: large enough never to bind here
OPT_CLASS = ("opt-1.3b", "opt-2.7b")
GIB = 1 << 30


@dataclass(frozen=True)
class Service:
    name: str
    model: str  # a paper model (opt-1.3b ...) or a Hugging Face id for a simulated profile
    demand_tokens_per_s: float  # required prompt + output tokens per second
    slo_itl_ms: float | None = None  # cap on mean ITL
    output_len: int | None = None  # paper: the `advisor` family at this output length; None = ShareGPT
    prompt_tokens: int = 256  # simulated profiles only
    output_tokens: int = 256

    @property
    def simulated(self) -> bool:
        return "/" in self.model

    @property
    def workload(self) -> str:
        if self.simulated:
            return f"{self.prompt_tokens}/{self.output_tokens} (sim.)"
        return "ShareGPT" if self.output_len is None else f"out {self.output_len}"

    @property
    def model_class(self) -> str:
        return self.model.split("/")[-1].removesuffix("-Instruct")


FLEET: tuple[Service, ...] = (
    Service("chat-a", "opt-1.3b", 4_000),
    Service("chat-b", "opt-1.3b", 12_000, slo_itl_ms=15),
    Service("summarise", "opt-1.3b", 30_000, output_len=390),
    Service("short-qa", "opt-1.3b", 6_000, slo_itl_ms=15, output_len=130),
    Service("tagger", "opt-1.3b", 2_000, slo_itl_ms=20, output_len=260),
    Service("batch-gen", "opt-1.3b", 50_000, output_len=520),
    Service("assist", "opt-2.7b", 8_000, slo_itl_ms=30),
    Service("classify", "opt-2.7b", 3_000, output_len=130),
    Service("rewrite", "opt-2.7b", 20_000, slo_itl_ms=25, output_len=260),
    Service("report", "opt-2.7b", 5_000, output_len=520),
    Service("support", "llama-2-7b", 6_000),
    Service("extract", "llama-2-7b", 15_000, slo_itl_ms=40, output_len=130),
    Service("draft", "llama-2-7b", 4_000, output_len=390),
    Service("router-small", "Qwen/Qwen2.5-0.5B-Instruct", 40_000, slo_itl_ms=20),
    Service("edge-chat", "meta-llama/Llama-3.2-1B-Instruct", 10_000, prompt_tokens=512, output_tokens=128),
)


@dataclass(frozen=True)
class Sizing:
    """One service sized as the operator would, and the GPUs each way of serving it needs."""

    service: Service
    b_opt: int
    per_replica_bytes: int  # one replica's memory: its MPS pinned limit (the pool's replica_bytes)
    itl_cap_ms: float | None  # the SLO, else the advisor's latency cap (Recommendation.latency_cap_ms)
    memory_fit: int  # replicas of B_opt the GPU's memory holds (capped at maxReplicasPerGPU)
    replicas_per_gpu: int  # R: what the performance model says pays
    packing_reason: str
    packing_limited_by: str  # min_gain, slo, memory, max_replicas
    packed_tokens_per_s_per_gpu: float
    packed_itl_ms: float
    exclusive_tokens_per_s: float  # one instance, vLLM defaults
    exclusive_itl_ms: float
    exclusive_batch: int
    single_tokens_per_s: float  # one replica at B_opt
    single_itl_ms: float
    perf: perfmodel.PerfModel = field(compare=False, repr=False)  # calibrated on the target GPU

    @property
    def replicas(self) -> int:
        """Packed replicas the demand needs, per deployment."""
        per_replica = self.packed_tokens_per_s_per_gpu / self.replicas_per_gpu
        return math.ceil(self.service.demand_tokens_per_s / per_replica)

    @property
    def gpus_packed(self) -> int:
        return math.ceil(self.replicas / self.replicas_per_gpu)

    @property
    def gpus_exclusive(self) -> int:
        return math.ceil(self.service.demand_tokens_per_s / self.exclusive_tokens_per_s)

    @property
    def gpus_exclusive_b_opt(self) -> int:
        return math.ceil(self.service.demand_tokens_per_s / self.single_tokens_per_s)

    @property
    def exclusive_meets_slo(self) -> bool:
        slo = self.service.slo_itl_ms
        return slo is None or self.exclusive_itl_ms <= slo

    def pool_member(self) -> PoolMember:
        """This service as a member of the pool: one replica at least, more for its demand."""
        return PoolMember(
            name=self.service.name,
            perf=self.perf,
            batch=self.b_opt,
            replica_bytes=self.per_replica_bytes,
            itl_cap_ms=self.itl_cap_ms,
            replicas=1,
            demand_tokens_per_s=self.service.demand_tokens_per_s,
        )


@cache
def _profile(model: str, output_len: int | None, prompt: int, output: int, data_dir: str | None) -> Profile:
    if "/" not in model:
        return load_paper_profile(model, output_len, data_dir)
    return simulated_profile(model, prompt, output)


def simulated_profile(model: str, prompt_tokens: int, output_tokens: int, gpu: str = TARGET_GPU) -> Profile:
    """What the operator's profiling Job measures with the simulated backend, every candidate."""
    from llmpack.advisor.architectures import find_architecture
    from llmpack.profiler.facts import ProfileRequest
    from llmpack.profiler.simulated import SimulatedBackend

    arch = find_architecture(model)
    max_model_len = max(2048, prompt_tokens + output_tokens)
    if arch is not None:
        max_model_len = min(max_model_len, arch.max_position_embeddings)
    request = ProfileRequest(
        model=model,
        gpu_product=gpu,
        dtype="float16",
        max_model_len=max_model_len,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
    )
    backend = SimulatedBackend(request)
    backend.start()
    return backend.profile([backend.measure(b) for b in DEFAULT_CANDIDATE_BATCH_SIZES], [])


def size(service: Service, gpu: GPU | None = None, data_dir: str | None = None) -> Sizing:
    gpu = gpu or lookup_gpu(TARGET_GPU)
    profile = _profile(
        service.model, service.output_len, service.prompt_tokens, service.output_tokens, data_dir
    )
    options = AdvisorOptions(slo_itl_mean_ms=service.slo_itl_ms, max_replicas_per_gpu=MAX_REPLICAS_PER_GPU)
    rec = advise(profile, options, gpu)
    perf = perfmodel.calibrate(profile, gpu=gpu)
    fit = max(1, rec.replicas_per_gpu)
    decision = perfmodel_packing.pack(
        perf,
        rec.b_opt,
        max_replicas=fit,
        min_gain=MIN_REPLICA_GAIN,
        slo_itl_ms=service.slo_itl_ms,
        memory_fit=fit,
    )
    base = perfmodel.baseline(perf, profile, gpu)
    single = perf.single(rec.b_opt)
    return Sizing(
        service=service,
        b_opt=rec.b_opt,
        per_replica_bytes=rec.per_replica_memory_bytes,
        itl_cap_ms=service.slo_itl_ms if service.slo_itl_ms is not None else rec.latency_cap_ms,
        memory_fit=fit,
        replicas_per_gpu=max(1, decision.replicas),
        packing_reason=decision.reason,
        packing_limited_by=decision.limited_by,
        packed_tokens_per_s_per_gpu=decision.chosen.total_tokens_per_s,
        packed_itl_ms=decision.chosen.itl_mean_ms,
        exclusive_tokens_per_s=base.total_tokens_per_s,
        exclusive_itl_ms=base.itl_mean_ms,
        exclusive_batch=base.batch,
        single_tokens_per_s=single.total_tokens_per_s,
        single_itl_ms=single.itl_mean_ms,
        perf=perf,
    )


# --- the pool: the operator's own placement ----------------------------------------------------


@dataclass(frozen=True)
class MemberCheck:
    """One pool member against its cap and its demand, as the placement predicts it."""

    name: str
    itl_cap_ms: float | None
    itl_mean_ms: float | None  # the worst among its GPUs
    demand_tokens_per_s: float
    tokens_per_s: float
    replicas: int
    gpus: int
    message: str  # the placement's own: why a member has less than it wants

    @property
    def within_cap(self) -> bool:
        if self.itl_mean_ms is None:
            return False  # nothing placed
        return self.itl_cap_ms is None or self.itl_mean_ms <= self.itl_cap_ms + 1e-9

    @property
    def meets_demand(self) -> bool:
        return self.tokens_per_s >= self.demand_tokens_per_s * (1 - 1e-9)

    @property
    def met(self) -> bool:
        return self.within_cap and self.meets_demand and not self.message


@dataclass(frozen=True)
class PoolRun:
    """The pool's placement of some services at one demand, and its memory bound."""

    placement: Placement
    members: dict[str, PoolMember]
    memory_bound: int  # Placement.memory_bound over the GPU's usable memory
    memory_gpus: float  # the same, not rounded
    checks: tuple[MemberCheck, ...]

    @property
    def gpus(self) -> int:
        return self.placement.gpus_used

    @property
    def replicas(self) -> int:
        return sum(c.replicas for c in self.checks)

    @property
    def all_met(self) -> bool:
        return all(c.met for c in self.checks)

    def misses(self) -> list[str]:
        out = []
        for c in self.checks:
            if c.met:
                continue
            itl = "-" if c.itl_mean_ms is None else f"{c.itl_mean_ms:.1f}"
            cap = "-" if c.itl_cap_ms is None else f"{c.itl_cap_ms:g}"
            out.append(
                f"{c.name}: ITL {itl} ms (cap {cap}), {c.tokens_per_s:,.0f} of {c.demand_tokens_per_s:,.0f} "
                f"tokens/s{': ' + c.message if c.message else ''}"
            )
        return out


def run_pool(sizings: Sequence[Sizing], gpu: GPU, max_gpus: int = POOL_MAX_GPUS) -> PoolRun:
    """`llmpack.planner.pool.place` on one member per service (a fresh pool: no previous placement)."""
    members = [s.pool_member() for s in sizings]
    by_name = {m.name: m for m in members}
    placement = place(members, gpu=gpu, max_gpus=max_gpus)
    checks = []
    for m in members:
        got = placement.members[m.name]
        checks.append(
            MemberCheck(
                name=m.name,
                itl_cap_ms=m.itl_cap_ms,
                itl_mean_ms=got.itl_mean_ms,
                demand_tokens_per_s=m.demand_tokens_per_s,
                tokens_per_s=got.tokens_per_s,
                replicas=got.replicas,
                gpus=len(got.placed),
                message=got.message,
            )
        )
    placed_bytes = sum(by_name[n].replica_bytes * r.replicas for n, r in placement.members.items())
    return PoolRun(
        placement=placement,
        members=by_name,
        memory_bound=placement.memory_bound(by_name, gpu.usable_memory_bytes),
        memory_gpus=placed_bytes / gpu.usable_memory_bytes,
        checks=tuple(checks),
    )


@dataclass(frozen=True)
class FleetTotals:
    label: str
    services: int
    exclusive: int
    exclusive_b_opt: int
    packed_per_deployment: int
    pool: PoolRun = field(repr=False)

    @property
    def pool_gpus(self) -> int:
        return self.pool.gpus

    @property
    def memory_bound_gpus(self) -> int:
        return self.pool.memory_bound

    @property
    def exclusive_over_pool(self) -> float:
        return self.exclusive / self.pool_gpus

    @property
    def pool_over_bound(self) -> float:
        return self.pool_gpus / self.memory_bound_gpus


def totals(label: str, sizings: list[Sizing], gpu: GPU) -> FleetTotals:
    return FleetTotals(
        label=label,
        services=len(sizings),
        exclusive=sum(s.gpus_exclusive for s in sizings),
        exclusive_b_opt=sum(s.gpus_exclusive_b_opt for s in sizings),
        packed_per_deployment=sum(s.gpus_packed for s in sizings),
        pool=run_pool(sizings, gpu),
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --- tables -------------------------------------------------------------------------------------


def service_table(sizings: list[Sizing], gpu: GPU, pool: PoolRun | None = None) -> Table:
    table = Table(
        f"Per service at 1x demand (predicted on {gpu.product})",
        [
            "service",
            "model",
            "workload",
            "ITL cap ms",
            "demand tok/s",
            "B_opt",
            "GiB/replica",
            "fit",
            "R",
            "tok/s/GPU packed",
            "ITL packed",
            "tok/s/GPU excl.",
            "ITL excl.",
            "GPUs excl.",
            "GPUs excl. B_opt",
            "replicas per depl.",
            "GPUs per depl.",
            "pool replicas (GPUs)",
            "pool tok/s",
            "pool ITL",
        ],
        note="ITL cap: the SLO (mean ITL), or the advisor's latency cap where the service has none (a). "
        "fit: replicas of B_opt the GPU's memory holds (at most 8); R: replicas packed per GPU of its own; "
        "excl.: one instance per GPU with vLLM defaults (ITL marked ! where it breaks the SLO); pool: "
        "what the whole fleet's placement gives the service, over all its GPUs (ITL: the worst of them; "
        "marked ! above the cap, tok/s marked ! below the demand).",
    )
    checks = {c.name: c for c in pool.checks} if pool else {}
    for s in sizings:
        svc = s.service
        cap = "-" if s.itl_cap_ms is None else f"{s.itl_cap_ms:.1f}"
        if svc.slo_itl_ms is None and s.itl_cap_ms is not None:
            cap += " (a)"
        c = checks.get(svc.name)
        table.add(
            svc.name,
            svc.model_class,
            svc.workload,
            cap,
            f"{svc.demand_tokens_per_s:,.0f}",
            s.b_opt,
            f"{s.per_replica_bytes / GIB:.1f}",
            s.memory_fit,
            s.replicas_per_gpu,
            f"{s.packed_tokens_per_s_per_gpu:,.0f}",
            f"{s.packed_itl_ms:.1f}",
            f"{s.exclusive_tokens_per_s:,.0f}",
            f"{s.exclusive_itl_ms:.1f}" + ("" if s.exclusive_meets_slo else "!"),
            s.gpus_exclusive,
            s.gpus_exclusive_b_opt,
            s.replicas,
            s.gpus_packed,
            "-" if c is None else f"{c.replicas} ({c.gpus})",
            "-" if c is None else f"{c.tokens_per_s:,.0f}" + ("" if c.meets_demand else "!"),
            "-"
            if c is None or c.itl_mean_ms is None
            else f"{c.itl_mean_ms:.1f}" + ("" if c.within_cap else "!"),
        )
    return table


def pool_gpu_table(pool: PoolRun) -> Table:
    room = pool.placement.room_bytes
    table = Table(
        "The pool's GPUs for the whole fleet at 1x demand (llmpack.planner.pool.place)",
        ["GPU", "replicas", "members (replicas)", "caps GiB", "of room GiB", "memory filled", "GPU busy"],
        note="room: the GPU's usable memory less vLLM's start-up reserve, what the replicas' MPS caps may "
        "take together; GPU busy: the predicted share of time a kernel runs. A GPU well short of its "
        "room was closed by the ITL caps of the members on it (the placement adds a replica only while "
        "every member on the GPU stays within its cap), not by memory.",
    )
    for g in pool.placement.gpus:
        used = pool.placement.memory_bytes(g.index, pool.members)
        busy = max(
            (p.gpu_busy_fraction for (i, _), p in pool.placement.predictions.items() if i == g.index),
            default=0.0,
        )
        table.add(
            g.index,
            sum(g.replicas.values()),
            ", ".join(f"{name} ({n})" for name, n in g.replicas.items()),
            f"{used / GIB:.1f}",
            f"{room / GIB:.1f}",
            f"{used / room:.0%}",
            f"{busy:.0%}",
        )
    return table


def totals_table(rows: list[FleetTotals]) -> Table:
    table = Table(
        "GPUs needed at 1x demand, and the ratios (goals: exclusive/pool >= 1.8x for the whole fleet, "
        "pool/bound <= 1.15x)",
        [
            "services",
            "n",
            "exclusive (defaults)",
            "exclusive B_opt",
            "packed per deployment",
            "pool",
            "memory bound",
            "excl./per depl.",
            "excl./pool",
            "pool/bound",
            "pool replicas",
            "caps and demand",
        ],
        note="pool: GPUs the operator's pool placement uses for these services alone; memory bound: "
        "ceil(the pool's placed replicas' memory caps / GPU memory), the fraction in brackets; caps and "
        "demand: every member's predicted mean ITL within its cap and tokens/s at its demand.",
    )
    for t in rows:
        table.add(
            t.label,
            t.services,
            t.exclusive,
            t.exclusive_b_opt,
            t.packed_per_deployment,
            t.pool_gpus,
            f"{t.memory_bound_gpus} ({t.pool.memory_gpus:.2f})",
            f"{t.exclusive / t.packed_per_deployment:.2f}x",
            f"{t.exclusive_over_pool:.2f}x",
            f"{t.pool_over_bound:.2f}x",
            t.pool.replicas,
            _met(t.pool.all_met),
        )
    return table


GROUPS: tuple[tuple[str, str], ...] = (
    ("OPT-1.3B", "opt-1.3b"),
    ("OPT-2.7B", "opt-2.7b"),
    ("OPT-1.3B + 2.7B", "opt"),
    ("Llama-2-7B", "llama-2-7b"),
    ("Qwen/Llama small (sim.)", "sim"),
    ("whole fleet", "all"),
)
SCALE_GROUPS = ("OPT-1.3B + 2.7B", "whole fleet")


def _in_group(s: Sizing, key: str) -> bool:
    if key == "all":
        return True
    if key == "opt":
        return s.service.model in OPT_CLASS
    if key == "sim":
        return s.service.simulated
    return s.service.model == key


def fleet_totals(sizings: list[Sizing], gpu: GPU, labels: Sequence[str] | None = None) -> list[FleetTotals]:
    out = []
    for label, key in GROUPS:
        chosen = [s for s in sizings if _in_group(s, key)]
        if chosen and (labels is None or label in labels):
            out.append(totals(label, chosen, gpu))
    return out


DEMAND_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def scaled(sizings: list[Sizing], factor: float) -> list[Sizing]:
    """The same services with every demand multiplied by `factor` (the sizing does not depend on it)."""
    return [
        replace(s, service=replace(s.service, demand_tokens_per_s=s.service.demand_tokens_per_s * factor))
        for s in sizings
    ]


def scale_rows(
    sizings: list[Sizing], gpu: GPU, scales: Sequence[float] = DEMAND_SCALES
) -> dict[float, dict[str, FleetTotals]]:
    return {
        factor: {t.label: t for t in fleet_totals(scaled(sizings, factor), gpu, SCALE_GROUPS)}
        for factor in scales
    }


def scale_table(rows: dict[float, dict[str, FleetTotals]]) -> Table:
    table = Table(
        "GPUs per demand (every service's tokens/s multiplied)",
        [
            "demand x",
            "services",
            "exclusive (defaults)",
            "packed per deployment",
            "pool",
            "memory bound",
            "excl./pool",
            "pool/bound",
            "pool replicas",
            "caps and demand",
        ],
        note="Small services (less than a GPU's worth each) gain most from sharing GPUs; large ones tend "
        "to the per-GPU throughput gain of packing. caps and demand: every member's predicted mean ITL "
        "within its cap and tokens/s at its demand (met), else NOT met.",
    )
    for factor, by_label in rows.items():
        for label in SCALE_GROUPS:
            t = by_label[label]
            table.add(
                f"{factor:g}",
                label,
                t.exclusive,
                t.packed_per_deployment,
                t.pool_gpus,
                f"{t.memory_bound_gpus} ({t.pool.memory_gpus:.2f})",
                f"{t.exclusive_over_pool:.2f}x",
                f"{t.pool_over_bound:.2f}x",
                t.pool.replicas,
                _met(t.pool.all_met),
            )
    return table


def goals(rows: dict[float, dict[str, FleetTotals]]) -> list[str]:
    """The issue's goals, each with what was measured."""
    fleet = {factor: by_label["whole fleet"] for factor, by_label in rows.items()}
    lines = []
    for factor, want in ((1.0, 1.8), (0.25, 2.0)):
        t = fleet.get(factor)
        if t is None:
            continue
        lines.append(
            f"Goal: the pool needs >= {want:g}x fewer GPUs than exclusive vLLM defaults for the whole "
            f"fleet at {factor:g}x demand: {_met(t.exclusive_over_pool >= want)} "
            f"({t.exclusive} / {t.pool_gpus} = {t.exclusive_over_pool:.2f}x)."
        )
    main = [f for f in (0.25, 0.5, 1.0) if f in fleet]
    worst = max(fleet[f].pool_over_bound for f in main)
    figures = ", ".join(
        f"{f:g}x: {fleet[f].pool_gpus} / {fleet[f].memory_bound_gpus} = {fleet[f].pool_over_bound:.2f}x"
        for f in main
    )
    lines.append(
        f"Goal: the pool at most 1.15x the memory bound (whole fleet): {_met(worst <= 1.15)} ({figures})."
    )
    runs = [(f, label, t) for f, by_label in rows.items() for label, t in by_label.items()]
    missed = [f"{f:g}x {label}: {'; '.join(t.pool.misses())}" for f, label, t in runs if not t.pool.all_met]
    members = sum(len(t.pool.checks) for _, _, t in runs)
    lines.append(
        f"Goal: every member within its SLO (predicted mean ITL within its cap, tokens/s at its demand), "
        f"in all {len(runs)} runs ({members} member placements): {_met(not missed)}"
        + (f" ({' | '.join(missed)})." if missed else ".")
    )
    return lines


def run(data_dir: str | None = None, fleet: tuple[Service, ...] = FLEET) -> Result:
    gpu = lookup_gpu(TARGET_GPU)
    sizings = [size(s, gpu, data_dir) for s in fleet]
    rows = fleet_totals(sizings, gpu)
    whole = next(t for t in rows if t.label == "whole fleet")
    by_scale = scale_rows(sizings, gpu)
    filled = [
        whole.pool.placement.memory_bytes(g.index, whole.pool.members) / whole.pool.placement.room_bytes
        for g in whole.pool.placement.gpus
    ]
    notes = [
        *goals(by_scale),
        "Why the pool stays above the memory bound: a GPU takes another replica only while every member "
        "on it is predicted within its ITL cap, so GPUs of members with tight caps close on time, not "
        f"memory (at 1x the pool's {len(filled)} GPUs are {min(filled):.0%} to {max(filled):.0%} full, "
        f"{sum(filled) / len(filled):.0%} on average); the replicas' caps fit in the GPU's usable memory "
        "less vLLM's start-up reserve, while the bound divides by the usable memory; and the placement is "
        "greedy first fit, not an optimum.",
        "The pool's replicas of different services on one GPU are predicted by the multi-class model "
        "(advisor/perfmodel_colocated.py), fitted on homogeneous OPT-1.3B replication only: no measurement "
        "of mixed co-location is behind these GPU counts.",
        "Exclusive with vLLM defaults runs 1024 sequences or as many as its KV pool holds: more tokens/s "
        "per GPU than one B_opt replica, at an ITL that breaks several SLOs (marked !); exclusive at "
        "B_opt is the SLO-keeping single-replica figure.",
        "All tokens/s are the performance model's predictions (advisor/perfmodel.py) from measured "
        "profiles of the H100 64 GB, rescaled to the H100 80GB by bandwidth; the two simulated "
        "profiles are the simulated backend's, not measurements.",
    ]
    return Result(
        name="fleet_packing",
        title="Fleet packing: GPUs for a mixed fleet, the operator's pool vs exclusive vs the memory bound",
        summary=(__doc__ or "").split("\n\n", 2)[2].strip(),
        tables=[
            service_table(sizings, gpu, whole.pool),
            totals_table(rows),
            scale_table(by_scale),
            pool_gpu_table(whole.pool),
        ],
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return paper_data_main("fleet_packing", __doc__ or "", run, argv)


if __name__ == "__main__":
    sys.exit(main())
