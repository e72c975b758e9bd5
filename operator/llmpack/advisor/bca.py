"""The Batching Configuration Advisor: pick --max-num-seqs from measured points.

Two policies (arXiv 2503.08311 for the first):

- ``efficiency`` (default, the paper's rule). With T(B) the measured tokens/s at batch B and
  B_min the smallest usable measured batch (normally 1), the efficiency of B is
  η(B) = T(B) / (B · T(B_min)): the throughput each sequence gets relative to running alone.
  When B_min is not 1 (the run at 1 failed or was not measured) we use the per-sequence form
  η(B) = (T(B) / B) / (T(B_min) / B_min), which is the same formula at B_min = 1 and keeps
  η(B_min) = 1; the literal formula would halve every efficiency when B_min = 2.
  A batch is kept when η(B) > ε (default 0.2) and its mean ITL is within the latency cap;
  B_opt is the largest kept batch.
- ``plateau``: the smallest batch whose throughput is at least (1 - ε) x the best throughput
  among the batches that meet the latency cap (default ε = 0.05).

Both skip points with preemptions (the KV cache was too small for that batch, so the figures are
not those of a steady batch) and points without throughput. The latency cap is the SLO on mean
ITL when one is given, else L x the mean ITL measured at the batch nearest 32 (L = 5). An SLO on
p99 ITL, when given, is a further test on every candidate.

Definitions that reproduce the paper (profiles.csv, tests/unit/test_bca.py): T is the benchmark's
total (prompt + generated) tokens/s, the y-axis of the paper's Figs. 2, 3 and 12; ITL is the
benchmark's mean ITL over all streamed chunks; B_min is the smallest measured batch of the same
experiment family; the comparison is strict (η > ε). With these, B_opt is 96 / 128 / 192 / 80 for
OPT-1.3B / OPT-2.7B / Llama-2-7B / Llama-2-13B on the `background` family and 128 for OPT-1.3B,
OPT-2.7B and Llama-2-7B on the `advisor` family at 390 output tokens. For Llama-2-13B
(background) the preemption rule is what stops at 80: B = 96 preempted 9 requests.

In `plateau`, a batch meets the latency cap only if every smaller usable batch does too
(latency grows with batch size; a larger batch that dips under the cap after a smaller one broke
it is measurement noise, not headroom). That makes a tighter SLO never choose a larger batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.options import LATENCY_REFERENCE_BATCH, AdvisorOptions
from llmpack.api.profile import ProfilePoint
from llmpack.api.recommendation import CandidateVerdict


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


def _usable_reason(point: ProfilePoint) -> str | None:
    if point.preemptions > 0:
        return (
            f"skipped: {point.preemptions} preemptions (the KV cache ran out at this batch, so it never "
            "ran as a steady batch)"
        )
    if point.total_tokens_per_s <= 0:
        return "skipped: no throughput measured"
    return None


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


def _latency_failures(point: ProfilePoint, cap: float | None, p99_cap: float | None) -> list[str]:
    failures = []
    if cap is not None:
        itl = point.itl_or_tpot_mean_ms
        if itl is None:
            failures.append("no mean ITL measured, so the latency cap cannot be checked")
        elif itl > cap:
            failures.append(f"mean ITL {itl:.2f} ms > cap {cap:.2f} ms")
    if p99_cap is not None:
        if point.itl_p99_ms is None:
            failures.append("no p99 ITL measured, so the p99 SLO cannot be checked")
        elif point.itl_p99_ms > p99_cap:
            failures.append(f"p99 ITL {point.itl_p99_ms:.2f} ms > SLO {p99_cap:g} ms")
    return failures


def select_batch(points: Sequence[ProfilePoint], options: AdvisorOptions | None = None) -> BatchSelection:
    """Choose B_opt from measured points; every point gets a verdict saying which test it failed.
    Raises AdvisorError when no point is usable or none meets the latency cap."""
    options = options or AdvisorOptions()
    epsilon = options.effective_epsilon
    points = sorted(points, key=lambda p: p.max_num_seqs)
    usable = [p for p in points if _usable_reason(p) is None]
    if not usable:
        raise AdvisorError(
            "no usable measured point: every batch size in the profile preempted requests or measured "
            "no throughput; profile smaller batch sizes (--max-num-seqs) or give the KV cache more memory"
        )
    base = usable[0]
    b_min, t_min = base.max_num_seqs, base.total_tokens_per_s
    cap, cap_source = latency_cap(usable, options)
    p99_cap = options.slo_itl_p99_ms

    def efficiency(p: ProfilePoint) -> float:
        return (p.total_tokens_per_s / p.max_num_seqs) / (t_min / b_min)

    latency_fail = {p.max_num_seqs: _latency_failures(p, cap, p99_cap) for p in usable}
    reasons: dict[int, list[str]] = {}
    kept: set[int] = set()

    if options.policy == "efficiency":
        for p in usable:
            failures = list(latency_fail[p.max_num_seqs])
            eta = efficiency(p)
            if not eta > epsilon:
                failures.insert(0, f"efficiency {eta:.3f} <= epsilon {epsilon:g}")
            if failures:
                reasons[p.max_num_seqs] = failures
            else:
                kept.add(p.max_num_seqs)
                passes = [f"efficiency {eta:.3f} > epsilon {epsilon:g}"]
                if cap is not None:
                    passes.append(f"mean ITL {p.itl_or_tpot_mean_ms:.2f} ms <= cap {cap:.2f} ms")
                reasons[p.max_num_seqs] = passes
        chosen = max(kept) if kept else None
    else:
        feasible: list[ProfilePoint] = []
        broken_at: int | None = None
        for p in usable:
            if broken_at is None and latency_fail[p.max_num_seqs]:
                broken_at = p.max_num_seqs
            if broken_at is None:
                feasible.append(p)
            elif p.max_num_seqs == broken_at:
                reasons[p.max_num_seqs] = latency_fail[p.max_num_seqs]
            else:
                reasons[p.max_num_seqs] = latency_fail[p.max_num_seqs] or [
                    f"a smaller batch (B={broken_at}) already breaks the latency cap"
                ]
        chosen = None
        if feasible:
            best = max(feasible, key=lambda p: p.total_tokens_per_s)
            floor = (1 - epsilon) * best.total_tokens_per_s
            for p in feasible:
                share = p.total_tokens_per_s / best.total_tokens_per_s
                if p.total_tokens_per_s >= floor:
                    kept.add(p.max_num_seqs)
                    reasons[p.max_num_seqs] = [
                        f"{share:.1%} of the best throughput within the cap (B={best.max_num_seqs}) "
                        f">= {1 - epsilon:.0%}"
                    ]
                else:
                    reasons[p.max_num_seqs] = [
                        f"{share:.1%} of the best throughput within the cap (B={best.max_num_seqs}) "
                        f"< {1 - epsilon:.0%}"
                    ]
            chosen = min(kept) if kept else None

    if chosen is None:
        fastest = min(
            (p for p in usable if p.itl_or_tpot_mean_ms is not None),
            key=lambda p: p.itl_or_tpot_mean_ms or 0.0,
            default=None,
        )
        hint = ""
        if fastest is not None:
            hint = (
                f"; the lowest mean ITL measured is {fastest.itl_or_tpot_mean_ms:.2f} ms "
                f"(B={fastest.max_num_seqs}), so an SLO below that cannot be met on this GPU"
            )
        if p99_cap is not None:
            hint += f"; check the p99 ITL SLO ({p99_cap:g} ms) too"
        raise AdvisorError(
            f"no measured batch size meets the latency cap of {cap_source}{hint}; relax the SLO or "
            "serve on a faster GPU"
        )

    verdicts = []
    for p in points:
        unusable = _usable_reason(p)
        verdicts.append(
            CandidateVerdict(
                max_num_seqs=p.max_num_seqs,
                total_tokens_per_s=p.total_tokens_per_s,
                itl_mean_ms=p.itl_or_tpot_mean_ms,
                itl_p99_ms=p.itl_p99_ms,
                efficiency=efficiency(p),
                preemptions=p.preemptions,
                kept=p.max_num_seqs in kept,
                chosen=p.max_num_seqs == chosen,
                reasons=[unusable] if unusable else reasons.get(p.max_num_seqs, []),
            )
        )

    explanation = _explain(options.policy, epsilon, chosen, b_min, cap, cap_source, verdicts)
    return BatchSelection(
        policy=options.policy,
        epsilon=epsilon,
        b_opt=chosen,
        b_min=b_min,
        latency_cap_ms=cap,
        latency_cap_source=cap_source,
        itl_p99_cap_ms=p99_cap,
        verdicts=verdicts,
        explanation=explanation,
    )


def _eta_formula(b_min: int) -> str:
    return "T(B)/(B x T(1))" if b_min == 1 else f"(T(B)/B)/(T({b_min})/{b_min})"


def _explain(
    policy: str,
    epsilon: float,
    chosen: int,
    b_min: int,
    cap: float | None,
    cap_source: str,
    verdicts: list[CandidateVerdict],
) -> str:
    by_batch = {v.max_num_seqs: v for v in verdicts}
    picked = by_batch[chosen]
    cap_text = f"latency cap {cap:.2f} ms = {cap_source}" if cap is not None else cap_source
    if policy == "efficiency":
        text = (
            f"B_opt = {chosen}: the largest measured batch whose efficiency {_eta_formula(b_min)} stays "
            f"above {epsilon:g} within the {cap_text} (efficiency {picked.efficiency:.3f}, "
            f"{picked.total_tokens_per_s:,.0f} tokens/s)."
        )
        larger = [v for v in verdicts if v.max_num_seqs > chosen and v.reasons]
        if larger:
            nxt = larger[0]
            text += f" The next larger, B={nxt.max_num_seqs}, fails: {'; '.join(nxt.reasons)}."
    else:
        text = (
            f"B_opt = {chosen}: the smallest measured batch within {1 - epsilon:.0%} of the best "
            f"throughput under the {cap_text} ({picked.total_tokens_per_s:,.0f} tokens/s)."
        )
    return text
