"""spec.autoscaling and the scale subresource, through the operator's reconcile: the HPA it renders
targets the LLMDeployment with a target sized from the decision; scaling adds or removes whole
pods and never rolls the others; turning autoscaling off removes the HPA; `llmpack plan` says how
many GPUs a throughput needs from the same numbers. The real HPA controller drives it in
tests/e2e/test_autoscaling.py."""

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
    assert run.status["gpus"] == 2
    deployment = applied(run, "Deployment")[0]
    selector = dict(kv.split("=") for kv in run.status["selector"].split(","))
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(("count", "gpus"), [(1, 2), (3, 3), (9, 4)])
def test_the_gpu_count_is_kept_within_the_autoscalers_bounds(count, gpus):
    run = reconcile_through(autoscaled(count=count, minGPUs=2), name="auto")
    assert run.status["gpus"] == gpus
    assert applied(run, "Deployment")[0]["spec"]["replicas"] == gpus  # DRA: one pod per GPU


def test_scaling_adds_whole_pods_and_rolls_none_and_never_profiles_again():
    first = reconcile_through(autoscaled(count=1), name="auto")
    kube, reconciler = first.kube, first.reconciler
    template = applied(first, "Deployment")[0]["spec"]["template"]
    jobs_before = [c for c in kube.calls if c[1] == "Job" and c[0] == "apply"]
    obj = body(autoscaled(count=3), "auto")
    result = reconciler.reconcile({**obj, "status": first.status})
    deployment = applied(first, "Deployment")[0]
    assert result.status["gpus"] == 3 and deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"] == template  # same pods: none restarts
    assert [c for c in kube.calls if c[1] == "Job" and c[0] == "apply"] == jobs_before
    assert result.status["profileRef"]["key"] == first.status["profileRef"]["key"]


def hpa_desired_gpus(average_per_pod: float, target: float, pods: int) -> int:
    """The HPA controller's rule for a Pods metric (replica_calculator.go calcPlainMetricReplicas):
    ceil(average / target x ready pods), written as the scale's replicas (GPUs here)."""
    return math.ceil(average_per_pod / target * pods)


@pytest.mark.parametrize("provider", ["dra", "devicePlugin"])
def test_the_hpas_answer_is_in_gpus_whatever_the_pods_per_gpu(provider):
    """devicePlugin runs one replica per pod (k pods per GPU), DRA one pod per GPU: with the target
    per GPU, the HPA's ceil(average per pod / target x pods) is GPUs in both."""
    spec = {**autoscaled(count=2), "sharing": {"mode": "mps", "mpsProvider": provider}}
    run = reconcile_through(spec, name="auto")
    rec = run.status["recommendation"]
    (hpa,) = applied(run, "HorizontalPodAutoscaler")
    target = hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    per_gpu = rec["maxNumSeqs"] * rec["replicasPerGPU"]
    assert target == quantity(0.8 * per_gpu)
    pods = applied(run, "Deployment")[0]["spec"]["replicas"]
    gpus = run.status["gpus"]
    assert pods == (gpus if provider == "dra" else gpus * rec["replicasPerGPU"])
    # load of 3 GPUs at the target utilisation, spread over today's 2 GPUs' pods
    load = 3 * 0.8 * per_gpu
    assert hpa_desired_gpus(load / pods, 0.8 * per_gpu, pods) == 3


def test_turning_autoscaling_off_removes_the_hpa():
    first = reconcile_through(autoscaled(count=2), name="auto")
    assert applied(first, "HorizontalPodAutoscaler")
    plain = {**DRA, "gpu": {"count": 2}}
    result = first.reconciler.reconcile({**body(plain, "auto"), "status": first.status})
    assert applied(first, "HorizontalPodAutoscaler") == []
    assert "autoscaler" not in result.status and result.status["gpus"] == 2


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
