"""The operator's per-LLMDeployment series on /metrics: what a dashboard shows beside the serving
pods' own metrics (GPUs desired and in use, replicas, phase, SLO), and gone with the LLMDeployment."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from llmpack.controller import metrics


def llmd(name: str, *, namespace: str = "team-a", spec: dict | None = None, status: dict | None = None):
    obj = {"metadata": {"name": name, "namespace": namespace}, "spec": spec or {}}
    if status is not None:
        obj["status"] = status
    return obj


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


READY = llmd(
    "opt",
    spec={"gpu": {"count": 3}, "slo": {"itlMeanMs": 40, "ttftP99Ms": 250}},
    status={
        "phase": "Ready",
        "gpus": 2,
        "replicas": 4,
        "readyReplicas": 3,
        "recommendation": {"gpus": 2, "replicas": 4, "predictedTokensPerSecondPerGPU": 33764.2},
    },
)


def test_each_llmdeployment_gets_its_gpus_replicas_phase_and_slo():
    metrics.observe_phases([READY, llmd("new", namespace="team-b")])
    opt = {"namespace": "team-a", "llmdeployment": "opt"}
    assert sample("llmpack_llmdeployment_gpus_desired", **opt) == 3
    assert sample("llmpack_llmdeployment_gpus", **opt) == 2
    assert sample("llmpack_llmdeployment_replicas", **opt) == 4
    assert sample("llmpack_llmdeployment_ready_replicas", **opt) == 3
    assert sample("llmpack_llmdeployment_predicted_tokens_per_second_per_gpu", **opt) == 33764.2
    assert sample("llmpack_llmdeployment_slo_seconds", **opt, objective="itl_mean") == 0.04
    assert sample("llmpack_llmdeployment_slo_seconds", **opt, objective="ttft_p99") == 0.25
    assert sample("llmpack_llmdeployment_slo_seconds", **opt, objective="itl_p99") is None  # not set
    assert sample("llmpack_llmdeployment_phase", **opt, phase="Ready") == 1
    assert sample("llmpack_llmdeployment_phase", **opt, phase="Pending") == 0
    # a new one: one GPU by default, Pending, nothing decided yet
    new = {"namespace": "team-b", "llmdeployment": "new"}
    assert sample("llmpack_llmdeployment_gpus_desired", **new) == 1
    assert sample("llmpack_llmdeployment_phase", **new, phase="Pending") == 1
    assert sample("llmpack_llmdeployment_gpus", **new) is None
    # the totals keep their meaning
    assert sample("llmpack_gpus_in_use") == 2
    assert sample("llmpack_llmdeployments", phase="Ready") == 1


def test_a_deleted_llmdeployment_or_a_removed_slo_leaves_no_series():
    metrics.observe_phases([READY, llmd("other")])
    no_slo = llmd("opt", spec={"gpu": {"count": 3}}, status=READY["status"])
    metrics.observe_phases([no_slo])
    page = generate_latest(REGISTRY).decode()
    assert 'llmdeployment="other"' not in page
    assert "llmpack_llmdeployment_slo_seconds{" not in page
    assert sample("llmpack_llmdeployment_gpus_desired", namespace="team-a", llmdeployment="opt") == 3
    metrics.observe_phases([])
    assert "llmdeployment=" not in generate_latest(REGISTRY).decode()


def test_slo_objectives_are_every_slo_field():
    assert dict(metrics.SLO_OBJECTIVES) == {
        "itlMeanMs": "itl_mean",
        "itlP99Ms": "itl_p99",
        "ttftP99Ms": "ttft_p99",
    }


def test_the_llmdeployment_label_is_its_serving_pods_label():
    """A name too long for a label value is shortened as the serving pods' llmpack.io/llmdeployment
    label is, so the operator's series and the pods' metrics share the value."""
    from llmpack.render.plan import label_value

    name = "a-very-long-llmdeployment-name-" + "x" * 40
    metrics.observe_phases([llmd(name)])
    assert label_value(name) != name
    shortened = {"namespace": "team-a", "llmdeployment": label_value(name)}
    assert sample("llmpack_llmdeployment_gpus_desired", **shortened) == 1
