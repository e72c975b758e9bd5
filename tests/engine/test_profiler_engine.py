"""`llmpack profile --backend vllm` on the real engine, as the profiling Job runs it, and
`llmpack advise` on what it published.

The profiler sizes the engine's KV pool itself (without it the CPU engine reserves 92% of the
machine's RAM) and the profile carries what the engine reported. A start the engine refuses is
reported by its root cause, not by the last lines of its log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine
from llmpack.advisor.model_config import kv_capacity_tokens
from llmpack.api.profile import Profile

ROOT = Path(__file__).resolve().parents[2]
LLMPACK = Path(sys.executable).parent / "llmpack"
CANDIDATES = "1,2,4,8,16"


def profile(
    model: Path, tmp_path: Path, *flags: str, name: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    command = [
        str(LLMPACK), "profile", "--backend", "vllm", "--model", str(model),
        "--gpu", "NVIDIA-H100-80GB-HBM3", "--prompt-tokens", "32", "--output-tokens", "32",
        "--port", str(engine.free_port()), "--workdir", str(tmp_path / name),
        "--termination-log", str(tmp_path / f"{name}.termination-log"), *flags,
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=engine.engine_env(), timeout=900)
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def sweeps(tiny_models, tmp_path_factory):
    """One exhaustive and one adaptive sweep of the Llama-style tiny model: (profile, seconds)."""
    tmp = tmp_path_factory.mktemp("profile")
    out = {}
    for mode in ("exhaustive", "adaptive"):
        done, seconds = profile(
            tiny_models["llama-gqa"], tmp, "--sweep", mode, "--candidates", CANDIDATES,
            "--output", str(tmp / f"{mode}.json"), name=mode,
        )  # fmt: skip
        assert done.returncode == 0, f"{mode} sweep failed:\n{done.stderr[-4000:]}"
        out[mode] = (Profile.from_json((tmp / f"{mode}.json").read_text()), seconds, tmp / f"{mode}.json")
    return out


def test_exhaustive_sweep_measures_every_candidate(sweeps, vllm_version):
    p, seconds, _ = sweeps["exhaustive"]
    print(f"exhaustive sweep of {CANDIDATES}: {seconds:.0f} s")
    assert p.batch_sizes == [1, 2, 4, 8, 16]
    assert all(point.total_tokens_per_s > 0 and point.completed for point in p.points)
    assert all(point.preemptions == 0 for point in p.points), "the KV pool sized for B=16 preempted"


def test_the_profile_carries_what_the_engine_reported(sweeps, vllm_version):
    p, _, _ = sweeps["exhaustive"]
    assert p.engine.version and vllm_version.startswith(p.engine.version)
    assert p.engine.device == "cpu"
    assert p.engine.config["dtype"] == "bfloat16" == p.model.dtype  # --dtype auto, as resolved
    assert p.engine.config["kv_cache_dtype"] == p.engine.kv_cache_dtype == "auto"
    assert p.engine.config["enable_prefix_caching"] in ("True", "False")
    assert p.engine.kv_cache_memory_bytes and "--kv-cache-memory-bytes" in p.engine.args
    assert p.block_size == 128  # the CPU build's block; /metrics cache_config_info
    # the capacity the engine reported is the one llmpack predicts from the model's config
    assert p.kv_capacity_tokens == kv_capacity_tokens(
        p.engine.kv_cache_memory_bytes, p.model.kv_bytes_per_token, p.block_size
    )
    assert p.model.kv_bytes_per_token == 512
    assert any("CPU build" in note for note in p.notes)


def test_adaptive_sweep_measures_fewer_points_and_advise_runs(sweeps):
    exhaustive, t_exhaustive, _ = sweeps["exhaustive"]
    adaptive, t_adaptive, _ = sweeps["adaptive"]
    assert len(adaptive.points) >= 2 and set(adaptive.batch_sizes) <= set(exhaustive.batch_sizes)
    b_opt = {}
    for mode, (_, _, file) in sweeps.items():
        done = subprocess.run(
            [str(LLMPACK), "advise", "--profile", str(file), "--json"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        b_opt[mode] = json.loads(done.stdout)["b_opt"]
    print(
        f"adaptive: {adaptive.batch_sizes} in {t_adaptive:.0f} s, B_opt {b_opt['adaptive']}; "
        f"exhaustive: {exhaustive.batch_sizes} in {t_exhaustive:.0f} s, B_opt {b_opt['exhaustive']}"
    )
    assert b_opt["adaptive"] in adaptive.batch_sizes and b_opt["exhaustive"] in exhaustive.batch_sizes


def test_a_context_the_model_does_not_allow_is_refused_before_the_engine_starts(tiny_models, tmp_path):
    # 4,096 tokens of context on a model with 2,048 positions: the profiler reads that from the
    # model's config.json as vLLM does and refuses at once, as vLLM would ("User-specified
    # max_model_len (4096) is greater than the derived max_model_len ...") after a minute of start-up.
    done, seconds = profile(
        tiny_models["llama-gqa"], tmp_path, "--max-model-len", "4096", "--candidates", "1,2", name="too-long"
    )
    assert done.returncode == 2, done.stderr
    message = (tmp_path / "too-long.termination-log").read_text()
    assert "--max-model-len 4,096 exceeds the 2,048 tokens of context" in message
    assert "config.json" in message and seconds < 60


def test_a_refused_start_is_reported_by_its_root_cause(tiny_models, tmp_path):
    # A batch budget below the batch: vLLM refuses while building its config, lines above the end
    # of its log; llmpack does not check this flag itself.
    done, _ = profile(
        tiny_models["llama-gqa"],
        tmp_path,
        "--engine-args=--max-num-batched-tokens 1",
        "--candidates",
        "1,2",
        name="refused",
    )
    assert done.returncode == 1
    message = (tmp_path / "refused.termination-log").read_text()
    first_line = message.splitlines()[0]
    assert first_line.startswith("profiling failed: vllm serve exited with status 1 at start:"), first_line
    assert "max_num_batched_tokens (1) must be greater than or equal to max_num_seqs (2)" in first_line
    assert "raised at vllm/" in first_line
    assert "See root cause above" not in first_line
