"""What a deployment costs (planner/cost.py) and what its figures rest on, as the status, `kubectl
get llmd -o wide` and `llmpack plan` show them: GPU-hours per hour (a MIG replica pays its slice's
share of a GPU), cost per hour, the predicted price of a million tokens at the advised load, the
saving against one vLLM instance per GPU with defaults; and every figure derived from a profile of
other hardware (another GPU product, vLLM's CPU build) or the simulated profiler says so."""

from __future__ import annotations

import json

import pytest
from test_badinput_pure import reconcile_through, simulated_profile
from test_plan_cli import ROOT, plan

from llmpack.api import crd as crdgen
from llmpack.api.llmdeployment import LLMDeploymentSpec, RecommendationStatus
from llmpack.controller.reconciler import OperatorConfig
from llmpack.planner.cost import basis, cost_status

H100 = "NVIDIA-H100-80GB-HBM3"
DRA = {"model": {"name": "facebook/opt-1.3b"}, "sharing": {"mode": "mps", "mpsProvider": "dra"}}


def recommendation(**fields) -> RecommendationStatus:
    base = {
        "mode": "mps",
        "max_num_seqs": 64,
        "kv_cache_bytes": 1,
        "gpu_memory_utilization": 0.3,
        "max_model_len": 2048,
        "replicas_per_gpu": 2,
        "gpus": 3,
        "replicas": 6,
        "predicted_tokens_per_second_per_gpu": 10_000.0,
        "baseline_tokens_per_second_per_gpu": 4_000.0,
    }
    return RecommendationStatus(**{**base, **fields})


def test_the_price_of_a_million_tokens_follows_the_predicted_tokens_per_gpu():
    cost = cost_status(recommendation=recommendation(), gpu_hour_price=3.6, currency="EUR")
    assert (cost.currency, cost.gpu_hour_price, cost.gpu_hours_per_hour, cost.cost_per_hour) == (
        "EUR",
        3.6,
        3,
        10.8,
    )
    # 3.60 per GPU-hour buys 36 M tokens at 10,000 tokens/s: 0.10 per million; the baseline 0.25
    assert cost.cost_per_million_tokens == pytest.approx(0.1)
    assert cost.baseline_cost_per_million_tokens == pytest.approx(0.25)
    assert cost.saving == "60.0%"


def test_a_mig_replica_pays_its_slices_share_of_a_gpu():
    seven = recommendation(mode="mig", mig_profile="1g.10gb", replicas_per_gpu=7, gpus=1, replicas=3)
    cost = cost_status(recommendation=seven, gpu_hour_price=7.0, currency="USD")
    assert cost.gpu_hours_per_hour == pytest.approx(3 / 7, abs=1e-4)
    assert cost.cost_per_hour == pytest.approx(3.0)


def test_without_a_prediction_only_the_hourly_cost_is_known():
    unknown = recommendation(
        predicted_tokens_per_second_per_gpu=None, baseline_tokens_per_second_per_gpu=None
    )
    cost = cost_status(recommendation=unknown, gpu_hour_price=2.0, currency="USD")
    assert cost.cost_per_hour == 6.0
    assert cost.cost_per_million_tokens is cost.baseline_cost_per_million_tokens is cost.saving is None


def test_the_status_shows_the_cost_where_the_admin_priced_the_product():
    assert "cost" not in reconcile_through(DRA).status["recommendation"], "no price, no cost"
    settings = OperatorConfig(gpu_hour_prices=((H100, 2.49),), currency="USD")
    shown = reconcile_through(DRA, settings=settings).status["recommendation"]
    cost = shown["cost"]
    tokens_per_s = shown["predictedTokensPerSecondPerGPU"]
    assert cost["costPerMillionTokens"] == pytest.approx(2.49 / (tokens_per_s * 3600) * 1e6, rel=1e-3)
    assert cost["gpuHoursPerHour"] == shown["gpus"] == 1
    assert float(cost["saving"].rstrip("%")) > 0, "packing pays against one default vLLM per GPU"


def test_kubectl_get_wide_has_the_cost_columns_and_the_basis_by_default():
    columns = {c["name"]: c for c in crdgen.PRINTER_COLUMNS}
    for name, path in (
        ("GPU-h/h", ".status.recommendation.cost.gpuHoursPerHour"),
        ("Cost/h", ".status.recommendation.cost.costPerHour"),
        ("Cost/Mtok", ".status.recommendation.cost.costPerMillionTokens"),
        ("Saving", ".status.recommendation.cost.saving"),
    ):
        assert columns[name]["jsonPath"] == path and columns[name]["priority"] == 1  # -o wide
    assert columns["Basis"].get("priority", 0) == 0, "shown beside Gain without -o wide"


def test_figures_from_other_hardware_say_so():
    spec = LLMDeploymentSpec.model_validate(DRA)
    profile = simulated_profile(spec)
    assert basis(profile, H100) == "simulated"
    measured = profile.model_copy(update={"engine": profile.engine.model_copy(update={"version": "0.33.0"})})
    assert basis(measured, H100) == "measured"
    assert basis(measured, "NVIDIA-A100-SXM4-80GB") == f"rescaled from {H100}"
    on_cpu = measured.model_copy(update={"engine": measured.engine.model_copy(update={"device": "cpu"})})
    assert basis(on_cpu, H100) == "rescaled from cpu"

    status = reconcile_through(DRA).status
    assert status["recommendation"]["basis"] == "simulated"
    assert (
        "are simulated: the simulated profiler's, not a measurement"
        in status["recommendation"]["explanation"]
    )


def test_plan_prints_the_cost(capsys):
    example = str(ROOT / "examples/opt-1.3b-mps-dra.yaml")
    code, out, err = plan(
        capsys, "-f", example, "--simulate", "--gpu-hour-price", f"{H100}=2.49", "-o", "json"
    )
    assert code == 0, err
    shown = json.loads(out)["decision"]["recommendation"]
    assert shown["cost"]["gpuHourPrice"] == 2.49 and shown["cost"]["currency"] == "USD"
    assert shown["basis"] == "simulated"
    with pytest.raises(SystemExit):
        plan(capsys, "-f", example, "--simulate", "--gpu-hour-price", "H100=free")
    assert "expected PRODUCT=PRICE" in capsys.readouterr().err
