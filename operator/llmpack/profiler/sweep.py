"""Which batch sizes to measure: every candidate (exhaustive), or only those the advisor's choice
depends on (adaptive).

The adaptive sweep leans on what the advisor will do with the points (advisor/bca.py, the paper's
efficiency rule): B_opt is the largest batch that is *kept*, i.e. usable (no preemptions), with
efficiency T(B)/(B x T(B_min)) above epsilon and mean ITL within the latency cap, where the cap is
L x the ITL measured at the batch nearest 32. Throughput per sequence falls and ITL rises with the
batch, so the kept batches are a prefix of the candidates and B_opt is where that prefix ends. The
sweep measures what pins it down, in this order:

1. the base: candidates from the smallest up until one is usable (B_min, the efficiency's
   denominator);
2. the latency reference: the usable candidate nearest 32 (the cap's source), trying candidates in
   the order the advisor prefers them (distance to 32, then the smaller);
3. a bisection on a log scale between the largest kept batch and the smallest measured batch that
   is not kept (the stop test), or the largest candidate while none has stopped: each step
   measures the open candidate nearest the geometric middle, until none is left between them.

Whether a batch is kept is never decided here: after each measurement the advisor's own
`select_batch` runs on the points measured so far and its verdicts are read, so the stop test is
the advisor's test, cap and all. Steps 1 and 2 make its B_min and latency cap those of the
exhaustive sweep, so it judges every measured batch as it would with all of them.

Why a bisection and not a doubling walk (1, 2, 4, ... until the stop test holds, then refine
between the last two): on power-of-two candidates a doubling walk measures every candidate up to
the stop, 9 of 10 for the paper's groups, whereas the bisection needs about log2 of the candidates
above the reference (4-6 points of 10-15 on all 20 paper groups, with the same B_opt; see
bench/adaptive_sweep.py). The candidate list is always finite, so there is no unbounded upper end
for a doubling phase to find.

A failed point (the engine crashed, a row of the paper data is missing) is recorded and skipped:
it is neither kept nor a stop, so the search looks at its neighbours instead.

Only the `efficiency` policy has a prefix-shaped answer the search can exploit; `plateau` asks
for the smallest batch near the best throughput, which needs the whole curve: use exhaustive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llmpack.advisor import bca
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.options import LATENCY_REFERENCE_BATCH, AdvisorOptions
from llmpack.api.profile import ProfilePoint

SweepMode = Literal["adaptive", "exhaustive"]
SWEEP_MODES: tuple[str, ...] = ("adaptive", "exhaustive")


class PointFailed(Exception):
    """One batch size could not be measured; the message says why. The sweep goes on without it."""


@dataclass(frozen=True)
class Measurement:
    """One attempt at one batch size: a point, or the reason it failed."""

    batch: int
    point: ProfilePoint | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.point is not None


Measure = Callable[[int], ProfilePoint]
# on_measured(measurement, attempt number from 1, most attempts this sweep can make)
OnMeasured = Callable[[Measurement, int, int], None]


@dataclass
class SweepResult:
    mode: str
    candidates: list[int]
    measurements: list[Measurement] = field(default_factory=list)  # in the order measured

    @property
    def points(self) -> list[ProfilePoint]:
        """The successful points, by batch size."""
        return sorted(
            (m.point for m in self.measurements if m.point is not None), key=lambda p: p.max_num_seqs
        )

    @property
    def failures(self) -> list[Measurement]:
        return [m for m in self.measurements if m.point is None]

    @property
    def attempts(self) -> int:
        return len(self.measurements)

    def notes(self) -> list[str]:
        """One line per failed point, for the Profile's notes."""
        return [f"B={m.batch} failed: {m.error}" for m in self.failures]

    @property
    def order(self) -> list[int]:
        return [m.batch for m in self.measurements]

    def b_opt(self, options: AdvisorOptions | None = None) -> int | None:
        """The advisor's choice on the points measured; None when it has none to offer."""
        points = self.points
        if not points:
            return None
        try:
            return bca.select_batch(points, options).b_opt
        except AdvisorError:
            return None


def normalise_candidates(candidates: Sequence[int]) -> list[int]:
    batches = sorted(set(candidates))
    if not batches:
        raise ValueError("no candidate batch sizes to measure")
    if batches[0] < 1:
        raise ValueError(f"candidate batch sizes must be at least 1, got {batches[0]}")
    return batches


def run_sweep(
    candidates: Sequence[int],
    measure: Measure,
    mode: SweepMode = "adaptive",
    options: AdvisorOptions | None = None,
    on_measured: OnMeasured | None = None,
) -> SweepResult:
    """Measure the candidates `mode` asks for. `measure(batch)` returns the point or raises
    PointFailed; any other exception ends the sweep (the engine is gone, not just one point)."""
    batches = normalise_candidates(candidates)
    if mode not in SWEEP_MODES:
        raise ValueError(f"unknown sweep {mode!r}: use adaptive or exhaustive")
    options = options or AdvisorOptions()
    if mode == "adaptive" and options.policy != "efficiency":
        raise ValueError(
            "the adaptive sweep follows the efficiency policy's stop test; use the exhaustive sweep "
            f"for the {options.policy} policy"
        )
    sweep = _Sweep(batches, measure, mode, options, on_measured)
    if mode == "exhaustive":
        for batch in batches:
            sweep.measure(batch)
    else:
        sweep.adaptive()
    return sweep.result


class _Sweep:
    def __init__(
        self,
        candidates: list[int],
        measure: Measure,
        mode: str,
        options: AdvisorOptions,
        on_measured: OnMeasured | None,
    ) -> None:
        self.candidates = candidates
        self._measure = measure
        self.options = options
        self.on_measured = on_measured
        self.result = SweepResult(mode=mode, candidates=list(candidates))
        self.done: dict[int, Measurement] = {}

    # -- measuring ----------------------------------------------------------------------------

    def measure(self, batch: int) -> Measurement:
        if batch in self.done:
            return self.done[batch]
        try:
            point = self._measure(batch)
        except PointFailed as err:
            measurement = Measurement(batch, error=str(err) or "failed")
        else:
            if point.max_num_seqs != batch:
                point = point.model_copy(update={"max_num_seqs": batch})
            measurement = Measurement(batch, point=point)
        self.done[batch] = measurement
        self.result.measurements.append(measurement)
        if self.on_measured is not None:
            self.on_measured(measurement, len(self.result.measurements), len(self.candidates))
        return measurement

    def _usable(self, batch: int) -> bool:
        m = self.done.get(batch)
        return m is not None and m.point is not None and bca._usable_reason(m.point) is None

    # -- the adaptive search ------------------------------------------------------------------

    def adaptive(self) -> None:
        # 1. B_min: the smallest usable candidate.
        for batch in self.candidates:
            self.measure(batch)
            if self._usable(batch):
                break
        else:
            return  # nothing usable at any batch: the advisor will say so
        # 2. The latency reference, in the advisor's order of preference.
        for batch in sorted(self.candidates, key=lambda b: (abs(b - LATENCY_REFERENCE_BATCH), b)):
            self.measure(batch)
            point = self.done[batch].point
            if self._usable(batch) and point is not None and point.itl_or_tpot_mean_ms is not None:
                break
        # 3. Bisect, on a log scale, between the largest kept batch and the smallest that stopped.
        while True:
            kept, stopped = self._verdicts()
            if not kept:
                return  # not even B_min meets the latency cap: more points cannot change that
            low = max(kept)
            high = min((b for b in stopped if b > low), default=None)
            open_ = [
                b for b in self.candidates if low < b and (high is None or b < high) and b not in self.done
            ]
            if not open_:
                return
            upper = high if high is not None else self.candidates[-1]
            middle = (math.log(low) + math.log(upper)) / 2
            self.measure(min(open_, key=lambda b: (abs(math.log(b) - middle), b)))

    def _verdicts(self) -> tuple[set[int], set[int]]:
        """(kept, stopped): batches the advisor keeps, and measured batches it does not keep for a
        reason a larger batch shares (too little efficiency, ITL over the cap, preemptions)."""
        points = [m.point for m in self.done.values() if m.point is not None]
        if not points:
            return set(), set()
        try:
            verdicts = bca.select_batch(points, self.options).verdicts
        except AdvisorError:
            return set(), {p.max_num_seqs for p in points}
        kept = {v.max_num_seqs for v in verdicts if v.kept}
        stopped = {v.max_num_seqs for v in verdicts if not v.kept}
        return kept, stopped
