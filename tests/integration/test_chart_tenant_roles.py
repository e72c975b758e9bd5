"""The chart's ClusterRoles aggregated to Kubernetes' built-in roles, on the testbed with RBAC on:
after `helm install`, a ServiceAccount that holds the built-in `edit` in one namespace (a
RoleBinding, as a platform team hands out) creates, reads, lists and scales LLMDeployments there,
cannot write their status, and can do nothing with them in another namespace; one that holds
`view` reads them and cannot create one. rbac.aggregateToDefaultRoles=false takes that away."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

import kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmpack"
RELEASE = "llmpack-tenancy"
RESOURCE = "llmdeployments.llmpack.io"


def kube_version() -> str:
    text = (ROOT / "hack" / "testbed" / "versions.env").read_text()
    return re.search(r"^K8S_VERSION=v?(\S+)", text, re.M).group(1)


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
def tenancy(testbed, admin_api, helm):
    """The chart installed; namespaces team (alice: edit, bob: view) and other (nothing)."""
    suffix = uuid.uuid4().hex[:5]
    release_ns = kube.create_namespace(admin_api, f"tenancy-release-{suffix}")
    team = kube.create_namespace(admin_api, f"tenancy-team-{suffix}")
    other = kube.create_namespace(admin_api, f"tenancy-other-{suffix}")
    try:
        helm("install", RELEASE, str(CHART), "-n", release_ns)
        for name, role in (("alice", "edit"), ("bob", "view")):
            testbed.kubectl("create", "serviceaccount", name, "-n", team)
            testbed.kubectl(
                "create", "rolebinding", f"{name}-{role}", f"--clusterrole={role}",
                f"--serviceaccount={team}:{name}", "-n", team,
            )  # fmt: skip
        yield {"release": release_ns, "team": team, "other": other}
    finally:
        subprocess.run(
            [str(testbed.bin_dir / "helm"), "uninstall", RELEASE, "-n", release_ns],
            env=testbed.env(),
            capture_output=True,
        )
        for ns in (team, other, release_ns):
            kube.delete_namespace(admin_api, ns)


def can_i(testbed, who: str, namespace: str, verb: str, resource: str, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={who}", "-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    return testbed.kubectl(*args, check=False).stdout.strip() == "yes"


def llmd(name: str) -> str:
    body = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": "facebook/opt-1.3b"}},
    }
    return json.dumps(body)


def test_the_roles_aggregate_to_edit_admin_and_view_and_can_be_turned_off(helm, testbed):
    docs = [
        d
        for d in yaml.safe_load_all(
            helm("template", RELEASE, str(CHART), "--kube-version", kube_version()).stdout
        )
        if d
    ]
    labels = {
        d["metadata"]["name"]: {
            k for k, v in d["metadata"]["labels"].items() if "aggregate-to" in k and v == "true"
        }
        for d in docs
        if d["kind"] == "ClusterRole"
    }
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert labels[f"{RELEASE}-edit"] == {aggregate + "edit", aggregate + "admin"}
    assert labels[f"{RELEASE}-view"] == {aggregate + "view"}
    off = helm(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        kube_version(),
        "--set",
        "rbac.aggregateToDefaultRoles=false",
    ).stdout
    assert "aggregate-to" not in off


def test_edit_in_one_namespace_may_create_read_and_scale_llmdeployments_there_only(testbed, tenancy):
    alice = f"system:serviceaccount:{tenancy['team']}:alice"
    team, other = tenancy["team"], tenancy["other"]
    # the controller-manager aggregates the chart's rules into `edit` shortly after the install
    kube.wait_for(lambda: can_i(testbed, alice, team, "create", RESOURCE), timeout=60, what="aggregation")
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert can_i(testbed, alice, team, verb, RESOURCE), verb
        assert not can_i(testbed, alice, other, verb, RESOURCE), f"{verb} in another namespace"
    for verb in ("get", "update", "patch"):
        assert can_i(testbed, alice, team, verb, RESOURCE, "scale"), f"{verb} scale"
    assert can_i(testbed, alice, team, "get", RESOURCE, "status")
    for verb in ("update", "patch"):
        assert not can_i(testbed, alice, team, verb, RESOURCE, "status"), f"{verb} status: the operator's"

    # and for real, as alice
    as_alice = f"--as={alice}"
    testbed.kubectl("create", "-n", team, "-f", "-", as_alice, input=llmd("chat"))
    assert testbed.kubectl("get", "llmd", "-n", team, as_alice, "-o", "name").stdout.strip() == (
        "llmdeployment.llmpack.io/chat"
    )
    testbed.kubectl("scale", "llmd", "chat", "--replicas=3", "-n", team, as_alice)
    stored = json.loads(testbed.kubectl("get", "llmd", "chat", "-n", team, "-o", "json").stdout)
    assert stored["spec"]["gpu"]["count"] == 3
    forged = testbed.kubectl(
        "patch", "llmd", "chat", "-n", team, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Ready"}}', as_alice, check=False,
    )  # fmt: skip
    assert forged.returncode != 0 and "forbidden" in forged.stderr, forged.stderr
    elsewhere = testbed.kubectl("create", "-n", other, "-f", "-", as_alice, input=llmd("x"), check=False)
    assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr, elsewhere.stderr


POOLS = "gpupools.llmpack.io"


def test_edit_may_make_gpupools_in_its_namespace_only_and_never_write_their_placement(testbed, tenancy):
    """A GPUPool holds GPUs of its namespace only (its ResourceClaims are namespaced): a tenant
    makes its own, cannot make one elsewhere, and cannot forge the placement its members follow."""
    alice = f"system:serviceaccount:{tenancy['team']}:alice"
    team, other = tenancy["team"], tenancy["other"]
    kube.wait_for(lambda: can_i(testbed, alice, team, "create", POOLS), timeout=60, what="aggregation")
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert can_i(testbed, alice, team, verb, POOLS), verb
        assert not can_i(testbed, alice, other, verb, POOLS), f"{verb} in another namespace"
    assert not can_i(testbed, alice, team, "patch", POOLS, "status")
    pool = {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": "shared"},
        "spec": {"gpu": {"product": "NVIDIA-H100-80GB-HBM3", "maxGPUs": 2}},
    }
    as_alice = f"--as={alice}"
    testbed.kubectl("create", "-n", team, "-f", "-", as_alice, input=json.dumps(pool))
    forged = testbed.kubectl(
        "patch", "gpool", "shared", "-n", team, "--subresource=status", "--type=merge",
        "-p", '{"status": {"gpus": [{"index": 0, "claim": "x", "pinnedMemoryBytes": 1, "memoryBytes": 1}]}}',
        as_alice, check=False,
    )  # fmt: skip
    assert forged.returncode != 0 and "forbidden" in forged.stderr, forged.stderr
    elsewhere = testbed.kubectl(
        "create", "-n", other, "-f", "-", as_alice, input=json.dumps(pool), check=False
    )
    assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr, elsewhere.stderr


def test_view_may_read_llmdeployments_and_not_create_them(testbed, tenancy):
    bob = f"system:serviceaccount:{tenancy['team']}:bob"
    team = tenancy["team"]
    kube.wait_for(lambda: can_i(testbed, bob, team, "get", RESOURCE), timeout=60, what="aggregation")
    for verb in ("get", "list", "watch"):
        assert can_i(testbed, bob, team, verb, RESOURCE), verb
        assert can_i(testbed, bob, team, verb, RESOURCE, "status"), f"{verb} status"
        assert not can_i(testbed, bob, tenancy["other"], verb, RESOURCE), f"{verb} in another namespace"
    for verb in ("create", "update", "patch", "delete"):
        assert not can_i(testbed, bob, team, verb, RESOURCE), verb
    assert not can_i(testbed, bob, team, "update", RESOURCE, "scale")
    refused = testbed.kubectl("create", "-n", team, "-f", "-", f"--as={bob}", input=llmd("y"), check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr, refused.stderr


def test_turned_off_the_built_in_roles_grant_nothing_on_llmdeployments(testbed, helm, tenancy):
    alice = f"system:serviceaccount:{tenancy['team']}:alice"
    helm(
        "upgrade", RELEASE, str(CHART), "-n", tenancy["release"], "--reuse-values",
        "--set", "rbac.aggregateToDefaultRoles=false",
    )  # fmt: skip
    kube.wait_for(
        lambda: not can_i(testbed, alice, tenancy["team"], "create", RESOURCE),
        timeout=60,
        what="de-aggregation",
    )
    assert not can_i(testbed, alice, tenancy["team"], "get", RESOURCE)
