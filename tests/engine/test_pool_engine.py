"""Two members of a GPUPool, two different models, placed on one GPU: both serve at once with the
real engine (vLLM's CPU build).

The pool and its members go through `llmpack plan --pool POOL -f A -f B --simulate -o json` (the
operator's own pool pass and render_serving, nothing copied): a GPUPool of one H100 and two
LLMDeployments of two different tiny models (llama-gqa: grouped-query attention; opt: multi-head,
learned positions), one replica each. The rendered objects must place both on the pool's GPU 0:
each member's Deployment `<member>-gpu0` claims the pool's ResourceClaim of that GPU, and its
`vllm-0` native sidecar is an MPS client of it (CUDA_MPS_PINNED_DEVICE_MEM_LIMIT).

Each member's `vllm-0` then runs here as rendered (`vllm serve` + its args: the model folder, the
KV size, batch cap, context, utilisation, host), one after the other. What a CPU needs instead of
the pod: each process on a loopback port of its own (the pods have a network namespace each, so
both render the same port), and on one core of its own (VLLM_CPU_OMP_THREADS_BIND; each
container requests one CPU). Both must report healthy, answer completions sent to both at the
same moment with generated text, and each serve its own model (/v1/models).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

import engine
from llmpack import cli
from llmpack.advisor.model_config import model_shape

POOL = "tiny-pool"
MEMBERS = {"gqa": "llama-gqa", "opt": "opt"}  # member name -> tiny model
NAMESPACE = "default"
MAX_TOKENS = 32
# Variables of the rendered container that name the pod's own filesystem and user (its /tmp
# emptyDir); here the engine keeps the machine's, so its compile cache stays warm.
POD_ONLY_ENV = {"HOME", "HF_HOME", "USER", "LOGNAME"}

pytestmark = pytest.mark.timeout(600)


def say(message: str) -> None:
    print(f"[pool-engine] {message}", flush=True)


def architecture(model: Path) -> dict[str, Any]:
    """spec.model.architecture of a tiny model folder, from its config.json as vLLM reads it."""
    shape = model_shape(json.loads((model / "config.json").read_text()))
    return {
        "numLayers": shape.num_layers,
        "numKvHeads": shape.num_kv_heads,
        "headDim": shape.head_dim,
        "parameterBytes": sum(f.stat().st_size for f in model.glob("*.safetensors")),
        "maxPositionEmbeddings": shape.max_position_embeddings,
    }


def pool_doc() -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": POOL, "namespace": NAMESPACE},
        "spec": {"gpu": {"product": "NVIDIA-H100-80GB-HBM3", "maxGPUs": 1}},
    }


def member_doc(name: str, model: Path) -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "gpuPoolRef": {"name": POOL},
            "model": {"name": str(model), "architecture": architecture(model)},
            "workload": {"promptTokens": 64, "outputTokens": 16},
            "sharing": {"maxReplicasPerGPU": 1},
            "gpu": {"count": 1},
        },
    }


def plan_pool(tiny_models: dict[str, Path], where: Path) -> dict[str, Any]:
    """`llmpack plan --pool POOL -f A -f B --simulate -o json`: {"pool", "members", "objects"}."""
    where.mkdir(parents=True, exist_ok=True)
    argv = ["plan", "--pool", str(where / "pool.yaml"), "--simulate", "-o", "json"]
    (where / "pool.yaml").write_text(yaml.safe_dump(pool_doc()))
    for name, tiny in MEMBERS.items():
        (where / f"{name}.yaml").write_text(yaml.safe_dump(member_doc(name, tiny_models[tiny])))
        argv += ["-f", str(where / f"{name}.yaml")]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    assert rc == 0, f"llmpack {' '.join(argv)} failed:\n{err.getvalue()}"
    return json.loads(out.getvalue())


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name} among {[o['metadata']['name'] for o in objects]}"
    return found[0]


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} not once in {args}"
    return args[args.index(name) + 1]


def placed_on_one_gpu(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each member's rendered `vllm-0` container, after checking both run on the pool's GPU 0
    through its one ResourceClaim."""
    status, objects = document["pool"], document["objects"]
    (gpu,) = status["gpus"]
    assert gpu["index"] == 0
    assert {m["name"]: m["replicas"] for m in gpu["members"]} == dict.fromkeys(MEMBERS, 1), status
    claim = one(objects, "ResourceClaim", gpu["claim"])
    assert claim["metadata"]["labels"]["llmpack.io/gpupool"] == POOL
    sidecars = {}
    for member in MEMBERS:
        pod = one(objects, "Deployment", f"{member}-gpu0")["spec"]["template"]["spec"]
        (pod_claim,) = pod["resourceClaims"]
        assert pod_claim["resourceClaimName"] == gpu["claim"], f"{member}: {pod_claim}"
        (vllm,) = [c for c in pod["initContainers"] if c["name"].startswith("vllm-")]  # one replica
        assert vllm["name"] == "vllm-0" and vllm["restartPolicy"] == "Always"  # a native sidecar
        assert vllm["command"] == ["vllm", "serve"]
        assert vllm["resources"]["claims"] == [{"name": pod_claim["name"]}]
        env = {e["name"]: e["value"] for e in vllm["env"]}
        assert env.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"), f"{member}: not an MPS client: {env}"
        sidecars[member] = vllm
    return sidecars


def cpu_command(vllm: dict[str, Any]) -> tuple[str, list[str]]:
    """(model, flags) of a rendered `vllm serve` for engine.serve(): the args as rendered, without
    the --host / --port pair that serve() puts back (the same loopback host, a free port)."""
    model, *args = vllm["args"]
    assert flag(args, "--host") == "127.0.0.1"
    flags = list(args)
    for name in ("--host", "--port"):
        at = flags.index(name)
        del flags[at : at + 2]
    return model, flags


def post_completion(url: str, model: str, barrier: threading.Barrier) -> tuple[float, float, dict[str, Any]]:
    body = {"model": model, "prompt": "the quick brown fox", "max_tokens": MAX_TOKENS, "ignore_eos": True}
    request = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    barrier.wait(timeout=30)
    sent = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    return sent, time.monotonic(), answer


def test_two_members_of_one_pool_gpu_serve_two_models_at_once(tiny_models, tmp_path: Path) -> None:
    document = plan_pool(tiny_models, tmp_path / "plan")
    say(f"pool: {document['pool']['placement']}")
    sidecars = placed_on_one_gpu(document)
    cores = sorted(os.sched_getaffinity(0))
    servers: dict[str, engine.Server] = {}
    try:
        for index, (member, vllm) in enumerate(sidecars.items()):
            model, flags = cpu_command(vllm)
            assert model == str(tiny_models[MEMBERS[member]])
            pinned = next(e["value"] for e in vllm["env"] if e["name"] == "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
            env = {e["name"]: e["value"] for e in vllm["env"] if e["name"] not in POD_ONLY_ENV}
            assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == pinned
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[index % len(cores)])
            say(f"{member}: vllm serve {model} {' '.join(flags)} (core {env['VLLM_CPU_OMP_THREADS_BIND']})")
            started = time.monotonic()
            # the KV size is the rendered --kv-cache-memory-bytes: serve() adds none of its own
            servers[member] = engine.serve(
                model, tmp_path / member, *flags, kv_cache_memory_bytes=None, env=env
            )
            say(f"{member}: healthy after {time.monotonic() - started:.0f} s on port {servers[member].port}")

        for member, server in servers.items():  # both still healthy once the second one is up
            assert engine.http_get(server.url + "/health")[0] == 200, f"{member}:\n{server.log()[-3000:]}"

        models = {}
        for member, server in servers.items():
            status, body = engine.http_get(server.url + "/v1/models", 10.0)
            assert status == 200, body
            models[member] = [m["id"] for m in json.loads(body)["data"]]
            assert models[member] == [sidecars[member]["args"][0]], f"{member} serves {models[member]}"
        assert len({m[0] for m in models.values()}) == 2
        for member, server in servers.items():  # and the engine loaded that folder's architecture
            config = json.loads((tiny_models[MEMBERS[member]] / "config.json").read_text())
            assert f"Resolved architecture: {config['architectures'][0]}" in server.log(), member

        barrier = threading.Barrier(len(servers))
        with ThreadPoolExecutor(len(servers)) as pool:
            futures = {
                member: pool.submit(post_completion, server.url, models[member][0], barrier)
                for member, server in servers.items()
            }
            answers = {member: future.result(timeout=180) for member, future in futures.items()}
        for member, (sent, done, answer) in answers.items():
            text = answer["choices"][0]["text"]
            tokens = answer["usage"]["completion_tokens"]
            say(f"{member}: {tokens} tokens in {done - sent:.2f} s: {text[:60]!r}")
            assert answer["model"] == models[member][0]
            assert answer["usage"]["completion_tokens"] == MAX_TOKENS
            assert text.strip(), f"{member}: no generated text: {answer}"
        (sent_a, done_a, _), (sent_b, done_b, _) = answers.values()
        assert max(sent_a, sent_b) < min(done_a, done_b), "the two requests were not in flight together"
        for member, server in servers.items():
            assert server.process.poll() is None, f"{member} exited:\n{server.log()[-3000:]}"
    finally:
        for server in servers.values():
            server.stop()
