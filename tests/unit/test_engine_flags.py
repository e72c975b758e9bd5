"""Engine flags of serving.extraArgs that constrain the plan, read in every spelling vLLM's parser
takes, through `llmpack plan`'s decision: parallel flags (a vLLM spanning GPUs) refused before any
Job, naming the flag as written; a --max-num-batched-tokens below B_opt bounds --max-num-seqs and
the profiling sweep; without chunked prefill it bounds --max-model-len too; contradictions with
what the spec fixes elsewhere refused before any Job. vLLM's own engine config checks the rendered
commands in tests/engine/test_vllm_args.py. Instances: ../shared/cases/memory-contract/ 01, 11, 13."""

from __future__ import annotations

from typing import Any

import pytest
from test_badinput_pure import H100, assert_failed, reconcile_through, simulated_profile

from llmpack.api.engine_flags import engine_flags, human_int
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.hardware.cluster import GPU_PRODUCT_LABEL, ClusterFacts, NodeFacts
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
        (["--decode-context-parallel-size", "2"], 1, "--decode-context-parallel-size 2"),  # on the TP ranks
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


@pytest.mark.parametrize("mode", ["mps", "mig"])
@pytest.mark.parametrize("flag", [["-tp", "2"], ["--pipeline_parallel_size", "2"], ["-tp=2"]])
def test_a_vllm_spanning_gpus_under_mps_or_mig_is_refused_before_any_job_naming_the_flag(mode, flag):
    run = reconcile_through({**OPT, "sharing": {"mode": mode}, "serving": {"extraArgs": flag}}, play=False)
    message = assert_failed(run, "ParallelismNotSupported", f"sharing.mode {mode} gives each replica one GPU")
    assert message.startswith(f"serving.extraArgs {flag[0].split('=')[0]} 2 makes each vllm serve use 2 GPUs")
    assert "set sharing.mode exclusive" in message
    assert not run.kube.applied, "refused before any Job"


@pytest.mark.parametrize("mode", ["mps", "mig", "exclusive", "auto"])
@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (["--data-parallel-size=2"], "serving.extraArgs --data-parallel-size 2 starts several vLLM engines"),
        (["-dp", "2", "-tp", "2"], "serving.extraArgs -dp 2 starts several vLLM engines"),
        (["-dcp", "2", "-tp", "2"], "serving.extraArgs -dcp 2: context parallelism splits"),
        (["--prefill-context-parallel-size", "2"], "--prefill-context-parallel-size 2: context parallelism"),
    ],
)
def test_data_and_context_parallelism_are_refused_in_every_mode_saying_what_to_do(mode, flag, says):
    run = reconcile_through({**OPT, "sharing": {"mode": mode}, "serving": {"extraArgs": flag}}, play=False)
    message = assert_failed(run, "ParallelismNotSupported", says)
    assert "remove the flag" in message
    assert not run.kube.applied


def _objects(run, kind):
    return [o for (k, _, _), o in run.kube.objects.items() if k == kind]


@pytest.mark.parametrize("mode", ["exclusive", "auto"])
@pytest.mark.parametrize(
    ("flag", "world", "kv_heads", "layers"),
    [
        (["-tp", "2"], 2, 16, 24),
        (["--tensor-parallel-size=4"], 4, 8, 24),
        (["-pp", "2"], 2, 32, 12),
        (["-tp", "2", "-pp", "2"], 4, 16, 12),
    ],
)
def test_in_exclusive_mode_a_replica_holds_as_many_gpus_as_its_world_size(
    mode, flag, world, kv_heads, layers
):
    spec = {**OPT, "sharing": {"mode": mode}, "gpu": {"count": 8}, "serving": {"extraArgs": flag}}
    run = reconcile_through(spec, play=False)
    assert run.status["phase"] == "Profiling", run.status
    (job,) = _objects(run, "Job")
    (profiler,) = job["spec"]["template"]["spec"]["containers"]
    assert profiler["resources"]["limits"]["nvidia.com/gpu"] == world, "the profiled engine gets its GPUs"
    run = reconcile_through(spec)
    assert run.status["phase"] == "Deploying", run.status
    rec = run.status["recommendation"]
    assert (rec["mode"], rec["gpus"], rec["gpusPerReplica"], rec["replicas"]) == (
        "exclusive",
        8,
        world,
        8 // world,
    )
    assert f"one replica per {world} GPUs" in rec["explanation"]
    (deployment,) = _objects(run, "Deployment")
    assert deployment["spec"]["replicas"] == 8 // world
    (vllm,) = deployment["spec"]["template"]["spec"]["containers"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == world
    assert " ".join(flag).replace("=", " ") in " ".join(vllm["args"]).replace("=", " ")
    # what one GPU holds of OPT-1.3B's 32 KV heads x 24 layers, as vLLM sizes each worker
    model = simulated_profile(LLMDeploymentSpec.model_validate(spec)).model
    assert (model.num_kv_heads, model.num_layers) == (kv_heads, layers)
    assert model.kv_bytes_per_token == 2 * layers * kv_heads * 64 * 2
    assert model.gpus_per_engine == world


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (
            {"gpu": {"count": 1}},
            "gpu.count 1 is not a whole number of replicas of 2 GPUs (serving.extraArgs -tp 2): set it to 2",
        ),
        (
            {"gpu": {"count": 3}},
            "gpu.count 3 is not a whole number of replicas of 2 GPUs (serving.extraArgs -tp 2): "
            "set it to 2 or 4",
        ),
        (
            {"autoscaling": {"minGPUs": 1, "maxGPUs": 4}},
            "autoscaling.minGPUs 1 is not a whole number of replicas of 2 GPUs",
        ),
    ],
)
def test_gpu_counts_that_are_not_whole_replicas_of_a_multi_gpu_engine_are_refused(spec, says):
    body = {**OPT, "sharing": {"mode": "exclusive"}, "serving": {"extraArgs": ["-tp", "2"]}, **spec}
    run = reconcile_through(body, play=False)
    assert_failed(run, "InvalidSpec", says)


def test_a_tensor_parallel_size_vllm_refuses_is_refused_before_any_job():
    # OPT-1.3B has 32 attention heads; vLLM requires the tensor parallel size to divide them
    body = {
        **OPT,
        "sharing": {"mode": "exclusive"},
        "gpu": {"count": 3},
        "serving": {"extraArgs": ["-tp", "3"]},
    }
    run = reconcile_through(body, play=False)
    assert_failed(
        run, "InvalidSpec", "-tp 3: --tensor-parallel-size 3 does not divide the model's 32 attention heads"
    )


def test_a_multi_gpu_replica_needs_one_node_with_its_gpus():
    cluster = ClusterFacts(
        nodes={"small": NodeFacts("small", {GPU_PRODUCT_LABEL: H100}, {"nvidia.com/gpu": "1"})}
    )
    body = {
        **OPT,
        "gpu": {"product": H100, "count": 2},
        "sharing": {"mode": "exclusive"},
        "serving": {"extraArgs": ["-tp", "2"]},
    }
    run = reconcile_through(body, cluster=cluster, play=False)
    assert run.status["phase"] != "Profiling"
    assert (
        "needs 2 whole NVIDIA-H100-80GB-HBM3 (nvidia.com/gpu) on one node, and the most one node offers is 1"
        in (run.status["message"])
    )


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


def test_the_autoscaler_of_multi_gpu_replicas_counts_gpus_and_serves_whole_replicas():
    spec = {
        **OPT,
        "sharing": {"mode": "exclusive"},
        "gpu": {"count": 3},  # the autoscaler's count, between its bounds, need not be whole replicas
        "autoscaling": {"minGPUs": 2, "maxGPUs": 8},
        "serving": {"extraArgs": ["-tp", "2"]},
    }
    run = reconcile_through(spec)
    assert run.status["phase"] == "Deploying", run.status
    rec = run.status["recommendation"]
    assert (rec["replicas"], rec["gpus"]) == (2, 4), "3 GPUs asked: rounded up to whole replicas"
    (hpa,) = _objects(run, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    # a Pods metric would count pods as GPUs; the External metric's total over a per-GPU target does not
    assert metric["type"] == "External"
    target = metric["external"]["target"]["averageValue"]
    per_gpu = 0.8 * rec["maxNumSeqs"] / 2
    assert float(target.removesuffix("m")) / (1000 if target.endswith("m") else 1) == pytest.approx(
        per_gpu, abs=1e-3
    )
