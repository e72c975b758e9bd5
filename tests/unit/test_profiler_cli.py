"""`llmpack profile` end to end with the paper and simulated backends: the JSON contract that
`llmpack advise --profile` reads, the arguments the operator renders, the termination message,
and the errors a user can fix."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

import pytest

from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.api.profile import Profile
from llmpack.cli import UserError, main
from llmpack.planner.planning import profiling_max_model_len, profiling_plan
from llmpack.profiler import cli as profile_cli
from llmpack.render.plan import OwnerRef


def profile_cmd(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["profile", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sweep", ["adaptive", "exhaustive"])
def test_paper_json_is_what_advise_reads(capsys, tmp_path, sweep):
    code, out, err = profile_cmd(
        capsys,
        "--backend",
        "paper",
        "--paper-model",
        "opt-1.3b",
        "--output-len",
        "390",
        "--sweep",
        sweep,
        "--json",
    )
    assert code == 0, err
    profile = Profile.from_json(out)
    assert profile.backend == "paper"
    assert all(p["max_num_seqs"] >= 1 for p in json.loads(out)["points"])
    assert len(profile.points) == (4 if sweep == "adaptive" else 10)
    path = tmp_path / "profile.json"
    path.write_text(out)
    assert main(["advise", "--profile", str(path), "--json"]) == 0
    recommendation = json.loads(capsys.readouterr().out)
    assert recommendation["b_opt"] == 128  # the paper's B_opt for OPT-1.3B at 390 output tokens
    assert "point 1 (adaptive" in err or "point 1/10" in err


def test_paper_background_without_output_len(capsys):
    code, out, _ = profile_cmd(capsys, "--backend", "paper", "--paper-model", "llama-2-13b", "--json")
    assert code == 0
    profile = Profile.from_json(out)
    assert "family=background" in profile.source


def test_failed_paper_rows_become_notes(capsys, tmp_path):
    log = tmp_path / "termination-log"
    code, out, err = profile_cmd(
        capsys,
        "--backend", "paper", "--paper-model", "opt-1.3b", "--output-len", "130", "--sweep", "exhaustive",
        "--json", "--termination-log", str(log),
    )  # fmt: skip
    assert code == 0
    profile = Profile.from_json(out)
    assert [n.split(":")[0] for n in profile.notes] == ["B=1 failed", "B=256 failed"]
    assert "B=1 failed: the paper's run failed" in err
    assert log.read_text().startswith(
        "profiled facebook/opt-1.3b on NVIDIA-H100-64GB-HBM2e: 8 points (2 failed)"
    )


def test_simulated_writes_output_file_and_key(capsys, tmp_path):
    output, log = tmp_path / "profile.json", tmp_path / "termination-log"
    code, out, _ = profile_cmd(
        capsys,
        "--backend", "simulated", "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--gpu", "NVIDIA-L40S",
        "--dtype", "bfloat16", "--max-model-len", "4096", "--prompt-tokens", "1024", "--output-tokens", "256",
        "--sweep", "adaptive", "--candidates", "1,2,4,8,16,32,64,128,256", "--profile-key", "abc123",
        "--output", str(output), "--termination-log", str(log),
    )  # fmt: skip
    assert code == 0 and out == ""
    profile = Profile.load(output)
    assert profile.key == "abc123" and profile.created_at is not None
    assert profile.model.dtype == "bfloat16" and profile.model.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2
    assert profile.workload.prompt_tokens == 1024
    assert log.read_text().startswith("profiled Qwen/Qwen2.5-1.5B-Instruct on NVIDIA-L40S: ")


def test_human_table_without_json(capsys):
    code, out, _ = profile_cmd(
        capsys, "--backend", "paper", "--paper-model", "opt-2.7b", "--output-len", "520"
    )
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["B", "tokens/s"]


def test_arguments_the_operator_renders_are_understood():
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {
                "name": "acme/tiny-llm",
                "revision": "v2",
                "architecture": {
                    "numLayers": 12,
                    "numKvHeads": 4,
                    "headDim": 64,
                    "parameterBytes": 500_000_000,
                },
            },
            "profiling": {"backend": "simulated"},
        }
    )
    owner = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="tiny", uid="u-1")
    plan = profiling_plan(name="tiny", namespace="team-a", owner=owner, spec=spec, key="k" * 40, image="img")
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    args = parser.parse_args(plan.args)
    assert args.result_configmap == plan.result_configmap and args.profile_key == "k" * 40
    request = profile_cli.profile_request(args)
    facts = request.model_facts()
    assert (facts.num_layers, facts.num_kv_heads, facts.head_dim, facts.weight_bytes) == (
        12,
        4,
        64,
        500_000_000,
    )
    assert facts.revision == "v2"
    assert profile_cli.parse_candidates(args.candidates) == spec.advisor.candidate_batch_sizes
    # no maxModelLen and a model the catalogue does not know: the typical request, rounded up
    assert request.max_model_len == profiling_max_model_len(spec) == 512


def test_unknown_model_without_architecture(capsys, tmp_path):
    log = tmp_path / "termination-log"
    code, _, err = profile_cmd(
        capsys,
        "--backend", "simulated", "--model", "acme/mystery-7b", "--gpu", "NVIDIA-H100-80GB-HBM3",
        "--max-model-len", "4096", "--prompt-tokens", "512", "--output-tokens", "128",
        "--termination-log", str(log),
    )  # fmt: skip
    assert code == 2
    assert "unknown model 'acme/mystery-7b'" in err and "--num-layers" in err
    assert log.read_text().startswith("profiling failed: unknown model")


def test_partial_architecture_names_what_is_missing(capsys):
    code, _, err = profile_cmd(
        capsys,
        "--backend", "simulated", "--model", "acme/mystery-7b", "--gpu", "NVIDIA-H100-80GB-HBM3",
        "--max-model-len", "4096", "--prompt-tokens", "512", "--output-tokens", "128", "--num-layers", "32",
    )  # fmt: skip
    assert code == 2 and "--num-kv-heads, --head-dim, --weight-bytes" in err


def test_model_too_large_fails_with_the_reason(capsys, tmp_path):
    log = tmp_path / "termination-log"
    code, _, err = profile_cmd(
        capsys,
        "--backend", "simulated", "--model", "meta-llama/Llama-2-13b-hf", "--gpu", "NVIDIA-L4",
        "--max-model-len", "4096", "--prompt-tokens", "512", "--output-tokens", "128",
        "--termination-log", str(log),
    )  # fmt: skip
    assert code == 1
    assert "does not fit on NVIDIA-L4" in err
    assert log.read_text().startswith("profiling failed: meta-llama/Llama-2-13b-hf does not fit")


SIMULATED = ["--backend", "simulated", "--model", "facebook/opt-1.3b", "--gpu", "NVIDIA-L4"]
PAPER = ["--backend", "paper", "--paper-model", "opt-1.3b"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (SIMULATED[:4], "needs --gpu, --prompt-tokens, --output-tokens"),
        (["--backend", "paper"], "needs --paper-model"),
        (["--backend", "paper", "--paper-model", "gpt-5"], "unknown paper model"),
        ([*PAPER, "--output-len", "100"], "not 100"),
        ([*PAPER, "--candidates", "1,two"], "'two' is not a whole"),
        ([*PAPER, "--candidates", "0,1"], "at least 1"),
        (
            [*SIMULATED, "--prompt-tokens", "2000", "--output-tokens", "100"],
            "2,100 tokens exceed the 2,048 tokens of context facebook/opt-1.3b allows",
        ),
        (
            [*SIMULATED, "--prompt-tokens", "20", "--output-tokens", "10", "--max-model-len", "4096"],
            "--max-model-len 4,096 exceeds the 2,048 tokens of context facebook/opt-1.3b allows",
        ),
        (
            [*SIMULATED, "--prompt-tokens", "200", "--output-tokens", "100", "--max-model-len", "256"],
            "exceed --max-model-len 256",
        ),
        (
            [*SIMULATED, "--prompt-tokens", "200", "--output-tokens", "100", "--output-len", "130"],
            "belong to --backend paper",
        ),
    ],
)
def test_user_errors(capsys, args, message):
    code, _, err = profile_cmd(capsys, *args)
    assert code == 2
    assert message in err


def test_result_configmap_needs_a_namespace(monkeypatch):
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(
        "llmpack.profiler.publish.SERVICE_ACCOUNT_NAMESPACE", profile_cli.Path("/nonexistent/namespace")
    )
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--backend", "paper", "--paper-model", "opt-1.3b", "--result-configmap", "x-result"]
    )
    with pytest.raises(UserError, match="needs --namespace"):
        profile_cli.run(args)


def test_sigterm_ends_the_run_with_its_reason(capsys, tmp_path, monkeypatch):
    from llmpack.profiler.paper import PaperBackend

    def killed(self, batch):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an exception")

    monkeypatch.setattr(PaperBackend, "measure", killed)
    log = tmp_path / "termination-log"
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = profile_cmd(capsys, *PAPER, "--termination-log", str(log))
    assert code == 1 and "stopped by SIGTERM" in err
    assert log.read_text().startswith("profiling failed: stopped by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before


def test_engine_flags_of_extra_args_reach_the_profiler_and_size_its_kv():
    """serving.extraArgs that change the engine (here an fp8 KV cache) are measured, and sized:
    1 byte per KV element instead of 2 (meta-llama/Llama-3.1-8B-Instruct: 32 layers x 8 KV heads x
    128, so 65,536 bytes per token instead of 131,072)."""
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "serving": {"extraArgs": ["--kv-cache-dtype", "fp8", "--served-model-name", "chat"]},
            "profiling": {"backend": "simulated"},
        }
    )
    owner = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="l", uid="u-1")
    plan = profiling_plan(name="l", namespace="team-a", owner=owner, spec=spec, key="k" * 40, image="img")
    assert "--engine-args=--kv-cache-dtype fp8" in plan.args  # the server's own flag stays out
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    request = profile_cli.profile_request(parser.parse_args(plan.args))
    assert request.engine_args == ("--kv-cache-dtype", "fp8")
    facts = request.model_facts()
    assert facts.kv_bytes_per_token == 2 * 32 * 8 * 128 * 1 == 65_536
    assert facts.kv_cache_dtype == "fp8"

    from llmpack.profiler.vllm import VllmBackend

    argv = VllmBackend(request, [1, 8]).serve_command
    assert argv[-2:] == ["--kv-cache-dtype", "fp8"]


def test_a_kv_cache_dtype_vllm_does_not_know_is_refused(capsys):
    code, _, err = profile_cmd(
        capsys, "--backend", "simulated", "--model", "facebook/opt-1.3b", "--gpu", "NVIDIA-H100-80GB-HBM3",
        "--prompt-tokens", "8", "--output-tokens", "8", "--engine-args=--kv-cache-dtype fp3",
    )  # fmt: skip
    assert code == 2 and "--kv-cache-dtype in --engine-args" in err


def test_a_model_whose_context_nothing_names_is_profiled_at_the_workloads_length():
    """acme/huge: not in the catalogue, no config.json where the simulated profiler runs, no
    architecture.maxPositionEmbeddings: the run takes the workload's own length (rounded to 256)."""
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--backend", "simulated", "--model", "acme/huge", "--gpu", "NVIDIA-H100-80GB-HBM3",
         "--prompt-tokens", "300", "--output-tokens", "100", "--num-layers", "8", "--num-kv-heads", "8",
         "--head-dim", "128", "--weight-bytes", "1000000000"]
    )  # fmt: skip
    assert profile_cli.profile_request(args).max_model_len == 512
