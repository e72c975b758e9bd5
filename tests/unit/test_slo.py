"""Every field of the spec's `slo` binds the batch size, in both policies, or the advice is refused
(issue 12, item 6). The instance: p99 TTFT 184 ms at B=16 and 206 ms at B=32 with
`slo.ttftP99Ms: 200` -> B_opt 16 (it was 32: the TTFT SLO was ignored)."""

from __future__ import annotations

import pytest

from llmpack.advisor import AdvisorError, AdvisorOptions, advise
from llmpack.advisor.bca import OBJECTIVES, select_batch
from llmpack.advisor.options import slo_options
from llmpack.api.llmdeployment import LLMDeploymentSpec, SLOSpec
from llmpack.api.profile import Profile, ProfilePoint

GIB = 1 << 30

# batch: (tokens/s, mean ITL, p99 ITL, p99 TTFT, preemptions). B=64 ran out of KV cache, so without
# an SLO the advisor stops at 32 (the efficiency policy) and 32 is also the plateau's best.
CURVE = {
    1: (600, 3.0, 9.0, 150.0, 0),
    2: (1180, 3.05, 9.2, 152.0, 0),
    4: (2300, 3.2, 9.6, 158.0, 0),
    8: (4400, 3.5, 10.5, 168.0, 0),
    16: (8000, 4.0, 12.0, 184.0, 0),
    32: (12800, 5.0, 15.0, 206.0, 0),
    64: (18000, 7.0, 21.0, 260.0, 5),
}


def _points(drop: tuple[str, ...] = (), drop_at: tuple[int, ...] | None = None) -> list[ProfilePoint]:
    points = []
    for batch, (tps, itl, itl_p99, ttft_p99, preempted) in CURVE.items():
        fields = {"itl_mean_ms": itl, "itl_p99_ms": itl_p99, "ttft_p99_ms": ttft_p99}
        if drop_at is None or batch in drop_at:
            fields = {k: v for k, v in fields.items() if k not in drop}
        points.append(
            ProfilePoint(max_num_seqs=batch, total_tokens_per_s=tps, preemptions=preempted, **fields)
        )
    return points


def _profile(points: list[ProfilePoint]) -> Profile:
    return Profile(
        model={
            "name": "facebook/opt-1.3b",
            "num_layers": 24,
            "num_kv_heads": 32,
            "head_dim": 64,
            "weight_bytes": int(2.5 * GIB),
            "kv_bytes_per_token": 2 * 24 * 32 * 64 * 2,
            "max_model_len": 2048,
        },
        gpu={"product": "NVIDIA-H100-80GB-HBM3", "memory_bytes": 80 * GIB},
        workload={"prompt_tokens": 256, "output_tokens": 256},
        points=points,
    )


def _between(field: str) -> float:
    """An objective on `field` that B=16 meets and B=32 breaks."""
    objective = next(o for o in OBJECTIVES if o.field == field)
    at = {p.max_num_seqs: objective.read(p) for p in _points()}
    return (at[16] + at[32]) / 2


# -- the instance -------------------------------------------------------------------------------


def test_the_ttft_p99_slo_binds_the_batch_size():
    profile = _profile(_points())
    assert advise(profile).b_opt == 32  # what it picked with the SLO ignored
    spec = LLMDeploymentSpec.model_validate(
        {"model": {"name": "facebook/opt-1.3b"}, "slo": {"ttftP99Ms": 200}}
    )
    rec = advise(profile, AdvisorOptions(**slo_options(spec.slo)))
    assert rec.b_opt == 16
    at_32 = rec.verdict(32)
    assert at_32 is not None and not at_32.kept
    assert at_32.reasons == ["p99 TTFT 206.00 ms > SLO 200 ms"]
    assert "p99 TTFT 184.00 ms <= SLO 200 ms" in rec.verdict(16).reasons
    assert rec.explanation.startswith(
        "B_opt = 16: the largest measured batch whose efficiency T(B)/(B x T(1)) stays above 0.2 "
        "within the latency cap 25.00 ms = 5 x the mean ITL at B=32 (5.00 ms) and the p99 TTFT SLO "
        "(200 ms) (efficiency 0.833, 8,000 tokens/s). Binding constraint: the p99 TTFT SLO (200 ms); "
        "the next larger, B=32, fails: p99 TTFT 206.00 ms > SLO 200 ms. Without slo.ttftP99Ms it "
        "would be B=32."
    )


def test_without_an_slo_the_explanation_names_what_stopped_it():
    sel = select_batch(_points())
    assert sel.b_opt == 32 and sel.binding == ("preemptions (the KV cache ran out)",)
    assert "Binding constraint: preemptions (the KV cache ran out); the next larger, B=64" in sel.explanation
    assert "Without" not in sel.explanation


# -- the kind: every SLO field, both policies ---------------------------------------------------


def test_every_slo_field_has_an_objective_and_reaches_the_options():
    assert {o.field for o in OBJECTIVES} == set(SLOSpec.model_fields)
    for objective in OBJECTIVES:
        assert objective.field in ProfilePoint.model_fields, objective
        assert objective.option in AdvisorOptions.model_fields, objective
        camel = SLOSpec.model_fields[objective.field].alias
        assert objective.spec_path == f"slo.{camel}"
        options = AdvisorOptions(**slo_options(SLOSpec.model_validate({camel: 7.0})))
        assert getattr(options, objective.option) == 7.0


@pytest.mark.parametrize("policy", ["efficiency", "plateau"])
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.field)
def test_each_slo_field_binds_in_each_policy(objective, policy):
    free = select_batch(_points(), AdvisorOptions(policy=policy))
    assert free.b_opt == 32
    value = _between(objective.field)
    sel = select_batch(_points(), AdvisorOptions(policy=policy, **{objective.option: value}))
    assert sel.b_opt == 16
    (binding,) = sel.binding
    assert binding.endswith(f"({value:g} ms)") and objective.metric in binding
    assert f"Binding constraint: {binding}" in sel.explanation
    assert f"Without {objective.spec_path} it would be B=32." in sel.explanation
    at_32 = next(v for v in sel.verdicts if v.max_num_seqs == 32)
    assert not at_32.kept and any(objective.metric in r for r in at_32.reasons)


@pytest.mark.parametrize("policy", ["efficiency", "plateau"])
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.field)
def test_an_slo_no_batch_meets_is_refused_with_the_best_value_measured(objective, policy):
    lowest = objective.read(_points()[0])
    with pytest.raises(AdvisorError) as err:
        select_batch(_points(), AdvisorOptions(policy=policy, **{objective.option: lowest / 2}))
    message = str(err.value)
    assert f"lowest {objective.metric} measured is {lowest:.2f} ms (B=1)" in message
    assert f"{lowest / 2:g} ms" in message and "relax the SLO" in message


def test_the_ttft_refusal_names_the_slo_and_its_value():
    with pytest.raises(AdvisorError) as err:
        advise(_profile(_points()), AdvisorOptions(slo_ttft_p99_ms=100))
    assert str(err.value) == (
        "no measured batch size meets the p99 TTFT SLO (100 ms): the lowest p99 TTFT measured is "
        "150.00 ms (B=1), so an SLO below that cannot be met on this GPU; relax the SLO or serve "
        "on a faster GPU"
    )


def test_two_unmet_slos_are_both_named():
    with pytest.raises(AdvisorError) as err:
        select_batch(_points(), AdvisorOptions(slo_itl_p99_ms=1, slo_ttft_p99_ms=100))
    assert "p99 ITL SLO (1 ms)" in str(err.value) and "p99 TTFT SLO (100 ms)" in str(err.value)


def test_slos_met_only_by_different_batches_are_refused_together():
    # mean ITL under 3.1 ms only at B <= 2, p99 TTFT under 170 ms only at B <= 8: B=1 meets both
    assert select_batch(_points(), AdvisorOptions(slo_itl_mean_ms=3.1, slo_ttft_p99_ms=170)).b_opt == 2
    # a p99 TTFT SLO only B=1 meets, and an ITL SLO B=1 breaks while B=4 meets it (noise)
    noisy = [p.model_copy(update={"itl_mean_ms": 9.0}) if p.max_num_seqs == 1 else p for p in _points()]
    with pytest.raises(AdvisorError, match=r"at once \(the smallest, B=1, fails: mean ITL 9\.00 ms > cap"):
        select_batch(noisy, AdvisorOptions(slo_itl_mean_ms=5, slo_ttft_p99_ms=151))


# -- a point without the figure an SLO bounds ----------------------------------------------------


def test_a_point_without_the_figure_is_not_eligible():
    points = _points(drop=("ttft_p99_ms",), drop_at=(8, 16))
    sel = select_batch(points, AdvisorOptions(slo_ttft_p99_ms=200))
    assert sel.b_opt == 4
    at_16 = next(v for v in sel.verdicts if v.max_num_seqs == 16)
    assert at_16.reasons == ["no p99 TTFT measured, so the p99 TTFT SLO cannot be checked"]
    assert "the next larger, B=8, fails: no p99 TTFT measured" in sel.explanation


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.field)
def test_an_slo_the_profile_never_measured_is_refused(objective):
    points = _points(drop=(objective.field,))
    if objective.field == "itl_mean_ms":
        assert select_batch(points).latency_cap_ms is None  # no SLO: no cap, no refusal
    with pytest.raises(AdvisorError) as err:
        select_batch(points, AdvisorOptions(**{objective.option: 1000.0}))
    message = str(err.value)
    assert f"measured no {objective.metric} at any usable batch size" in message
    assert f"the {objective.metric} SLO (1000 ms) ({objective.spec_path}) cannot be honoured" in message


# -- a fixed batch size -------------------------------------------------------------------------


def test_a_fixed_batch_that_breaks_an_slo_says_so():
    rec = advise(_profile(_points()), AdvisorOptions(max_num_seqs=32, slo_ttft_p99_ms=200))
    assert rec.b_opt == 32 and rec.b_opt_source == "override"
    assert (
        "Warning: the fixed B=32 does not honour the SLO: p99 TTFT 206.00 ms > SLO 200 ms." in rec.explanation
    )
    within = advise(_profile(_points()), AdvisorOptions(max_num_seqs=16, slo_ttft_p99_ms=200))
    assert "Warning" not in within.explanation


# -- through the operator -----------------------------------------------------------------------


def test_the_operator_honours_the_ttft_slo():
    from test_badinput_pure import BASE_SPEC, assert_failed, merged, reconcile_through

    # the simulated OPT-1.3B profile: p99 TTFT 29.5 ms at B=128, 39.8 ms at B=192 (B_opt without it)
    run = reconcile_through(merged(BASE_SPEC, {"slo": {"ttftP99Ms": 30}}))
    advised = run.condition("Advised")["message"]
    assert "B_opt = 128" in advised and "Binding constraint: the p99 TTFT SLO (30 ms)" in advised
    refused = reconcile_through(merged(BASE_SPEC, {"slo": {"ttftP99Ms": 5}}))
    assert_failed(
        refused, "AdvisorRefused", "p99 TTFT SLO (5 ms)", "lowest p99 TTFT measured", "relax the SLO"
    )


@pytest.mark.parametrize(
    "objective",
    [pytest.param(o, id=o.field) for o in OBJECTIVES],
)
def test_a_spec_with_any_slo_is_profiled_by_the_exhaustive_sweep(objective):
    """The profiling Job's adaptive sweep runs the advisor with no SLO (profiler/cli.py), so it
    measures only what the SLO-free choice depends on; with an SLO the advisor needs the batches
    below that choice. On the simulated OPT-1.3B profile, slo.ttftP99Ms: 22 picks B=32 from the
    adaptive points (1, 32, 128, 192, 256) where the exhaustive ones give 64."""
    from llmpack.planner.planning import effective_sweep

    camel = SLOSpec.model_fields[objective.field].alias
    spec = LLMDeploymentSpec.model_validate({"model": {"name": "facebook/opt-1.3b"}, "slo": {camel: 22}})
    assert spec.profiling.sweep == "adaptive"
    assert effective_sweep(spec) == "exhaustive"
