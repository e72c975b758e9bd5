"""Replicas of different models sharing one GPU under MPS: the performance model's closed queue
(advisor/perfmodel.py, `PerfModel.mps`) with one class of customers per model.

A resident group k is n_k replicas of one model at --max-num-seqs B_k, described by that model's
calibrated PerfModel on this GPU. A replica of group k alternates its idle gap Z_k (its own CPU
time: scheduling, sampling, streaming; the replicas' gaps overlap freely) with one decode step's
GPU time D_k on the one shared server (the GPU's memory bandwidth). Exact multi-class mean-value
analysis (MVA; Reiser and Lavenberg, 1980) over the population lattice 0 <= n <= N, N = (n_1..n_K):

    R_k(n) = D_k * (1 + Q(n - e_k))      response of a class-k step at the GPU (ms), n_k >= 1
    X_k(n) = n_k / (Z_k + R_k(n))        class-k steps per ms
    Q(n)   = sum_k X_k(n) * R_k(n)       mean steps at the GPU (queued or running); Q(0) = 0
    ITL_k  = R_k(N) + Z_k                output tokens/s of group k = n_k * b_k / ITL_k * 1000

where, exactly as `PerfModel.mps` takes them for one model:
- b_k = perf_k.running(B_k, n_k * B_k): the group's running batch per replica, the profile's fill at
  the group's own total concurrency (the co-residents' slots do not change it);
- D_k = perf_k.gpu_ms(b_k, N_total) and Z_k = perf_k.idle_ms(b_k), the concurrency gain of the
  efficiencies (MPS_CONCURRENCY_GAIN) taken at the TOTAL replica count on the GPU, N_total = sum n_k.
So one group alone gives `PerfModel.mps(n_k, B_k)` to the float (tests/unit/test_perfmodel_colocated.py),
and K groups of one model with a fill that does not depend on the concurrency give `mps` of their sum.
The GPU's busy share is sum_k n_k * D_k / ITL_k (utilisation law), the same figure for every group.

Limits, stated plainly:
- No measurement is behind a mixed prediction. The MPS term (the shared-server queue and its
  concurrency gain) was fitted on homogeneous OPT-1.3B replication runs only (one model, two and four
  replicas at --max-num-seqs 96; replication_calibration.csv). Replicas of different models on one
  GPU have never been measured here: their kernels may contend for HBM bandwidth, SMs and L2 unlike
  the one shared server above, and each model's terms were fitted with that model alone on the GPU.
- MVA is exact for a product-form network. With class-dependent service times that needs a
  processor-sharing GPU; were it first-come-first-served, multi-class MVA is an approximation. As
  for `mps`, exponential steps err towards more waiting (less gain, longer ITL) than real steps.
- Cost: the lattice has prod(n_k + 1) states, each costing K updates. Totals above MPS_MAX_CLIENTS
  replicas and lattices above MAX_STATES states are refused (AdvisorError), not approximated.
- Memory is not checked: each replica is assumed to hold a KV cache for its batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.perfmodel import PerfModel, Prediction, check_count
from llmpack.hardware import MPS_MAX_CLIENTS

# Largest population lattice (prod(n_k + 1) states) solved exactly: ~0.3 s of pure Python.
MAX_STATES = 200_000

MIXED_NOTE = (
    "co-located with {others} under MPS: no measurement behind this mixed prediction (the MPS term "
    "was fitted on homogeneous OPT-1.3B runs only)"
)


@dataclass(frozen=True)
class Resident:
    """One group of identical replicas on the GPU in question.

    perf: the group's model, calibrated and moved to this GPU (`PerfModel.on_gpu`); every resident
    of one `predict` call must be on the same GPU product.
    batch: --max-num-seqs of each replica of the group (a whole number >= 1).
    replicas: how many replicas of the group share the GPU (1 to MPS_MAX_CLIENTS).
    """

    perf: PerfModel
    batch: int
    replicas: int


def predict(residents: Sequence[Resident]) -> tuple[Prediction, ...]:
    """Predict residents of one GPU sharing it under MPS, by exact multi-class MVA (module doc).

    Returns one Prediction per resident group, in the order given:
    - total_tokens_per_s, output_tokens_per_s: the group's replicas together (tokens/s);
    - itl_mean_ms: the mean inter-token latency each replica of the group sees (ms);
    - mode: "single" for one replica alone on the GPU, else "mps";
    - replicas, batch: the group's; running_per_replica: b_k (mean running sequences);
    - gpu_busy_fraction: the whole GPU's busy share, the same for every group;
    - note: the running-batch extrapolation note of `PerfModel.mps`, and for two groups or more that
      no measurement is behind a mixed prediction.
    One group gives `resident.perf.mps(replicas, batch)` exactly; no residents give ().

    Raises AdvisorError for a count that is not a whole number >= 1, residents on different GPU
    products, more than MPS_MAX_CLIENTS replicas in all, or more than MAX_STATES lattice states.
    """
    if not residents:
        return ()
    for resident in residents:
        check_count("batch", resident.batch)
        check_count("replicas", resident.replicas, MPS_MAX_CLIENTS)
    products = sorted({r.perf.gpu.product for r in residents})
    if len(products) > 1:
        raise AdvisorError(
            f"co-resident models must be predicted on one GPU, got {', '.join(products)}: "
            "move each PerfModel to the GPU in question with on_gpu"
        )
    populations = tuple(r.replicas for r in residents)
    total = sum(populations)
    if total > MPS_MAX_CLIENTS:
        raise AdvisorError(
            f"{total} replicas on one GPU exceed the {MPS_MAX_CLIENTS} clients MPS serves per GPU"
        )
    states = math.prod(n + 1 for n in populations)
    if states > MAX_STATES:
        raise AdvisorError(
            f"{len(residents)} resident groups of {list(populations)} replicas make {states:,} "
            f"population states, more than the {MAX_STATES:,} exact mean-value analysis is run for: "
            "merge groups of the same model and batch, or put fewer groups on the GPU"
        )

    running = [r.perf.running(r.batch, r.replicas * r.batch) for r in residents]
    demand = [r.perf.gpu_ms(b, total) for r, b in zip(residents, running, strict=True)]
    idle = [r.perf.idle_ms(b) for r, b in zip(residents, running, strict=True)]
    response = _mva_response_ms(populations, demand, idle)
    itl = [t + z for t, z in zip(response, idle, strict=True)]
    # utilisation law: group k keeps the GPU busy X_k * D_k = n_k * D_k / ITL_k of the time
    busy = min(sum(n * d / t for n, d, t in zip(populations, demand, itl, strict=True)), 1.0)

    predictions = []
    for k, resident in enumerate(residents):
        perf = resident.perf
        output = resident.replicas * running[k] / itl[k] * 1000.0
        notes = [perf.mps(resident.replicas, resident.batch).note]
        if len(residents) > 1:
            others = sorted({r.perf.model_name for j, r in enumerate(residents) if j != k})
            notes.append(MIXED_NOTE.format(others=", ".join(others)))
        predictions.append(
            Prediction(
                total_tokens_per_s=output * perf.total_per_output_token,
                output_tokens_per_s=output,
                itl_mean_ms=itl[k],
                mode="single" if total == 1 else "mps",
                replicas=resident.replicas,
                batch=resident.batch,
                running_per_replica=running[k],
                gpu_busy_fraction=busy,
                note="; ".join(n for n in notes if n),
            )
        )
    return tuple(predictions)


def _mva_response_ms(
    populations: Sequence[int], demand_ms: Sequence[float], idle_ms: Sequence[float]
) -> list[float]:
    """R_k(N): each class's mean response time (ms) at the one queueing station with the full
    population N = `populations`, by exact multi-class MVA (module doc). Every population >= 1.

    The lattice is walked in itertools.product order, i.e. by a mixed-radix index in which n - e_k
    sits `stride[k]` places before n, so Q(n - e_k) is always known. For one class the arithmetic is
    `perfmodel._closed_queue_cycle_ms`'s, operation for operation."""
    classes = range(len(populations))
    strides = [math.prod(n + 1 for n in populations[k + 1 :]) for k in classes]
    queue = [0.0] * math.prod(n + 1 for n in populations)  # Q(n) by lattice index; Q(0) = 0
    response = [0.0] * len(populations)
    for index, state in enumerate(itertools.product(*(range(n + 1) for n in populations))):
        if index == 0:
            continue
        length = 0.0
        for k in classes:
            n_k = state[k]
            if n_k == 0:
                continue
            response[k] = demand_ms[k] * (1.0 + queue[index - strides[k]])
            length += n_k / (response[k] + idle_ms[k]) * response[k]
        queue[index] = length
    return response  # the last state walked is N itself, where every class is present


__all__ = ["MAX_STATES", "Resident", "predict"]
