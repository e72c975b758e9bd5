"""GPUs a mixed fleet of small-model services needs: packed, exclusive, and the memory bound.

    python -m bench.fleet_packing [--paper-data DIR] [--results-dir DIR]

The fleet (FLEET below): 15 services of OPT-1.3B, OPT-2.7B, Llama-2-7B, Qwen2.5-0.5B and
Llama-3.2-1B with different workloads, latency SLOs (mean ITL) and demands in required tokens/s
(prompt + output), served on NVIDIA H100 80GB HBM3. Each service's profile is the paper's
measured one (H100 64 GB; the performance model rescales it to the H100 80GB by bandwidth) or, for
the two models the paper did not measure, the `simulated` profiler backend's on the H100 80GB.

Per service, as the operator decides it (`advise` + `perfmodel_packing.pack`): B_opt within the
SLO, the memory of one replica, how many fit on a GPU, and how many of them to pack (each further
replica must add >= 5% predicted tokens/s and keep the predicted ITL within the SLO). Then, for the
demand, the GPUs needed:

- exclusive, vLLM defaults (the baseline): one instance per GPU at vLLM's defaults
  (--max-num-seqs 1024 on this GPU, the default KV pool), ceil(demand / its predicted tokens/s);
  its predicted ITL is shown against the SLO, which the defaults often break;
- exclusive at B_opt: one advisor-sized replica per GPU (the operator's `exclusive` mode);
- packed, per deployment: R replicas per GPU, each deployment on GPUs of its own (MPS through
  DRA, one pod per GPU); replicas = ceil(demand / (predicted tokens/s per GPU / R));
- packed, fleet-wide: the same replicas, each taking 1/R of a GPU (its memory slot and its share
  of the GPU's time), placed first-fit decreasing so that services share GPUs (MPS through the
  device plugin lets replicas of different deployments share one GPU). Mixed GPUs are assumed
  to give each replica what it gets among R of its own kind; the performance model predicts
  homogeneous packing only;
- the lower bound of the issue: the packed replicas' memory over the GPU's memory (the device
  total CUDA sees), rounded up; and, for reference, a time bound: the demand over the best
  tokens/s per GPU any packing within memory and SLO is predicted to reach, summed as fractions.

Ratios: exclusive (defaults) / packed (goal >= 2 for OPT-1.3B/2.7B-class models) and packed /
lower bound (goal <= 1.10), per model class and for the whole fleet.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache

from bench.common import Result, Table, paper_data_main
from llmpack.advisor import AdvisorOptions, advise, perfmodel, perfmodel_packing
from llmpack.advisor.loaders import load_paper_profile
from llmpack.api.llmdeployment import DEFAULT_CANDIDATE_BATCH_SIZES
from llmpack.api.profile import Profile
from llmpack.hardware import GPU, lookup_gpu

TARGET_GPU = "NVIDIA-H100-80GB-HBM3"
MIN_REPLICA_GAIN = 0.05  # spec.advisor.minReplicaGain's default
MAX_REPLICAS_PER_GPU = 8  # spec.sharing.maxReplicasPerGPU's default
OPT_CLASS = ("opt-1.3b", "opt-2.7b")


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
    per_replica_bytes: int
    memory_fit: int  # replicas of B_opt the GPU's memory holds (capped at maxReplicasPerGPU)
    replicas_per_gpu: int  # R: what the performance model says pays
    packing_reason: str
    packing_limited_by: str  # min_gain, slo, memory, max_replicas
    packed_tokens_per_s_per_gpu: float
    packed_itl_ms: float
    best_tokens_per_s_per_gpu: float  # the most any R <= memory fit within the SLO reaches
    exclusive_tokens_per_s: float  # one instance, vLLM defaults
    exclusive_itl_ms: float
    exclusive_batch: int
    single_tokens_per_s: float  # one replica at B_opt
    single_itl_ms: float

    @property
    def replicas(self) -> int:
        """Packed replicas the demand needs."""
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
    def memory_bytes(self) -> int:
        return self.replicas * self.per_replica_bytes

    @property
    def time_bound(self) -> float:
        return self.service.demand_tokens_per_s / self.best_tokens_per_s_per_gpu

    @property
    def exclusive_meets_slo(self) -> bool:
        slo = self.service.slo_itl_ms
        return slo is None or self.exclusive_itl_ms <= slo


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
    within = [p for p in (perf.mps(r, rec.b_opt) for r in range(1, fit + 1)) if _meets(p, service.slo_itl_ms)]
    best = max(within or [decision.chosen], key=lambda p: p.total_tokens_per_s)
    base = perfmodel.baseline(perf, profile, gpu)
    single = perf.single(rec.b_opt)
    return Sizing(
        service=service,
        b_opt=rec.b_opt,
        per_replica_bytes=rec.per_replica_memory_bytes,
        memory_fit=fit,
        replicas_per_gpu=max(1, decision.replicas),
        packing_reason=decision.reason,
        packing_limited_by=decision.limited_by,
        packed_tokens_per_s_per_gpu=decision.chosen.total_tokens_per_s,
        packed_itl_ms=decision.chosen.itl_mean_ms,
        best_tokens_per_s_per_gpu=best.total_tokens_per_s,
        exclusive_tokens_per_s=base.total_tokens_per_s,
        exclusive_itl_ms=base.itl_mean_ms,
        exclusive_batch=base.batch,
        single_tokens_per_s=single.total_tokens_per_s,
        single_itl_ms=single.itl_mean_ms,
    )


def _meets(prediction: perfmodel.Prediction, slo: float | None) -> bool:
    return slo is None or prediction.itl_mean_ms <= slo


def pack_fleet_wide(sizings: list[Sizing]) -> int:
    """GPUs for every packed replica when services may share a GPU: each replica takes 1/R of a
    GPU; first-fit decreasing on those fractions (exact arithmetic)."""
    items = sorted(
        (Fraction(1, s.replicas_per_gpu) for s in sizings for _ in range(s.replicas)), reverse=True
    )
    bins: list[Fraction] = []
    for item in items:
        for i, used in enumerate(bins):
            if used + item <= 1:
                bins[i] = used + item
                break
        else:
            bins.append(item)
    return len(bins)


@dataclass(frozen=True)
class FleetTotals:
    label: str
    services: int
    exclusive: int
    exclusive_b_opt: int
    packed_per_deployment: int
    packed_fleet_wide: int
    memory_bound: float  # fractional GPUs
    time_bound: float

    @property
    def memory_bound_gpus(self) -> int:
        return math.ceil(self.memory_bound - 1e-9)


def totals(label: str, sizings: list[Sizing], gpu: GPU) -> FleetTotals:
    return FleetTotals(
        label=label,
        services=len(sizings),
        exclusive=sum(s.gpus_exclusive for s in sizings),
        exclusive_b_opt=sum(s.gpus_exclusive_b_opt for s in sizings),
        packed_per_deployment=sum(s.gpus_packed for s in sizings),
        packed_fleet_wide=pack_fleet_wide(sizings),
        memory_bound=sum(s.memory_bytes for s in sizings) / gpu.usable_memory_bytes,
        time_bound=sum(s.time_bound for s in sizings),
    )


def service_table(sizings: list[Sizing]) -> Table:
    table = Table(
        "Per service (predicted on NVIDIA-H100-80GB-HBM3)",
        [
            "service",
            "model",
            "workload",
            "SLO ms",
            "demand tok/s",
            "B_opt",
            "GiB/replica",
            "fit",
            "R",
            "tok/s/GPU packed",
            "ITL packed",
            "tok/s/GPU excl.",
            "ITL excl.",
            "replicas",
            "GPUs excl.",
            "GPUs excl. B_opt",
            "GPUs packed",
            "memory GPUs",
        ],
        note="fit: replicas of B_opt the GPU's memory holds (at most 8); R: replicas packed per GPU; "
        "excl.: one instance per GPU with vLLM defaults (ITL marked ! where it breaks the SLO); "
        "memory GPUs: the packed replicas' memory over the GPU's.",
    )
    for s in sizings:
        svc = s.service
        table.add(
            svc.name,
            svc.model_class,
            svc.workload,
            "-" if svc.slo_itl_ms is None else f"{svc.slo_itl_ms:g}",
            f"{svc.demand_tokens_per_s:,.0f}",
            s.b_opt,
            f"{s.per_replica_bytes / (1 << 30):.1f}",
            s.memory_fit,
            s.replicas_per_gpu,
            f"{s.packed_tokens_per_s_per_gpu:,.0f}",
            f"{s.packed_itl_ms:.1f}",
            f"{s.exclusive_tokens_per_s:,.0f}",
            f"{s.exclusive_itl_ms:.1f}" + ("" if s.exclusive_meets_slo else "!"),
            s.replicas,
            s.gpus_exclusive,
            s.gpus_exclusive_b_opt,
            s.gpus_packed,
            f"{s.memory_bytes / (lookup_gpu(TARGET_GPU).usable_memory_bytes):.2f}",
        )
    return table


def totals_table(rows: list[FleetTotals]) -> Table:
    table = Table(
        "GPUs needed, and the ratios (goals: exclusive/packed >= 2 for OPT-1.3B/2.7B, packed/bound <= 1.10)",
        [
            "services",
            "n",
            "exclusive (defaults)",
            "exclusive B_opt",
            "packed per deployment",
            "packed fleet-wide",
            "memory bound",
            "time bound",
            "excl./packed per depl.",
            "excl./packed fleet-wide",
            "packed fleet-wide/bound",
            "packed per depl./bound",
        ],
        note="memory bound: ceil(packed replicas' memory / GPU memory), the fraction in brackets; time "
        "bound: demand over the best predicted tokens/s per GPU, fractions summed (GPUs shared freely).",
    )
    for t in rows:
        bound = t.memory_bound_gpus
        table.add(
            t.label,
            t.services,
            t.exclusive,
            t.exclusive_b_opt,
            t.packed_per_deployment,
            t.packed_fleet_wide,
            f"{bound} ({t.memory_bound:.2f})",
            f"{t.time_bound:.2f}",
            f"{t.exclusive / t.packed_per_deployment:.2f}x",
            f"{t.exclusive / t.packed_fleet_wide:.2f}x",
            f"{t.packed_fleet_wide / bound:.2f}x",
            f"{t.packed_per_deployment / bound:.2f}x",
        )
    return table


def fleet_totals(sizings: list[Sizing], gpu: GPU) -> list[FleetTotals]:
    groups = [
        ("OPT-1.3B", [s for s in sizings if s.service.model == "opt-1.3b"]),
        ("OPT-2.7B", [s for s in sizings if s.service.model == "opt-2.7b"]),
        ("OPT-1.3B + 2.7B", [s for s in sizings if s.service.model in OPT_CLASS]),
        ("Llama-2-7B", [s for s in sizings if s.service.model == "llama-2-7b"]),
        ("Qwen/Llama small (sim.)", [s for s in sizings if s.service.simulated]),
        ("whole fleet", sizings),
    ]
    return [totals(label, chosen, gpu) for label, chosen in groups if chosen]


DEMAND_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def scaled(sizings: list[Sizing], factor: float) -> list[Sizing]:
    """The same services with every demand multiplied by `factor` (the sizing does not depend on it)."""
    return [
        replace(s, service=replace(s.service, demand_tokens_per_s=s.service.demand_tokens_per_s * factor))
        for s in sizings
    ]


def scale_table(sizings: list[Sizing], gpu: GPU, scales: tuple[float, ...] = DEMAND_SCALES) -> Table:
    table = Table(
        "The same fleet at other demands (every service's tokens/s multiplied)",
        [
            "demand x",
            "services",
            "exclusive (defaults)",
            "packed per deployment",
            "packed fleet-wide",
            "memory bound",
            "excl./packed fleet-wide",
            "packed fleet-wide/bound",
        ],
        note="Small services (less than a GPU's worth each) gain most from sharing GPUs across deployments; "
        "large ones tend to the per-GPU throughput gain of packing.",
    )
    for factor in scales:
        rows = {t.label: t for t in fleet_totals(scaled(sizings, factor), gpu)}
        for label in ("OPT-1.3B + 2.7B", "whole fleet"):
            t = rows[label]
            table.add(
                f"{factor:g}",
                label,
                t.exclusive,
                t.packed_per_deployment,
                t.packed_fleet_wide,
                t.memory_bound_gpus,
                f"{t.exclusive / t.packed_fleet_wide:.2f}x",
                f"{t.packed_fleet_wide / t.memory_bound_gpus:.2f}x",
            )
    return table


def goals(rows: list[FleetTotals]) -> list[str]:
    by_label = {t.label: t for t in rows}
    opt, fleet = by_label["OPT-1.3B + 2.7B"], by_label["whole fleet"]
    lines = []
    for t in (opt, fleet):
        for how, packed in (("fleet-wide", t.packed_fleet_wide), ("per deployment", t.packed_per_deployment)):
            fewer = t.exclusive / packed
            over = packed / t.memory_bound_gpus
            lines.append(
                f"{t.label}, packed {how}: {fewer:.2f}x fewer GPUs than exclusive "
                f"({'met' if fewer >= 2 else 'NOT met'}: goal >= 2x); {over:.2f}x the memory bound "
                f"({'met' if over <= 1.10 else 'NOT met'}: goal <= 1.10x)."
            )
    return lines


def run(data_dir: str | None = None, fleet: tuple[Service, ...] = FLEET) -> Result:
    gpu = lookup_gpu(TARGET_GPU)
    sizings = [size(s, gpu, data_dir) for s in fleet]
    rows = fleet_totals(sizings, gpu)
    short = [s for s in sizings if s.replicas_per_gpu < s.memory_fit]
    why = Counter(s.packing_limited_by for s in short)
    notes = [
        *goals(rows),
        "Why packed stays above the memory bound: (1) R stops where one more replica is predicted to add "
        "less than 5% tokens/s or to break the SLO, before memory runs out: R < fit in "
        f"{len(short)} of {len(sizings)} services ({', '.join(f'{n} by {k}' for k, n in why.items())}), "
        "so those GPUs run out of time, not memory; (2) whole replicas on whole GPUs: a deployment "
        "needing 0.7 GPU of memory still takes a GPU of its own, and fleet-wide slots of 1/R leave gaps.",
        "Exclusive with vLLM defaults runs 1024 sequences or as many as its KV pool holds: more tokens/s "
        "per GPU than one B_opt replica, at an ITL that breaks several SLOs (marked !); exclusive at "
        "B_opt is the SLO-keeping single-replica figure.",
        "All tokens/s are the performance model's predictions (advisor/perfmodel.py) from measured "
        "profiles of the H100 64 GB, rescaled to the H100 80GB by bandwidth; the two simulated "
        "profiles are the simulated backend's, not measurements.",
    ]
    return Result(
        name="fleet_packing",
        title="Fleet packing: GPUs for a mixed fleet, packed vs exclusive vs the memory bound",
        summary=(__doc__ or "").split("\n\n", 2)[2].strip(),
        tables=[service_table(sizings), totals_table(rows), scale_table(sizings, gpu)],
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return paper_data_main("fleet_packing", __doc__ or "", run, argv)


if __name__ == "__main__":
    sys.exit(main())
