"""The chart installs the CRD the API models generate, unchanged.

crds/ (generated from operator/llmpack/api/, checked by test_api.py) is the source; the chart's
crds/ carries a byte-for-byte copy of each file and nothing else (kopf runs standalone: no kopf
peering CRDs; replicas elect a leader on a Lease). After regenerating:
    cp crds/llmpack.io_llmdeployments.yaml charts/llmpack/crds/
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "llmpack" / "crds"
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


def test_chart_crds_are_only_the_generated_ones():
    extra = {p.name for p in CHART_CRDS.iterdir()} - {p.name for p in GENERATED.glob("*.yaml")}
    assert not extra, f"charts/llmpack/crds/ has files crds/ does not generate: {extra}"


def test_each_crd_carries_the_hash_of_its_spec():
    """The chart refuses an upgrade while the cluster's CRD carries another hash
    (templates/crd-check.yaml): the hash must follow every change of the spec."""
    import yaml

    from llmpack.api.crd import SPEC_HASH_ANNOTATION, spec_hash

    for path in CHART_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        assert crd["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(crd["spec"]), path.name
        changed = {**crd["spec"], "scope": "Cluster"}
        assert spec_hash(changed) != spec_hash(crd["spec"])
    assert SPEC_HASH_ANNOTATION in (ROOT / "charts" / "llmpack" / "templates" / "crd-check.yaml").read_text()
