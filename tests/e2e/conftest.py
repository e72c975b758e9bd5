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


@pytest.fixture(scope="session")
def operator_process(testbed, crd_installed, tmp_path_factory):
    """`llmpack operator` in its own process, as a user runs it; its log is shown on failure."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    env = testbed.env()
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmpack.cli",
                "operator",
                "--operator-namespace",
                OPERATOR_NAMESPACE,
                "--metrics-port",
                "0",
                "--liveness",
                "",
                "--log-level",
                "INFO",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    time.sleep(1)
    if proc.poll() is not None:
        pytest.fail(f"the operator exited at start:\n{log_path.read_text()[-3000:]}", pytrace=False)
    yield proc, log_path
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def player(testbed, kube_admin):
    from player import ProfilerPlayer

    return ProfilerPlayer(kube=kube_admin, server=testbed.server, ca_file=testbed.ca_file)
