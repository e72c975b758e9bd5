"""The Helm chart on the testbed, RBAC enforced: what a user gets from `helm install`.

The operator runs as a process of the test (KWOK runs no containers), but exactly as the chart's
Deployment would run it: its args and env are read from the installed Deployment, and it
authenticates with a token of the chart's ServiceAccount, so a permission the chart forgot shows
up as a 403 in its log, and one it grants too many shows up in `kubectl auth can-i --list`, which
must equal the permission table of charts/llmpack/README.md.

The tests of the `installed` release run in file order: install, reconcile, permissions, metrics,
upgrade, uninstall.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testbed as testbed_lib
import yaml

import kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmpack"
README = CHART / "README.md"
EXAMPLE = ROOT / "examples" / "opt-1.3b-mps-dra.yaml"
DASHBOARD = CHART / "dashboards" / "llmdeployment.json"
RELEASE = "llmpack"
# A refusal by RBAC, in the operator's or kopf's words. A 403 for creating in a namespace that is
# being deleted (a leftover of another test) is admission, not RBAC, and is not counted.
FORBIDDEN = re.compile(r"(?<![,.:\d])\b403\b|Forbidden|forbidden|Not enough permissions|could not post event")
NOT_RBAC = "because it is being terminated"
CRD = "llmdeployments.llmpack.io"


def kube_version() -> str:
    text = (ROOT / "hack" / "testbed" / "versions.env").read_text()
    return re.search(r"^K8S_VERSION=v?(\S+)", text, re.M).group(1)


# -- helm and kubectl -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm(testbed, tmp_path_factory):
    """`helm(*args, check=True)` against the testbed, with its own Helm home (no shared cache)."""
    home = tmp_path_factory.mktemp("helm-home")
    env = testbed.env()
    env.update({f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")})

    def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(testbed.bin_dir / "helm"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    return run


def render(helm, *sets: str, namespace: str = "llmpack-system", extra: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "-n", namespace, "--kube-version", kube_version(), *extra]
    for value in sets:
        args += ["--set", value]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def deployment_container(docs_or_deployment) -> dict:
    deployment = docs_or_deployment
    if isinstance(docs_or_deployment, list):
        (deployment,) = by_kind(docs_or_deployment, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# -- the permission table and `kubectl auth can-i --list` -------------------------------------------


def permission_table() -> list[dict[str, str]]:
    """Rows of the README's permission table: group, resource, verbs (a set), when. A row limited
    to one object (`leases` named `<fullname>`) is keyed as kubectl lists it, with its name in
    brackets: leases.coordination.k8s.io[<fullname>]."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| API group | Resource | Verbs"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        group, resource, verbs, when, _why = (c.strip() for c in line.strip("|").split("|"))
        group = re.sub(r"`([^`]*)`.*", r"\1", group).strip('"')
        # kubectl's spelling: resource.group/subresource, e.g. llmdeployments.llmpack.io/status
        resource, name = re.fullmatch(r"`([^`]*)`(?: named `([^`]*)`)?", resource).groups()
        plural, _, sub = resource.partition("/")
        rows.append(
            {
                "resource": plural
                + (f".{group}" if group else "")
                + (f"/{sub}" if sub else "")
                + (f"[{name}]" if name else ""),
                "verbs": {v.strip() for v in verbs.split(",")},
                "when": when,
            }
        )
    return rows


def expected_grants(*, lease: str | None = None) -> dict[str, set[str]]:
    """What the table grants: the `always` rows, plus the leader election rows (the release
    namespace) for the Lease named `lease` if given."""
    wanted = {}
    for row in permission_table():
        if row["when"] == "always":
            wanted[row["resource"]] = row["verbs"]
        elif lease and row["when"].startswith("leader election"):
            wanted[row["resource"].replace("<fullname>", lease)] = row["verbs"]
    return wanted


CAN_I_ROW = re.compile(r"^(\S+)?\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


def can_i_list(testbed, namespace: str, user: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` as `user` in `namespace`: resource -> verbs (resource rules
    only); a rule limited to resource names is keyed `resource[name ...]`."""
    out = testbed.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    grants: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        match = CAN_I_ROW.match(line)
        assert match, f"cannot parse `kubectl auth can-i --list` line {line!r}"
        resource, _urls, names, verbs = match.groups()
        if not resource:
            continue  # non-resource URLs (/healthz, /version...): every user has those
        if names.strip():
            resource = f"{resource}[{names.strip()}]"
        grants.setdefault(resource, set()).update(verbs.split())
    return grants


def granted_by_chart(
    testbed, namespace: str, service_account_namespace: str, name: str
) -> dict[str, set[str]]:
    """The ServiceAccount's grants minus what any ServiceAccount of that namespace has anyway."""

    def sa(n):
        return f"system:serviceaccount:{service_account_namespace}:{n}"

    mine = can_i_list(testbed, namespace, sa(name))
    baseline = can_i_list(testbed, namespace, sa(f"nobody-{uuid.uuid4().hex[:6]}"))
    return {r: v - baseline.get(r, set()) for r, v in mine.items() if v - baseline.get(r, set())}


def cluster_scoped_resources(testbed) -> set[str]:
    """`kubectl api-resources --namespaced=false -o name`, e.g. nodes, namespaces,
    customresourcedefinitions.apiextensions.k8s.io."""
    out = testbed.kubectl("api-resources", "--namespaced=false", "-o", "name").stdout
    return set(out.split())


# -- the operator process -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """preexec_fn: the kernel kills the operator if pytest dies (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)


@dataclass
class Operator:
    """`llmpack operator` as the chart's Deployment runs it, under the chart's ServiceAccount."""

    proc: subprocess.Popen
    log: Path
    metrics_port: int

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def forbidden(self) -> list[str]:
        return [line for line in self.text().splitlines() if FORBIDDEN.search(line) and NOT_RBAC not in line]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_operator(testbed, deployment: dict, kubeconfig: Path, log: Path) -> Operator:
    """Run the Deployment's container command locally: its command (if any) and args, its env
    (plain values), plus a free metrics port and no liveness server (later flags win)."""
    container = deployment_container(deployment)
    (metrics_port,) = testbed_lib.free_ports(1)
    overrides = [f"--metrics-port={metrics_port}", "--liveness="]
    command = list(container.get("command") or [])
    if command:  # a wrapper `python -c CODE ARGS...` that execs `llmpack operator` (none today)
        assert command[0] == "python", command
        command[0] = sys.executable
    else:  # the image's ENTRYPOINT
        command = [sys.executable, "-m", "llmpack.cli", "operator"]
    env = testbed.env()
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    env["KUBECONFIG"] = str(kubeconfig)
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `llmpack` for the wrapper
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*command, *container["args"], *overrides],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    operator = Operator(proc, log, metrics_port)
    time.sleep(1)
    if proc.poll() is not None:
        pytest.fail(f"the operator exited at start:\n{operator.text()[-3000:]}", pytrace=False)
    return operator


# -- LLMDeployments -------------------------------------------------------------------------------


def player_for(testbed):
    from player import ProfilerPlayer

    from llmpack.controller.client import KubeClient

    return ProfilerPlayer(
        kube=KubeClient.from_config(str(testbed.kubeconfig)), server=testbed.server, ca_file=testbed.ca_file
    )


def wait_phase(
    player, operator: Operator, namespace: str, name: str, phase: str = "Ready", timeout: float = 120
) -> dict:
    """Wait for `phase`, playing the profiling container on the way; fail fast on Failed."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        player.play_once(namespace)
        obj = player.kube.get("LLMDeployment", namespace, name) or {}
        status = obj.get("status") or {}
        if status.get("phase") == phase:
            return obj
        if status.get("phase") == "Failed" or operator.proc.poll() is not None:
            break
        time.sleep(0.3)
    pytest.fail(
        f"{namespace}/{name} did not reach {phase}; status: {json.dumps(status, indent=1)}\n"
        f"player: {player.log}\noperator log:\n{operator.text()[-4000:]}",
        pytrace=False,
    )


def apply_example(testbed, namespace: str) -> str:
    testbed.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    return yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]


def assert_no_forbidden(operator: Operator) -> None:
    denied = operator.forbidden()
    assert not denied, "the operator was refused something under the chart's RBAC:\n" + "\n".join(denied[:20])


def installed_deployment(testbed, namespace: str, name: str) -> dict:
    return json.loads(testbed.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout)


# =================================================================================================
# helm lint and helm template: no cluster state involved
# =================================================================================================

VALUE_SETS = [
    (),
    ("replicaCount=2",),
    ("watchNamespaces={team-a,team-b}",),
    ("watchNamespaces={team-a,llmpack-system}", "replicaCount=3"),
    ("metrics.port=0",),
    ("leaderElection.enabled=false",),
    ("grafanaDashboard.enabled=true",),
]


@pytest.mark.parametrize("sets", VALUE_SETS, ids=lambda s: ",".join(s) or "defaults")
def test_helm_lint_passes(helm, sets):
    args = ["lint", "--strict", str(CHART), "--kube-version", kube_version()]
    for value in sets:
        args += ["--set", value]
    result = helm(*args)
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("sets", VALUE_SETS, ids=lambda s: ",".join(s) or "defaults")
def test_rbac_has_no_wildcard_and_no_secrets(helm, sets):
    docs = render(helm, *sets)
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            where = f"{role['kind']} {role['metadata']['name']}: {rule}"
            assert "nonResourceURLs" not in rule, where
            for key in ("apiGroups", "resources", "verbs"):
                assert rule[key], where
                assert not any("*" in item for item in rule[key]), where
            assert not {"secrets", "escalate", "bind", "impersonate"} & (
                set(rule["resources"]) | set(rule["verbs"])
            ), where


def test_operator_pod_is_hardened(helm):
    docs = render(helm)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = deployment_container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # the operator image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsNonRoot"] is True
    # the only writable place is an emptyDir at /tmp (the image's HOME)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # liveness on kopf's health endpoint, which the args point at
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8081
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    assert "readinessProbe" not in container
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_defaults_run_one_elected_operator_watching_everything(helm):
    docs = render(helm, namespace="ops")
    (deployment,) = by_kind(docs, "Deployment")
    container = deployment_container(deployment)
    assert deployment["spec"]["replicas"] == 1
    # the successor waits as a standby until the old pod releases the Lease on SIGTERM
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert "command" not in container  # the image's ENTRYPOINT, `llmpack operator`
    assert not [a for a in container["args"] if a.startswith(("--peering", "--namespace", "--priority"))]
    assert [a for a in container["args"] if a.startswith("--leader-elect")] == [
        "--leader-elect",
        "--leader-elect-lease-name=llmpack",
        "--leader-elect-lease-namespace=ops",
        "--leader-elect-lease-duration=15s",
        "--leader-elect-renew-deadline=10s",
        "--leader-elect-retry-period=2s",
    ]
    assert "--log-level=INFO" in container["args"] and "--metrics-port=8080" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMPACK_NAMESPACE"] == "ops"  # the profile cache lives in the release namespace
    assert env["LLMPACK_PROFILER_IMAGE"] == "ghcr.io/llmpack/llmpack-profiler:0.1.0"
    assert env["LLMPACK_SERVING_IMAGE"] == "ghcr.io/llmpack/llmpack-serving:0.1.0"
    assert container["image"] == "ghcr.io/llmpack/llmpack-operator:0.1.0"
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",  # the Lease
        "RoleBinding",
        "Deployment",
        "Service",
    }
    assert not [d for d in docs if d["apiVersion"].startswith(("kopf.dev", "monitoring.coreos.com"))]


def test_images_and_watched_namespaces_reach_the_operator(helm):
    docs = render(
        helm,
        "images.operator.tag=1.2.3",
        "images.profiler.repository=registry.example/p",
        "images.serving.tag=sha256:" + "a" * 64,
        "watchNamespaces={team-a,team-b}",
        "logLevel=DEBUG",
    )
    container = deployment_container(docs)
    assert container["image"] == "ghcr.io/llmpack/llmpack-operator:1.2.3"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMPACK_PROFILER_IMAGE"] == "registry.example/p:0.1.0"
    assert env["LLMPACK_SERVING_IMAGE"] == "ghcr.io/llmpack/llmpack-serving@sha256:" + "a" * 64
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--log-level=DEBUG" in container["args"]
    # namespaced rules only where watched; the cache gets its own Role in the release namespace
    assert {b["metadata"]["name"] for b in by_kind(docs, "ClusterRoleBinding")} == {"llmpack-cluster"}
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in by_kind(docs, "RoleBinding")}
    assert bindings == {
        ("team-a", "llmpack-namespaced"),
        ("team-b", "llmpack-namespaced"),
        ("llmpack-system", "llmpack-profile-cache"),
        ("llmpack-system", "llmpack-leader-election"),
    }
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "Role")}
    assert set(roles) == {"llmpack-profile-cache", "llmpack-leader-election"}
    assert roles["llmpack-profile-cache"]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch", "delete"]}
    ]


def test_tenant_and_cost_values_reach_the_operator_as_flags_it_parses(helm):
    """Prices, the NetworkPolicy's peers, the auto-sharing choice and the InferencePools' default
    endpoint picker become operator flags, which the operator's own parser reads back as given."""
    import argparse

    from llmpack.controller import cli as operator_cli

    docs = render(
        helm,
        "cost.gpuHourPrices.NVIDIA-H100-80GB-HBM3=2.49",
        "cost.gpuHourPrices.NVIDIA-A100-SXM4-80GB=1.5",
        "cost.currency=EUR",
        "networkPolicy.enabled=true",
        "networkPolicy.from[0].namespaceSelector.matchLabels.team=gateway",
        "sharing.autoColocatesNamespaces=false",
        "inferencePool.endpointPicker.name=vllm-epp",
    )
    args = deployment_container(docs)["args"]
    parser = argparse.ArgumentParser()
    operator_cli.add_arguments(parser)
    parsed = parser.parse_args(args)
    assert sorted(parsed.gpu_hour_price) == [("NVIDIA-A100-SXM4-80GB", 1.5), ("NVIDIA-H100-80GB-HBM3", 2.49)]
    assert parsed.currency == "EUR"
    assert json.loads(parsed.network_policy_from) == [
        {"namespaceSelector": {"matchLabels": {"team": "gateway"}}}
    ]
    assert parsed.auto_colocates_namespaces is False
    assert parsed.inference_pool_endpoint_picker == "vllm-epp:9002"
    defaults = parser.parse_args(deployment_container(render(helm))["args"])
    assert (
        defaults.gpu_hour_price,
        defaults.network_policy_from,
        defaults.auto_colocates_namespaces,
        defaults.inference_pool_endpoint_picker,
    ) == ([], None, True, None)


def test_several_replicas_elect_a_leader_on_one_lease(helm):
    docs = render(helm, "replicaCount=2", "leaderElection.leaseName=ha", "leaderElection.leaseDuration=30s")
    (deployment,) = by_kind(docs, "Deployment")
    container = deployment_container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert "command" not in container  # no kopf peering priority wrapper any more
    assert "--leader-elect" in container["args"]
    assert "--leader-elect-lease-name=ha" in container["args"]
    assert "--leader-elect-lease-duration=30s" in container["args"]
    assert not [d for d in docs if d["apiVersion"].startswith("kopf.dev")]
    assert not [
        r for d in docs if d["kind"].endswith("Role") for r in d["rules"] if "kopf.dev" in r["apiGroups"]
    ]
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "llmpack-leader-election"]
    assert role["metadata"]["namespace"] == "llmpack-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["ha"],
            "verbs": ["get", "update"],
        },
    ]
    (binding,) = [
        d for d in by_kind(docs, "RoleBinding") if d["roleRef"]["name"] == "llmpack-leader-election"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llmpack", "namespace": "llmpack-system"}
    ]


def test_without_leader_election_one_replica_recreated(helm):
    docs = render(helm, "leaderElection.enabled=false")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # two unelected operators never overlap
    assert not [a for a in deployment_container(deployment)["args"] if a.startswith("--leader-elect")]
    assert not by_kind(docs, "Role")
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        kube_version(),
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicaCount=2",
        check=False,
    )
    assert result.returncode != 0 and "leaderElection.enabled=true" in result.stderr, result.stderr


def test_service_monitor_only_when_enabled(helm):
    assert not by_kind(render(helm), "ServiceMonitor")
    monitor_api = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    docs = render(
        helm,
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prom",
        extra=monitor_api,
    )
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # llmpack_llmdeployment_*{namespace} keep the LLMDeployment's namespace, not the operator pod's
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["name"] == "metrics"
    # without the prometheus-operator's CRD the install says why instead of failing on an unknown kind
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        kube_version(),
        "--set",
        "metrics.serviceMonitor.enabled=true",
        check=False,
    )
    assert result.returncode != 0 and "metrics.serviceMonitor.enabled" in result.stderr


def test_grafana_dashboard_only_when_enabled_where_the_sidecar_looks(helm):
    assert not by_kind(render(helm), "ConfigMap")
    (dashboard,) = by_kind(render(helm, "grafanaDashboard.enabled=true", namespace="ops"), "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "ops"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default label
    ((key, text),) = dashboard["data"].items()
    assert key.endswith(".json")  # the sidecar writes each key as a file and Grafana loads *.json
    assert json.loads(text) == json.loads(DASHBOARD.read_text())
    (moved,) = by_kind(
        render(
            helm,
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.label=example.com/dashboard",
            "grafanaDashboard.labelValue=llm",
            "grafanaDashboard.annotations.grafana_folder=LLM",
        ),
        "ConfigMap",
    )
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["labels"]["example.com/dashboard"] == "llm"
    assert "grafana_dashboard" not in moved["metadata"]["labels"]
    assert moved["metadata"]["annotations"] == {"grafana_folder": "LLM"}


# =================================================================================================
# the schema refuses bad values at install, naming the field
# =================================================================================================


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("logLevel=LOUD", "/logLevel"),
        ("replicaCount=-1", "/replicaCount"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("metrics.port=70000", "/metrics/port"),
        ("images.operator.pullPolicy=Sometimes", "/images/operator/pullPolicy"),
        ("workers=0", "/workers"),
        ("leaderElection.retryPeriod=2", "/leaderElection/retryPeriod"),
        ("grafanaDashboard.label=not a label", "/grafanaDashboard/label"),
        ("grafanaDashboard.namespace=Monitoring", "/grafanaDashboard/namespace"),
        ("cost.gpuHourPrices.NVIDIA-H100-80GB-HBM3=cheap", "/cost/gpuHourPrices/NVIDIA-H100-80GB-HBM3"),
        ("loglevel=DEBUG", "loglevel"),  # a misspelt key is refused, not ignored
    ],
)
def test_bad_value_is_refused_at_install_naming_the_field(helm, testbed, namespace, value, field):
    result = helm("install", RELEASE, str(CHART), "-n", namespace, "--set", value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert field in result.stderr, result.stderr
    assert RELEASE not in helm("list", "-q", "-n", namespace).stdout
    deployments = testbed.kubectl("get", "deployments", "-n", namespace, "-o", "name").stdout
    assert not deployments.strip()


# =================================================================================================
# installed: the operator under the chart's RBAC takes an LLMDeployment to Ready
# =================================================================================================


@dataclass
class Installed:
    namespace: str  # the release namespace (the profile cache)
    apps: str  # where the LLMDeployment lives
    kubeconfig: Path  # the chart ServiceAccount's token
    logs: Path
    player: object
    name: str = ""  # the LLMDeployment
    operator: Operator | None = None
    operators: list[Operator] = field(default_factory=list)

    def start(self, testbed, tag: str) -> Operator:
        if self.operator is not None:
            self.operator.stop()
        deployment = installed_deployment(testbed, self.namespace, RELEASE)
        self.operator = start_operator(
            testbed, deployment, self.kubeconfig, self.logs / f"operator-{tag}.log"
        )
        self.operators.append(self.operator)
        return self.operator


@pytest.fixture(scope="module")
def installed(testbed, admin_api, helm, tmp_path_factory):
    suffix = uuid.uuid4().hex[:5]
    release_ns = kube.create_namespace(admin_api, f"chart-release-{suffix}")
    apps_ns = kube.create_namespace(admin_api, f"chart-apps-{suffix}")
    logs = tmp_path_factory.mktemp("chart-operator")
    state = None
    try:
        helm("install", RELEASE, str(CHART), "-n", release_ns)
        kubeconfig = kube.service_account_kubeconfig(
            testbed, admin_api, release_ns, RELEASE, logs / "sa.kubeconfig"
        )
        state = Installed(release_ns, apps_ns, kubeconfig, logs, player_for(testbed))
        state.start(testbed, "install")
        yield state
    finally:
        for operator in state.operators if state else []:
            operator.stop()
        helm("uninstall", RELEASE, "-n", release_ns, check=False)
        kube.delete_namespace(admin_api, apps_ns)
        kube.delete_namespace(admin_api, release_ns)


def test_install_keeps_the_crd_and_runs_the_operator_under_its_service_account(testbed, installed):
    testbed.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=30s")
    installed.name = apply_example(testbed, installed.apps)
    obj = wait_phase(installed.player, installed.operator, installed.apps, installed.name)
    assert obj["status"]["recommendation"]["mode"] == "mps"
    assert_no_forbidden(installed.operator)
    # the profile went to the cache in the release namespace (LLMPACK_NAMESPACE from the chart)
    cache = testbed.kubectl(
        "get",
        "configmaps",
        "-n",
        installed.namespace,
        "-l",
        "app.kubernetes.io/component=profile-cache",
        "-o",
        "name",
    ).stdout
    assert cache.strip(), f"no profile cache ConfigMap in {installed.namespace}"
    # the Events the operator posted are there for `kubectl describe`
    events = testbed.kubectl(
        "get",
        "events",
        "-n",
        installed.apps,
        "--field-selector",
        f"involvedObject.name={installed.name}",
        "-o",
        "name",
    ).stdout
    assert events.strip()


def test_can_i_list_equals_the_permission_table(testbed, installed):
    granted = granted_by_chart(testbed, installed.namespace, installed.namespace, RELEASE)
    assert granted == expected_grants(lease=RELEASE), "in the release namespace (the Lease)"
    granted = granted_by_chart(testbed, installed.apps, installed.namespace, RELEASE)
    assert granted == expected_grants(), f"in namespace {installed.apps}"
    user = f"system:serviceaccount:{installed.namespace}:{RELEASE}"
    for verb in ("get", "list", "watch"):
        answer = testbed.kubectl(
            "auth", "can-i", verb, "secrets", f"--as={user}", "-n", installed.apps, check=False
        )
        assert answer.stdout.strip() == "no", f"{verb} secrets: {answer.stdout}"


def test_metrics_answer_after_a_reconcile(installed):
    text = installed.operator.metrics()
    samples = metric_samples(text)
    assert samples.get("llmpack_reconcile_duration_seconds_count", 0) >= 1, text
    assert samples.get('llmpack_llmdeployments{phase="Ready"}') == 1, text
    assert samples.get("llmpack_gpus_in_use", 0) >= 1, text


def test_metrics_count_profile_cache_lookups(installed):
    samples = metric_samples(installed.operator.metrics())
    lookups = {k: v for k, v in samples.items() if k.startswith("llmpack_profile_cache_lookups_total{")}
    assert sum(lookups.values()) >= 1, lookups


def test_helm_upgrade_keeps_the_llmdeployment_ready(testbed, helm, installed):
    serving_before = installed_deployment(testbed, installed.apps, installed.name)
    helm(
        "upgrade", RELEASE, str(CHART), "-n", installed.namespace, "--reuse-values", "--set", "logLevel=DEBUG"
    )
    deployment = installed_deployment(testbed, installed.namespace, RELEASE)
    assert "--log-level=DEBUG" in deployment_container(deployment)["args"]
    # what the upgraded Deployment would run: a new operator, same ServiceAccount token
    operator = installed.start(testbed, "upgraded")
    kube.wait_for(
        lambda: metric_samples(operator.metrics()).get("llmpack_reconcile_duration_seconds_count", 0) >= 1,
        timeout=60,
        what="a reconcile by the upgraded operator",
    )
    obj = installed.player.kube.get("LLMDeployment", installed.apps, installed.name)
    assert obj["status"]["phase"] == "Ready", obj["status"]
    assert " DEBUG " in operator.text()  # the new log level reached the operator
    assert_no_forbidden(operator)
    serving_after = installed_deployment(testbed, installed.apps, installed.name)
    assert serving_after["metadata"]["generation"] == serving_before["metadata"]["generation"], (
        "the serving Deployment was changed by the upgrade"
    )


def test_helm_uninstall_removes_the_operator_and_its_rbac_but_keeps_the_crd(testbed, helm, installed):
    installed.operator.stop()
    helm("uninstall", RELEASE, "-n", installed.namespace, "--wait")
    for kind, ns in (
        ("deployment", installed.namespace),
        ("serviceaccount", installed.namespace),
        ("service", installed.namespace),
    ):
        left = testbed.kubectl(
            "get", kind, "-n", ns, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
        ).stdout
        assert not left.strip(), f"{kind} left after uninstall: {left}"
    for kind in ("clusterrole", "clusterrolebinding"):
        left = testbed.kubectl(
            "get", kind, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
        ).stdout
        assert not left.strip(), f"{kind} left after uninstall: {left}"
    testbed.kubectl("get", "crd", CRD)
    # the CRD stays, and so do the LLMDeployments and what they serve
    assert installed.player.kube.get("LLMDeployment", installed.apps, installed.name)
    assert installed_deployment(testbed, installed.apps, installed.name)


# =================================================================================================
# watchNamespaces and leader election, for real
# =================================================================================================


def test_namespaced_install_with_two_elected_replicas(testbed, admin_api, helm, tmp_path):
    """Two replicas watching one namespace: the namespaced permissions exist only there, the Lease
    permissions only in the release namespace; the replicas elect one leader under those grants,
    the leader takes an LLMDeployment to Ready without a 403 while the standby reconciles nothing,
    and when the leader stops (SIGTERM) it releases the Lease and the standby takes over at once."""
    release = "llmpack-ns"
    suffix = uuid.uuid4().hex[:5]
    release_ns = kube.create_namespace(admin_api, f"chart-ns-release-{suffix}")
    apps_ns = kube.create_namespace(admin_api, f"chart-ns-apps-{suffix}")
    other_ns = kube.create_namespace(admin_api, f"chart-ns-other-{suffix}")
    operators: list[Operator] = []
    try:
        helm(
            "install",
            release,
            str(CHART),
            "-n",
            release_ns,
            "--set",
            "replicaCount=2",
            "--set",
            f"watchNamespaces={{{apps_ns}}}",
        )
        cluster_scoped = cluster_scoped_resources(testbed)
        watched = expected_grants()
        cluster_rows = {r: v for r, v in watched.items() if r in cluster_scoped}
        assert granted_by_chart(testbed, apps_ns, release_ns, release) == watched
        assert granted_by_chart(testbed, other_ns, release_ns, release) == cluster_rows
        lease_rows = {r: v for r, v in expected_grants(lease=release).items() if r not in watched}
        assert granted_by_chart(testbed, release_ns, release_ns, release) == {
            **cluster_rows,
            **lease_rows,
            "configmaps": {"get", "create", "patch", "delete"},
        }

        kubeconfig = kube.service_account_kubeconfig(testbed, admin_api, release_ns, release, tmp_path / "sa")
        deployment = installed_deployment(testbed, release_ns, release)
        for replica in ("a", "b"):
            operators.append(
                start_operator(testbed, deployment, kubeconfig, tmp_path / f"operator-{replica}.log")
            )

        def leading(operator: Operator) -> bool:
            samples = metric_samples(operator.metrics())
            return samples.get(f'leader_election_master_status{{name="{release}"}}') == 1

        leader = kube.wait_for(
            lambda: next((o for o in operators if leading(o)), None), timeout=30, what="a leader"
        )
        (standby,) = [o for o in operators if o is not leader]
        lease = json.loads(testbed.kubectl("get", "lease", release, "-n", release_ns, "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"] and lease["spec"]["leaseDurationSeconds"] == 15

        name = apply_example(testbed, apps_ns)
        wait_phase(player_for(testbed), leader, apps_ns, name)
        for operator in operators:
            assert_no_forbidden(operator)
        assert not leading(standby)
        idle = metric_samples(standby.metrics())
        assert idle.get("llmpack_reconcile_duration_seconds_count", 0) == 0, "the standby reconciled"
        assert idle.get('workqueue_work_duration_seconds_count{name="llmdeployment"}', 0) == 0

        leader.stop()  # SIGTERM: drains, releases the Lease
        stopped = time.monotonic()
        kube.wait_for(lambda: leading(standby), timeout=15, what="the standby taking over")
        assert time.monotonic() - stopped < 10, "the Lease was not released: the standby waited it out"
        kube.wait_for(
            lambda: metric_samples(standby.metrics()).get("llmpack_reconcile_duration_seconds_count", 0) >= 1,
            timeout=30,
            what="a reconcile by the new leader",
        )
        assert "released lease" in leader.text()
        assert_no_forbidden(standby)
    finally:
        for operator in operators:
            operator.stop()
        helm("uninstall", release, "-n", release_ns, check=False)
        for ns in (apps_ns, other_ns, release_ns):
            kube.delete_namespace(admin_api, ns)


# -- helpers --------------------------------------------------------------------------------------


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments skipped)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
