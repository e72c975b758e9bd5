"""ServingPlan -> the Kubernetes objects that serve it, for each sharing mode.

Pure: no kopf, no kubernetes client. Every function returns plain dicts shaped as the API server's
JSON, ready for server-side apply (field manager `llmpack`, force): fields rendered here are owned by
the operator, so a hand edit of any of them (a hostIPC: true, a dropped probe) is undone on the next
reconcile. That is also why some defaults are written out explicitly (privileged: false, hostPID:
false...): an explicit value is an owned value.

Objects per mode (DESIGN.md "Sharing modes"):

- exclusive: Deployment (one pod = one replica = one whole GPU) + Service.
- mps/dra: ResourceClaimTemplate (NVIDIA GpuConfig asking for MPS) + Deployment (one pod per GPU,
  one vLLM container per replica started one after another, a local router in front) + Service.
- mps/devicePlugin: Deployment (one pod per replica asking for `nvidia.com/gpu` MPS slices on nodes
  the device plugin shares with MPS) + Service.
- mig: Deployment (one pod per replica asking for one `nvidia.com/mig-<profile>`) + Service.

In every mode, where the cluster admin turned it on (chart value networkPolicy), a NetworkPolicy
admitting ingress to the service port only.

The pod-level building blocks at the end (names, labels, security, workspace volumes, env) are also
used by the profiling Job (render/profiling.py), so every pod llmpack creates looks the same.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any

from llmpack.hardware.cluster import (
    DRA_GPU_DEVICE_CLASS,
    DRA_GPU_DRIVER,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    MIG_RESOURCE_PREFIX,
    MPS_SHARING_STRATEGY,
    SHARED_SUFFIX,
    SHARING_STRATEGY_LABEL,
)
from llmpack.hardware.sharing import MIG, Exclusive, MPSThroughDevicePlugin, MPSThroughDRA
from llmpack.render.plan import (
    ANNOTATION_CONFIG_HASH,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    OwnerRef,
    PoolSlot,
    SecretKey,
    ServingPlan,
    kube_name,
    label_value,
    stable_hash,
)

COMPONENT_SERVING = "serving"
COMPONENT_PROFILER = "profiler"
COMPONENT_MODEL_CACHE = "model-cache"

# Where pods mount the model cache (spec.model.cache), and the environment that makes vLLM and
# transformers read the model from it without the network (huggingface_hub's HF_HUB_CACHE and
# HF_HUB_OFFLINE: files are looked up in the hub cache layout, models--org--name/snapshots/...).
MODEL_CACHE_MOUNT = "/models"
MODEL_CACHE_VOLUME = "model-cache"

# -- pod identity ------------------------------------------------------------------------------------
# Every pod llmpack renders runs as this one UID/GID. MPS runs one server per UID: a client with a
# different UID waits until the existing server exits (FACTS.md 3.1), so all vLLM processes that
# share a GPU, whether containers of one pod (DRA) or pods on one device-plugin-shared node, must
# run as the same UID. It is the user the llmpack serving and profiler images create (with a passwd
# entry: torch's compile cache looks the user name up); fixing it in the pod rather than trusting
# the image's USER keeps it true for any serving image a spec names, and lets the kubelet enforce
# runAsNonRoot.
RUN_AS_UID = 10001
RUN_AS_USER_NAME = "llmpack"  # for images without a passwd entry for RUN_AS_UID (getpass.getuser())

# The root filesystem is read-only; everything a model server writes (Hugging Face download, vLLM,
# torch and Triton caches under HOME, temporary files) goes to one emptyDir at /tmp, as the images
# expect (images/README.md). Sized by the node's disk: the weights land here.
HOME_DIR = "/tmp"

# vLLM start-up (weights download, load, torch.compile, CUDA graph capture) can take many minutes.
# A startupProbe holds liveness/readiness off until the first success, rather than a long
# initialDelaySeconds that would also delay a fast restart.
STARTUP_PERIOD_S = 10
STARTUP_BUDGET_S = 30 * 60
HEALTH_TIMEOUT_S = 5


DRA_CLAIM = "gpu"  # the pod's claim name and the template's request name
LABEL_POOL_GPU = "llmpack.io/pool-gpu"  # a GPUPool member's pod: the pool GPU it runs on

# What a vLLM container asks the scheduler for where the spec names no request or limit of its
# own: its API server and engine core are two busy processes (the engine core polls its scheduler
# loop on one CPU), and each holds torch, the tokenizer and the CUDA context in host memory (a few
# GiB; the weights pass through page cache, not the process). No default limit: a memory limit
# too low for a large model's load would OOM-kill it at every start.
DEFAULT_VLLM_REQUESTS = {"cpu": "1", "memory": "4Gi"}

# Replicas of a DRA pod listen here only: the router in front of them is the pod's one entrance
# (its limits, its API key check by vLLM behind it), so a client cannot skip it through the pod IP.
REPLICA_HOST = "127.0.0.1"

# A probe of a server that listens on the loopback interface only, run inside its container (the
# kubelet's httpGet probes connect to the pod IP). Any answer other than 2xx, a refused connection
# or a timeout raises, and the interpreter exits 1. python3 is in every vLLM image.
LOCAL_PROBE_SCRIPT = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)"


def serving_objects(plan: ServingPlan) -> list[dict[str, Any]]:
    """The objects that run `plan`'s replicas, in apply order (a claim template before the pods
    using it). render.render_serving adds the autoscaler."""
    policy = [serving_network_policy(plan)] if plan.network_policy_from is not None else []
    if plan.pool_slots is not None:
        pods = [pool_deployment(plan, slot) for slot in plan.pool_slots]
        return [*pods, serving_service(plan), *policy]
    sharing = plan.sharing
    deployment = {
        Exclusive: exclusive_deployment,
        MIG: mig_deployment,
        MPSThroughDRA: mps_dra_deployment,
        MPSThroughDevicePlugin: mps_device_plugin_deployment,
    }[sharing](plan)
    claim = [mps_claim_template(plan)] if sharing.uses_claim_template else []
    return [*claim, deployment, serving_service(plan), *policy]


# -- one Deployment per mode -------------------------------------------------------------------------


def exclusive_deployment(plan: ServingPlan) -> dict[str, Any]:
    """One pod per replica, each holding its whole GPUs: one, the baseline every figure is compared
    with, or as many as the replica's tensor x pipeline parallel engine spans (its workers talk
    through the /dev/shm emptyDir)."""
    return one_replica_per_pod(plan, {GPU_RESOURCE: plan.gpus_per_replica}, _product_selector(plan), shm=True)


def mig_deployment(plan: ServingPlan) -> dict[str, Any]:
    """One pod per replica, each asking for one MIG slice of the chosen profile (mixed strategy
    resource names, FACTS.md 4.2). vLLM sees the slice as the whole device."""
    if not plan.mig_profile:
        raise ValueError("mode mig needs plan.mig_profile")
    limits = {MIG_RESOURCE_PREFIX + plan.mig_profile: 1}
    return one_replica_per_pod(plan, limits, _product_selector(plan), shm=True)


def mps_device_plugin_deployment(plan: ServingPlan) -> dict[str, Any]:
    """One pod per replica on nodes whose device plugin shares GPUs through MPS. The plugin splits
    every GPU evenly (total/replicas of memory per client), so a replica asks for as many slices as
    its memory needs; the node carries the product label suffixed `-SHARED` (FACTS.md 3.2).

    No /dev/shm emptyDir here: the plugin bind-mounts the MPS daemon's shared memory at /dev/shm,
    and the MPS client must see that one."""
    selector = {
        **plan.node_selector,
        SHARING_STRATEGY_LABEL: MPS_SHARING_STRATEGY,
        GPU_PRODUCT_LABEL: plan.gpu_product + SHARED_SUFFIX,
    }
    return one_replica_per_pod(plan, {GPU_RESOURCE: plan.gpu_slices_per_replica or 1}, selector, shm=False)


def one_replica_per_pod(
    plan: ServingPlan, gpu_limits: dict[str, int], node_selector: dict[str, str], *, shm: bool
) -> dict[str, Any]:
    """A Deployment of plan.replicas pods, each one `vllm` container on the service port."""
    container = vllm_container(plan, "vllm", plan.port, shm=shm, gpu_limits=gpu_limits)
    pod = serving_pod_spec(plan, [container], node_selector=node_selector, shm=shm)
    return serving_deployment(plan, pod, replicas=plan.replicas, default_container="vllm")


def mps_dra_deployment(plan: ServingPlan) -> dict[str, Any]:
    """One pod per GPU: the pod's one ResourceClaim (MPS through NVIDIA's DRA driver) is shared by
    its vLLM containers, one per replica, each on its own port, behind a router on the service port.

    Why native sidecars (init containers with restartPolicy Always): two vLLM instances starting at
    once on one GPU corrupt each other's start-up memory profiling (vllm issue 55827, FACTS.md 1.5).
    The kubelet starts init containers in order and starts the next sidecar only after the previous
    one's startupProbe succeeded, so replica i+1 begins loading only once replica i is serving,
    without a supervisor process; each replica stays its own container (own logs, own restarts,
    own resources), and the router, a regular container, starts once all replicas serve. On
    termination the router stops first, then the replicas in reverse order.

    The replicas listen on the loopback interface only (REPLICA_HOST), so the router is the pod's
    one entrance; their probes run inside their containers (local_probe). With an InferencePool
    they listen on the pod IP instead, each its own endpoint of the pool. The Service targets the
    router's port. All containers run as the pod's one UID (one MPS server per UID). No /dev/shm
    emptyDir: the DRA driver bind-mounts the MPS shared memory there."""
    ports = replica_ports(plan)
    replicas = [vllm_sidecar(plan, i, port) for i, port in enumerate(ports)]
    pod = serving_pod_spec(
        plan,
        [router_container(plan, ports)],
        init_containers=replicas,
        node_selector=_product_selector(plan),
        shm=False,
    )
    pod["resourceClaims"] = [{"name": DRA_CLAIM, "resourceClaimTemplateName": claim_template_name(plan)}]
    # Replicas start one after another, so a pod may take up to all their start-up budgets.
    return serving_deployment(
        plan,
        pod,
        replicas=plan.gpus,
        default_container="router",
        startup_budget_s=STARTUP_BUDGET_S * len(ports),
    )


def pool_deployment(plan: ServingPlan, slot: PoolSlot) -> dict[str, Any]:
    """A GPUPool member's pod on one pool GPU: the DRA MPS pod of mps_dra_deployment with
    `slot.replicas` replicas, on the pool's ResourceClaim for that GPU (shared with the pods of the
    other members placed there) instead of a claim of its own.

    Each replica is capped at its own size by CUDA_MPS_PINNED_DEVICE_MEM_LIMIT (FACTS.md 3.1): the
    claim's default limit is the largest member's cap on that GPU, and this member's may be lower.
    Each slot is its own Deployment (`<name>-gpu<index>`, selected by LABEL_POOL_GPU), so a change
    of one slot's replicas restarts that pod only, and the other members' pods never."""
    sized = plan.model_copy(update={"replicas_per_gpu": slot.replicas, "pool_slots": None})
    deployment = mps_dra_deployment(sized)
    deployment["spec"]["replicas"] = 1
    deployment["metadata"]["name"] = pool_deployment_name(plan, slot.gpu)
    gpu = {LABEL_POOL_GPU: str(slot.gpu)}
    deployment["metadata"]["labels"] = {**deployment["metadata"]["labels"], **gpu}
    deployment["spec"]["selector"]["matchLabels"] = {**serving_selector(plan), **gpu}
    template = deployment["spec"]["template"]
    template["metadata"]["labels"] = {**template["metadata"]["labels"], **gpu}
    pod = template["spec"]
    pod["resourceClaims"] = [{"name": DRA_CLAIM, "resourceClaimName": slot.claim}]
    if plan.mps_pinned_memory_bytes is not None:
        megabytes = mebibytes(plan.mps_pinned_memory_bytes).removesuffix("Mi")
        limit = {"name": "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "value": f"0={megabytes}M"}
        for container in pod["initContainers"]:
            container["env"] = merge_env(container["env"], [limit])
    return deployment


def pool_deployment_name(plan: ServingPlan, gpu: int) -> str:
    return kube_name(plan.name, f"gpu{gpu}")


def replica_ports(plan: ServingPlan) -> list[int]:
    """Ports of the replicas of one DRA pod: right after the service port (the router's)."""
    ports = [plan.port + 1 + i for i in range(plan.replicas_per_gpu)]
    if ports[-1] > 65535:
        raise ValueError(
            f"serving port {plan.port} leaves no room for {plan.replicas_per_gpu} replica ports above it"
        )
    return ports


# -- the DRA claim template --------------------------------------------------------------------------


def mps_claim_template(plan: ServingPlan) -> dict[str, Any]:
    """One whole GPU per claim, configured by the NVIDIA DRA driver's GpuConfig for MPS: the
    per-client pinned device memory limit and active thread percentage (FACTS.md, DRA section)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": object_meta(plan, claim_template_name(plan)),
        "spec": {
            "metadata": {"labels": serving_labels(plan)},
            "spec": _claim_spec(plan),
        },
    }


def whole_gpu_request(count: int = 1) -> dict[str, Any]:
    """The claim's one request: exactly `count` devices of the NVIDIA DRA driver's GPU class."""
    return {
        "name": DRA_CLAIM,
        "exactly": {"deviceClassName": DRA_GPU_DEVICE_CLASS, "allocationMode": "ExactCount", "count": count},
    }


def claim_template_name(plan: ServingPlan) -> str:
    """`<name>-gpu-<hash of the claim spec>`. A ResourceClaimTemplate's spec is immutable, so a new
    memory limit or thread percentage must be a new template: the pods then roll onto it and the
    controller prunes the old one by label."""
    return kube_name(plan.name, "gpu", stable_hash(_claim_spec(plan))[:8])


def _claim_spec(plan: ServingPlan) -> dict[str, Any]:
    return mps_claim_spec(
        pinned_memory_bytes=plan.mps_pinned_memory_bytes,
        active_thread_percentage=plan.mps_active_thread_percentage,
    )


def mps_claim_spec(
    *, pinned_memory_bytes: int | None, active_thread_percentage: int | None
) -> dict[str, Any]:
    """A ResourceClaim's spec: one whole GPU of the NVIDIA DRA driver, shared through MPS with these
    per-client defaults (GpuConfig, FACTS.md DRA section)."""
    mps: dict[str, Any] = {}
    if active_thread_percentage is not None:
        mps["defaultActiveThreadPercentage"] = active_thread_percentage
    if pinned_memory_bytes is not None:
        mps["defaultPinnedDeviceMemoryLimit"] = mebibytes(pinned_memory_bytes)
    sharing: dict[str, Any] = {"strategy": "MPS"}
    if mps:
        sharing["mpsConfig"] = mps
    return {
        "devices": {
            "requests": [whole_gpu_request()],
            "config": [
                {
                    "requests": [DRA_CLAIM],
                    "opaque": {
                        "driver": DRA_GPU_DRIVER,
                        "parameters": {
                            "apiVersion": "resource.nvidia.com/v1beta1",
                            "kind": "GpuConfig",
                            "sharing": sharing,
                        },
                    },
                }
            ],
        }
    }


def mebibytes(size_bytes: int) -> str:
    """A quantity in whole MiB, rounded up (the driver converts to whole megabytes and rejects
    anything under 1 MiB; rounding down could cap a replica below what it was sized for)."""
    return f"{max(1, math.ceil(size_bytes / 2**20))}Mi"


# -- Deployment, Service -----------------------------------------------------------------------------


def serving_deployment(
    plan: ServingPlan,
    pod_spec: dict[str, Any],
    *,
    replicas: int,
    default_container: str,
    startup_budget_s: int = STARTUP_BUDGET_S,
) -> dict[str, Any]:
    """Why maxSurge 0 / maxUnavailable 1: every serving pod holds GPUs that are, by design, all in
    use; a surge pod would ask for a GPU that is not free and stay Pending, and the rollout would
    wait on it forever. Replacing one pod at a time frees its GPU for the new one (one pod's
    capacity is down during each step). The progress deadline covers a pod's whole start-up so a
    slow model load is not reported as a stalled rollout."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(plan, serving_name(plan)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": serving_selector(plan)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "progressDeadlineSeconds": startup_budget_s + 600,
            "template": {
                "metadata": {
                    "labels": serving_labels(plan),
                    "annotations": {
                        # Any change of the plan (flags, image, env...) changes the pod template,
                        # so the pods roll; the owner's uid is not part of it.
                        ANNOTATION_CONFIG_HASH: plan.config_hash(),
                        "kubectl.kubernetes.io/default-container": default_container,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def serving_service(plan: ServingPlan) -> dict[str, Any]:
    """ClusterIP on the service port, to the container port named `http`: the router's in DRA mode,
    the vLLM container's otherwise (the replica ports of a DRA pod are never exposed)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(plan, serving_name(plan)),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(plan),
            "ports": [{"name": "http", "port": plan.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def serving_network_policy(plan: ServingPlan) -> dict[str, Any]:
    """Ingress to the serving pods on the service port only (the router's in DRA mode, the single
    vLLM's otherwise; with an InferencePool, also each replica's), from the peers the cluster admin
    listed (none listed: from anywhere the cluster routes). Every other port and source is refused
    where the cluster's network plugin enforces NetworkPolicy. The kubelet's probes are not
    affected: traffic from the pod's own node is always allowed (Kubernetes docs, "Network
    Policies")."""
    ports = [plan.port, *inference_pool_ports(plan)] if plan.inference_pool is not None else [plan.port]
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": p} for p in dict.fromkeys(ports)]}
    if plan.network_policy_from:
        rule["from"] = deepcopy(plan.network_policy_from)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(plan, serving_name(plan)),
        "spec": {
            "podSelector": {"matchLabels": serving_selector(plan)},
            "policyTypes": ["Ingress"],
            "ingress": [rule],
        },
    }


def inference_pool_ports(plan: ServingPlan) -> list[int]:
    """The ports an InferencePool routes to: each replica's in a pod that packs several behind a
    router (the router is bypassed: the pool's endpoint picker chooses the replica), the one vLLM's
    otherwise."""
    return replica_ports(plan) if plan.sharing.replicas_behind_router else [plan.port]


def inference_pool(plan: ServingPlan) -> dict[str, Any]:
    """A Gateway API InferencePool (inference.networking.k8s.io/v1, the Gateway API Inference
    Extension; checked against its v1.6.2 CRD) over the serving pods: every replica port of every
    pod is an endpoint of its own, up to 8 per pod (spec.targetPorts maxItems; the CRD's CEL rule
    of the LLMDeployment keeps sharing.maxReplicasPerGPU within it). New pods of a scale-up are
    endpoints as soon as they are ready: the selector is the serving pods' own."""
    pool = plan.inference_pool
    assert pool is not None
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": object_meta(plan, serving_name(plan)),
        "spec": {
            "selector": {"matchLabels": serving_selector(plan)},
            "targetPorts": [{"number": p} for p in inference_pool_ports(plan)],
            "endpointPickerRef": {
                "kind": "Service",
                "name": pool.endpoint_picker,
                "port": {"number": pool.endpoint_picker_port},
                "failureMode": pool.failure_mode,
            },
        },
    }


def serving_pod_spec(
    plan: ServingPlan,
    containers: list[dict[str, Any]],
    *,
    node_selector: dict[str, str],
    shm: bool,
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Serving pods never call the API server: no ServiceAccount token is mounted."""
    spec = hardened_pod_spec(
        containers,
        node_selector=node_selector,
        tolerations=plan.tolerations,
        shm=shm,
        automount_token=False,
        scratch_limit_bytes=plan.scratch_limit_bytes,
    )
    spec["volumes"] += model_cache_volumes(plan.model_cache_claim)
    if init_containers:
        spec["initContainers"] = init_containers
    return spec


def _product_selector(plan: ServingPlan) -> dict[str, str]:
    return {**plan.node_selector, GPU_PRODUCT_LABEL: plan.gpu_product}


# -- containers --------------------------------------------------------------------------------------


def vllm_command(plan: ServingPlan, port: int, host: str | None = None) -> list[str]:
    """`vllm serve MODEL [--revision R] [--dtype D] FLAGS [--host H] --port P`. The model's own
    flags come first and only when FLAGS do not set them; host and port are the renderer's."""
    args = [plan.model]
    if plan.revision and not _has_flag(plan.vllm_args, "--revision"):
        args += ["--revision", plan.revision]
    if plan.dtype and not _has_flag(plan.vllm_args, "--dtype"):
        args += ["--dtype", plan.dtype]
    where = ["--host", host] if host else []
    return ["vllm", "serve", *args, *plan.vllm_args, *where, "--port", str(port)]


def vllm_container(
    plan: ServingPlan,
    name: str,
    port: int,
    *,
    shm: bool,
    port_name: str = "http",
    gpu_limits: dict[str, int] | None = None,
    claims: list[dict[str, str]] | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """A vLLM server on `port`, ready when /health answers. `shm`: mount the pod's /dev/shm
    emptyDir (not where an MPS provider mounts its own). `host`: the one address it listens on
    (default: all, for the kubelet's probes and the Service); on the loopback address its probes
    run inside the container."""
    command = vllm_command(plan, port, host)
    probe = local_probe if host == REPLICA_HOST else http_probe
    return {
        "name": name,
        "image": plan.image,
        "command": command[:2],
        "args": command[2:],
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
        "env": merge_env(
            workspace_env(),
            hf_token_env(plan.hf_token_secret),
            api_key_env(plan.api_key_secret),
            model_cache_env(plan.model_cache_claim),
            plan.env,
        ),
        "resources": container_resources(plan.resources, gpu_limits or {}, claims, DEFAULT_VLLM_REQUESTS),
        "volumeMounts": workspace_mounts(shm=shm) + model_cache_mounts(plan.model_cache_claim),
        "startupProbe": probe("/health", port, period_s=STARTUP_PERIOD_S, failures=_startup_failures()),
        "readinessProbe": probe("/health", port, period_s=5, failures=3),
        "livenessProbe": probe("/health", port, period_s=15, failures=4),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def vllm_sidecar(plan: ServingPlan, index: int, port: int) -> dict[str, Any]:
    """Replica `index` of a DRA pod as a native sidecar sharing the pod's GPU claim: its startupProbe
    gates the next replica's start (see mps_dra_deployment). Its readiness is the router's business
    (the router only sends to replicas that answer /health), so it has no readinessProbe of its own."""
    name = f"vllm-{index}"
    exposed = plan.inference_pool is not None  # an endpoint of the pool, reached through the pod IP
    host = None if exposed else REPLICA_HOST
    container = vllm_container(
        plan, name, port, shm=False, port_name=name, claims=[{"name": DRA_CLAIM}], host=host
    )
    if not exposed:
        del container["ports"]  # on the loopback address only: nothing outside the pod reaches it
    container["restartPolicy"] = "Always"
    del container["readinessProbe"]
    return container


def router_container(plan: ServingPlan, upstream_ports: list[int]) -> dict[str, Any]:
    """The local router of a DRA pod (`llmpack launch --router-only`), on the service port: it
    spreads requests over the pod's replicas. Ready on /readyz (at least one replica serves, so one
    replica down does not pull the others out of the Service; 503 while shutting down so the Service
    stops sending first). Alive on /healthz, which in router-only mode answers for the router alone:
    each replica container has its own liveness probe, and restarting the router would not mend
    one (an HTTP answer, unlike a TCP connect the kernel accepts for it, also catches a wedged
    router). No startupProbe: the router starts once every replica's startupProbe has passed, and
    listens within seconds."""
    args = ["--router-only", "--router-port", str(plan.port)]
    for port in upstream_ports:
        args += ["--upstream", f"http://127.0.0.1:{port}"]
    return {
        "name": "router",
        "image": plan.image,
        "command": ["llmpack", "launch"],
        "args": args,
        "ports": [{"name": "http", "containerPort": plan.port, "protocol": "TCP"}],
        "env": workspace_env(),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": workspace_mounts(shm=False),
        "readinessProbe": http_probe("/readyz", plan.port, period_s=5, failures=3),
        "livenessProbe": http_probe("/healthz", plan.port, period_s=15, failures=4),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def container_resources(
    user: dict[str, Any] | None,
    gpu_limits: dict[str, int],
    claims: list[dict[str, str]] | None = None,
    default_requests: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The spec's CPU/memory requests and limits, with the GPU ones set by the plan (they win: any
    `nvidia.com/...` the user wrote is dropped, and so are user claims, which could only name claims
    this pod does not have). `default_requests` fill in a resource the spec names neither a request
    nor a limit of (with a limit only, Kubernetes requests the limit)."""
    user = deepcopy(user or {})
    requests = {k: v for k, v in (user.get("requests") or {}).items() if not k.startswith("nvidia.com/")}
    limits = {k: v for k, v in (user.get("limits") or {}).items() if not k.startswith("nvidia.com/")}
    for name, value in (default_requests or {}).items():
        if name not in requests and name not in limits:
            requests[name] = value
    limits.update(gpu_limits)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    if claims:
        resources["claims"] = claims
    return resources


def http_probe(path: str, port: int, *, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period_s,
        "timeoutSeconds": HEALTH_TIMEOUT_S,
        "failureThreshold": failures,
    }


def local_probe(path: str, port: int, *, period_s: int, failures: int) -> dict[str, Any]:
    """http_probe's check of a server on the loopback address, run in its container (exec)."""
    return {
        "exec": {"command": ["python3", "-c", LOCAL_PROBE_SCRIPT, f"http://{REPLICA_HOST}:{port}{path}"]},
        "periodSeconds": period_s,
        "timeoutSeconds": HEALTH_TIMEOUT_S,
        "failureThreshold": failures,
    }


def _startup_failures() -> int:
    return STARTUP_BUDGET_S // STARTUP_PERIOD_S


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


# -- shared with the profiling Job: names, labels, metadata -----------------------------------------


def serving_name(plan: ServingPlan) -> str:
    """Deployment and Service: the LLMDeployment's name whenever it is a valid DNS-1035 label."""
    return kube_name(plan.name)


def common_labels(instance: str, deployment: str, component: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: MANAGED_BY,
        LABEL_INSTANCE: label_value(instance),
        LABEL_COMPONENT: component,
        LABEL_DEPLOYMENT: label_value(deployment),
    }


def serving_labels(plan: ServingPlan) -> dict[str, str]:
    return common_labels(plan.name, plan.name, COMPONENT_SERVING)


def serving_selector(plan: ServingPlan) -> dict[str, str]:
    """The Deployment's selector (immutable once created) and the Service's."""
    labels = serving_labels(plan)
    return {k: labels[k] for k in (LABEL_MANAGED_BY, LABEL_INSTANCE, LABEL_COMPONENT)}


def metadata(name: str, namespace: str, labels: dict[str, str], owner: OwnerRef) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "ownerReferences": [owner.to_k8s()],
    }


def object_meta(plan: ServingPlan, name: str) -> dict[str, Any]:
    return metadata(name, plan.namespace, serving_labels(plan), plan.owner)


# -- shared with the profiling Job: pod security, workspace, env -------------------------------------


def hardened_pod_spec(
    containers: list[dict[str, Any]],
    *,
    node_selector: dict[str, str],
    tolerations: list[dict[str, Any]],
    shm: bool,
    automount_token: bool,
    scratch_limit_bytes: int | None = None,
) -> dict[str, Any]:
    """A pod that passes the `restricted` Pod Security Standard: non-root with a fixed UID (see
    RUN_AS_UID), RuntimeDefault seccomp, no host namespaces (MPS comes from DRA or the device
    plugin, never from hostIPC), no Service links (Kubernetes would inject `<SERVICE>_PORT`
    variables, and one named `vllm` sets VLLM_PORT, which vLLM reads as its own setting)."""
    spec: dict[str, Any] = {
        "containers": containers,
        "automountServiceAccountToken": automount_token,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostIPC": False,
        "hostPID": False,
        "securityContext": pod_security_context(),
        "nodeSelector": dict(node_selector),
        "volumes": workspace_volumes(shm=shm, scratch_limit_bytes=scratch_limit_bytes),
    }
    if tolerations:
        spec["tolerations"] = deepcopy(tolerations)
    return spec


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_UID,
        "runAsGroup": RUN_AS_UID,
        "fsGroup": RUN_AS_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def workspace_volumes(*, shm: bool, scratch_limit_bytes: int | None = None) -> list[dict[str, Any]]:
    """emptyDirs for what the read-only root filesystem cannot hold: /tmp (HOME, the model download,
    caches) and, where no MPS provider mounts its own, /dev/shm in memory (vLLM's processes exchange
    data through shared memory; the container runtime's default is 64 MiB). A memory-backed emptyDir
    counts against the container's memory limit. The DRA driver bind-mounts its MPS pipe directory
    at /tmp/nvidia-mps, inside the /tmp emptyDir: runtimes mount parents before children.
    `scratch_limit_bytes`: the /tmp emptyDir's sizeLimit (the kubelet evicts a pod that writes
    more, instead of letting one download fill the node's disk)."""
    scratch: dict[str, Any] = {}
    if scratch_limit_bytes is not None:
        scratch["sizeLimit"] = mebibytes(scratch_limit_bytes)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": scratch}]
    if shm:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    return volumes


def workspace_mounts(*, shm: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": HOME_DIR}]
    if shm:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return mounts


def workspace_env() -> list[dict[str, Any]]:
    """HOME (and with it the vLLM, torch and Triton caches) and the Hugging Face cache on the /tmp
    emptyDir, and a user name, whatever the image sets: a spec may name another serving image."""
    values = {
        "HOME": HOME_DIR,
        "HF_HOME": f"{HOME_DIR}/huggingface",
        "USER": RUN_AS_USER_NAME,
        "LOGNAME": RUN_AS_USER_NAME,
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def model_cache_volumes(claim: str | None, *, read_only: bool = True) -> list[dict[str, Any]]:
    """The model cache's claim as a pod volume (none without a cache)."""
    if claim is None:
        return []
    return [
        {"name": MODEL_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
    ]


def model_cache_mounts(claim: str | None, *, read_only: bool = True) -> list[dict[str, Any]]:
    if claim is None:
        return []
    return [{"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE_MOUNT, "readOnly": read_only}]


def model_cache_env(claim: str | None) -> list[dict[str, Any]]:
    """Load the model from the mounted cache, offline: a file missing there is an error at once,
    never a download into the pod's scratch volume."""
    if claim is None:
        return []
    return [{"name": "HF_HUB_CACHE", "value": MODEL_CACHE_MOUNT}, {"name": "HF_HUB_OFFLINE", "value": "1"}]


def api_key_env(secret: SecretKey | None) -> list[dict[str, Any]]:
    """VLLM_API_KEY from the referenced Secret: vLLM then answers 401 to /v1 requests without it
    (vllm/entrypoints/serve/middleware/authenticate.py guards the /v1 prefix only, so the probes'
    /health and Prometheus' /metrics stay open)."""
    if secret is None:
        return []
    return [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}]


def hf_token_env(secret: SecretKey | None) -> list[dict[str, Any]]:
    """HF_TOKEN from the referenced Secret: the token itself never appears in a rendered object."""
    if secret is None:
        return []
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}]


def merge_env(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Env lists merged by name, later groups winning, in first-seen order. Server-side apply treats
    `env` as a map keyed by name and rejects duplicates, so they must never reach the API."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for var in group:
            merged[var["name"]] = deepcopy(var)
    return list(merged.values())
