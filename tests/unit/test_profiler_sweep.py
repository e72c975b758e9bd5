"""The sweeps: adaptive reaches the exhaustive sweep's B_opt with at most half the points, on every
group of the paper's measurements and on synthetic curves built to test its edges."""

from __future__ import annotations

from collections import defaultdict

import pytest

from llmpack.advisor import advise
from llmpack.advisor.loaders import read_paper_rows
from llmpack.advisor.options import AdvisorOptions
from llmpack.api.profile import ProfilePoint
from llmpack.profiler.paper import PaperBackend
from llmpack.profiler.sweep import PointFailed, run_sweep


def paper_groups() -> list[tuple[str, int | None]]:
    groups = defaultdict(int)
    for row in read_paper_rows():
        setting = row["output_len_setting"]
        groups[(row["model"], None if setting == "sharegpt" else int(setting))] += 1
    return sorted(groups, key=lambda g: (g[0], g[1] or 0))


GROUPS = paper_groups()


def test_the_paper_data_has_twenty_groups():
    assert len(GROUPS) == 20


@pytest.mark.parametrize(("model", "output_len"), GROUPS, ids=[f"{m}-{o or 'sharegpt'}" for m, o in GROUPS])
def test_adaptive_matches_exhaustive_on_paper_group(model, output_len):
    backend = PaperBackend(model, output_len)
    candidates = backend.default_candidates()
    exhaustive = run_sweep(candidates, backend.measure, "exhaustive")
    adaptive = run_sweep(candidates, backend.measure, "adaptive")

    assert exhaustive.attempts == len(candidates)
    assert adaptive.b_opt() == exhaustive.b_opt() is not None
    assert 2 * len(adaptive.points) <= len(exhaustive.points), (
        f"adaptive measured {adaptive.order} ({len(adaptive.points)} points) of {len(exhaustive.points)}"
    )
    # what a user sees: the advisor on the profile each sweep publishes picks the same batch
    ex_profile = backend.profile(exhaustive.points, exhaustive.notes())
    ad_profile = backend.profile(adaptive.points, adaptive.notes())
    assert advise(ad_profile).b_opt == advise(ex_profile).b_opt == exhaustive.b_opt()


# -- synthetic curves -----------------------------------------------------------------------------


def curve(batch: int, *, saturation: float = 96.0, preempt_from: int | None = None) -> ProfilePoint:
    """A memory-bound curve: step time grows linearly, throughput saturates."""
    itl = 4.0 * (1 + batch / saturation)
    return ProfilePoint(
        max_num_seqs=batch,
        total_tokens_per_s=1000.0 * batch / itl,
        itl_mean_ms=itl,
        preemptions=5 if preempt_from is not None and batch >= preempt_from else 0,
    )


POWERS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
DEFAULTS = [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512]


def measure_with(fn, failed=()):
    calls = []

    def measure(batch):
        calls.append(batch)
        if batch in failed:
            raise PointFailed(f"engine crashed at {batch}")
        return fn(batch)

    return measure, calls


@pytest.mark.parametrize("saturation", [4, 16, 48, 96, 200, 400, 1600, 10_000])
@pytest.mark.parametrize("candidates", [POWERS, DEFAULTS], ids=["powers", "defaults"])
def test_adaptive_matches_exhaustive_on_smooth_curves(saturation, candidates):
    measure, _ = measure_with(lambda b: curve(b, saturation=saturation))
    exhaustive = run_sweep(candidates, measure, "exhaustive")
    adaptive = run_sweep(candidates, measure, "adaptive")
    assert adaptive.b_opt() == exhaustive.b_opt()
    assert 2 * adaptive.attempts <= exhaustive.attempts


def test_preemption_stops_the_search():
    measure, _ = measure_with(lambda b: curve(b, saturation=10_000, preempt_from=192))
    exhaustive = run_sweep(DEFAULTS, measure, "exhaustive")
    adaptive = run_sweep(DEFAULTS, measure, "adaptive")
    assert exhaustive.b_opt() == adaptive.b_opt() == 128


def test_failed_points_are_recorded_and_their_neighbours_measured():
    # B=1 fails: the base is B=2; B=32 fails: the latency reference moves to 16 (nearest 32,
    # smaller on a tie), as the advisor would take it on every point
    measure, calls = measure_with(lambda b: curve(b), failed={1, 32})
    exhaustive = run_sweep(POWERS, measure, "exhaustive")
    adaptive = run_sweep(POWERS, measure, "adaptive")
    assert calls[len(POWERS) :][:4] == [1, 2, 32, 16]
    assert adaptive.b_opt() == exhaustive.b_opt()
    assert [m.batch for m in adaptive.failures] == [1, 32]
    assert adaptive.notes() == ["B=1 failed: engine crashed at 1", "B=32 failed: engine crashed at 32"]


def test_every_batch_kept_means_the_largest_candidate():
    measure, _ = measure_with(lambda b: curve(b, saturation=1e9))
    adaptive = run_sweep(POWERS, measure, "adaptive")
    assert adaptive.b_opt() == 2048


def test_nothing_usable_ends_quietly():
    measure, _ = measure_with(lambda b: curve(b, preempt_from=1))
    result = run_sweep([1, 2, 4], measure, "adaptive")
    assert result.order == [1, 2, 4]
    assert result.b_opt() is None


def test_every_point_failing_gives_no_points():
    measure, _ = measure_with(curve, failed=set(POWERS))
    result = run_sweep(POWERS, measure, "adaptive")
    assert result.points == [] and result.attempts == len(POWERS)


def test_exhaustive_measures_every_candidate_in_order_once():
    measure, calls = measure_with(curve)
    result = run_sweep([8, 1, 4, 4, 2], measure, "exhaustive")
    assert calls == [1, 2, 4, 8] and result.candidates == [1, 2, 4, 8]


def test_progress_callback_sees_every_attempt():
    seen = []
    measure, _ = measure_with(curve, failed={2})
    run_sweep(
        [1, 2, 4], measure, "exhaustive", on_measured=lambda m, i, n: seen.append((m.batch, m.ok, i, n))
    )
    assert seen == [(1, True, 1, 3), (2, False, 2, 3), (4, True, 3, 3)]


def test_adaptive_follows_the_slo_it_is_given():
    measure, _ = measure_with(lambda b: curve(b, saturation=96))
    options = AdvisorOptions(slo_itl_mean_ms=8.0)
    exhaustive = run_sweep(POWERS, measure, "exhaustive", options)
    adaptive = run_sweep(POWERS, measure, "adaptive", options)
    assert adaptive.b_opt(options) == exhaustive.b_opt(options) == 64


def test_plateau_policy_needs_the_exhaustive_sweep():
    with pytest.raises(ValueError, match="exhaustive"):
        run_sweep(POWERS, curve, "adaptive", AdvisorOptions(policy="plateau"))


@pytest.mark.parametrize(("candidates", "message"), [([], "no candidate"), ([0, 1], "at least 1")])
def test_bad_candidates(candidates, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(candidates, curve, "exhaustive")
