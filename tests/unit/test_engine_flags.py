"""Engine flags of serving.extraArgs that constrain the plan, read in every spelling vLLM's parser
takes, through `llmpack plan`'s decision: parallel flags (a vLLM spanning GPUs) refused before any
Job, naming the flag as written; a --max-num-batched-tokens below B_opt bounds --max-num-seqs and
the profiling sweep; without chunked prefill it bounds --max-model-len too; contradictions with
what the spec fixes elsewhere refused before any Job. vLLM's own engine config checks the rendered
commands in tests/engine/test_vllm_args.py. Instances: ../shared/cases/memory-contract/ 01, 11, 13."""

from __future__ import annotations

from typing import Any

import pytest
from test_badinput_pure import reconcile_through

from llmpack.api.engine_flags import engine_flags, human_int
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.planner.planning import profiling_candidates

OPT = {"model": {"name": "facebook/opt-1.3b"}}
QWEN = {
    "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
    "workload": {"promptTokens": 256, "outputTokens": 256},
}


@pytest.mark.parametrize(
    ("args", "devices", "said"),
    [
        (["--tensor-parallel-size", "2"], 2, "--tensor-parallel-size 2"),
        (["-tp", "2"], 2, "-tp 2"),
        (["-tp=4"], 4, "-tp 4"),
        (["--tensor_parallel_size=2"], 2, "--tensor_parallel_size 2"),
        (["--tensor", "2"], 2, "--tensor 2"),  # argparse takes an unambiguous prefix
        (["-pp", "2", "-tp", "2"], 4, "-pp 2 -tp 2"),
        (["--prefill-context-parallel-size", "2"], 2, "--prefill-context-parallel-size 2"),
        (["--data-parallel-size", "2"], 2, "--data-parallel-size 2"),
        (["-dp", "4", "-dpl", "2"], 4, "-dp 4 -dpl 2"),  # engines on other nodes count too
        (["-tp", "2", "--tensor-parallel-size", "1"], 1, ""),  # the last one wins
        (["--decode-context-parallel-size", "2"], 1, ""),  # reuses the tensor-parallel ranks
    ],
)
def test_parallel_flags_are_read_as_vllm_reads_them(args, devices, said):
    flags = engine_flags(args)
    assert flags.devices == devices
    assert flags.parallelism_text() == said


def test_integers_and_chunked_prefill_are_read_as_vllm_reads_them():
    assert [human_int(t) for t in ("128", "1k", "1K", "2M", "1.5k", "x", "1.1")] == [
        128,
        1000,
        1024,
        2 * 2**20,
        1500,
        None,
        None,
    ]
    assert engine_flags(["--max-num-batched", "2k"]).max_num_batched_tokens == 2000
    assert engine_flags(["--no-enable-chunked-prefill"]).chunked_prefill is False
    assert engine_flags(["--no-enable-chunked-prefill", "--enable-chunked-prefill"]).chunked_prefill is True
    assert engine_flags([]).chunked_prefill is None


@pytest.mark.parametrize("mode", ["mps", "mig", "exclusive", "auto"])
@pytest.mark.parametrize(
    "flag", [["-tp", "2"], ["--data-parallel-size=2"], ["--pipeline_parallel_size", "2"]]
)
def test_a_vllm_spanning_gpus_is_refused_before_any_job_naming_the_flag(mode, flag):
    run = reconcile_through({**OPT, "sharing": {"mode": mode}, "serving": {"extraArgs": flag}}, play=False)
    assert run.status["phase"] == "Failed", run.status
    message = run.status["message"]
    assert message.startswith(f"serving.extraArgs {flag[0].split('=')[0]} 2 makes each vllm serve use 2 GPUs")
    assert not run.kube.applied, "refused before any Job"


def test_a_token_budget_below_b_opt_bounds_the_batch_and_the_sweep():
    spec = {**QWEN, "sharing": {"mode": "mps", "mpsProvider": "dra"}}
    free = reconcile_through(spec).status["recommendation"]
    assert free["maxNumSeqs"] > 128
    bounded = {**spec, "serving": {"extraArgs": ["--max-num-batched-tokens", "128"]}}
    assert max(profiling_candidates(LLMDeploymentSpec.model_validate(bounded))) == 128
    run = reconcile_through(bounded)
    assert run.status["phase"] == "Deploying", run.status
    rec = run.status["recommendation"]
    assert rec["maxNumSeqs"] == 128
    assert "--max-num-batched-tokens 128 bounds it" in rec["explanation"]


def test_without_chunked_prefill_the_budget_bounds_the_context():
    extra = ["--max-num-batched-tokens", "1024", "--no-enable-chunked-prefill"]
    run = reconcile_through({**OPT, "sharing": {"mode": "exclusive"}, "serving": {"extraArgs": extra}})
    assert run.status["phase"] == "Deploying", run.status
    rec = run.status["recommendation"]
    assert rec["maxModelLen"] == 1024 and rec["maxNumSeqs"] <= 1024


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (
            {"advisor": {"maxNumSeqs": 256}, "serving": {"extraArgs": ["--max-num-batched-tokens=128"]}},
            "advisor.maxNumSeqs 256 is above serving.extraArgs --max-num-batched-tokens 128",
        ),
        (
            {"serving": {"extraArgs": ["--max-num-batched-tokens", "256", "--no-enable-chunked-prefill"]}},
            "the typical request's 512 tokens exceed serving.extraArgs --max-num-batched-tokens 256",
        ),
        (
            {
                "model": {**OPT["model"], "maxModelLen": 2048},
                "serving": {"extraArgs": ["--max-num-batched-tokens", "1024", "--no-enable-chunked-prefill"]},
            },
            "model.maxModelLen 2048 exceeds serving.extraArgs --max-num-batched-tokens 1024",
        ),
    ],
)
def test_a_budget_that_contradicts_the_spec_is_refused_before_any_job(spec: dict[str, Any], says: str):
    run = reconcile_through({**OPT, **spec}, play=False)
    assert run.status["phase"] == "Failed" and says in run.status["message"], run.status
    assert not run.kube.applied


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-tp"], "-tp (no value)"),
        (["-tp", "--enforce-eager"], "-tp (no value)"),
        (["--tensor-parallel-size", "two"], "--tensor-parallel-size 'two'"),
        (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens '0'"),
        (["--max-num-batched-tokens", "2.5"], "--max-num-batched-tokens '2.5'"),
        (["--max-num-batched-tokens", "9" * 400], "--max-num-batched-tokens '999"),
    ],
)
def test_an_engine_flag_vllm_would_not_read_is_refused_before_any_job(args, says):
    run = reconcile_through({**OPT, "serving": {"extraArgs": args}}, play=False)
    assert run.status["phase"] == "Failed", run.status
    assert run.status["message"].startswith(f"serving.extraArgs {says}")
    assert "vLLM takes a whole number of at least 1 there" in run.status["message"]
    assert not run.kube.applied
