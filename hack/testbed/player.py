"""Plays the profiling container, and the model cache's fill container, on the testbed's fake nodes.

KWOK runs no containers, so a profiling Job's pod would never measure anything. The player does
what the container would: it runs the Job's own `llmpack profile` command and arguments,
authenticated as the Job's own ServiceAccount through a TokenRequest — so RBAC on the result
ConfigMap is exercised for real — and then marks the pod finished (annotation
`llmpack.io/testbed-complete`, which the testbed's kwok stages turn into a Succeeded pod), or
failed with the termination message the profiler wrote. Used by the demo and the end-to-end tests.
A model cache's fill pod is played the same way: its own `llmpack fill-model-cache` command, the
cache folder being the one the claim's PersistentVolume names (a hostPath: a folder here); the Hub
is whatever HF_ENDPOINT `env` gives (a local stand-in in the tests).

Two ways to play: `backend="simulated"` (the default) swaps in the simulated backend, as no GPU
exists here; `backend=None` runs the Job's arguments as rendered (`--backend vllm`) on the real
engine, vLLM's CPU build, found through `env` (PATH with the engine environment's bin first). A
pod has its own network namespace, so the profiler's engine listens on a free loopback port
here instead of its default 8000.

It also stands in for the one kubelet duty kwok skips that llmpack's users meet: resolving a
container's env from Secrets. kwok holds such pods (see kwok-stages.yaml); the player annotates
`llmpack.io/testbed-env-resolved` when every Secret and key they name exists, and otherwise
`llmpack.io/testbed-config-error` with the kubelet's message, which kwok turns into a Pending pod
waiting in CreateContainerConfigError; it checks again on each pass, as the kubelet retries.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROFILER_SELECTOR = (
    "app.kubernetes.io/component in (profiler,model-cache),app.kubernetes.io/managed-by=llmpack"
)
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=llmpack"
CONFIG_ERROR_ANNOTATION = "llmpack.io/testbed-config-error"
ENV_RESOLVED_ANNOTATION = "llmpack.io/testbed-env-resolved"
COMPLETE_ANNOTATION = "llmpack.io/testbed-complete"
FAIL_ANNOTATION = "llmpack.io/testbed-fail"


@dataclass
class ProfilerPlayer:
    kube: object  # llmpack.runtime.kube.KubeClient acting as admin
    server: str
    ca_file: Path
    python: str = sys.executable
    backend: str | None = "simulated"  # None: as the Job renders it (the real engine)
    env: dict[str, str] = field(default_factory=dict)  # added to the profiler's environment
    timeout_s: float = 300.0
    played: set[str] = field(default_factory=set)  # pod uids
    configured: set[str] = field(default_factory=set)  # pod uids whose env resolved
    log: list[str] = field(default_factory=list)

    def pending_pods(self, namespace: str | None = None) -> list[dict]:
        pods = self.kube.list("Pod", namespace, label_selector=PROFILER_SELECTOR)
        return [
            p
            for p in pods
            if p["metadata"]["uid"] not in self.played
            and (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        ]

    def resolve_env(self, namespace: str | None = None) -> None:
        """The kubelet's env resolution for llmpack's pods that take env from a Secret (kwok
        holds those until it is done): run them, or keep them waiting with the kubelet's message
        while what they name is missing."""
        for pod in self.kube.list("Pod", namespace, label_selector=MANAGED_SELECTOR):
            meta = pod["metadata"]
            status = pod.get("status") or {}
            if meta["uid"] in self.configured or meta.get("deletionTimestamp") or status.get("podIP"):
                continue
            if not pod["spec"].get("nodeName") or not _takes_env_from_secrets(pod):
                continue
            problem = self._env_problem(pod)
            if problem is None:
                self.configured.add(meta["uid"])
                self._annotate(pod, {ENV_RESOLVED_ANNOTATION: "true"})
            elif (meta.get("annotations") or {}).get(CONFIG_ERROR_ANNOTATION) != problem:
                self._annotate(pod, {CONFIG_ERROR_ANNOTATION: problem})

    def _env_problem(self, pod: dict) -> str | None:
        for container in (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]:
            try:
                self._resolved_env(pod, container)
            except LookupError as err:
                return str(err)
        return None

    def _resolved_env(self, pod: dict, container: dict) -> dict[str, str]:
        """The container's env as the kubelet gives it; LookupError with the kubelet's own message
        (`secret "x" not found`) when a non-optional Secret or key is missing."""
        env: dict[str, str] = {}
        namespace = pod["metadata"]["namespace"]
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue
            secret = self.kube.get("Secret", namespace, ref["name"])
            data = (secret or {}).get("data") or {}
            if ref.get("key") in data:
                env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif ref.get("optional"):
                continue
            elif secret is None:
                raise LookupError(f'secret "{ref["name"]}" not found')
            else:
                raise LookupError(f"couldn't find key {ref.get('key')} in Secret {namespace}/{ref['name']}")
        return env

    def play_once(self, namespace: str | None = None, *, fail_with: str | None = None) -> int:
        """Play every running profiler pod once; returns how many were played."""
        self.resolve_env(namespace)
        played = 0
        for pod in self.pending_pods(namespace):
            self.play(pod, fail_with=fail_with)
            played += 1
        return played

    def play(self, pod: dict, *, fail_with: str | None = None) -> subprocess.CompletedProcess | None:
        meta = pod["metadata"]
        self.played.add(meta["uid"])
        if fail_with is not None:
            self._annotate(pod, {FAIL_ANNOTATION: "true", "llmpack.io/testbed-fail-message": fail_with})
            return None
        container = pod["spec"]["containers"][0]
        args = list(container.get("args") or [])
        command = list(container.get("command") or ["llmpack", "profile"])[1:]
        if command == ["fill-model-cache"]:
            args = self._on_the_volume(pod, args)
        elif self.backend is not None:
            args = _with_backend(args, self.backend)
        elif "--port" not in args:
            args += ["--port", str(_free_port())]
        from llmpack.runtime.kube import KubeError

        with tempfile.TemporaryDirectory(prefix="llmpack-player-") as tmp:
            try:
                kubeconfig = self._service_account_kubeconfig(pod, Path(tmp))
            except KubeError as err:
                if not err.not_found:
                    raise
                # The operator deleted the Job and its identity meanwhile (another LLMDeployment's
                # profile of the same key was cached first): a kubelet would not start this pod.
                self.log.append(f"{meta['namespace']}/{meta['name']}: not played: {err}")
                return None
            env = {**os.environ, **self.env}
            env.update({"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": meta["namespace"]})
            env.update(self._resolved_env(pod, container))
            termination = Path(tmp) / "termination-log"
            done = subprocess.run(
                [self.python, "-m", "llmpack.cli", *command, *args, "--termination-log", str(termination)],
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
            message = termination.read_text().strip() if termination.exists() else done.stderr[-500:]
        self.log.append(f"{meta['namespace']}/{meta['name']}: exit {done.returncode}: {message}")
        if done.returncode == 0:
            self._annotate(pod, {COMPLETE_ANNOTATION: "true"})
        else:
            self._annotate(
                pod,
                {FAIL_ANNOTATION: "true", "llmpack.io/testbed-fail-message": message or "profiler failed"},
            )
        return done

    def _on_the_volume(self, pod: dict, args: list[str]) -> list[str]:
        """The fill command's --cache-dir moved to the folder the claim's PersistentVolume names
        (a hostPath or local volume: on the testbed's fake nodes, a folder of this machine)."""
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0].get("volumeMounts") or []}
        folders = {}
        for volume in pod["spec"].get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and volume["name"] in mounts:
                bound = self.kube.get("PersistentVolumeClaim", pod["metadata"]["namespace"], claim)
                pv = self.kube.request("GET", f"/api/v1/persistentvolumes/{bound['spec']['volumeName']}")
                source = pv["spec"].get("hostPath") or pv["spec"].get("local")
                folders[mounts[volume["name"]]] = source["path"]
        return [folders.get(a, a) for a in args]

    def _annotate(self, pod: dict, annotations: dict[str, str]) -> None:
        from llmpack.runtime.kube import KubeError

        meta = pod["metadata"]
        try:
            self.kube.merge_patch(
                "Pod", meta["namespace"], meta["name"], {"metadata": {"annotations": annotations}}
            )
        except KubeError as err:
            if not err.not_found:  # the Job (and its pod) was deleted meanwhile: nothing to finish
                raise

    def _service_account_kubeconfig(self, pod: dict, folder: Path) -> Path:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        token = self.kube.request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            body={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 600},
            },
        )["status"]["token"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [
                {
                    "name": account,
                    "context": {"cluster": "testbed", "user": account, "namespace": meta["namespace"]},
                }
            ],
            "current-context": account,
        }
        path = folder / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


def _takes_env_from_secrets(pod: dict) -> bool:
    containers = (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]
    return any(
        (item.get("valueFrom") or {}).get("secretKeyRef") for c in containers for item in c.get("env") or []
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_backend(args: list[str], backend: str) -> list[str]:
    if "--backend" in args:
        args[args.index("--backend") + 1] = backend
        return args
    return ["--backend", backend, *args]
