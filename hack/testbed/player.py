"""Plays the profiling container on the testbed's fake nodes.

KWOK runs no containers, so a profiling Job's pod would never measure anything. The player does
what the container would: it runs the Job's own `llmpack profile` command and arguments (with the
simulated backend, as no GPU exists here), authenticated as the Job's own ServiceAccount through a
TokenRequest — so RBAC on the result ConfigMap is exercised for real — and then marks the pod
finished (annotation `llmpack.io/testbed-complete`, which the testbed's kwok stages turn into a
Succeeded pod). Used by the demo and the end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROFILER_SELECTOR = "app.kubernetes.io/component=profiler,app.kubernetes.io/managed-by=llmpack"
COMPLETE_ANNOTATION = "llmpack.io/testbed-complete"
FAIL_ANNOTATION = "llmpack.io/testbed-fail"


@dataclass
class ProfilerPlayer:
    kube: object  # llmpack.controller.kube.KubeClient acting as admin
    server: str
    ca_file: Path
    python: str = sys.executable
    backend: str = "simulated"
    played: set[str] = field(default_factory=set)  # pod uids
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

    def play_once(self, namespace: str | None = None, *, fail_with: str | None = None) -> int:
        """Play every running profiler pod once; returns how many were played."""
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
        args = _with_backend(list(container.get("args") or []), self.backend)
        with tempfile.TemporaryDirectory(prefix="llmpack-player-") as tmp:
            kubeconfig = self._service_account_kubeconfig(pod, Path(tmp))
            env = dict(os.environ)
            env.update({"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": meta["namespace"]})
            for item in container.get("env") or []:
                if "value" in item:
                    env[item["name"]] = item["value"]
            termination = Path(tmp) / "termination-log"
            done = subprocess.run(
                [self.python, "-m", "llmpack.cli", "profile", *args, "--termination-log", str(termination)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
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

    def _annotate(self, pod: dict, annotations: dict[str, str]) -> None:
        from llmpack.controller.kube import KubeError

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


def _with_backend(args: list[str], backend: str) -> list[str]:
    if "--backend" in args:
        args[args.index("--backend") + 1] = backend
        return args
    return ["--backend", backend, *args]
