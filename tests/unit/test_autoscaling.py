"""spec.autoscaling and the scale subresource, through the operator's reconcile: the HPA it renders
targets the LLMDeployment with a target sized from the decision; scaling adds or removes whole
pods and never rolls the others; turning autoscaling off removes the HPA; `llmpack plan` says how
many GPUs a throughput needs from the same numbers. The real HPA controller drives it in
tests/e2e/test_hpa_e2e.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_badinput_pure import body, reconcile_through

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.cli import main
from llmpack.render.autoscaling import quantity

ROOT = Path(__file__).resolve().parents[2]
DRA = {"model": {"name": "facebook/opt-1.3b"}, "sharing": {"mode": "mps", "mpsProvider": "dra"}}
BEHAVIOR = {"scaleDown": {"stabilizationWindowSeconds": 0}}


def autoscaled(count: int = 1, **autoscaling) -> dict:
    return {
        **DRA,
        "gpu": {"count": count},
        "autoscaling": {"minGPUs": 1, "maxGPUs": 4, "behavior": BEHAVIOR, **autoscaling},
    }


def applied(run, kind: str) -> list[dict]:
    return [o for (k, _, _), o in run.kube.objects.items() if k == kind]


def test_the_hpa_targets_the_llmdeployment_with_a_target_from_the_decision():
    run = reconcile_through(autoscaled(targetUtilization=0.5), name="auto")
    rec = run.status["recommendation"]
    (hpa,) = applied(run, "HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "name": "auto",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "vllm_requests_in_flight"
    # one DRA pod per GPU holds B_opt x replicas per GPU sequences; half of that is the target
    per_gpu = rec["maxNumSeqs"] * rec["replicasPerGPU"]
    assert rec["concurrencyPerGPU"] == per_gpu
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": quantity(0.5 * per_gpu)}
    assert spec["behavior"] == BEHAVIOR
    assert hpa["metadata"]["ownerReferences"][0]["name"] == "auto"
    assert run.status["autoscaler"] == "auto"


def test_the_status_carries_the_scale_subresources_fields():
    run = reconcile_through(autoscaled(count=2), name="auto")
    assert run.status["recommendation"]["gpus"] == 2
    deployment = applied(run, "Deployment")[0]
    selector = dict(kv.split("=") for kv in run.status["selector"].split(","))
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(("count", "gpus"), [(1, 2), (3, 3), (9, 4)])
def test_the_gpu_count_is_kept_within_the_autoscalers_bounds(count, gpus):
    run = reconcile_through(autoscaled(count=count, minGPUs=2), name="auto")
    assert run.status["recommendation"]["gpus"] == gpus
    assert applied(run, "Deployment")[0]["spec"]["replicas"] == gpus  # DRA: one pod per GPU


def test_scaling_adds_whole_pods_and_rolls_none_and_never_profiles_again():
    first = reconcile_through(autoscaled(count=1), name="auto")
    kube, reconciler = first.kube, first.reconciler
    template = applied(first, "Deployment")[0]["spec"]["template"]
    jobs_before = [c for c in kube.calls if c[1] == "Job" and c[0] == "apply"]
    obj = body(autoscaled(count=3), "auto")
    result = reconciler.reconcile({**obj, "status": first.status})
    deployment = applied(first, "Deployment")[0]
    assert result.status["recommendation"]["gpus"] == 3 and deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"] == template  # same pods: none restarts
    assert [c for c in kube.calls if c[1] == "Job" and c[0] == "apply"] == jobs_before
    assert result.status["profileRef"]["key"] == first.status["profileRef"]["key"]


TOLERANCE = 0.1  # kube-controller-manager --horizontal-pod-autoscaler-tolerance (default)


def hpa_answer(metric: dict, total_load: float, pods: int, current: int) -> int:
    """What the HPA controller asks for (pkg/controller/podautoscaler/replica_calculator.go, in its
    integer milli-units): a Pods metric averages over the pods and multiplies its ratio by their
    number; an External metric with an AverageValue target divides the total by the target. Both
    keep the current count while their ratio is within the tolerance."""
    per_pod = round(total_load * 1000 / pods)  # what each pod reports, in milli-units
    if metric["type"] == "Pods":
        target = milli(metric["pods"]["target"]["averageValue"])
        ratio = per_pod * pods // pods / target
        return current if abs(ratio - 1) <= TOLERANCE else math.ceil(ratio * pods)
    target = milli(metric["external"]["target"]["averageValue"])
    usage = per_pod * pods
    ratio = usage / (target * current)
    return current if abs(ratio - 1) <= TOLERANCE else math.ceil(usage / target)


def milli(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(text) * 1000


@pytest.mark.parametrize(
    "sharing",
    [
        {"mode": "mps", "mpsProvider": "dra"},
        {"mode": "mps", "mpsProvider": "devicePlugin"},
        {"mode": "mig"},
        {"mode": "exclusive"},
    ],
    ids=lambda s: "/".join(s.values()),
)
def test_the_hpas_answer_is_gpus_in_every_mode(sharing):
    """Whatever the pods per GPU, the HPA asks for ceil(load in GPUs' worth at the target) GPUs, and
    keeps the count while the load per GPU is within its tolerance of the target. (A Pods metric with
    k pods per GPU would sit still at k times the target: the tolerance applies to its per-pod
    ratio. Hence an External metric there.)"""
    spec = {**autoscaled(count=2, maxGPUs=8), "sharing": sharing}
    run = reconcile_through(spec, name="auto")
    rec = run.status["recommendation"]
    (hpa,) = applied(run, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    per_gpu = 0.8 * rec["maxNumSeqs"] * rec["replicasPerGPU"]
    pods = applied(run, "Deployment")[0]["spec"]["replicas"]
    one_pod_per_gpu = sharing.get("mpsProvider") == "dra" or sharing["mode"] == "exclusive"
    assert metric["type"] == ("Pods" if one_pod_per_gpu else "External")
    if metric["type"] == "External":
        assert metric["external"]["metric"]["selector"] == {"matchLabels": {"llmdeployment": "auto"}}
    current = run.status["recommendation"]["gpus"]
    assert current == 2 and pods == current * (1 if one_pod_per_gpu else rec["replicasPerGPU"])
    for tenths in range(1, 61):
        load = tenths / 10  # in GPUs' worth at the target
        expected = current if abs(load / current - 1) <= TOLERANCE else math.ceil(load)
        assert hpa_answer(metric, load * per_gpu, pods, current) == expected, (load, metric)


def test_turning_autoscaling_off_removes_the_hpa():
    first = reconcile_through(autoscaled(count=2), name="auto")
    assert applied(first, "HorizontalPodAutoscaler")
    plain = {**DRA, "gpu": {"count": 2}}
    result = first.reconciler.reconcile({**body(plain, "auto"), "status": first.status})
    assert applied(first, "HorizontalPodAutoscaler") == []
    assert "autoscaler" not in result.status and result.status["recommendation"]["gpus"] == 2


def test_min_above_max_is_refused_with_the_rules_message():
    with pytest.raises(ValueError, match=r"autoscaling\.minGPUs must not exceed autoscaling\.maxGPUs"):
        LLMDeploymentSpec.model_validate(autoscaled(minGPUs=5))


@pytest.mark.parametrize(
    ("value", "text"), [(8.0, "8"), (153.6, "153600m"), (0.0005, "1m"), (76.8, "76800m")]
)
def test_quantities(value, text):
    assert quantity(value) == text


def test_plan_says_how_many_gpus_a_throughput_needs(capsys, tmp_path):
    example = ROOT / "examples" / "opt-1.3b-mps-dra.yaml"
    code = main(["plan", "-f", str(example), "--simulate", "--tokens-per-second", "100000", "-o", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    capacity = out["decision"]["capacity"]
    per_gpu = out["decision"]["recommendation"]["predictedTokensPerSecondPerGPU"]
    assert capacity["tokensPerSecondPerGPU"] == per_gpu
    assert capacity["gpusFor"] == {"tokensPerSecond": 100000.0, "gpus": math.ceil(100000 / per_gpu)}
    assert capacity["concurrencyPerGPU"] == out["decision"]["recommendation"]["concurrencyPerGPU"]


def test_plan_refuses_a_throughput_question_without_a_profile(capsys):
    example = ROOT / "examples" / "opt-1.3b-mps-dra.yaml"
    assert main(["plan", "-f", str(example), "--tokens-per-second", "10"]) == 1
    assert "needs a profile" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("provider", "pods", "gpus"), [("dra", 3, 3), ("devicePlugin", 3, 2), ("devicePlugin", 0, 0)]
)
def test_status_gpus_are_the_gpus_the_existing_pods_occupy(provider, pods, gpus):
    """The scale subresource's status.replicas: what is there now (the Deployment's pods, whole
    GPUs' worth), not what was asked for, so a scale-up stuck on missing GPUs shows."""
    spec = {**autoscaled(count=3), "sharing": {"mode": "mps", "mpsProvider": provider}}
    first = reconcile_through(spec, name="auto")
    (deployment,) = applied(first, "Deployment")
    deployment["status"] = {"replicas": pods, "observedGeneration": 1}
    first.kube.put(deployment)
    result = first.reconciler.reconcile({**body(spec, "auto"), "status": first.status})
    assert result.status["recommendation"]["gpus"] == 3
    assert result.status["gpus"] == gpus


def test_a_forgotten_autoscaler_is_pruned_when_the_watch_knows_it():
    """The status write after rendering the HPA may be lost (a 409, a restart): the watch cache
    (here the fake's store, what the HPA watch delivered) finds it when autoscaling is turned off."""
    exclusive = {"sharing": {"mode": "exclusive"}}  # DRA prunes on every pass anyway (claim templates)
    first = reconcile_through({**autoscaled(count=2), **exclusive}, name="auto")
    plain = {**DRA, **exclusive, "gpu": {"count": 2}}
    forgotten = {k: v for k, v in first.status.items() if k != "autoscaler"}
    assert applied(first, "HorizontalPodAutoscaler")
    first.reconciler.reconcile({**body(plain, "auto"), "status": forgotten})
    assert applied(first, "HorizontalPodAutoscaler") == []
