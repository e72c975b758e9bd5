"""End-to-end fixtures: the CRD installed, the operator running as its own process against the
testbed, and the player that stands in for the profiling container on KWOK's fake nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from operator_runner import OPERATOR_NAMESPACE, OperatorRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crd_installed(testbed, kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_llmdeployments.yaml"))
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_gpupools.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s")
    kubectl("wait", "--for=condition=Established", "crd/gpupools.llmpack.io", "--timeout=30s")
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    return True


@pytest.fixture(scope="session")
def kube_admin(testbed):
    from llmpack.controller.client import KubeClient

    return KubeClient.from_config(str(testbed.kubeconfig))


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
