"""The Batching Configuration Advisor, including the paper-fidelity cases of issue 2.

The paper data is read from ../shared/paper-data (or $LLMPACK_PAPER_DATA), never from the repo.
"""

from __future__ import annotations

import pytest

from llmpack.advisor import AdvisorError, AdvisorOptions, advise
from llmpack.advisor.bca import select_batch
from llmpack.advisor.loaders import load_paper_profile
from llmpack.api.profile import ProfilePoint

# (model, B_opt) with the efficiency policy on the `background` family (paper Figs. 2-3)
BACKGROUND = [("opt-1.3b", 96), ("opt-2.7b", 128), ("llama-2-7b", 192), ("llama-2-13b", 80)]
# (model, B_opt, memory freed %) on the `advisor` family at 390 output tokens (paper Fig. 12)
ADVISOR_390 = [("opt-1.3b", 128, 63.2), ("opt-2.7b", 128, 45.1), ("llama-2-7b", 128, 10.5)]


@pytest.mark.parametrize(("model", "expected"), BACKGROUND)
def test_paper_fidelity_background(model, expected):
    rec = advise(load_paper_profile(model))
    assert rec.b_opt == expected
    assert rec.policy == "efficiency" and rec.epsilon == 0.2


@pytest.mark.parametrize(("model", "expected", "freed_pct"), ADVISOR_390)
def test_paper_fidelity_advisor_390(model, expected, freed_pct):
    rec = advise(load_paper_profile(model, output_len=390))
    assert rec.b_opt == expected
    # the issue asks for 1 point; the definition in recommend.py reproduces the paper to 0.05
    assert rec.memory_freed_fraction * 100 == pytest.approx(freed_pct, abs=1.0)
    assert rec.memory_freed_fraction * 100 == pytest.approx(freed_pct, abs=0.06)


def test_llama_2_13b_stops_at_80_because_96_preempted():
    rec = advise(load_paper_profile("llama-2-13b"))
    at_96 = rec.verdict(96)
    assert at_96 is not None and not at_96.kept
    assert at_96.preemptions == 9 and "preemptions" in at_96.reasons[0]
    # it would pass the efficiency and latency tests: the preemption rule is what rejects it
    assert at_96.efficiency > 0.2


def test_verdicts_explain_which_test_failed():
    rec = advise(load_paper_profile("opt-1.3b"))
    assert [v.max_num_seqs for v in rec.candidates if v.chosen] == [96]
    at_128 = rec.verdict(128)
    assert not at_128.kept and at_128.reasons == ["efficiency 0.195 <= epsilon 0.2"]
    at_384 = rec.verdict(384)
    assert any("mean ITL 40.88 ms > cap 37.55 ms" in r for r in at_384.reasons)
    assert all(v.kept for v in rec.candidates if v.max_num_seqs <= 96)
    assert "B_opt = 96" in rec.explanation and "B=128, fails" in rec.explanation
    assert (
        "Binding constraint: the efficiency threshold (epsilon 0.2); the next larger, B=128"
        in rec.explanation
    )


def test_the_explanation_names_the_binding_constraint():
    # Llama-2-13B stops at 80 because B=96 preempted; the plateau policy is bound by the ITL cap
    assert "Binding constraint: preemptions (the KV cache ran out); the next larger, B=96" in (
        advise(load_paper_profile("llama-2-13b")).explanation
    )
    plateau = select_batch(load_paper_profile("opt-1.3b").points, AdvisorOptions(policy="plateau"))
    assert plateau.b_opt == 192 and plateau.binding == (
        "the latency cap on mean ITL (37.55 ms = 5 x the mean ITL at B=32 (7.51 ms))",
    )
    assert "it excludes every batch from B=384 up (B=384: mean ITL 40.88 ms > cap 37.55 ms)" in (
        plateau.explanation
    )
    largest = select_batch(CURVE[:3])
    assert largest.b_opt == 32 and largest.binding == ()
    assert "Nothing measured stops it: it is the largest batch size measured." in largest.explanation


def test_default_latency_cap_is_five_times_itl_at_32():
    rec = advise(load_paper_profile("opt-1.3b"))
    assert rec.latency_cap_ms == pytest.approx(5 * 7.5096)
    assert "B=32" in rec.latency_cap_source


@pytest.mark.parametrize(
    ("model", "output_len", "missing"),
    [("opt-1.3b", 130, [1, 256]), ("llama-2-13b", 260, [1, 2]), ("llama-2-7b", 130, [512])],
)
def test_missing_points_do_not_break_it(model, output_len, missing):
    profile = load_paper_profile(model, output_len=output_len)
    for batch in missing:
        assert profile.point(batch) is None
        assert any(f"B={batch} missing" in note for note in profile.notes)
    rec = advise(profile)
    assert rec.b_opt in profile.batch_sizes
    assert rec.b_min == profile.points[0].max_num_seqs


def test_efficiency_is_relative_to_the_smallest_usable_batch():
    # OPT-1.3B at 130 output tokens lacks B=1; efficiency(B_min = 2) must still be 1
    rec = advise(load_paper_profile("opt-1.3b", output_len=130))
    assert rec.b_min == 2
    assert rec.verdict(2).efficiency == pytest.approx(1.0)
    assert rec.b_opt == 128


def _point(batch, tps, itl, preemptions=0, p99=None):
    return ProfilePoint(
        max_num_seqs=batch, total_tokens_per_s=tps, itl_mean_ms=itl, itl_p99_ms=p99, preemptions=preemptions
    )


CURVE = [
    _point(1, 100, 10),
    _point(8, 700, 11),
    _point(32, 2000, 14),
    _point(64, 2800, 20),
    _point(128, 3200, 35),
    _point(256, 3300, 70),
]


def test_slo_caps_the_batch():
    free = select_batch(CURVE, AdvisorOptions())
    assert free.b_opt == 128  # efficiency 3200/(128*100) = 0.25 > 0.2; cap 5 x 14 = 70 ms
    tight = select_batch(CURVE, AdvisorOptions(slo_itl_mean_ms=25))
    assert tight.b_opt == 64
    assert tight.latency_cap_ms == 25 and "SLO" in tight.latency_cap_source


def test_p99_slo_is_a_further_test():
    points = [_point(1, 100, 10, p99=12), _point(8, 700, 11, p99=30), _point(32, 2000, 14, p99=80)]
    sel = select_batch(points, AdvisorOptions(slo_itl_p99_ms=40))
    assert sel.b_opt == 8
    rejected = next(v for v in sel.verdicts if v.max_num_seqs == 32)
    assert "p99 ITL 80.00 ms > SLO 40 ms" in rejected.reasons
    assert sel.binding == ("the p99 ITL SLO (40 ms)",)
    assert "Without slo.itlP99Ms it would be B=32." in sel.explanation


def test_plateau_policy():
    sel = select_batch(CURVE, AdvisorOptions(policy="plateau"))
    # best within the 70 ms cap is 3300 at 256; 95% of it is 3135 -> 128 is the smallest above
    assert sel.b_opt == 128 and sel.epsilon == 0.05
    loose = select_batch(CURVE, AdvisorOptions(policy="plateau", epsilon=0.2))
    assert loose.b_opt == 64  # 2800 >= 0.8 x 3300


def test_plateau_on_paper_data():
    assert advise(load_paper_profile("opt-1.3b"), AdvisorOptions(policy="plateau")).b_opt == 192


def test_plateau_distrusts_a_batch_after_the_cap_broke():
    noisy = [_point(1, 100, 10), _point(32, 2000, 30), _point(64, 2600, 26)]
    sel = select_batch(noisy, AdvisorOptions(policy="plateau", slo_itl_mean_ms=28))
    assert sel.b_opt == 1
    at_64 = next(v for v in sel.verdicts if v.max_num_seqs == 64)
    assert at_64.reasons == ["a smaller batch (B=32) already fails the mean ITL SLO (28 ms)"]


def test_preempted_points_are_skipped():
    points = [*CURVE[:4], _point(128, 3200, 35, preemptions=3)]
    sel = select_batch(points)
    assert sel.b_opt == 64
    assert "3 preemptions" in next(v for v in sel.verdicts if v.max_num_seqs == 128).reasons[0]


def test_no_usable_point_is_an_advisor_error():
    with pytest.raises(AdvisorError, match="no usable measured point"):
        select_batch([_point(1, 100, 10, preemptions=1), _point(2, 0, 10)])


def test_an_slo_no_point_meets_is_an_advisor_error():
    with pytest.raises(
        AdvisorError, match=r"no measured batch size meets.*lowest mean ITL measured is 10\.00 ms"
    ):
        select_batch(CURVE, AdvisorOptions(slo_itl_mean_ms=5))


def test_points_without_latency_need_no_cap():
    points = [ProfilePoint(max_num_seqs=b, total_tokens_per_s=t) for b, t in [(1, 100), (4, 390), (16, 1000)]]
    sel = select_batch(points)
    assert sel.latency_cap_ms is None and sel.b_opt == 16


def test_reference_batch_nearest_32_prefers_the_smaller_on_a_tie():
    points = [_point(16, 1000, 10), _point(48, 2000, 20)]
    assert select_batch(points).latency_cap_ms == pytest.approx(50)


def test_fixed_batch_overrides_the_advisor():
    rec = advise(load_paper_profile("opt-1.3b"), AdvisorOptions(max_num_seqs=64))
    assert rec.b_opt == 64 and rec.b_opt_source == "override"
    assert [v.max_num_seqs for v in rec.candidates if v.chosen] == [64]
    unmeasured = advise(load_paper_profile("opt-1.3b"), AdvisorOptions(max_num_seqs=100))
    assert unmeasured.b_opt == 100 and unmeasured.measured_tokens_per_s is None


def test_a_limit_binds_the_plateau_only_when_it_excludes_more_throughput():
    binds = select_batch(CURVE, AdvisorOptions(policy="plateau", slo_itl_mean_ms=36))
    assert binds.b_opt == 128 and binds.binding == ("the mean ITL SLO (36 ms)",)
    assert (
        "it excludes every batch from B=256 up (B=256: mean ITL 70.00 ms > cap 36.00 ms)" in binds.explanation
    )
    falling = [_point(1, 100, 10), _point(8, 700, 11), _point(32, 2000, 14), _point(64, 1900, 30)]
    idle = select_batch(falling, AdvisorOptions(policy="plateau", slo_itl_mean_ms=20))
    assert idle.b_opt == 32 and idle.binding == ()
    assert "The throughput plateau alone decides" in idle.explanation
