"""`kubectl explain` documents every spec field from the pydantic descriptions, on a real API server."""

from __future__ import annotations

from pathlib import Path

import pytest

import kube
from llmpack.api import crd as crdgen

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd_applied(kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_llmdeployments.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/llmdeployments.llmpack.io", "--timeout=30s")
    # The API server publishes a new CRD in its discovery documents a moment after Established.
    kube.wait_for(
        lambda: kubectl("explain", "llmd", check=False).returncode == 0, timeout=30, what="llmd discovery"
    )


def spec_fields() -> list[str]:
    spec = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    paths = []

    def walk(node, path):
        for name, child in node.get("properties", {}).items():
            paths.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")

    walk(spec, "spec")
    return paths


def test_kubectl_explain_describes_every_spec_field(crd_applied, kubectl):
    paths = spec_fields()
    assert len(paths) > 40
    for path in (
        "spec.sharing.mode",
        "spec.slo.itlMeanMs",
        "spec.gpu.product",
        "spec.advisor.minReplicaGain",
    ):
        assert path in paths
    for path in paths:
        out = kubectl("explain", f"llmd.{path}").stdout
        assert "DESCRIPTION:" in out and "<empty>" not in out, out


def test_kubectl_explain_shows_the_users_words(crd_applied, kubectl):
    out = kubectl("explain", "llmd.spec.sharing.mode").stdout
    assert "pick among what the cluster offers by predicted tokens/s per GPU" in " ".join(out.split())


def test_kubectl_explain_describes_every_gpupool_spec_field(kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmpack.io_gpupools.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/gpupools.llmpack.io", "--timeout=30s")
    kube.wait_for(
        lambda: kubectl("explain", "gpool", check=False).returncode == 0, timeout=30, what="gpool discovery"
    )
    spec = crdgen.pool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    paths = []

    def walk(node, path):
        for name, child in node.get("properties", {}).items():
            paths.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")

    walk(spec, "spec")
    assert {"spec.gpu.maxGPUs", "spec.sharing.mpsProvider", "spec.rebalance"} <= set(paths)
    for path in paths:
        out = kubectl("explain", f"gpool.{path}").stdout
        assert "DESCRIPTION:" in out and "<empty>" not in out, out
    rebalance = " ".join(kubectl("explain", "gpool.spec.rebalance").stdout.split())
    assert "place every member again from scratch" in rebalance
