"""The performance model in the decision: the advisor trims the replicas memory holds to those that
pay (advisor/recommend.py shared_replicas), the planner predicts each mode's tokens/s with it, and
a profile the model cannot calibrate still yields a plan (packed by memory, no predicted gain)."""

from __future__ import annotations

from llmpack.advisor import AdvisorOptions, advise
from llmpack.advisor.loaders import load_paper_profile
from llmpack.hardware import lookup_gpu
from llmpack.planner.prediction import Predictions


def profile_of(points=None):
    profile = load_paper_profile("opt-1.3b", None)
    if points is not None:
        profile = profile.model_copy(update={"points": profile.points[:points]})
    return profile


def setup(points=None, **options):
    profile = profile_of(points)
    rec = advise(profile, AdvisorOptions(**options))
    gpu = lookup_gpu(profile.gpu.product)
    return rec, Predictions.build(profile, rec, gpu)


def test_packing_predicts_a_gain_and_stops_where_one_more_replica_adds_too_little():
    rec, predictions = setup()
    single, _ = predictions.predict(1, None)
    packed, itl = predictions.predict(rec.replicas_per_gpu, None)
    assert 2 <= rec.replicas_per_gpu < rec.replicas_memory_fit
    assert rec.replicas_limited_by == "min_replica_gain"
    assert packed > single and itl > 0
    assert "replica" in rec.packing_reason and rec.packing_reason in rec.explanation
    assert predictions.baseline_tokens_per_s > 0


def test_a_fixed_replica_count_wins():
    rec, _ = setup(replicas_per_gpu=3)
    assert rec.replicas_per_gpu == 3 and rec.replicas_limited_by == "override"


def test_an_uncalibratable_profile_packs_by_memory_without_predictions():
    rec, predictions = setup(points=1)
    assert predictions.model is None
    assert predictions.predict(2, None) == (None, None)
    assert rec.replicas_per_gpu == rec.replicas_memory_fit
    assert "no performance prediction" in rec.packing_reason


def test_the_packing_reason_names_what_stopped_it_memory_or_the_replica_limit():
    """Where one more replica would still pay, the reason says whether memory or
    sharing.maxReplicasPerGPU stopped it: they are different things to change."""
    by_memory, _ = setup(min_replica_gain=0.0)
    assert by_memory.replicas_per_gpu == by_memory.replicas_memory_fit
    assert by_memory.replicas_limited_by == "memory"
    assert "the GPU's memory holds" in by_memory.packing_reason
    by_limit, _ = setup(min_replica_gain=0.0, max_replicas_per_gpu=2)
    assert by_limit.replicas_per_gpu == 2
    assert "the limit of 2 allows" in by_limit.packing_reason


def test_a_higher_min_gain_packs_fewer():
    eager, _ = setup(min_replica_gain=0.0)
    strict, _ = setup(min_replica_gain=0.5)
    assert strict.replicas_per_gpu < eager.replicas_per_gpu
    assert strict.replicas_limited_by == "min_replica_gain"
