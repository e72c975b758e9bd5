"""--max-model-len: the typical request sizes the KV cache, never the context; a context or a
typical request longer than the model allows is refused before a profiling Job exists (where the
operator knows the model's limit) or by the profiler (where only the model's config.json says it).

The values are those of issue 12 item 5: facebook/opt-1.3b allows 2,048 positions, so 3000/1000
and maxModelLen 4096 are refused naming 2,048; the README's 256/256 example serves --max-model-len
2048 (was 512: any request beyond 512 tokens got HTTP 400) with the same KV cache as before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml
from test_badinput_pure import BASE_SPEC, assert_failed, merged, reconcile_through

from llmpack.advisor import AdvisorError, AdvisorOptions, advise
from llmpack.advisor.loaders import load_paper_profile
from llmpack.advisor.memory import context_for_pool, kv_budget, profiling_max_model_len
from llmpack.advisor.model_config import context_limit
from llmpack.advisor.perfmodel import replica_memory_bytes
from llmpack.api.llmdeployment import LLMDeploymentSpec
from llmpack.api.profile import ModelFacts
from llmpack.cli import UserError
from llmpack.planner.planning import profile_key, profiling_plan
from llmpack.profiler import cli as profile_cli
from llmpack.profiler.facts import ProfileRequest
from llmpack.render.plan import OwnerRef

OPT = "facebook/opt-1.3b"
OWNER = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="m", uid="u-1")


def simulated(spec: dict) -> dict:
    """`spec` profiled by the simulated backend on an H100 (the reconciler's own path)."""
    return merged({"profiling": {"backend": "simulated"}, "sharing": {"mode": "exclusive"}}, spec)


def deployed(spec: dict) -> dict:
    run = reconcile_through(simulated(spec))
    assert run.status["phase"] in ("Deploying", "Ready"), run.status
    rec = run.status["recommendation"]
    args = rec["vllmArgs"]
    assert args[args.index("--max-model-len") + 1] == str(rec["maxModelLen"])
    return rec


def jobs(run) -> list[dict]:
    return [o for o in run.kube.applied if o["kind"] == "Job"]


def job_args(spec_data: dict) -> list[str]:
    spec = LLMDeploymentSpec.model_validate(spec_data)
    return profiling_plan(name="m", namespace="ns", owner=OWNER, spec=spec, key="k" * 40, image="img").args


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# -- refused before profiling ---------------------------------------------------------------------


def test_a_workload_longer_than_the_model_allows_is_refused_before_any_profiling_job():
    run = reconcile_through(merged(BASE_SPEC, {"workload": {"promptTokens": 3000, "outputTokens": 1000}}))
    message = assert_failed(
        run, "ContextTooLong", "3000", "1000", "4,000 tokens", f"2,048 tokens of context {OPT} allows"
    )
    assert "Shorten the workload to at most 2,048 tokens" in message
    assert not jobs(run) and not run.kube.applied, "nothing is profiled for a spec vLLM would refuse"


def test_a_max_model_len_beyond_the_model_is_refused_before_any_profiling_job():
    run = reconcile_through(merged(BASE_SPEC, {"model": {"name": OPT, "maxModelLen": 4096}}))
    assert_failed(
        run,
        "ContextTooLong",
        "model.maxModelLen 4,096 exceeds the 2,048 tokens of context",
        "Lower model.maxModelLen to at most 2048",
    )
    assert not run.kube.applied


@pytest.mark.parametrize(
    ("model", "max_model_len", "limit"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", 65536, "32,768"),
        ("meta-llama/Llama-3.1-8B-Instruct", 200_000, "131,072"),
        ("meta-llama/Llama-2-7b-hf", 8192, "4,096"),
    ],
)
def test_every_catalogue_model_is_held_to_its_own_limit(model, max_model_len, limit):
    run = reconcile_through(merged(BASE_SPEC, {"model": {"name": model, "maxModelLen": max_model_len}}))
    assert_failed(run, "ContextTooLong", f"the {limit} tokens of context {model} allows")
    ok = reconcile_through(simulated({"model": {"name": model, "maxModelLen": 4096}}))
    assert ok.status["phase"] != "Failed", ok.status


def test_the_architecture_override_names_the_limit_of_a_model_outside_the_catalogue():
    arch = {"numLayers": 12, "numKvHeads": 4, "headDim": 64, "parameterBytes": 500_000_000}
    spec = {
        "model": {
            "name": "acme/x",
            "maxModelLen": 8192,
            "architecture": {**arch, "maxPositionEmbeddings": 4096},
        }
    }
    run = reconcile_through(merged(BASE_SPEC, spec))
    assert_failed(run, "ContextTooLong", "(spec.model.architecture.maxPositionEmbeddings)", "at most 4096")
    assert not run.kube.applied
    # without the figure the operator cannot know: the Job is created, the profiler judges
    unknown = reconcile_through(
        merged(BASE_SPEC, {"model": {"name": "acme/x", "maxModelLen": 8192}}), play=False
    )
    assert unknown.status["phase"] == "Profiling" and jobs(unknown)


# -- the default context ----------------------------------------------------------------------------


def test_the_readme_example_serves_the_model_context_with_the_same_kv_cache():
    rec = deployed({"model": {"name": OPT}})
    assert rec["maxModelLen"] == 2048  # was 512: prompt + max_tokens > 512 got HTTP 400
    assert rec["maxNumSeqs"] == 192
    assert rec["kvCacheBytes"] == 19_327_352_832  # 192 x 512 tokens x 196,608 B: as before
    assert (
        "Requests may hold up to 2,048 tokens (prompt + output; --max-model-len): the model allows "
        "2,048 and one replica's KV cache holds 98,304." in rec["explanation"]
    )


@pytest.mark.parametrize(
    ("model", "workload", "b_opt", "max_model_len", "kv_bytes"),
    [
        # 32k-context Qwen: the pool (512 x 512 tokens) holds far more than the model allows
        ("Qwen/Qwen2.5-0.5B-Instruct", (256, 256), 512, 32_768, 3_221_225_472),
        ("Qwen/Qwen3-0.6B", (256, 256), 192, 40_960, 11_274_289_152),
        # 128k Llama: 256 x 512 = 131,072 tokens, exactly the model's limit, less the block vLLM
        # keeps back (its null block), which its start-up check leaves out
        ("meta-llama/Llama-3.1-8B-Instruct", (256, 256), 256, 131_056, 17_179_869_184),
        ("meta-llama/Llama-3.1-8B-Instruct", (2048, 512), 64, 131_072, 21_474_836_480),
        ("meta-llama/Llama-2-7b-hf", (1024, 256), 32, 4_096, 21_474_836_480),
    ],
)
def test_the_default_context_is_the_longest_the_model_allows_that_the_pool_holds(
    model, workload, b_opt, max_model_len, kv_bytes
):
    rec = deployed(
        {"model": {"name": model}, "workload": {"promptTokens": workload[0], "outputTokens": workload[1]}}
    )
    assert (rec["maxNumSeqs"], rec["maxModelLen"], rec["kvCacheBytes"]) == (b_opt, max_model_len, kv_bytes)


def test_a_pool_shorter_than_the_model_allows_caps_the_context():
    rec = deployed({"model": {"name": OPT}, "advisor": {"maxNumSeqs": 1}})
    # one request of 512 tokens sizes the pool; the context is what it holds, not 2,048, less the
    # block vLLM keeps back (a --max-model-len of 512 in a 512-token pool: vLLM refuses to start)
    assert (rec["maxModelLen"], rec["kvCacheBytes"]) == (496, 512 * 196_608)
    assert "the model allows 2,048 and one replica's KV cache holds 512" in rec["explanation"]


def test_a_fixed_max_model_len_is_kept_and_said():
    rec = deployed({"model": {"name": OPT, "maxModelLen": 1024}})
    assert rec["maxModelLen"] == 1024 and rec["kvCacheBytes"] == 19_327_352_832
    assert (
        "up to 1,024 tokens (prompt + output; --max-model-len as fixed, the model allows 2,048)"
        in (rec["explanation"])
    )


def test_a_model_whose_limit_nobody_knows_is_served_no_longer_than_it_was_profiled():
    arch = {"numLayers": 12, "numKvHeads": 4, "headDim": 64, "parameterBytes": 500_000_000}
    rec = deployed({"model": {"name": "acme/x", "architecture": arch}})
    assert rec["maxModelLen"] == 512
    assert (
        "the model's own limit is unknown, so no more than the 512 it was profiled with" in rec["explanation"]
    )
    known = deployed({"model": {"name": "acme/x", "architecture": {**arch, "maxPositionEmbeddings": 8192}}})
    assert known["maxModelLen"] == 8192 and known["kvCacheBytes"] == rec["kvCacheBytes"]


# -- profiling --------------------------------------------------------------------------------------


def test_profiling_runs_with_the_serving_rule_and_keys_on_it():
    assert flag(job_args({"model": {"name": OPT}}), "--max-model-len") == "2048"
    llama = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}}
    assert flag(job_args(llama), "--max-model-len") == "131072"
    # the profiling pool holds 64 requests of 512 tokens: 32,768 tokens, not the model's 131,072
    small = merged(llama, {"advisor": {"candidateBatchSizes": [1, 2, 4, 8, 16, 32, 64]}})
    assert flag(job_args(small), "--max-model-len") == "32768"
    assert flag(job_args({"model": {"name": OPT, "maxModelLen": 1024}}), "--max-model-len") == "1024"
    # a model only its config.json describes: the profiler reads the limit there
    assert "--max-model-len" not in job_args({"model": {"name": "/models/acme-x"}})
    keys = {
        profile_key(LLMDeploymentSpec.model_validate(s), "img")
        for s in ({"model": {"name": OPT}}, {"model": {"name": OPT, "maxModelLen": 1024}})
    }
    assert len(keys) == 2


def test_the_profiling_context_never_enlarges_the_profiling_pool():
    assert profiling_max_model_len(2048, 256, 256, 512) == 2048
    assert profiling_max_model_len(1_010_000, 256, 256, 512) == 262_144  # a 1M-token model
    assert profiling_max_model_len(131_072, 256, 256, 64) == 32_768


def local_model(tmp_path, **config) -> str:
    folder = tmp_path / "acme-x"
    folder.mkdir()
    base = {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 128}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    return str(folder)


def vllm_request(model: str, *extra: str) -> ProfileRequest:
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--backend", "vllm", "--model", model, "--gpu", "NVIDIA-H100-80GB-HBM3", *extra]
    )
    return profile_cli.profile_request(args)


def test_the_profiler_refuses_what_the_model_config_does_not_allow(tmp_path):
    model = local_model(tmp_path, max_position_embeddings=2048)
    with pytest.raises(
        UserError, match=r"--max-model-len 4,096 exceeds the 2,048 tokens of context .*config\.json"
    ):
        vllm_request(model, "--max-model-len", "4096", "--prompt-tokens", "256", "--output-tokens", "256")
    with pytest.raises(UserError, match=r"= 4,000 tokens exceed the 2,048 tokens of context"):
        vllm_request(model, "--prompt-tokens", "3000", "--output-tokens", "1000")
    request = vllm_request(model, "--prompt-tokens", "256", "--output-tokens", "256")
    assert request.max_model_len == 2048
    assert request.model_facts().max_position_embeddings == 2048


def test_the_profiler_default_context_follows_its_pool(tmp_path):
    model = local_model(tmp_path, max_position_embeddings=1_010_000)
    request = vllm_request(
        model, "--prompt-tokens", "256", "--output-tokens", "256", "--candidates", "1,2,4,8"
    )
    assert request.max_model_len == 8 * 512
    assert request.model_facts().max_position_embeddings == 1_010_000


# -- the model's limit by vLLM's rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "limit"),
    [
        ({"max_position_embeddings": 2048}, 2048),  # OPT
        ({"n_positions": 1024}, 1024),  # GPT-2
        ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 131072),
        ({"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", "factor": 4.0}}, 32768),
        ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}}, 8192),
        ({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, 8192),
        ({"max_position_embeddings": 8192, "seq_length": 4096}, 4096),  # the smallest key
        ({"max_position_embeddings": 8192, "model_max_length": 131072}, 131072),  # Command-R
        ({}, None),  # vLLM assumes 2,048
    ],
)
def test_the_model_limit_is_read_as_vllm_reads_it(config, limit):
    assert context_limit(config) == limit


# -- the advisor and the memory model ---------------------------------------------------------------


def test_the_context_follows_the_pool_and_never_sizes_it():
    budget = kv_budget(batch=192, prompt_tokens=256, output_tokens=256, bytes_per_token=1)
    assert budget.tokens == 98_304 and context_for_pool(2048, budget.tokens) == 2048
    assert context_for_pool(131_072, 32_768) == 32_752  # whole blocks but vLLM's null block
    assert context_for_pool(131_072, 1000, block_size=16) == 976


def test_the_advisor_refuses_a_context_beyond_the_model_and_defaults_to_its_limit():
    profile = load_paper_profile("opt-1.3b")
    rec = advise(profile)
    assert rec.max_model_len == 2048 and rec.vllm_args[-1] == "2048"
    with pytest.raises(AdvisorError, match="--max-model-len 4,096 exceeds the 2,048 tokens of context"):
        advise(profile, AdvisorOptions(max_model_len=4096))
    with pytest.raises(AdvisorError, match="4,000 tokens exceed the 2,048"):
        advise(profile, AdvisorOptions(prompt_tokens=3000, output_tokens=1000))


def test_a_long_profiled_context_does_not_inflate_predicted_replica_memory():
    profile = load_paper_profile("opt-1.3b")
    longer = profile.model_copy(
        update={"model": profile.model.model_copy(update={"max_model_len": 1_000_000})}
    )
    assert replica_memory_bytes(longer, 1) == replica_memory_bytes(profile, 1)


def test_model_facts_carry_the_limit():
    facts = ModelFacts(
        name="m",
        num_layers=1,
        num_kv_heads=1,
        head_dim=1,
        weight_bytes=1,
        kv_bytes_per_token=1,
        max_model_len=2,
    )
    assert facts.max_position_embeddings is None
    assert (
        ProfileRequest(
            model=OPT,
            gpu_product="NVIDIA-H100-80GB-HBM3",
            dtype="auto",
            max_model_len=2048,
            prompt_tokens=1,
            output_tokens=1,
        )
        .model_facts()
        .max_position_embeddings
        == 2048
    )


def test_the_readme_example_itself_renders_the_model_context():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Writing an LLMDeployment")[1].split("```yaml")[1].split("```")[0]
    spec = yaml.safe_load(block)["spec"]
    spec["profiling"]["backend"] = "simulated"
    run = reconcile_through(spec)
    args = run.status["recommendation"]["vllmArgs"]
    assert args[args.index("--max-model-len") + 1] == "2048"  # was 512
    assert args[args.index("--kv-cache-memory-bytes") + 1] == "19327352832"  # unchanged
