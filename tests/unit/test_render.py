"""render/: ServingPlan and ProfilingPlan -> Kubernetes objects, for every sharing mode.

Each test asserts something a user (or a cluster admin) would notice in the rendered manifests:
the flags each vLLM replica runs with, where the pods may land, what the Service reaches, how
pods start and roll, and what a pod is allowed to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpack.render import kube_name, label_value, render_profiling, render_serving
from llmpack.render.plan import (
    ANNOTATION_CONFIG_HASH,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PROFILE_KEY,
    OwnerRef,
    ProfilingPlan,
    SecretKey,
    ServingPlan,
)
from llmpack.render.serving import LOCAL_PROBE_SCRIPT

PRODUCT = "NVIDIA-H100-80GB-HBM3"
OWNER = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="opt", uid="uid-1")
FLAGS = [
    "--max-num-seqs",
    "96",
    "--kv-cache-memory-bytes",
    "4294967296",
    "--gpu-memory-utilization",
    "0.300",
    "--max-model-len",
    "512",
]
MODES = {
    "exclusive": {"mode": "exclusive", "gpus": 2, "replicas_per_gpu": 1, "replicas": 2},
    "mps-dra": {
        "mode": "mps",
        "mps_provider": "dra",
        "gpus": 2,
        "replicas_per_gpu": 3,
        "replicas": 6,
        "mps_pinned_memory_bytes": 20 * 2**30,
        "mps_active_thread_percentage": 100,
    },
    "mps-device-plugin": {
        "mode": "mps",
        "mps_provider": "devicePlugin",
        "gpus": 1,
        "replicas_per_gpu": 2,
        "replicas": 2,
        "gpu_slices_per_replica": 2,
    },
    "mig": {"mode": "mig", "gpus": 1, "replicas_per_gpu": 3, "replicas": 3, "mig_profile": "2g.20gb"},
}
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def serving_plan(mode: str = "exclusive", **overrides: Any) -> ServingPlan:
    fields: dict[str, Any] = {
        "name": "opt",
        "namespace": "team-a",
        "owner": OWNER,
        "model": "facebook/opt-1.3b",
        "gpu_product": PRODUCT,
        "vllm_args": FLAGS,
        "image": "ghcr.io/llmpack/llmpack-serving:0.1.0",
        "port": 8000,
        **MODES[mode],
    }
    fields.update(overrides)
    return ServingPlan(**fields)


def profiling_plan(**overrides: Any) -> ProfilingPlan:
    fields: dict[str, Any] = {
        "name": "opt-profile-1a2b3c4d",
        "namespace": "team-a",
        "owner": OWNER,
        "profile_key": "0123456789abcdef0123456789abcdef01234567",
        "image": "ghcr.io/llmpack/llmpack-profiler:0.1.0",
        "args": ["--backend", "vllm", "--model", "facebook/opt-1.3b"],
        "gpu_product": PRODUCT,
        "active_deadline_seconds": 3600,
        "backoff_limit": 2,
    }
    fields.update(overrides)
    return ProfilingPlan(**fields)


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objects: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def all_containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def vllm_containers(objects: list[dict]) -> list[dict]:
    return [
        c for pod in pod_specs(objects) for c in all_containers(pod) if c["command"][:2] == ["vllm", "serve"]
    ]


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def everything_rendered() -> list[dict]:
    objects = [
        o for mode in MODES for o in render_serving(serving_plan(mode, hf_token_secret=SecretKey(name="hf")))
    ]
    objects += render_profiling(profiling_plan(hf_token_secret=SecretKey(name="hf")))
    objects += render_profiling(profiling_plan(name="opt-profile-mig", mig_profile="1g.10gb"))
    return objects


# -- vLLM flags and ports --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_replica_runs_vllm_serve_with_the_plan_flags_on_its_own_port(mode):
    plan = serving_plan(mode, revision="v2", dtype="bfloat16")
    containers = vllm_containers(render_serving(plan))
    per_pod = plan.replicas_per_gpu if mode == "mps-dra" else 1
    assert len(containers) == per_pod
    ports = []
    for c in containers:
        args = c["args"]
        assert args[0] == "facebook/opt-1.3b"
        joined = " ".join(args)
        assert " ".join(FLAGS) in joined, "the advisor's flags, in order"
        assert flag_value(args, "--revision") == "v2"
        assert flag_value(args, "--dtype") == "bfloat16"
        port = int(flag_value(args, "--port"))
        if mode == "mps-dra":  # behind the pod's router, on the loopback address only
            assert flag_value(args, "--host") == "127.0.0.1" and "ports" not in c
        else:
            assert "--host" not in args, "on every interface: the kubelet probes the pod IP"
            assert [p["containerPort"] for p in c["ports"]] == [port]
        ports.append(port)
    assert len(set(ports)) == len(ports), "every replica of a pod listens on its own port"


def test_flags_the_plan_already_sets_are_not_repeated():
    plan = serving_plan(vllm_args=[*FLAGS, "--dtype=half"], dtype="bfloat16")
    (container,) = vllm_containers(render_serving(plan))
    assert "--dtype" not in container["args"]
    assert "--dtype=half" in container["args"]


def test_dra_replica_ports_follow_the_service_port():
    plan = serving_plan("mps-dra", port=9000)
    containers = vllm_containers(render_serving(plan))
    assert [int(flag_value(c["args"], "--port")) for c in containers] == [9001, 9002, 9003]


def test_dra_rejects_a_service_port_without_room_for_its_replicas():
    with pytest.raises(ValueError, match="replica ports"):
        render_serving(serving_plan("mps-dra", port=65534))


# -- what each mode asks of the cluster ------------------------------------------------------------


def test_exclusive_is_one_whole_gpu_per_replica_on_the_product():
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    plan = serving_plan("exclusive", node_selector={"pool": "gpu"}, tolerations=tolerations)
    deployment = one(render_serving(plan), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert [c["name"] for c in pod["containers"]] == ["vllm"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": PRODUCT}
    assert pod["tolerations"] == tolerations
    assert "initContainers" not in pod and "resourceClaims" not in pod


def test_the_plan_product_wins_over_a_user_node_selector_for_the_same_label():
    plan = serving_plan("exclusive", node_selector={"nvidia.com/gpu.product": "Tesla-T4"})
    pod = one(render_serving(plan), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == PRODUCT


def test_device_plugin_mps_asks_for_slices_on_mps_shared_nodes():
    plan = serving_plan("mps-device-plugin", node_selector={"pool": "gpu"})
    deployment = one(render_serving(plan), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2, "one pod per replica"
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert pod["nodeSelector"] == {
        "pool": "gpu",
        "nvidia.com/gpu.sharing-strategy": "mps",
        "nvidia.com/gpu.product": f"{PRODUCT}-SHARED",
    }


def test_mig_asks_for_the_chosen_profile():
    deployment = one(render_serving(serving_plan("mig")), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-2g.20gb": 1}
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": PRODUCT}


def test_mig_without_a_profile_is_refused():
    with pytest.raises(ValueError, match="mig_profile"):
        render_serving(serving_plan("mig", mig_profile=None))


def test_dra_claim_template_asks_the_nvidia_driver_for_mps_with_the_planned_limits():
    plan = serving_plan("mps-dra", mps_pinned_memory_bytes=20 * 2**30 + 1, mps_active_thread_percentage=60)
    objects = render_serving(plan)
    template = one(objects, "ResourceClaimTemplate")
    assert template["apiVersion"] == "resource.k8s.io/v1"
    devices = template["spec"]["spec"]["devices"]
    assert devices["requests"] == [
        {
            "name": "gpu",
            "exactly": {"deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 1},
        }
    ]
    (config,) = devices["config"]
    assert config["requests"] == ["gpu"]
    assert config["opaque"]["driver"] == "gpu.nvidia.com"
    params = config["opaque"]["parameters"]
    assert params["apiVersion"] == "resource.nvidia.com/v1beta1"
    assert params["kind"] == "GpuConfig"
    assert params["sharing"] == {
        "strategy": "MPS",
        # 20 GiB and one byte, rounded up: a cap never below what the replica was sized for
        "mpsConfig": {"defaultActiveThreadPercentage": 60, "defaultPinnedDeviceMemoryLimit": "20481Mi"},
    }
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [
        {"name": "gpu", "resourceClaimTemplateName": template["metadata"]["name"]}
    ]


def test_dra_claim_template_gets_a_new_name_when_its_immutable_spec_changes():
    name = one(render_serving(serving_plan("mps-dra")), "ResourceClaimTemplate")["metadata"]["name"]
    same = one(render_serving(serving_plan("mps-dra", vllm_args=["--seed", "1"])), "ResourceClaimTemplate")
    more = one(
        render_serving(serving_plan("mps-dra", mps_pinned_memory_bytes=30 * 2**30)), "ResourceClaimTemplate"
    )
    assert name.startswith("opt-gpu-")
    assert same["metadata"]["name"] == name, "a flag change keeps the claim template"
    assert more["metadata"]["name"] != name, "a new memory cap is a new template (its spec is immutable)"


def test_dra_pod_is_one_gpu_with_replicas_started_one_after_another_behind_a_router():
    plan = serving_plan("mps-dra")
    deployment = one(render_serving(plan), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == plan.gpus, "one pod per GPU"

    replicas = pod["initContainers"]
    assert [c["name"] for c in replicas] == ["vllm-0", "vllm-1", "vllm-2"]
    for i, c in enumerate(replicas):
        port = plan.port + 1 + i
        # Native sidecars: the kubelet starts the next only once this one's startupProbe passed.
        assert c["restartPolicy"] == "Always"
        # On the loopback address only: the probes run in the container (the kubelet's httpGet
        # would connect to the pod IP); tests/engine runs this command against a real replica.
        local = ["python3", "-c", LOCAL_PROBE_SCRIPT, f"http://127.0.0.1:{port}/health"]
        probe = c["startupProbe"]
        assert probe["exec"]["command"] == local
        assert probe["failureThreshold"] * probe["periodSeconds"] >= 20 * 60, "room for a slow model load"
        assert c["livenessProbe"]["exec"]["command"] == local
        assert c["resources"]["claims"] == [{"name": "gpu"}], "all replicas share the pod's one GPU claim"
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})

    (router,) = pod["containers"]
    assert router["name"] == "router"
    assert router["command"] == ["llmpack", "launch"]
    args = router["args"]
    assert "--router-only" in args
    assert flag_value(args, "--router-port") == str(plan.port)
    upstreams = [args[i + 1] for i, a in enumerate(args) if a == "--upstream"]
    assert upstreams == ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]
    assert router["ports"] == [{"name": "http", "containerPort": plan.port, "protocol": "TCP"}]
    # Ready while one replica serves (/readyz), alive while the router answers (/healthz in
    # router-only mode); each replica's own liveness probe restarts that replica alone.
    assert router["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": plan.port, "scheme": "HTTP"}
    assert router["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": plan.port, "scheme": "HTTP"}
    assert router["livenessProbe"]["failureThreshold"] * router["livenessProbe"]["periodSeconds"] >= 30
    assert "claims" not in router["resources"], "the router needs no GPU"
    assert deployment["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/default-container"
    ] == ("router")


def test_dra_rollout_waits_long_enough_for_replicas_started_in_series():
    single = one(render_serving(serving_plan("exclusive")), "Deployment")["spec"]["progressDeadlineSeconds"]
    dra = one(render_serving(serving_plan("mps-dra")), "Deployment")["spec"]["progressDeadlineSeconds"]
    assert dra > 2 * single


@pytest.mark.parametrize("mode", ["exclusive", "mig", "mps-device-plugin"])
def test_single_replica_pods_have_vllm_health_probes(mode):
    (container,) = vllm_containers(render_serving(serving_plan(mode)))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000, "scheme": "HTTP"}
    startup = container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 20 * 60
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 30


# -- Service ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "target"),
    [("exclusive", "vllm"), ("mig", "vllm"), ("mps-device-plugin", "vllm"), ("mps-dra", "router")],
)
def test_service_reaches_the_router_in_dra_mode_and_vllm_otherwise(mode, target):
    objects = render_serving(serving_plan(mode, port=8080))
    service = one(objects, "Service")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert service["metadata"]["name"] == "opt"
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", 8080)
    receivers = [
        c["name"] for c in all_containers(pod) for p in c.get("ports", []) if p["name"] == port["targetPort"]
    ]
    assert receivers == [target]
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


# -- identity: owner references, labels, names ----------------------------------------------------


def test_every_object_is_owned_by_the_llmdeployment_and_labelled():
    for obj in everything_rendered():
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "llmpack.io/v1alpha1",
                "kind": "LLMDeployment",
                "name": "opt",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], obj["kind"]
        labels = meta["labels"]
        assert labels[LABEL_MANAGED_BY] == "llmpack"
        assert labels[LABEL_NAME] == "llmpack"
        assert labels[LABEL_DEPLOYMENT] == "opt"
        assert labels[LABEL_COMPONENT] in ("serving", "profiler")
        assert labels[LABEL_INSTANCE]


def test_serving_objects_are_named_after_the_llmdeployment():
    for obj in render_serving(serving_plan("exclusive")):
        assert obj["metadata"]["name"] == "opt"
        assert obj["metadata"]["labels"][LABEL_INSTANCE] == "opt"
        assert obj["metadata"]["labels"][LABEL_COMPONENT] == "serving"


def test_profiling_objects_carry_the_profile_key():
    plan = profiling_plan()
    objects = render_profiling(plan)
    for obj in objects:
        assert obj["metadata"]["labels"][LABEL_PROFILE_KEY] == plan.profile_key
        assert obj["metadata"]["labels"][LABEL_COMPONENT] == "profiler"
        assert obj["metadata"]["labels"][LABEL_INSTANCE] == plan.name
    template = one(objects, "Job")["spec"]["template"]["metadata"]["labels"]
    assert template[LABEL_PROFILE_KEY] == plan.profile_key
    assert template[LABEL_COMPONENT] == "profiler"


def test_kube_name_keeps_valid_names_and_shortens_others_uniquely():
    assert kube_name("opt", "gpu", "1a2b3c4d") == "opt-gpu-1a2b3c4d"
    long = kube_name("x" * 100)
    assert len(long) == 63 and DNS_1035.fullmatch(long)
    assert kube_name("x" * 100) == long, "stable"
    assert kube_name("x" * 100) != kube_name("x" * 101)
    assert kube_name("a.b") != kube_name("a-b") == "a-b"
    assert DNS_1035.fullmatch(kube_name("7b-chat")), "Service names must start with a letter"
    assert label_value("opt") == "opt"
    assert len(label_value("y" * 200)) <= 63 and LABEL_VALUE.fullmatch(label_value("y" * 200))


# -- rollouts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_gpu_pods_roll_one_at_a_time_without_surge(mode):
    strategy = one(render_serving(serving_plan(mode)), "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def config_hash(plan: ServingPlan) -> str:
    return one(render_serving(plan), "Deployment")["spec"]["template"]["metadata"]["annotations"][
        ANNOTATION_CONFIG_HASH
    ]


# The config hash of each base plan, as the operator's release before spec.model.cache and
# spec.serving.inferencePool rendered it: a plan that uses neither must keep it, or upgrading the
# operator rolls every serving pod of the cluster. A change that really changes the pods updates
# these on purpose.
PINNED_HASHES = {
    "exclusive": "ab54cb970b5d2576",
    "mps-dra": "86c237271bdb91b2",
    "mps-device-plugin": "bab92061d9b8fee7",
    "mig": "d70b36a15f3419d3",
}


@pytest.mark.parametrize("mode", MODES)
def test_an_operator_upgrade_that_adds_optional_fields_rolls_no_pod(mode):
    assert serving_plan(mode).config_hash() == PINNED_HASHES[mode]


@pytest.mark.parametrize("mode", MODES)
def test_pods_roll_when_a_flag_changes_and_not_when_only_the_owner_uid_does(mode):
    plan = serving_plan(mode)
    before = config_hash(plan)
    assert before == plan.config_hash()
    assert config_hash(serving_plan(mode, vllm_args=["--max-num-seqs", "128", *FLAGS[2:]])) != before
    assert config_hash(serving_plan(mode, image="other:1")) != before
    new_owner = OwnerRef(api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name="opt", uid="uid-2")
    assert config_hash(serving_plan(mode, owner=new_owner)) == before


@pytest.mark.parametrize("mode", MODES)
def test_rendering_is_deterministic(mode):
    assert render_serving(serving_plan(mode)) == render_serving(serving_plan(mode))


# -- env and resources -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_spec_env_and_resources_reach_every_vllm_container_with_gpu_limits_winning(mode):
    plan = serving_plan(
        mode,
        env=[{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}, {"name": "HOME", "value": "/data"}],
        resources={
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "7"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "7", "nvidia.com/mig-7g.80gb": "1"},
        },
    )
    for c in vllm_containers(render_serving(plan)):
        env = {e["name"]: e for e in c["env"]}
        assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"
        assert env["HOME"]["value"] == "/data", "the spec's env wins over the defaults"
        names = [e["name"] for e in c["env"]]
        assert len(names) == len(set(names)), "server-side apply rejects duplicate env names"
        resources = c["resources"]
        assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
        assert resources["limits"]["memory"] == "32Gi"
        gpu = {k: v for k, v in resources["limits"].items() if k.startswith("nvidia.com/")}
        expected = {
            "exclusive": {"nvidia.com/gpu": 1},
            "mps-dra": {},
            "mps-device-plugin": {"nvidia.com/gpu": 2},
            "mig": {"nvidia.com/mig-2g.20gb": 1},
        }[mode]
        assert gpu == expected


def test_hf_token_only_ever_appears_as_a_secret_key_ref():
    secret = SecretKey(name="hf-credentials", key="hf-token")
    objects = [o for mode in MODES for o in render_serving(serving_plan(mode, hf_token_secret=secret))]
    objects += render_profiling(profiling_plan(hf_token_secret=secret))
    model_containers = 0
    for pod in pod_specs(objects):
        for c in all_containers(pod):
            tokens = [e for e in c.get("env", []) if e["name"] == "HF_TOKEN"]
            if c["name"] == "router":
                assert tokens == [], "the router never downloads a model"
                continue
            model_containers += 1
            assert tokens == [
                {
                    "name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "hf-credentials", "key": "hf-token"}},
                }
            ]
    assert model_containers == 1 + 3 + 1 + 1 + 1  # exclusive, DRA replicas, device plugin, MIG, profiler
    assert not any(o["kind"] == "Secret" for o in objects)

    without = [o for mode in MODES for o in render_serving(serving_plan(mode))]
    assert "HF_TOKEN" not in json.dumps(without)


# -- security ---------------------------------------------------------------------------------------


def test_every_pod_is_hardened():
    pods = pod_specs(everything_rendered())
    assert len(pods) == 6
    for pod in pods:
        for host in ("hostNetwork", "hostIPC", "hostPID"):
            assert pod.get(host) is False, host
        assert pod["enableServiceLinks"] is False
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] > 0 and security["runAsGroup"] > 0 and security["fsGroup"] > 0
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        for volume in pod["volumes"]:
            assert set(volume) == {"name", "emptyDir"}, "no hostPath or other host access"
        for c in all_containers(pod):
            sc = c["securityContext"]
            assert sc["privileged"] is False
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            assert "runAsUser" not in sc, "one UID per pod (MPS runs one server per UID)"
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["HOME"] in mounts, "HOME is writable on a read-only root filesystem"
            assert "/tmp" in mounts


def test_all_llmpack_pods_share_one_uid():
    uids = {
        (p["securityContext"]["runAsUser"], p["securityContext"]["runAsGroup"])
        for p in pod_specs(everything_rendered())
    }
    assert len(uids) == 1


def test_pods_run_as_the_user_of_the_llmpack_images():
    root = Path(__file__).resolve().parents[2]
    (uid,) = {p["securityContext"]["runAsUser"] for p in pod_specs(everything_rendered())}
    for dockerfile in ("Dockerfile.serving", "Dockerfile.profiler"):
        users = re.findall(r"^USER (\d+)", (root / "images" / dockerfile).read_text(), re.M)
        assert users == [str(uid)], f"{dockerfile}: a different UID would need its own MPS server"


def test_only_the_profiling_pod_mounts_a_service_account_token():
    for mode in MODES:
        for pod in pod_specs(render_serving(serving_plan(mode))):
            assert pod["automountServiceAccountToken"] is False
            assert "serviceAccountName" not in pod
    (job_pod,) = pod_specs(render_profiling(profiling_plan()))
    assert job_pod["automountServiceAccountToken"] is True
    assert job_pod["serviceAccountName"] == "opt-profile-1a2b3c4d"


@pytest.mark.parametrize(
    ("mode", "shm"), [("exclusive", True), ("mig", True), ("mps-dra", False), ("mps-device-plugin", False)]
)
def test_dev_shm_is_an_in_memory_volume_unless_the_mps_provider_mounts_its_own(mode, shm):
    pod = one(render_serving(serving_plan(mode)), "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert ("shm" in volumes) is shm
    if shm:
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory"}
    for c in vllm_containers(render_serving(serving_plan(mode))):
        assert ("/dev/shm" in {m["mountPath"] for m in c["volumeMounts"]}) is shm


# -- profiling ---------------------------------------------------------------------------------------


def test_profiling_role_grants_only_get_update_patch_on_its_result_configmap():
    plan = profiling_plan()
    objects = render_profiling(plan)
    role = one(objects, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [plan.result_configmap],
            "verbs": ["get", "update", "patch"],
        }
    ]
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": plan.name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": plan.name, "namespace": "team-a"}]
    assert one(objects, "ServiceAccount")["metadata"]["name"] == plan.name
    result = one(objects, "ConfigMap")
    assert result["metadata"]["name"] == plan.result_configmap
    assert not result.get("data"), "the Job fills it; the operator creates it empty"
    assert [o["kind"] for o in objects][-1] == "Job", "its identity exists before the Job starts"


def test_profiling_job_runs_llmpack_profile_once_on_one_gpu_of_the_product():
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    plan = profiling_plan(
        node_selector={"pool": "gpu"}, tolerations=tolerations, hf_token_secret=SecretKey(name="hf")
    )
    job = one(render_profiling(plan), "Job")
    assert job["metadata"]["name"] == plan.name
    spec = job["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 3600
    assert "ttlSecondsAfterFinished" not in spec, "the operator reads the finished Job"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": PRODUCT}
    assert pod["tolerations"] == tolerations
    (c,) = pod["containers"]
    assert c["name"] == "profiler"
    assert c["image"] == plan.image
    assert c["command"] == ["llmpack", "profile"]
    assert c["args"] == plan.args
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 1}
    env = {e["name"]: e for e in c["env"]}
    assert env["LLMPACK_RESULT_CONFIGMAP"]["value"] == plan.result_configmap
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_profiling_on_mig_takes_one_slice_of_the_profile():
    job = one(render_profiling(profiling_plan(mig_profile="1g.10gb")), "Job")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": 1}


def test_profiling_refuses_a_job_name_kubernetes_would_reject():
    with pytest.raises(ValueError, match="DNS-1123"):
        render_profiling(profiling_plan(name="p" * 64))
    with pytest.raises(ValueError, match="DNS-1123"):
        render_profiling(profiling_plan(name="Upper"))


# -- property: any valid plan renders valid names ----------------------------------------------------

MODE_SHAPES = st.sampled_from(
    [
        ("exclusive", None, None),
        ("mps", "dra", None),
        ("mps", "devicePlugin", None),
        ("mig", None, "1g.10gb"),
        ("mig", None, "3g.47gb"),
        ("mig", None, "1g.10gb.me"),
    ]
)
# LLMDeployment names are DNS-1123 subdomains: up to 253 characters, dots allowed, may start with a digit.
OBJECT_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True)


@st.composite
def serving_plans(draw) -> ServingPlan:
    mode, provider, mig = draw(MODE_SHAPES)
    gpus = draw(st.integers(1, 8))
    per_gpu = 1 if mode == "exclusive" else draw(st.integers(1, 8))
    name = draw(OBJECT_NAMES)
    return ServingPlan(
        name=name,
        namespace=draw(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)),
        owner=OwnerRef(
            api_version="llmpack.io/v1alpha1", kind="LLMDeployment", name=name, uid=draw(st.uuids()).hex
        ),
        model=draw(st.text(min_size=1, max_size=80)),
        mode=mode,
        mps_provider=provider,
        gpu_product=PRODUCT,
        gpus=gpus,
        replicas_per_gpu=per_gpu,
        replicas=gpus * per_gpu,
        mig_profile=mig,
        gpu_slices_per_replica=draw(st.integers(1, 4)) if provider == "devicePlugin" else None,
        mps_pinned_memory_bytes=draw(st.integers(1, 200 * 2**30)) if provider == "dra" else None,
        mps_active_thread_percentage=draw(st.integers(1, 100)) if provider == "dra" else None,
        vllm_args=draw(st.lists(st.text(max_size=20), max_size=6)),
        image="img:1",
        port=draw(st.integers(1024, 65535 - 8)),
    )


def label_maps(obj: dict) -> list[dict[str, str]]:
    maps = [obj["metadata"]["labels"]]
    spec = obj.get("spec", {})
    if "template" in spec:
        maps.append(spec["template"]["metadata"]["labels"])
    if "selector" in spec:
        maps.append(spec["selector"].get("matchLabels", spec["selector"]))
    if obj["kind"] == "ResourceClaimTemplate":
        maps.append(spec["metadata"]["labels"])
    return maps


def assert_valid_names(objects: list[dict], name_rule: re.Pattern) -> None:
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and name_rule.fullmatch(name), (obj["kind"], name)
        for labels in label_maps(obj):
            for value in labels.values():
                assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    for pod in pod_specs(objects):
        port_names, port_numbers = [], []
        for c in all_containers(pod):
            assert len(c["name"]) <= 63 and DNS_1123.fullmatch(c["name"])
            for p in c.get("ports", []):
                port_names.append(p["name"])
                port_numbers.append(p["containerPort"])
                assert (
                    len(p["name"]) <= 15 and PORT_NAME.fullmatch(p["name"]) and re.search("[a-z]", p["name"])
                )
                assert 1 <= p["containerPort"] <= 65535
        assert len(port_names) == len(set(port_names)) and len(port_numbers) == len(set(port_numbers))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serving_plans())
def test_any_valid_serving_plan_renders_valid_names(plan):
    objects = render_serving(plan)
    assert_valid_names(objects, DNS_1035)
    deployment = one(objects, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    claims = [o["metadata"]["name"] for o in objects if o["kind"] == "ResourceClaimTemplate"]
    pod = deployment["spec"]["template"]["spec"]
    assert [c["resourceClaimTemplateName"] for c in pod.get("resourceClaims", [])] == claims


@settings(max_examples=100, deadline=None)
@given(
    name=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?", fullmatch=True),
    key=st.text(alphabet="0123456789abcdef", min_size=1, max_size=64),
    mig=st.sampled_from([None, "1g.10gb", "2g.20gb"]),
)
def test_any_valid_profiling_plan_renders_valid_names(name, key, mig):
    objects = render_profiling(profiling_plan(name=name, profile_key=key, mig_profile=mig))
    job = one(objects, "Job")
    assert job["metadata"]["name"] == name, "the controller reads the Job back by its planned name"
    assert_valid_names([o for o in objects if o["kind"] != "ConfigMap"], DNS_1123)
    assert_valid_names([one(objects, "ConfigMap")], re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"))
