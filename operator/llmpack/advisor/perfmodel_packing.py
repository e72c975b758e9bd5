"""How many MPS replicas of one batch size to put on one GPU, by the performance model
(advisor/perfmodel.py): `pack` adds replicas one at a time while the next one is predicted to add at
least a threshold of tokens/s per GPU and to keep the predicted mean ITL within the SLO.

Memory is not this module's business: `pack` takes how many replicas fit (`memory_fit`, from
advisor/packing.py) as an input. `advise()` (advisor/recommend.py) calls it to trim the replicas
memory holds to the ones that pay.

Its limits are the model's: the gains are predictions from a single-instance profile (see
perfmodel.py for what the model does not know), each replica runs the same batch size, and the
gain of each added replica is measured against one replica fewer at the same batch, not against a
vLLM instance at its defaults (`perfmodel.baseline`). It does not choose MIG slices.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.perfmodel import PerfModel, Prediction, check_count
from llmpack.hardware import MPS_MAX_CLIENTS


@dataclass(frozen=True)
class PackingDecision:
    """How many MPS replicas of one batch size to put on one GPU, and why."""

    replicas: int
    predictions: dict[int, Prediction]  # per replica count evaluated (1 = one replica alone)
    reason: str
    limited_by: str  # min_gain, slo, memory, max_replicas
    slo_met: bool = True

    @property
    def chosen(self) -> Prediction:
        return self.predictions[self.replicas]

    @property
    def gain(self) -> float:
        """Predicted tokens/s of the chosen packing over one replica at the same batch, minus 1."""
        return self.chosen.total_tokens_per_s / self.predictions[1].total_tokens_per_s - 1.0


def pack(
    perf: PerfModel,
    batch: int,
    max_replicas: int,
    min_gain: float = 0.05,
    slo_itl_ms: float | None = None,
    memory_fit: int | None = None,
) -> PackingDecision:
    """Add MPS replicas of `batch` one at a time while the next one is predicted to add at least
    `min_gain` (relative) tokens/s per GPU and keeps the predicted mean ITL within `slo_itl_ms`;
    never beyond `max_replicas` or `memory_fit` (how many replicas the GPU's memory holds)."""
    check_count("batch", batch)
    check_count("max_replicas", max_replicas)
    if memory_fit is not None and memory_fit < 1:
        raise AdvisorError(f"not even one replica at --max-num-seqs {batch} fits the GPU's memory")
    cap, cap_reason = min(max_replicas, MPS_MAX_CLIENTS), "max_replicas"
    if memory_fit is not None and memory_fit <= cap:  # a tie: memory is what a user would raise
        cap, cap_reason = memory_fit, "memory"
    predictions = {1: perf.single(batch)}
    first = predictions[1]
    if slo_itl_ms is not None and first.itl_mean_ms > slo_itl_ms:
        return PackingDecision(
            replicas=1,
            predictions=predictions,
            reason=f"even one replica at --max-num-seqs {batch} is predicted at {first.itl_mean_ms:.1f} ms "
            f"mean ITL, above the SLO of {slo_itl_ms:g} ms: lower the batch size",
            limited_by="slo",
            slo_met=False,
        )
    for replicas in range(2, cap + 1):
        predictions[replicas] = nxt = perf.mps(replicas, batch)
        prev = predictions[replicas - 1]
        added = nxt.total_tokens_per_s / prev.total_tokens_per_s - 1.0
        if slo_itl_ms is not None and nxt.itl_mean_ms > slo_itl_ms:
            return PackingDecision(
                replicas=replicas - 1,
                predictions=predictions,
                reason=f"{replicas} replicas refused: predicted mean ITL {nxt.itl_mean_ms:.1f} ms breaks the "
                f"SLO of {slo_itl_ms:g} ms",
                limited_by="slo",
            )
        if added < min_gain:
            return PackingDecision(
                replicas=replicas - 1,
                predictions=predictions,
                reason=f"a replica number {replicas} is predicted to add {added:+.1%} tokens/s, less than "
                f"the {min_gain:.0%} threshold",
                limited_by="min_gain",
            )
    what = "the GPU's memory holds" if cap_reason == "memory" else f"the limit of {max_replicas} allows"
    return PackingDecision(
        replicas=cap,
        predictions=predictions,
        reason=f"{cap} replica{'s' if cap != 1 else ''}: as many as {what}",
        limited_by=cap_reason,
    )


__all__ = ["PackingDecision", "pack"]
