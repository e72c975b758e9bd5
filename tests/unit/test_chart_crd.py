"""The chart installs the CRD the API models generate, unchanged.

crds/ (generated from operator/llmpack/api/, checked by test_api.py) is the source; the chart's
crds/ carries a byte-for-byte copy of each file plus kopf's peering CRDs. After regenerating:
    cp crds/llmpack.io_llmdeployments.yaml charts/llmpack/crds/
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "llmpack" / "crds"
KOPF_PEERING = "kopf.dev_peerings.yaml"
COPY_COMMAND = "cp crds/llmpack.io_llmdeployments.yaml charts/llmpack/crds/"


def test_chart_carries_every_generated_crd_unchanged():
    generated = sorted(GENERATED.glob("*.yaml"))
    assert generated, "crds/ holds no generated CRD"
    for source in generated:
        copy = CHART_CRDS / source.name
        assert copy.is_file(), f"charts/llmpack/crds/{source.name} is missing: run `{COPY_COMMAND}`"
        assert copy.read_bytes() == source.read_bytes(), (
            f"charts/llmpack/crds/{source.name} differs from crds/{source.name}: run `{COPY_COMMAND}`"
        )


def test_chart_crds_are_the_generated_ones_plus_kopf_peering():
    extra = {p.name for p in CHART_CRDS.iterdir()} - {p.name for p in GENERATED.glob("*.yaml")}
    assert extra == {KOPF_PEERING}, f"charts/llmpack/crds/ has files crds/ does not generate: {extra}"


def test_kopf_peering_crds_are_what_kopf_looks_for():
    """kopf (>= 1.29) serves peering from kopf.dev/v1 clusterkopfpeerings (cluster-wide operators)
    and kopfpeerings (namespaced ones); it writes one key per peer into `status`, which must
    survive pruning, and patches the object itself (a status subresource would need more RBAC)."""
    docs = list(yaml.safe_load_all((CHART_CRDS / KOPF_PEERING).read_text()))
    found = {}
    for doc in docs:
        spec = doc["spec"]
        assert doc["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        (version,) = spec["versions"]
        assert version["served"] and version["storage"]
        assert "subresources" not in version
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status.get("x-kubernetes-preserve-unknown-fields") is True
        found[(spec["group"], version["name"], spec["names"]["plural"])] = spec["scope"]
    assert found == {
        ("kopf.dev", "v1", "clusterkopfpeerings"): "Cluster",
        ("kopf.dev", "v1", "kopfpeerings"): "Namespaced",
    }
