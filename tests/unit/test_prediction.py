"""The operator's use of the performance model: predictions per candidate, and a profile the
model cannot calibrate still yields a plan (packed by memory, no predicted gain)."""

from __future__ import annotations

from llmpack.advisor import AdvisorOptions, advise
from llmpack.advisor.loaders import load_paper_profile
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.hardware import lookup_gpu
from llmpack.planner.prediction import Predictions


def setup(points=None, **spec):
    profile = load_paper_profile("opt-1.3b", None)
    if points is not None:
        profile = profile.model_copy(update={"points": profile.points[:points]})
    rec = advise(profile, AdvisorOptions())
    gpu = lookup_gpu(profile.gpu.product)
    return Predictions.build(
        profile, rec, gpu, LLMDeploymentSpec.model_validate({"model": {"name": "m"}, **spec})
    )


def test_packing_predicts_a_gain_and_stops_where_one_more_replica_adds_too_little():
    predictions = setup()
    replicas = predictions.replicas_per_gpu(memory_fit=6)
    single, _ = predictions.predict(1, None)
    packed, itl = predictions.predict(replicas, None)
    assert 2 <= replicas <= 6
    assert packed > single and itl > 0
    assert "replica" in predictions.packing_reason
    assert predictions.baseline_tokens_per_s > 0


def test_a_fixed_replica_count_wins():
    predictions = setup(advisor={"replicasPerGPU": 3})
    assert predictions.replicas_per_gpu(memory_fit=6) == 3


def test_an_uncalibratable_profile_packs_by_memory_without_predictions():
    predictions = setup(points=1)
    assert predictions.model is None
    assert predictions.predict(2, None) == (None, None)
    assert predictions.replicas_per_gpu(memory_fit=5) == 5
    assert "no performance prediction" in predictions.packing_reason


def test_the_packing_reason_names_what_stopped_it_memory_or_the_replica_limit():
    """Where one more replica would still pay, the reason says whether memory or
    sharing.maxReplicasPerGPU stopped it: they are different things to change."""
    by_memory = setup(advisor={"minReplicaGain": 0.0})
    assert by_memory.replicas_per_gpu(memory_fit=2) == 2
    assert "the GPU's memory holds" in by_memory.packing_reason
    by_limit = setup(advisor={"minReplicaGain": 0.0}, sharing={"maxReplicasPerGPU": 2})
    assert by_limit.replicas_per_gpu(memory_fit=6) == 2
    assert "the limit of 2 allows" in by_limit.packing_reason
