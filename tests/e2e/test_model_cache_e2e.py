"""spec.model.cache on the testbed: a real PersistentVolumeClaim bound by the controller-manager to
a static PersistentVolume (a hostPath: a folder of this machine, as the testbed has no
provisioner), a real fill Job whose pod the player runs (`llmpack fill-model-cache`, its own
arguments, the cache folder being the volume's) against a local stand-in for the Hub
(tests/hub.py), then profiling and serving pods that mount the claim read-only. And the cluster
admin's cache, filled once and shared with two namespaces through read-only volumes bound ahead
to each one's claim: checked by the operator's Job (`--verify-only`), never written or deleted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hub import HubRepo, run_fill, serve_hub

pytestmark = pytest.mark.e2e

MODEL = "facebook/opt-1.3b"


def hub_folder(root: Path) -> Path:
    folder = root / "hub" / "opt"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "opt", "num_hidden_layers": 24}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 65536)
    (folder / "pytorch_model.bin").write_bytes(b"\1" * 65536)
    return folder


def static_volume(name: str, storage_class: str, path: Path) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": storage_class,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(path), "type": "Directory"},
        },
    }


def spec(name: str, storage_class: str, **model: object) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "llmpack.io/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {
                "model": {
                    "name": MODEL,
                    "cache": {"size": "1Gi", "storageClassName": storage_class},
                    **model,
                },
                "workload": {"promptTokens": 256, "outputTokens": 256},
                "sharing": {"mode": "mps", "mpsProvider": "dra", "maxReplicasPerGPU": 4},
                "gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 1},
                "profiling": {"backend": "simulated"},
            },
        }
    )


def wait_status(kube, player, namespace, name, done, timeout, what):
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        player.play_once(namespace)
        status = ((kube.get("LLMDeployment", namespace, name) or {}).get("status")) or {}
        if done(status):
            return status
        time.sleep(0.3)
    pytest.fail(f"{name}: not {what} in {timeout} s: {json.dumps(status, indent=1)}\nplayer: {player.log}")


@pytest.fixture
def cache_volume(kubectl, namespace, tmp_path):
    """A static PersistentVolume only this test's claims bind (its own storage class name)."""
    folder = tmp_path / "volume"
    folder.mkdir()
    storage_class = f"static-{namespace}"[:63]
    pv = static_volume(f"cache-{namespace}"[:63], storage_class, folder)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pv))
    yield storage_class, folder
    kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)


@pytest.fixture
def hub_player(testbed, kube_admin):
    from player import ProfilerPlayer

    def make(url: str) -> ProfilerPlayer:
        return ProfilerPlayer(
            kube=kube_admin, server=testbed.server, ca_file=testbed.ca_file, env={"HF_ENDPOINT": url}
        )

    return make


def test_the_cache_is_filled_once_from_the_hub_and_every_pod_mounts_it_read_only(
    operator_process, kube_admin, kubectl, namespace, cache_volume, hub_player, tmp_path
):
    storage_class, folder = cache_volume
    repo = HubRepo(MODEL, hub_folder(tmp_path))
    with serve_hub(repo) as hub:
        player = hub_player(hub.url)
        kubectl("apply", "-n", namespace, "-f", "-", input=spec("cached", storage_class))
        filling = wait_status(
            kube_admin, player, namespace, "cached", lambda s: "modelCache" in s, 60, "filling"
        )
        status = wait_status(
            kube_admin,
            player,
            namespace,
            "cached",
            lambda s: s.get("phase") in ("Ready", "Failed"),
            180,
            "Ready",
        )
    assert status["phase"] == "Ready", status
    assert filling["modelCache"]["claim"] == status["modelCache"]["claim"]
    assert status["modelCache"]["phase"] == "Ready"
    claim = kube_admin.get("PersistentVolumeClaim", namespace, status["modelCache"]["claim"])
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["volumeName"] == f"cache-{namespace}"[:63]
    # downloaded once, what vLLM loads: the safetensors, not the .bin
    assert sorted(hub.downloads) == [
        f"{MODEL}/config.json",
        f"{MODEL}/model.safetensors",
        f"{MODEL}/tokenizer.json",
    ]
    snapshot = folder / "models--facebook--opt-1.3b" / "snapshots" / repo.sha
    assert (snapshot / "model.safetensors").stat().st_size == 65536
    pods = kube_admin.list(
        "Pod", namespace, label_selector="llmpack.io/llmdeployment=cached,app.kubernetes.io/component=serving"
    )
    assert pods
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["model-cache"]["persistentVolumeClaim"] == {
            "claimName": claim["metadata"]["name"],
            "readOnly": True,
        }
        vllm = [c for c in pod["spec"].get("initContainers", []) if c["name"].startswith("vllm")]
        assert vllm and all({"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"] for c in vllm)


def test_a_gated_model_without_a_token_fails_with_what_to_do(
    operator_process, kube_admin, kubectl, namespace, cache_volume, hub_player, tmp_path
):
    storage_class, _ = cache_volume
    repo = HubRepo(MODEL, hub_folder(tmp_path), token="hf_granted")
    with serve_hub(repo) as hub:
        player = hub_player(hub.url)
        kubectl("apply", "-n", namespace, "-f", "-", input=spec("gated", storage_class))
        status = wait_status(
            kube_admin, player, namespace, "gated", lambda s: s.get("phase") == "Failed", 180, "Failed"
        )
        assert status["modelCache"]["phase"] == "Failed"
        assert (
            f"{MODEL} is gated: accept its terms on the Hub and set spec.model.hfTokenSecretRef"
            in status["message"]
        )
        assert not kube_admin.list("Job", namespace, label_selector="app.kubernetes.io/component=profiler")

        kubectl("create", "secret", "generic", "hf", "-n", namespace, "--from-literal=token=hf_granted")
        kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=spec("gated", storage_class, hfTokenSecretRef={"name": "hf"}),
        )
        status = wait_status(
            kube_admin, player, namespace, "gated", lambda s: s.get("phase") == "Ready", 180, "Ready"
        )
    assert status["modelCache"]["phase"] == "Ready"


# -- one cache the cluster admin fills once and shares with several namespaces -------------------


def admin_fill(folder: Path, hub_url: str, token: str) -> None:
    """What the admin's own Job does once: `llmpack fill-model-cache` into the shared volume."""
    env = {"HF_ENDPOINT": hub_url, "HF_TOKEN": token, "HF_HOME": str(folder.parent / "admin-home")}
    done = run_fill(folder, MODEL, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shared-model-cache"


def example(file: str, kind: str, name: str) -> dict:
    docs = yaml.safe_load_all((EXAMPLE / file).read_text())
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def shared_volume(name: str, folder: Path, namespace: str) -> dict:
    """The example's read-only volume of team-a, for `namespace`, over a folder of this machine
    (a hostPath: the testbed has no NFS server) instead of the NFS export."""
    pv = example("admin.yaml", "PersistentVolume", "llmpack-models-team-a")
    pv["metadata"]["name"] = name
    pv["spec"]["claimRef"]["namespace"] = namespace
    del pv["spec"]["nfs"], pv["spec"]["mountOptions"]
    pv["spec"]["hostPath"] = {"path": str(folder), "type": "Directory"}
    return pv


def shared_claim(volume: str) -> dict:
    claim = next(
        d
        for d in yaml.safe_load_all((EXAMPLE / "admin.yaml").read_text())
        if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["namespace"] == "team-a"
    )
    del claim["metadata"]["namespace"]
    claim["spec"]["volumeName"] = volume
    return claim


def shared_spec(name: str, **model: object) -> str:
    """The example's LLMDeployment, profiled by the simulated backend (no GPU here)."""
    body = example("opt-1.3b.yaml", "LLMDeployment", "opt-1-3b")
    body["metadata"] = {"name": name}
    body["spec"]["model"] |= model
    body["spec"]["profiling"] = {"backend": "simulated"}
    return yaml.safe_dump(body)


@pytest.fixture
def other_namespace(admin_api, namespace):
    import kube

    name = kube.create_namespace(admin_api, f"{namespace}-b"[:63])
    yield name
    kube.delete_namespace(admin_api, name)


def test_an_admin_cache_is_filled_once_and_shared_with_namespaces_but_a_gated_model_only_with_their_token(
    operator_process, kube_admin, kubectl, namespace, other_namespace, hub_player, tmp_path
):
    """The admin fills one folder once; each namespace gets a read-only volume over it and a claim
    bound to that. Namespace a holds a token the Hub grants: its check passes, nothing is
    downloaded again, and its pods mount the shared claim read-only. Namespace b has none: its
    check fails saying so, until it gives one. Deleting both LLMDeployments leaves the claims."""
    folder = tmp_path / "shared"
    folder.mkdir()
    repo = HubRepo(MODEL, hub_folder(tmp_path), token="hf_granted")
    volumes = [f"models-{ns}"[:63] for ns in (namespace, other_namespace)]
    with serve_hub(repo) as hub:
        admin_fill(folder, hub.url, "hf_granted")
        filled, files = len(hub.downloads), listing(folder)
        for pv, ns in zip(volumes, (namespace, other_namespace), strict=True):
            kubectl("apply", "-f", "-", input=yaml.safe_dump(shared_volume(pv, folder, ns)))
            kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(shared_claim(pv)))
        player = hub_player(hub.url)
        try:
            kubectl("create", "secret", "generic", "hf", "-n", namespace, "--from-literal=token=hf_granted")
            kubectl(
                "apply", "-n", namespace, "-f", "-", input=shared_spec("a", hfTokenSecretRef={"name": "hf"})
            )
            kubectl("apply", "-n", other_namespace, "-f", "-", input=shared_spec("b"))
            done = lambda s: s.get("phase") in ("Ready", "Failed")  # noqa: E731
            a = wait_status(kube_admin, player, namespace, "a", done, 180, "Ready")
            b = wait_status(kube_admin, player, other_namespace, "b", done, 180, "Failed")
            assert a["phase"] == "Ready", a
            assert a["modelCache"] | {"job": ""} == {
                "claim": "models",
                "job": "",
                "shared": True,
                "phase": "Ready",
                "message": "verified",
            }
            assert b["phase"] == "Failed" and b["modelCache"]["phase"] == "Failed", b
            assert "a shared cache serves it only to a namespace whose own token may read it" in b["message"]
            assert len(hub.downloads) == filled, "a namespace downloaded what the shared cache holds"

            pods = kube_admin.list(
                "Pod",
                namespace,
                label_selector="llmpack.io/llmdeployment=a,app.kubernetes.io/component=serving",
            )
            assert pods and all(
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
                in p["spec"]["volumes"]
                for p in pods
            )

            kubectl(
                "create", "secret", "generic", "hf", "-n", other_namespace, "--from-literal=token=hf_granted"
            )
            kubectl(
                "apply",
                "-n",
                other_namespace,
                "-f",
                "-",
                input=shared_spec("b", hfTokenSecretRef={"name": "hf"}),
            )
            b = wait_status(
                kube_admin, player, other_namespace, "b", lambda s: s.get("phase") == "Ready", 180, "Ready"
            )
            assert b["modelCache"]["phase"] == "Ready" and len(hub.downloads) == filled

            for ns, name in ((namespace, "a"), (other_namespace, "b")):
                kubectl("delete", "llmd", name, "-n", ns, "--wait=true", "--timeout=60s")
                claim = kube_admin.get("PersistentVolumeClaim", ns, "models")
                assert claim and not claim["metadata"].get("deletionTimestamp"), (
                    "the admin's claim was deleted"
                )
        finally:
            for pv in volumes:
                kubectl("delete", "pv", pv, "--wait=false", check=False)
    assert listing(folder) == files, "the operator's checks wrote to the shared cache"


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))
