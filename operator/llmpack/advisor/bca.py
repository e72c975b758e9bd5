"""The Batching Configuration Advisor: pick --max-num-seqs from measured points.

Two policies (arXiv 2503.08311 for the first):

- ``efficiency`` (default, the paper's rule). With T(B) the measured tokens/s at batch B and
  B_min the smallest usable measured batch (normally 1), the efficiency of B is
  η(B) = T(B) / (B · T(B_min)): the throughput each sequence gets relative to running alone.
  When B_min is not 1 (the run at 1 failed or was not measured) we use the per-sequence form
  η(B) = (T(B) / B) / (T(B_min) / B_min), which is the same formula at B_min = 1 and keeps
  η(B_min) = 1; the literal formula would halve every efficiency when B_min = 2.
  A batch is kept when η(B) > ε (default 0.2) and it meets every latency limit;
  B_opt is the largest kept batch.
- ``plateau``: the smallest batch whose throughput is at least (1 - ε) x the best throughput
  among the batches that meet every latency limit (default ε = 0.05).

Both skip points with preemptions (the KV cache was too small for that batch, so the figures are
not those of a steady batch) and points without throughput.

The latency limits, each an upper bound on one measured figure of a point:

- the cap on mean ITL: the SLO on mean ITL when one is given, else L x the mean ITL measured at
  the batch nearest 32 (L = 5); without any measured mean ITL and without that SLO there is no cap;
- one limit per further SLO field (``OBJECTIVES``: p99 ITL, p99 TTFT). Every field of the spec's
  ``slo`` is one of these; a test fails when a field is added without its objective.

A point lacking the figure a limit bounds is not eligible: nothing shows that it meets the limit,
and the advisor never promises a latency it did not measure. When no usable point measured the
figure an SLO bounds, the SLO cannot be honoured at all and the advice is refused (profile with a
backend that measures it, or drop the SLO). When no usable point meets a limit, the advice is
refused with the limit, its value and the best value measured. The explanation names the binding
constraint: what the next larger measured batch fails (efficiency, a latency limit, preemptions).

Definitions that reproduce the paper (profiles.csv, tests/unit/test_bca.py): T is the benchmark's
total (prompt + generated) tokens/s, the y-axis of the paper's Figs. 2, 3 and 12; ITL is the
benchmark's mean ITL over all streamed chunks; B_min is the smallest measured batch of the same
experiment family; the comparison is strict (η > ε). With these, B_opt is 96 / 128 / 192 / 80 for
OPT-1.3B / OPT-2.7B / Llama-2-7B / Llama-2-13B on the `background` family and 128 for OPT-1.3B,
OPT-2.7B and Llama-2-7B on the `advisor` family at 390 output tokens. For Llama-2-13B
(background) the preemption rule is what stops at 80: B = 96 preempted 9 requests.

In `plateau`, a batch meets the latency limits only if every smaller usable batch does too
(latency grows with batch size; a larger batch that dips under a limit after a smaller one broke
it is measurement noise, not headroom). That makes a tighter SLO never choose a larger batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.options import LATENCY_REFERENCE_BATCH, AdvisorOptions
from llmpack.api.profile import ProfilePoint
from llmpack.api.recommendation import CandidateVerdict


@dataclass(frozen=True)
class Objective:
    """One field of the spec's `slo`: `slo.<field>` bounds the point's measured `<field>` (mean ITL
    falls back on mean TPOT where a source recorded no ITL); AdvisorOptions carries it as
    `slo_<field>`."""

    field: str  # the SLOSpec / ProfilePoint field, e.g. "ttft_p99_ms"
    metric: str  # how a sentence names the figure, e.g. "p99 TTFT"
    spec_path: str  # where the user set it, e.g. "slo.ttftP99Ms"

    @property
    def option(self) -> str:
        return f"slo_{self.field}"

    def read(self, point: ProfilePoint) -> float | None:
        if self.field == "itl_mean_ms":
            return point.itl_or_tpot_mean_ms
        value = getattr(point, self.field)
        return float(value) if value is not None else None


OBJECTIVES: tuple[Objective, ...] = (
    Objective("itl_mean_ms", "mean ITL", "slo.itlMeanMs"),
    Objective("itl_p99_ms", "p99 ITL", "slo.itlP99Ms"),
    Objective("ttft_p99_ms", "p99 TTFT", "slo.ttftP99Ms"),
)
MEAN_ITL = OBJECTIVES[0]


@dataclass(frozen=True)
class Limit:
    """A latency limit in force for one selection: the cap on mean ITL, or one further SLO."""

    objective: Objective
    limit_ms: float
    name: str  # "the p99 TTFT SLO (200 ms)", "the latency cap on mean ITL (37.55 ms = ...)"
    word: str  # how a verdict names the bound: "cap" or "SLO"
    from_slo: bool

    def failure(self, point: ProfilePoint) -> str | None:
        value = self.objective.read(point)
        metric = self.objective.metric
        if value is None:
            what = "the latency cap" if self.objective is MEAN_ITL else f"the {metric} SLO"
            return f"no {metric} measured, so {what} cannot be checked"
        if value > self.limit_ms:
            return f"{metric} {value:.2f} ms > {self.word} {self._bound()}"
        return None

    def success(self, point: ProfilePoint) -> str:
        value = self.objective.read(point)
        return f"{self.objective.metric} {value:.2f} ms <= {self.word} {self._bound()}"

    def _bound(self) -> str:
        return f"{self.limit_ms:.2f} ms" if self.word == "cap" else f"{self.limit_ms:g} ms"


@dataclass(frozen=True)
class BatchSelection:
    policy: str
    epsilon: float
    b_opt: int
    b_min: int
    latency_cap_ms: float | None
    latency_cap_source: str
    itl_p99_cap_ms: float | None
    verdicts: list[CandidateVerdict]
    explanation: str
    ttft_p99_cap_ms: float | None = None
    # what stopped B from growing, by name ("the p99 TTFT SLO (200 ms)", "the efficiency
    # threshold (epsilon 0.2)", "preemptions", ...); empty when nothing measured stopped it
    binding: tuple[str, ...] = ()


# A failure of one test, tagged with the constraint it belongs to (the explanation names it).
Failure = tuple[str, str]  # (constraint name, sentence)

PREEMPTIONS = "preemptions (the KV cache ran out)"
NO_THROUGHPUT = "a run without throughput"


def _usable_failure(point: ProfilePoint) -> Failure | None:
    if point.preemptions > 0:
        return (
            PREEMPTIONS,
            f"skipped: {point.preemptions} preemptions (the KV cache ran out at this batch, so it never "
            "ran as a steady batch)",
        )
    if point.total_tokens_per_s <= 0:
        return NO_THROUGHPUT, "skipped: no throughput measured"
    return None


def _usable_reason(point: ProfilePoint) -> str | None:
    failure = _usable_failure(point)
    return failure[1] if failure else None


def latency_cap(usable: Sequence[ProfilePoint], options: AdvisorOptions) -> tuple[float | None, str]:
    """The cap on mean ITL and a sentence saying where it came from."""
    if options.slo_itl_mean_ms is not None:
        return options.slo_itl_mean_ms, f"the SLO on mean ITL ({options.slo_itl_mean_ms:g} ms)"
    timed = [p for p in usable if p.itl_or_tpot_mean_ms is not None]
    if not timed:
        return None, "no latency was measured, so no latency cap applies"
    # nearest to 32; on a tie the smaller batch (its lower ITL gives the tighter, safer cap)
    ref = min(timed, key=lambda p: (abs(p.max_num_seqs - LATENCY_REFERENCE_BATCH), p.max_num_seqs))
    itl = ref.itl_or_tpot_mean_ms
    assert itl is not None
    cap = options.latency_factor * itl
    return cap, f"{options.latency_factor:g} x the mean ITL at B={ref.max_num_seqs} ({itl:.2f} ms)"


def latency_limits(usable: Sequence[ProfilePoint], options: AdvisorOptions) -> list[Limit]:
    """Every latency limit in force: the cap on mean ITL (the SLO's or the derived one), then one
    per further SLO field the options set."""
    limits = []
    cap, cap_source = latency_cap(usable, options)
    if cap is not None:
        from_slo = options.slo_itl_mean_ms is not None
        name = (
            f"the mean ITL SLO ({cap:g} ms)"
            if from_slo
            else f"the latency cap on mean ITL ({cap:.2f} ms = {cap_source})"
        )
        limits.append(Limit(MEAN_ITL, cap, name, "cap", from_slo))
    for objective in OBJECTIVES[1:]:
        value = getattr(options, objective.option)
        if value is not None:
            limits.append(Limit(objective, value, f"the {objective.metric} SLO ({value:g} ms)", "SLO", True))
    return limits


def _refuse_unmeasured(usable: Sequence[ProfilePoint], limits: Sequence[Limit]) -> None:
    """An SLO whose figure no usable point measured cannot be honoured: refuse it by name."""
    for limit in limits:
        if limit.from_slo and all(limit.objective.read(p) is None for p in usable):
            metric = limit.objective.metric
            raise AdvisorError(
                f"the profile measured no {metric} at any usable batch size, so {limit.name} "
                f"({limit.objective.spec_path}) cannot be honoured: profile with a backend that "
                f"reports {metric}, or remove the SLO"
            )


def select_batch(points: Sequence[ProfilePoint], options: AdvisorOptions | None = None) -> BatchSelection:
    """Choose B_opt from measured points; every point gets a verdict saying which test it failed.
    Raises AdvisorError when no point is usable, an SLO's figure was never measured, or no point
    meets the latency limits (the message names the limit, its value and the best measured)."""
    options = options or AdvisorOptions()
    epsilon = options.effective_epsilon
    points = sorted(points, key=lambda p: p.max_num_seqs)
    usable = [p for p in points if _usable_failure(p) is None]
    if not usable:
        raise AdvisorError(
            "no usable measured point: every batch size in the profile preempted requests or measured "
            "no throughput; profile smaller batch sizes (--max-num-seqs) or give the KV cache more memory"
        )
    cap, cap_source = latency_cap(usable, options)
    limits = latency_limits(usable, options)
    _refuse_unmeasured(usable, limits)
    judge = Judgement(points=points, usable=usable, limits=limits, epsilon=epsilon)
    rule: PolicyRule = _efficiency if options.policy == "efficiency" else _plateau
    chosen, stopper = rule(judge)
    if chosen is None:
        raise AdvisorError(_refusal(usable, limits, cap_source, judge.failures))
    verdicts = judge.verdicts(chosen)
    binding = (
        tuple(dict.fromkeys(name for name, _ in judge.failures.get(stopper, []) if name)) if stopper else ()
    )
    explanation = _explain(
        options, epsilon, chosen, judge.b_min, cap, cap_source, limits, verdicts, stopper, binding, points
    )
    return BatchSelection(
        policy=options.policy,
        epsilon=epsilon,
        b_opt=chosen,
        b_min=judge.b_min,
        latency_cap_ms=cap,
        latency_cap_source=cap_source,
        itl_p99_cap_ms=options.slo_itl_p99_ms,
        verdicts=verdicts,
        explanation=explanation,
        ttft_p99_cap_ms=options.slo_ttft_p99_ms,
        binding=binding,
    )


@dataclass
class Judgement:
    """What each measured batch size passed or failed, filled in by one policy."""

    points: list[ProfilePoint]  # all, sorted by batch size
    usable: list[ProfilePoint]
    limits: list[Limit]
    epsilon: float
    failures: dict[int, list[Failure]] = field(default_factory=dict)  # why a batch is not kept
    passes: dict[int, list[str]] = field(default_factory=dict)  # why a kept batch is
    kept: set[int] = field(default_factory=set)
    latency_fail: dict[int, list[Failure]] = field(init=False)  # per usable batch: limits it breaks

    def __post_init__(self) -> None:
        for p in self.points:
            unusable = _usable_failure(p)
            if unusable is not None:
                self.failures[p.max_num_seqs] = [unusable]
        self.latency_fail = {
            p.max_num_seqs: [(lim.name, f) for lim in self.limits if (f := lim.failure(p)) is not None]
            for p in self.usable
        }

    @property
    def b_min(self) -> int:
        return self.usable[0].max_num_seqs

    def efficiency(self, p: ProfilePoint) -> float:
        """T(B) / (B x T(B_min) / B_min): the paper's efficiency against the smallest usable batch."""
        base = self.usable[0]
        return (p.total_tokens_per_s / p.max_num_seqs) / (base.total_tokens_per_s / base.max_num_seqs)

    def verdicts(self, chosen: int) -> list[CandidateVerdict]:
        return [
            CandidateVerdict(
                max_num_seqs=p.max_num_seqs,
                total_tokens_per_s=p.total_tokens_per_s,
                itl_mean_ms=p.itl_or_tpot_mean_ms,
                itl_p99_ms=p.itl_p99_ms,
                efficiency=self.efficiency(p),
                preemptions=p.preemptions,
                kept=p.max_num_seqs in self.kept,
                chosen=p.max_num_seqs == chosen,
                reasons=self.passes[p.max_num_seqs]
                if p.max_num_seqs in self.kept
                else [text for _, text in self.failures.get(p.max_num_seqs, [])],
            )
            for p in self.points
        ]


# A policy judges every usable point and returns (B_opt or None, the batch whose failure stopped
# it: the binding constraint's witness, or None when nothing binds).
PolicyRule = Callable[[Judgement], tuple[int | None, int | None]]


def _efficiency(judge: Judgement) -> tuple[int | None, int | None]:
    """The paper's rule: the largest batch whose efficiency stays above epsilon within the limits."""
    epsilon = judge.epsilon
    name = f"the efficiency threshold (epsilon {epsilon:g})"
    for p in judge.usable:
        failed = list(judge.latency_fail[p.max_num_seqs])
        eta = judge.efficiency(p)
        if not eta > epsilon:
            failed.insert(0, (name, f"efficiency {eta:.3f} <= epsilon {epsilon:g}"))
        if failed:
            judge.failures[p.max_num_seqs] = failed
        else:
            judge.kept.add(p.max_num_seqs)
            judge.passes[p.max_num_seqs] = [f"efficiency {eta:.3f} > epsilon {epsilon:g}"] + [
                lim.success(p) for lim in judge.limits
            ]
    chosen = max(judge.kept) if judge.kept else None
    if chosen is None:
        return None, None
    return chosen, next((p.max_num_seqs for p in judge.points if p.max_num_seqs > chosen), None)


def _plateau(judge: Judgement) -> tuple[int | None, int | None]:
    """The smallest batch within epsilon of the best throughput the limits allow; the limits
    exclude every batch from the first that breaks one."""
    excluded_from: int | None = None
    feasible: list[ProfilePoint] = []
    for p in judge.usable:
        fails = judge.latency_fail[p.max_num_seqs]
        if excluded_from is None and fails:
            excluded_from = p.max_num_seqs
        if excluded_from is None:
            feasible.append(p)
        elif p.max_num_seqs == excluded_from:
            judge.failures[p.max_num_seqs] = fails
        else:
            broken = " and ".join(dict.fromkeys(name for name, _ in judge.latency_fail[excluded_from]))
            judge.failures[p.max_num_seqs] = fails or [
                ("", f"a smaller batch (B={excluded_from}) already fails {broken}")
            ]
    if not feasible:
        return None, None
    best = max(feasible, key=lambda p: p.total_tokens_per_s)
    floor = (1 - judge.epsilon) * best.total_tokens_per_s
    for p in feasible:
        share = p.total_tokens_per_s / best.total_tokens_per_s
        text = f"{share:.1%} of the best throughput within the cap (B={best.max_num_seqs})"
        if p.total_tokens_per_s >= floor:
            judge.kept.add(p.max_num_seqs)
            judge.passes[p.max_num_seqs] = [f"{text} >= {1 - judge.epsilon:.0%}"]
        else:
            judge.failures[p.max_num_seqs] = [("", f"{text} < {1 - judge.epsilon:.0%}")]
    if not judge.kept:
        return None, None
    # The limits bind the plateau only when they exclude more throughput than the best they
    # leave: otherwise the best, its floor and the choice are what they would be without them.
    cut = excluded_from if excluded_from is not None else judge.points[-1].max_num_seqs + 1
    left = max(p.total_tokens_per_s for p in judge.usable if p.max_num_seqs < cut)
    excluded = max((p.total_tokens_per_s for p in judge.usable if p.max_num_seqs >= cut), default=0.0)
    return min(judge.kept), excluded_from if excluded > left else None


def _refusal(
    usable: Sequence[ProfilePoint],
    limits: Sequence[Limit],
    cap_source: str,
    failures: dict[int, list[Failure]],
) -> str:
    """Why no batch is chosen: each limit no usable point meets, with the best value measured; or,
    when each is met somewhere but never all by one eligible batch, what the smallest batch fails."""
    parts = []
    for limit in limits:
        measured = [(v, p.max_num_seqs) for p in usable if (v := limit.objective.read(p)) is not None]
        if not measured or any(v <= limit.limit_ms for v, _ in measured):
            continue
        lowest, at = min(measured)
        metric = limit.objective.metric
        if limit.objective is MEAN_ITL:
            parts.append(
                f"the latency cap of {cap_source}; the lowest mean ITL measured is {lowest:.2f} ms "
                f"(B={at}), so an SLO below that cannot be met on this GPU"
            )
        else:
            parts.append(
                f"{limit.name}: the lowest {metric} measured is {lowest:.2f} ms (B={at}), so an SLO "
                "below that cannot be met on this GPU"
            )
    if parts:
        return f"no measured batch size meets {'; nor '.join(parts)}; relax the SLO or serve on a faster GPU"
    smallest = usable[0]
    names = " and ".join(limit.name for limit in limits)
    failed = "; ".join(text for _, text in failures.get(smallest.max_num_seqs, [])) or "the policy's tests"
    return (
        f"no measured batch size meets {names} at once (the smallest, B={smallest.max_num_seqs}, fails: "
        f"{failed}); relax the SLO or serve on a faster GPU"
    )


def _eta_formula(b_min: int) -> str:
    return "T(B)/(B x T(1))" if b_min == 1 else f"(T(B)/B)/(T({b_min})/{b_min})"


def _limits_text(cap: float | None, cap_source: str, limits: Sequence[Limit]) -> str:
    """`the latency cap 37.55 ms = ...` and any further SLOs, as one phrase."""
    phrases = [f"latency cap {cap:.2f} ms = {cap_source}" if cap is not None else cap_source]
    phrases += [limit.name.removeprefix("the ") for limit in limits if limit.objective is not MEAN_ITL]
    return " and the ".join(phrases)


def _explain(
    options: AdvisorOptions,
    epsilon: float,
    chosen: int,
    b_min: int,
    cap: float | None,
    cap_source: str,
    limits: Sequence[Limit],
    verdicts: list[CandidateVerdict],
    stopper: int | None,
    binding: tuple[str, ...],
    points: Sequence[ProfilePoint],
) -> str:
    by_batch = {v.max_num_seqs: v for v in verdicts}
    picked = by_batch[chosen]
    within = _limits_text(cap, cap_source, limits)
    if options.policy == "efficiency":
        text = (
            f"B_opt = {chosen}: the largest measured batch whose efficiency {_eta_formula(b_min)} stays "
            f"above {epsilon:g} within the {within} (efficiency {picked.efficiency:.3f}, "
            f"{picked.total_tokens_per_s:,.0f} tokens/s)."
        )
        if stopper is None:
            text += " Nothing measured stops it: it is the largest batch size measured."
        else:
            nxt = by_batch[stopper]
            text += (
                f" Binding constraint: {' and '.join(binding) or 'the policy'}; the next larger, "
                f"B={stopper}, fails: {'; '.join(nxt.reasons)}."
            )
    else:
        text = (
            f"B_opt = {chosen}: the smallest measured batch within {1 - epsilon:.0%} of the best "
            f"throughput under the {within} ({picked.total_tokens_per_s:,.0f} tokens/s)."
        )
        if stopper is None:
            text += (
                " The throughput plateau alone decides: no batch a latency limit excludes has more "
                "throughput."
            )
        else:
            text += (
                f" Binding constraint: {' and '.join(binding)}; it excludes every batch from "
                f"B={stopper} up (B={stopper}: {'; '.join(by_batch[stopper].reasons)})."
            )
    text += _without_binding_slos(options, chosen, limits, binding, points)
    return text


def _without_binding_slos(
    options: AdvisorOptions,
    chosen: int,
    limits: Sequence[Limit],
    binding: tuple[str, ...],
    points: Sequence[ProfilePoint],
) -> str:
    """What the SLOs that bind cost: B_opt without them."""
    slos = [limit for limit in limits if limit.from_slo and limit.name in binding]
    if not slos:
        return ""
    looser = options.model_copy(update={limit.objective.option: None for limit in slos})
    try:
        free = select_batch(points, looser).b_opt
    except AdvisorError:
        return ""
    if free == chosen:
        return ""
    paths = ", ".join(limit.objective.spec_path for limit in slos)
    return f" Without {paths} it would be B={free}."
