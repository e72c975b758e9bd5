"""How well the performance model (advisor/perfmodel.py) predicts measured runs it was not fitted
on, and the fit of its MPS concurrency gain (kappa, `perfmodel.MPS_CONCURRENCY_GAIN`).

- `leave_one_out(profile)`: each single-instance point of a profile predicted by the model fitted
  on the profile's other points, from its measured running batch and from its --max-num-seqs alone.
- `fit_mps_concurrency_gain`, `mps_leave_one_out`: kappa fitted on runs of R replicas under MPS
  (`ReplicationPoint`, the paper's replication_calibration.csv), and each such run predicted with
  kappa fitted on the others.

`llmpack predict --loo` prints these figures and tests/unit/test_perfmodel.py asserts them; the
operator never calls this module. Its limits are the data's: leave-one-out tests interpolation
between batch sizes of one profile (one model, one GPU, one workload shape), and the MPS runs are
one model (OPT-1.3B) on one GPU (the paper's H100 64 GB), single instances at 96, 256 and 768 and
two and four replicas at 96, so they validate nothing about other models, GPUs or batch sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.perfmodel import PerfModel, calibrate
from llmpack.api.profile import Profile

# Leave-one-out --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaveOneOut:
    """A measured point predicted by a model fitted without it.

    The primary figures predict the point from its measured running batch: they test the fitted
    terms (efficiencies and idle gap). The `*_from_batch` figures predict it from --max-num-seqs
    alone, the running batch interpolated from the other points as a prediction for an unmeasured
    batch size would be (None where not applicable)."""

    label: str
    measured_total_tokens_per_s: float
    predicted_total_tokens_per_s: float
    measured_itl_ms: float | None
    predicted_itl_ms: float
    measured_gain: float | None = None  # MPS points: total / the same run's single instance
    predicted_gain: float | None = None
    fitted: bool = True  # False: a point the model was never fitted on (a plain hold-out)
    predicted_total_from_batch: float | None = None
    predicted_itl_from_batch: float | None = None

    @property
    def total_error(self) -> float:
        return self.predicted_total_tokens_per_s / self.measured_total_tokens_per_s - 1.0

    @property
    def itl_error(self) -> float | None:
        if not self.measured_itl_ms:
            return None
        return self.predicted_itl_ms / self.measured_itl_ms - 1.0

    @property
    def gain_error(self) -> float | None:
        if self.measured_gain is None or self.predicted_gain is None:
            return None
        return self.predicted_gain / self.measured_gain - 1.0

    @property
    def total_error_from_batch(self) -> float | None:
        if self.predicted_total_from_batch is None:
            return None
        return self.predicted_total_from_batch / self.measured_total_tokens_per_s - 1.0

    @property
    def itl_error_from_batch(self) -> float | None:
        if self.predicted_itl_from_batch is None or not self.measured_itl_ms:
            return None
        return self.predicted_itl_from_batch / self.measured_itl_ms - 1.0


def leave_one_out(profile: Profile) -> list[LeaveOneOut]:
    """For each point the fit uses: refit without it (efficiencies, idle gap and running-batch
    curve) and predict its mean ITL and total tokens/s on the profile's own GPU, from its measured
    running batch and from its --max-num-seqs alone."""
    full = calibrate(profile)
    results = []
    for point in full.points:
        try:
            perf = calibrate(profile, exclude=(point.max_num_seqs,))
        except AdvisorError:
            continue
        itl = perf.step_ms(point.running)
        from_batch = perf.single(point.max_num_seqs)
        results.append(
            LeaveOneOut(
                label=f"B={point.max_num_seqs}",
                measured_total_tokens_per_s=point.total_tokens_per_s,
                predicted_total_tokens_per_s=point.running / itl * 1000.0 * perf.total_per_output_token,
                measured_itl_ms=point.itl_ms,
                predicted_itl_ms=itl,
                predicted_total_from_batch=from_batch.total_tokens_per_s,
                predicted_itl_from_batch=from_batch.itl_mean_ms,
            )
        )
    return results


# MPS calibration on the paper's replication runs ----------------------------------------------


@dataclass(frozen=True)
class ReplicationPoint:
    """One run of R replicas at --max-num-seqs B on one GPU (replication_calibration.csv)."""

    replicas: int
    max_num_seqs: int
    total_tokens_per_s: float
    itl_mean_ms: float | None = None
    running_total: float | None = None  # mean running sequences summed over the replicas

    @property
    def label(self) -> str:
        return f"{self.replicas}x{self.max_num_seqs}" + (" MPS" if self.replicas > 1 else " single")


def _measured_gain(point: ReplicationPoint, points: Sequence[ReplicationPoint]) -> float | None:
    for single in points:
        if single.replicas == 1 and single.max_num_seqs == point.max_num_seqs:
            return point.total_tokens_per_s / single.total_tokens_per_s
    return None


def _mps_error(perf: PerfModel, point: ReplicationPoint, points: Sequence[ReplicationPoint]) -> float:
    """Relative error of the predicted gain (or of the total, without a single run to compare)."""
    predicted = perf.mps(point.replicas, point.max_num_seqs)
    gain = _measured_gain(point, points)
    if gain is not None:
        return predicted.total_tokens_per_s / perf.single(point.max_num_seqs).total_tokens_per_s / gain - 1
    return predicted.total_tokens_per_s / point.total_tokens_per_s - 1


def fit_mps_concurrency_gain(perf: PerfModel, points: Sequence[ReplicationPoint]) -> float:
    """kappa in [0, 1] minimising the squared relative errors of the predicted MPS gains (each
    measured gain is the R-replica run over the same study's single instance at the same batch, so
    run-to-run drift and the single-instance model's own error cancel)."""
    shared = [p for p in points if p.replicas > 1]
    if not shared:
        raise AdvisorError("no run with more than one replica to calibrate MPS on")

    def cost(kappa: float) -> float:
        model = replace(perf, mps_concurrency_gain=kappa)
        return sum(_mps_error(model, p, points) ** 2 for p in shared)

    best = min((k / 200 for k in range(201)), key=cost)  # grid of 0.005, then refine
    low, high = max(best - 0.005, 0.0), min(best + 0.005, 1.0)
    return min((low + (high - low) * i / 100 for i in range(101)), key=cost)


def mps_leave_one_out(perf: PerfModel, points: Sequence[ReplicationPoint]) -> list[LeaveOneOut]:
    """Each multi-replica run predicted with kappa fitted on the other multi-replica runs; each
    single-instance run predicted by the profile's model as is (a hold-out: never fitted)."""
    results = []
    for point in points:
        if point.replicas == 1:
            model, fitted = perf, False
        else:
            others = [p for p in points if p is not point]
            kappa = fit_mps_concurrency_gain(perf, others) if any(p.replicas > 1 for p in others) else 0.0
            model, fitted = replace(perf, mps_concurrency_gain=kappa), True
        predicted = model.mps(point.replicas, point.max_num_seqs)
        gain = _measured_gain(point, points) if point.replicas > 1 else None
        results.append(
            LeaveOneOut(
                label=point.label,
                measured_total_tokens_per_s=point.total_tokens_per_s,
                predicted_total_tokens_per_s=predicted.total_tokens_per_s,
                measured_itl_ms=point.itl_mean_ms,
                predicted_itl_ms=predicted.itl_mean_ms,
                measured_gain=gain,
                predicted_gain=(
                    predicted.total_tokens_per_s / model.single(point.max_num_seqs).total_tokens_per_s
                    if gain is not None
                    else None
                ),
                fitted=fitted,
            )
        )
    return results


__all__ = [
    "LeaveOneOut",
    "ReplicationPoint",
    "fit_mps_concurrency_gain",
    "leave_one_out",
    "mps_leave_one_out",
]
