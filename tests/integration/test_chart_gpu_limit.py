"""The cluster admin's bound on GPUs per LLMDeployment (chart value limits.maxGPUsPerDeployment),
on the testbed's real API server: after `helm install`, a tenant with the built-in `edit` role in
its namespace cannot ask for more GPUs than the bound through spec.gpu.count,
spec.autoscaling.maxGPUs or `kubectl scale`; the API server refuses each, naming the field. The
bound is a ValidatingAdmissionPolicy of the chart's templates, so `helm upgrade` changes it (a
CRD bound would not: Helm never upgrades crds/), and without the value no policy is installed."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from test_chart_tenant_roles import kube_version

import kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmpack"
RELEASE = "llmpack-gpu-limit"
POLICY = f"{RELEASE}-max-gpus"  # the release name holds the chart's: fullname is the release name


@pytest.fixture(scope="module")
def helm(testbed, tmp_path_factory):
    home = tmp_path_factory.mktemp("helm-home")
    env = testbed.env()
    env.update({f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")})

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(testbed.bin_dir / "helm"), *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result

    return run


@pytest.fixture(scope="module")
def limited(testbed, admin_api, helm):
    """The chart installed with a bound of 2 GPUs; namespace team, where alice holds `edit`."""
    suffix = uuid.uuid4().hex[:5]
    release_ns = kube.create_namespace(admin_api, f"gpu-limit-release-{suffix}")
    team = kube.create_namespace(admin_api, f"gpu-limit-team-{suffix}")
    try:
        helm("install", RELEASE, str(CHART), "-n", release_ns, "--set", "limits.maxGPUsPerDeployment=2")
        testbed.kubectl("create", "serviceaccount", "alice", "-n", team)
        testbed.kubectl(
            "create", "rolebinding", "alice-edit", "--clusterrole=edit",
            f"--serviceaccount={team}:alice", "-n", team,
        )  # fmt: skip
        yield {"release": release_ns, "team": team, "alice": f"system:serviceaccount:{team}:alice"}
    finally:
        subprocess.run(
            [str(testbed.bin_dir / "helm"), "uninstall", RELEASE, "-n", release_ns],
            env=testbed.env(),
            capture_output=True,
        )
        for ns in (team, release_ns):
            kube.delete_namespace(admin_api, ns)


def llmd(name: str, **spec) -> str:
    body = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": "facebook/opt-1.3b"}, **spec},
    }
    return json.dumps(body)


def as_tenant(testbed, limited, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return testbed.kubectl(*args, f"--as={limited['alice']}", "-n", limited["team"], input=stdin, check=False)


def refused_until_enforced(testbed, limited, doc: str) -> str:
    """The API server's answer to creating `doc` once the new policy is in force (a policy takes
    effect when the API server's informer has it, a moment after the install)."""
    deadline = time.monotonic() + 30
    while True:
        result = as_tenant(testbed, limited, "create", "-f", "-", stdin=doc)
        if result.returncode != 0 or time.monotonic() > deadline:
            return result.stderr
        as_tenant(testbed, limited, "delete", "-f", "-", "--wait=false", stdin=doc)
        time.sleep(0.5)


def test_a_tenant_asking_for_more_gpus_than_the_bound_is_refused_naming_the_field(testbed, limited):
    answer = refused_until_enforced(testbed, limited, llmd("too-many", gpu={"count": 3}))
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in answer, answer
    assert "spec.gpu.count: at most 2 GPUs per LLMDeployment" in answer, answer
    assert "limits.maxGPUsPerDeployment" in answer, answer

    answer = as_tenant(
        testbed, limited, "create", "-f", "-", stdin=llmd("scales-too-far", autoscaling={"maxGPUs": 5})
    ).stderr
    assert "spec.autoscaling.maxGPUs: at most 2 GPUs per LLMDeployment" in answer, answer


def test_within_the_bound_is_admitted_and_scaling_past_it_is_refused(testbed, limited):
    created = as_tenant(testbed, limited, "create", "-f", "-", stdin=llmd("within", gpu={"count": 2}))
    assert created.returncode == 0, created.stderr
    scaled = as_tenant(testbed, limited, "scale", "llmd/within", "--replicas=1")
    assert scaled.returncode == 0, scaled.stderr
    refused = as_tenant(testbed, limited, "scale", "llmd/within", "--replicas=3")
    assert refused.returncode != 0
    assert "spec.replicas (the LLMDeployment's GPUs): at most 2 GPUs" in refused.stderr, refused.stderr
    count = as_tenant(testbed, limited, "get", "llmd/within", "-o", "jsonpath={.spec.gpu.count}").stdout
    assert count == "1", "the refused scale changed nothing"


def test_without_the_value_no_policy_is_installed(testbed, helm):
    version = ("--kube-version", kube_version())
    rendered = helm("template", "plain", str(CHART), *version).stdout
    assert "ValidatingAdmissionPolicy" not in rendered
    bounded = helm("template", "plain", str(CHART), *version, "--set", "limits.maxGPUsPerDeployment=4").stdout
    assert "object.spec.gpu.count <= 4" in bounded
