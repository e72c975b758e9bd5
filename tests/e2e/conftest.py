"""End-to-end fixtures: the CRD installed, the operator running as its own process against the
testbed, and the player that stands in for the profiling container on KWOK's fake nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "llmpack-system"


@pytest.fixture(scope="session")
def crd_installed(testbed, kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_llmdeployments.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s")
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    return True


@pytest.fixture(scope="session")
def kube_admin(testbed):
    from llmpack.controller.kube import KubeClient

    return KubeClient.from_config(str(testbed.kubeconfig))


class OperatorRunner:
    """`llmpack operator` in its own process, as a user runs it. Chaos tests kill and restart it."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "llmpack.cli", "operator"),
                    *("--operator-namespace", OPERATOR_NAMESPACE),
                    *("--metrics-port", "0", "--liveness", "", "--log-level", "INFO"),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        time.sleep(0.5)
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited at start:\n{self.log_tail()}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final status write, like an OOM kill or a node loss."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def operator_process(testbed, crd_installed, tmp_path_factory):
    runner = OperatorRunner(testbed.env(), tmp_path_factory.mktemp("operator") / "operator.log")
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture(scope="session")
def player(testbed, kube_admin):
    from player import ProfilerPlayer

    return ProfilerPlayer(kube=kube_admin, server=testbed.server, ca_file=testbed.ca_file)
