"""End to end with the real engine: an LLMDeployment whose model is a local folder (a tiny model)
is profiled by the profiling Job's own command on vLLM's CPU build (the player runs it as the Job's
ServiceAccount), the profile is published, advised, and a packed Deployment results; a context
the model does not allow ends in Failed naming the model's limit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

import engine

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine_player(testbed, kube_admin):
    from player import ProfilerPlayer

    python = engine.vllm_python()
    env = {"PATH": f"{python.parent}:{engine.engine_env()['PATH']}", "HF_HUB_OFFLINE": "1"}
    return ProfilerPlayer(
        kube=kube_admin, server=testbed.server, ca_file=testbed.ca_file, backend=None, env=env, timeout_s=900
    )


def manifest(name: str, model_path: Path, **spec: dict) -> str:
    base = yaml.safe_load((ROOT / "examples" / "opt-1.3b-mps-dra.yaml").read_text())
    base["metadata"]["name"] = name
    base["spec"].update(
        model={"name": str(model_path), **spec.pop("model", {})},
        workload={"promptTokens": 32, "outputTokens": 32},
        advisor={"candidateBatchSizes": [1, 2, 4, 8]},
        profiling={"backend": "vllm", "sweep": "exhaustive", "timeoutSeconds": 900},
    )
    base["spec"].pop("slo", None)
    for key, value in spec.items():
        base["spec"][key] = {**base["spec"].get(key, {}), **value}
    return yaml.safe_dump(base)


def wait_phase(kube, player, namespace, name, phases, timeout):
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        player.play_once(namespace)
        status = (kube.get("LLMDeployment", namespace, name) or {}).get("status") or {}
        if status.get("phase") in phases:
            return status
        time.sleep(0.5)
    pytest.fail(f"{name} not {phases} after {timeout} s: {status}\nplayer: {player.log}")


def test_a_local_tiny_model_is_profiled_by_the_real_engine_and_packed(
    operator_process, kube_admin, kubectl, engine_player, namespace
):
    model = engine.tiny_models()["llama-gqa"]
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("tiny-llama", model))
    started = time.monotonic()
    status = wait_phase(kube_admin, engine_player, namespace, "tiny-llama", ("Ready", "Failed"), 900)
    print(f"applied -> Ready in {time.monotonic() - started:.0f} s; player: {engine_player.log}")
    assert status["phase"] == "Ready", status

    from llmpack.api.profile import Profile

    ref = status["profileRef"]
    cm = kube_admin.get("ConfigMap", ref["namespace"], ref["configMap"])
    profile = Profile.from_json(cm["data"]["profile.json"])
    assert profile.backend == "vllm" and profile.engine.device == "cpu"
    assert profile.model.name == str(model) and profile.model.kv_bytes_per_token == 512
    assert profile.batch_sizes == [1, 2, 4, 8]
    assert profile.kv_capacity_tokens and profile.block_size == 128

    rec = status["recommendation"]
    assert rec["replicasPerGPU"] >= 2, rec  # a 1 MB model: memory is no limit
    deployment = kube_admin.get("Deployment", namespace, "tiny-llama")
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    replicas = [c for c in pod.get("initContainers", []) if c["name"].startswith("vllm")]
    assert len(replicas) == rec["replicasPerGPU"]
    for container in replicas:
        args = container["args"]
        assert args[0] == str(model)
        assert args[args.index("--max-num-seqs") + 1] == str(rec["maxNumSeqs"])
        assert "--kv-cache-memory-bytes" in args
    columns = kubectl("get", "llmd", "-n", namespace, "tiny-llama", "-o", "wide").stdout
    assert "Ready" in columns and str(model) in columns


def test_a_context_the_model_does_not_allow_fails_naming_its_limit(
    operator_process, kube_admin, kubectl, engine_player, namespace
):
    model = engine.tiny_models()["llama-gqa"]
    # 4,096 tokens of context on a model with 2,048 positions: a local folder the operator cannot
    # read, so the profiler refuses it from the model's config.json before starting the engine
    # (which would refuse it too: "User-specified max_model_len (4096) is greater than ...").
    kubectl(
        "apply", "-n", namespace, "-f", "-", input=manifest("too-long", model, model={"maxModelLen": 4096})
    )
    status = wait_phase(kube_admin, engine_player, namespace, "too-long", ("Failed", "Ready"), 600)
    assert status["phase"] == "Failed", status
    message = status["message"]
    assert "--max-model-len 4,096 exceeds the 2,048 tokens of context" in message, message
    assert "config.json" in message
    described = kubectl("describe", "llmd", "-n", namespace, "too-long").stdout
    assert "2,048 tokens of context" in described


def test_a_start_the_engine_refuses_fails_with_the_engines_root_cause(
    operator_process, kube_admin, kubectl, engine_player, namespace
):
    """serving.extraArgs that change the engine reach the profiling run; one the engine refuses
    at start-up ends Failed with the engine's first exception, not its last log lines."""
    model = engine.tiny_models()["llama-gqa"]
    refused = manifest(
        "refused",
        model,
        # a scheduler check llmpack does not plan around (vllm/config/scheduler.py)
        serving={"extraArgs": ["--long-prefill-token-threshold", "100000"]},
        profiling={"backoffLimit": 0},
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=refused)
    status = wait_phase(kube_admin, engine_player, namespace, "refused", ("Failed", "Ready"), 600)
    assert status["phase"] == "Failed", status
    message = status["message"]
    assert "long_prefill_token_threshold (100000) cannot be greater than the max_model_len" in message
    assert "raised at vllm/" in message
    assert "See root cause above" not in message.split("last lines")[0]
