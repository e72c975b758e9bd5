"""Upgrading an install whose CRD is older than the chart's, the way charts/llmpack/README.md says.

Helm installs a chart's crds/ on the first install only and never upgrades it. The test installs a
chart whose CRD lacks a field the current one has (spec.autoscaling, as before it was added), with
an LLMDeployment in it; then `helm upgrade` to the current chart is refused with the command to run,
that command applies the new CRD, the upgrade goes through, the API server accepts the new field,
and the LLMDeployment that was there keeps its uid, spec and status.

The CRD is cluster-wide: the test replaces the testbed's and leaves the current one in place.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

import kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmpack"
CRD_FILE = CHART / "crds" / "llmpack.io_llmdeployments.yaml"
EXAMPLE = ROOT / "examples" / "opt-1.3b-mps-dra.yaml"
CRD = "llmdeployments.llmpack.io"
RELEASE = "llmpack"
HASH = "llmpack.io/crd-spec-sha256"


def readme_upgrade_command() -> list[str]:
    """The CRD command of the chart README's upgrade section, as a user would copy it."""
    text = (CHART / "README.md").read_text()
    section = text[text.index("## Upgrading") :]
    (command,) = re.findall(r"^(kubectl apply --server-side\b.*charts/llmpack/crds/)$", section, re.M)
    return command.split()


def older_crd() -> dict:
    """The CRD of an older release: without spec.autoscaling and its CEL rule, with a field the
    current one no longer has (spec.retired), and, like every CRD before the spec hash, without
    the annotation."""
    crd = copy.deepcopy(yaml.safe_load(CRD_FILE.read_text()))
    crd["metadata"].pop("annotations")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["autoscaling"]
    spec["properties"]["retired"] = {"type": "string", "description": "A field a later release removed."}
    spec["x-kubernetes-validations"] = [
        rule for rule in spec.get("x-kubernetes-validations", []) if "autoscaling" not in rule["rule"]
    ]
    return crd


@pytest.fixture
def helm(testbed, tmp_path):
    env = testbed.env()
    env.update({f"HELM_{k}_HOME": str(tmp_path / "helm" / k.lower()) for k in ("CACHE", "CONFIG", "DATA")})

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(testbed.bin_dir / "helm"), *args], env=env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    return run


def live_crd(testbed) -> dict:
    return json.loads(testbed.kubectl("get", "crd", CRD, "-o", "json").stdout)


def llmd(testbed, namespace: str, name: str) -> dict:
    return json.loads(testbed.kubectl("get", "llmd", name, "-n", namespace, "-o", "json").stdout)


def test_an_install_with_an_older_crd_upgrades_by_the_documented_path(testbed, admin_api, helm, tmp_path):
    # an older chart: its CRD lacks spec.autoscaling, and it has no CRD check of its own
    old_chart = tmp_path / "llmpack-old"
    shutil.copytree(CHART, old_chart)
    (old_chart / "templates" / "crd-check.yaml").unlink()
    (old_chart / "crds" / CRD_FILE.name).write_text(yaml.safe_dump(older_crd(), sort_keys=False))

    suffix = uuid.uuid4().hex[:5]
    release_ns = kube.create_namespace(admin_api, f"crd-upgrade-release-{suffix}")
    apps_ns = kube.create_namespace(admin_api, f"crd-upgrade-apps-{suffix}")
    try:
        # Helm installs crds/ only where the CRD does not exist yet
        testbed.kubectl("delete", "crd", CRD, "--ignore-not-found", "--wait=true", "--timeout=60s")
        helm("install", RELEASE, str(old_chart), "-n", release_ns)
        testbed.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=30s")
        assert HASH not in live_crd(testbed)["metadata"].get("annotations", {})

        example = yaml.safe_load(EXAMPLE.read_text())
        name = example["metadata"]["name"]
        testbed.kubectl("apply", "-n", apps_ns, "-f", "-", input=yaml.safe_dump(example))
        testbed.kubectl(
            "patch", "llmd", name, "-n", apps_ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Ready", "gpus": 1, "message": "1/1 replicas serving"}}),
        )  # fmt: skip
        before = llmd(testbed, apps_ns, name)

        scaled = copy.deepcopy(example)
        scaled["spec"]["autoscaling"] = {"minGPUs": 1, "maxGPUs": 4}
        refused = testbed.kubectl(
            "apply", "-n", apps_ns, "-f", "-", input=yaml.safe_dump(scaled), check=False
        )
        assert refused.returncode != 0 and 'unknown field "spec.autoscaling"' in refused.stderr, (
            refused.stderr
        )

        # the current chart refuses to upgrade over the old CRD, and says what to run
        result = helm("upgrade", RELEASE, str(CHART), "-n", release_ns, check=False)
        assert result.returncode != 0
        assert "kubectl apply --server-side --force-conflicts -f charts/llmpack/crds/" in result.stderr, (
            result.stderr
        )
        assert (
            json.loads(helm("history", RELEASE, "-n", release_ns, "-o", "json").stdout)[-1]["revision"] == 1
        )

        # the README's command, run from the repository root as written
        command = readme_upgrade_command()
        assert command[0] == "kubectl"
        applied = subprocess.run(
            [str(testbed.bin_dir / "kubectl"), *command[1:]],
            cwd=ROOT,
            env=testbed.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert applied.returncode == 0, applied.stderr
        testbed.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=30s")
        chart_crd = yaml.safe_load(CRD_FILE.read_text())
        live = live_crd(testbed)
        assert live["metadata"]["annotations"][HASH] == chart_crd["metadata"]["annotations"][HASH]
        # the whole schema is the chart's: added fields, and none left of what the old one had
        assert live["spec"]["versions"][0]["schema"] == chart_crd["spec"]["versions"][0]["schema"]

        helm("upgrade", RELEASE, str(CHART), "-n", release_ns)

        # the new field is served; the LLMDeployment that was there is the same object
        after = llmd(testbed, apps_ns, name)
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["spec"] == before["spec"]
        assert after["status"] == before["status"]
        testbed.kubectl("apply", "-n", apps_ns, "-f", "-", input=yaml.safe_dump(scaled))
        assert llmd(testbed, apps_ns, name)["spec"]["autoscaling"] == {
            "minGPUs": 1,
            "maxGPUs": 4,
            "targetUtilization": 0.8,  # the new CRD's default, filled in by the API server
        }
        # a later upgrade finds the CRD current
        helm("upgrade", RELEASE, str(CHART), "-n", release_ns, "--reuse-values")
    finally:
        # whatever happened, leave the testbed with the chart's CRD
        testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE), check=False)
        helm("uninstall", RELEASE, "-n", release_ns, check=False)
        kube.delete_namespace(admin_api, apps_ns)
        kube.delete_namespace(admin_api, release_ns)


def test_the_check_is_silent_on_a_fresh_install_and_can_be_turned_off(testbed, admin_api, helm, tmp_path):
    """A first install installs the chart's CRD and passes its own check; with crds.check=false an
    install goes through over a CRD that differs."""
    release_ns = kube.create_namespace(admin_api, f"crd-check-{uuid.uuid4().hex[:5]}")
    try:
        testbed.kubectl("delete", "crd", CRD, "--ignore-not-found", "--wait=true", "--timeout=60s")
        helm("install", RELEASE, str(CHART), "-n", release_ns)
        assert HASH in live_crd(testbed)["metadata"]["annotations"]
        helm("uninstall", RELEASE, "-n", release_ns)  # the CRD stays, as Helm leaves CRDs

        testbed.kubectl(
            "annotate", "crd", CRD, f"{HASH}=0123456789abcdef", "--overwrite"
        )  # another release's
        refused = helm("install", RELEASE, str(CHART), "-n", release_ns, check=False)
        assert refused.returncode != 0 and "crds.check=false" in refused.stderr, refused.stderr
        helm("install", RELEASE, str(CHART), "-n", release_ns, "--set", "crds.check=false")
    finally:
        testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE), check=False)
        helm("uninstall", RELEASE, "-n", release_ns, check=False)
        kube.delete_namespace(admin_api, release_ns)
