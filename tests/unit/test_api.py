"""The LLMDeployment API models: defaults, validation messages, and the generated CRD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from llmpack.api import crd as crdgen
from llmpack.api.llmdeployment import LLMDeployment, LLMDeploymentSpec

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN_CRD = REPO / "crds" / "llmpack.io_llmdeployments.yaml"


def minimal_spec(**overrides):
    spec = {"model": {"name": "facebook/opt-1.3b"}}
    spec.update(overrides)
    return spec


def test_minimal_spec_gets_documented_defaults():
    spec = LLMDeploymentSpec.model_validate(minimal_spec())
    assert spec.sharing.mode == "auto"
    assert spec.advisor.policy == "efficiency"
    assert spec.gpu.product == "NVIDIA-H100-80GB-HBM3"
    assert spec.gpu.count == 1
    assert spec.profiling.backend == "vllm"
    # no fixed context: the advisor picks the longest the model allows that the KV cache holds
    assert spec.effective_max_model_len() is None
    assert spec.workload_tokens() == 512


def test_yaml_round_trip_uses_camel_case():
    spec = LLMDeploymentSpec.model_validate(
        minimal_spec(sharing={"mode": "mps", "mpsProvider": "devicePlugin", "maxReplicasPerGPU": 4})
    )
    dumped = spec.to_k8s()
    assert dumped["sharing"] == {"mode": "mps", "mpsProvider": "devicePlugin", "maxReplicasPerGPU": 4}
    assert LLMDeploymentSpec.model_validate(dumped) == spec


def test_candidate_batch_sizes_are_sorted_and_unique():
    spec = LLMDeploymentSpec.model_validate(minimal_spec(advisor={"candidateBatchSizes": [64, 8, 64, 1]}))
    assert spec.advisor.candidate_batch_sizes == [1, 8, 64]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (minimal_spec(sharing={"mode": "shared"}), "sharing.mode"),
        (minimal_spec(unknownField=1), "unknownField"),
        (minimal_spec(gpu={"count": 0}), "gpu.count"),
        (
            minimal_spec(sharing={"mode": "exclusive"}, advisor={"replicasPerGPU": 2}),
            "exclusive runs one replica per GPU",
        ),
        (
            minimal_spec(model={"name": "m", "maxModelLen": 300}, workload={"promptTokens": 256}),
            "maxModelLen must hold",
        ),
        (minimal_spec(serving={"extraArgs": ["--max-num-seqs=8"]}), "advisor.maxNumSeqs"),
        (minimal_spec(sharing={"mode": "mps", "migProfile": "1g.10gb"}), "migProfile applies only"),
        (minimal_spec(sharing={"migProfile": "huge"}), "sharing.migProfile"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(spec, fragment):
    with pytest.raises(ValidationError) as err:
        LLMDeploymentSpec.model_validate(spec)
    text = str(err.value).replace("sharing.mig_profile", "sharing.migProfile")
    assert fragment in text or fragment.replace(".", "\n  ") in text


def test_full_object_parses_with_status():
    obj = LLMDeployment.model_validate(
        {
            "apiVersion": "llmpack.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": "opt", "namespace": "default"},
            "spec": minimal_spec(),
            "status": {"phase": "Ready", "ready": "2/2", "somethingNew": 1},
        }
    )
    assert obj.status.phase == "Ready"


def test_checked_in_crd_matches_a_fresh_generation():
    assert CHECKED_IN_CRD.read_text() == crdgen.render_yaml(), (
        "crds/llmpack.io_llmdeployments.yaml is stale: run `make crds`"
    )


def test_crd_is_structural():
    schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node, path):
        assert "$ref" not in node, path
        if node.get("x-kubernetes-int-or-string"):  # a quantity, spelled as Kubernetes' CRDs spell it
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "type" not in node, path
            return
        assert "anyOf" not in node, path
        if "properties" in node or node.get("x-kubernetes-preserve-unknown-fields"):
            assert node.get("type") == "object", path
        elif "enum" not in node:
            assert "type" in node, path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(schema, "")


def test_crd_documents_every_spec_field():
    spec = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = []

    def walk(node, path):
        for name, child in node.get("properties", {}).items():
            if not child.get("description"):
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(spec, "spec")
    assert not missing, f"fields without a description for kubectl explain: {missing}"


def test_crd_has_the_columns_users_read():
    version = crdgen.crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == [
        "Model", "Mode", "B_opt", "Replicas/GPU", "Desired", "GPUs", "Ready", "Gain", "Basis", "Phase", "Age"
    ]  # fmt: skip
    # the GPU count scales: kubectl scale, an HPA or KEDA drive spec.gpu.count
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.gpu.count",
            "statusReplicasPath": ".status.gpus",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_crd_command_prints_yaml():
    out = subprocess.run(
        [sys.executable, "-m", "llmpack.cli", "crd"], check=True, capture_output=True, text=True
    ).stdout
    assert yaml.safe_load(out)["metadata"]["name"] == "llmdeployments.llmpack.io"


def test_checked_in_field_reference_matches_the_models():
    assert (REPO / "docs" / "api.md").read_text() == crdgen.field_reference(), (
        "docs/api.md is stale: run `make docs`"
    )


@pytest.mark.parametrize(
    ("extra_args", "owned"),
    [
        (["--max-num-seqs", "4"], "--max-num-seqs"),
        (["--max-num-seqs=4"], "--max-num-seqs"),
        (["--max_num_seqs", "4"], "--max-num-seqs"),
        (["--max-num-seq", "4"], "--max-num-seqs"),
        (["--kv-cache-memory=1048576"], "--kv-cache-memory-bytes"),
        (["--gpu-memory-util", "0.95"], "--gpu-memory-utilization"),
        (["--device-memory-utilization", "0.95"], "--gpu-memory-utilization"),  # vLLM 0.32's alias
        (["--max-model-len=4k"], "--max-model-len"),
        (["--hos", "0.0.0.0"], "--host"),
        (["--port=9000"], "--port"),
        (["--uds", "/tmp/s"], "--uds"),
        (["--model", "other/model"], "--model"),
    ],
    ids=lambda a: a[0].split("=")[0] if isinstance(a, list) else "",
)
def test_extra_args_cannot_set_an_owned_flag_in_any_spelling_vllm_accepts(extra_args, owned):
    """serving.extraArgs come after the advisor's flags, and vLLM's parser takes underscores,
    abbreviations and aliases (tests/engine/test_vllm_args.py shows it): the last one would win."""
    given = extra_args[0].split("=")[0]
    with pytest.raises(ValidationError, match=f"found {given}, which vLLM reads as {owned}|found {owned}"):
        LLMDeploymentSpec.model_validate(
            {"model": {"name": "facebook/opt-1.3b"}, "serving": {"extraArgs": extra_args}}
        )


def test_extra_args_that_merely_resemble_an_owned_flag_pass():
    spec = LLMDeploymentSpec.model_validate(
        {
            "model": {"name": "facebook/opt-1.3b"},
            "serving": {"extraArgs": ["--max-num-batched-tokens", "4096", "--kv-cache-dtype", "fp8"]},
        }
    )
    assert spec.serving.extra_args[:2] == ["--max-num-batched-tokens", "4096"]


@pytest.mark.parametrize(
    ("extra_args", "engine"),
    [
        (["--disable-fastapi-docs", "-O0"], ["-O0"]),
        (["--chat-template", "t", "-tp", "2"], ["-tp", "2"]),
        (["--served-model-name", "m", "--enforce-eager"], ["--enforce-eager"]),
        (["--max-log-len", "-1", "--kv-cache-dtype", "fp8"], ["--kv-cache-dtype", "fp8"]),
    ],
)
def test_only_the_api_servers_own_flags_stay_out_of_the_profile(extra_args, engine):
    """A short option after a server-only flag changes the engine: it reaches the profiling run and
    its key (a negative number after one is that flag's value, as vLLM's parser reads it)."""
    spec = LLMDeploymentSpec.model_validate({"model": {"name": "m"}, "serving": {"extraArgs": extra_args}})
    assert spec.serving.engine_args() == engine


def test_checked_in_gpupool_crd_matches_a_fresh_generation():
    assert (REPO / "crds" / "llmpack.io_gpupools.yaml").read_text() == crdgen.render_pool_yaml(), (
        "crds/llmpack.io_gpupools.yaml is stale: run `make crds`"
    )
