"""Chaos on the real control plane: kill the operator at many points, restart the API server and
etcd, delete what the operator made while it works, race writers. After each fault every
LLMDeployment must converge to what its spec asks for, with no duplicate or orphaned object and
its status intact.

`pytest -m chaos` runs them; LLMPACK_CHAOS_KILLS sets how many operator kills (default 20).
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
import testbed as testbed_lib
import yaml
from operator_runner import OPERATOR_NAMESPACE, OperatorRunner
from test_operator import EXAMPLES, serving_pods, wait_phase

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

MANAGED = "app.kubernetes.io/managed-by=llmpack"
KILLS = int(os.environ.get("LLMPACK_CHAOS_KILLS", "20"))
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    print(f"\nchaos: faults injected {TALLY['faults']}, convergences {TALLY['converged']}")


def apply_doc(kubectl, namespace: str, filename: str, name: str, **spec_changes) -> str:
    doc = yaml.safe_load((EXAMPLES / filename).read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(spec_changes)
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    return name


def assert_converged(kube, namespace: str, names: list[str]) -> None:
    """Each LLMDeployment Ready for its current generation, exactly the objects it should own, and
    nothing managed by llmpack that lacks a live owner."""
    uids = {}
    for name in names:
        obj = kube.get("LLMDeployment", namespace, name)
        status = obj["status"]
        assert status["phase"] == "Ready", (name, status)
        assert status["observedGeneration"] == obj["metadata"]["generation"], (name, status)
        assert status["recommendation"]["maxNumSeqs"] >= 1
        uids[obj["metadata"]["uid"]] = name
        selector = f"llmpack.io/llmdeployment={name}"
        assert len(kube.list("Deployment", namespace, label_selector=selector)) == 1, name
        assert len(kube.list("Service", namespace, label_selector=selector)) == 1, name
        templates = kube.list("ResourceClaimTemplate", namespace, label_selector=selector)
        assert len(templates) == (1 if status["recommendation"].get("mpsProvider") == "dra" else 0), name
        pods = [p for p in serving_pods(kube, namespace, name) if not p["metadata"].get("deletionTimestamp")]
        per_pod = status["recommendation"]["replicasPerGPU"] if templates else 1
        assert len(pods) * per_pod == status["recommendation"]["replicas"], (name, len(pods))
    for kind in ("Deployment", "Service", "ResourceClaimTemplate", "Job", "ConfigMap", "ServiceAccount"):
        for obj in kube.list(kind, namespace, label_selector=MANAGED):
            owners = [r["uid"] for r in obj["metadata"].get("ownerReferences", [])]
            assert any(uid in uids for uid in owners), f"orphaned {kind} {obj['metadata']['name']}"
    jobs = kube.list("Job", namespace, label_selector=MANAGED)
    assert not jobs, f"profiling Jobs left after profiling: {[j['metadata']['name'] for j in jobs]}"
    TALLY["converged"] += 1


def wait_all_ready(kube, player, namespace, names, timeout=180):
    for name in names:
        wait_phase(kube, player, namespace, name, timeout=timeout)


def test_operator_killed_at_many_points_converges(operator_process, kube_admin, kubectl, player, namespace):
    rng = random.Random(20261124)
    names = [
        apply_doc(
            kubectl, namespace, "opt-1.3b-mps-dra.yaml", "chaos-mps", profiling={"reuseCachedProfile": False}
        ),
        apply_doc(
            kubectl, namespace, "opt-2.7b-mig.yaml", "chaos-mig", profiling={"reuseCachedProfile": False}
        ),
        apply_doc(
            kubectl, namespace, "opt-1.3b-auto.yaml", "chaos-auto", profiling={"reuseCachedProfile": False}
        ),
    ]
    phases_at_kill: Counter[str] = Counter()
    for i in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.8))
        for name in names:
            phase = ((kube_admin.get("LLMDeployment", namespace, name) or {}).get("status") or {}).get(
                "phase"
            )
            phases_at_kill[phase or "Pending"] += 1
        operator_process.kill()
        TALLY["faults"] += 1
        if i % 3 == 2:  # let profiling progress while the operator is down, as a real Job would
            player.play_once(namespace)
        # a spec change while the operator is dead must be picked up after the restart
        if i == KILLS // 2:
            kubectl(
                "patch",
                "llmd",
                "chaos-auto",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"spec":{"serving":{"extraArgs":["--enable-prefix-caching"]}}}',
            )
        operator_process.start()
        if i == KILLS // 3:
            # Let one move past profiling before the remaining kills, so that they also land in
            # other phases however slow this machine is (kills every ~0.4 s can otherwise keep
            # every object in Profiling).
            deadline = time.monotonic() + 120
            while not {"Deploying", "Ready"} & {
                ((kube_admin.get("LLMDeployment", namespace, n) or {}).get("status") or {}).get("phase")
                for n in names
            }:
                assert time.monotonic() < deadline, "nothing left Profiling in 120 s"
                player.play_once(namespace)
                time.sleep(0.2)
    assert operator_process.alive
    wait_all_ready(kube_admin, player, namespace, names)
    assert_converged(kube_admin, namespace, names)
    args = kube_admin.get("LLMDeployment", namespace, "chaos-auto")["status"]["recommendation"]["vllmArgs"]
    deployment = kube_admin.get("Deployment", namespace, "chaos-auto")
    rendered = str(deployment["spec"]["template"]["spec"])
    assert "--enable-prefix-caching" in rendered and args
    print(f"\nphases seen at the {KILLS} kills (3 objects each): {dict(phases_at_kill)}")
    assert len(phases_at_kill) >= 2, phases_at_kill


def test_api_server_and_etcd_restarts_mid_reconcile(
    operator_process, testbed, kube_admin, kubectl, player, namespace
):
    if "kube-apiserver" not in testbed.launches:
        pytest.skip("this testbed was started by an older hack/testbed/up without restart records")
    name = apply_doc(
        kubectl,
        namespace,
        "llama-2-7b-exclusive.yaml",
        "chaos-api",
        model={"name": "meta-llama/Llama-2-7b-hf"},
    )
    testbed.restart("kube-apiserver")
    TALLY["faults"] += 1
    player.play_once(namespace)
    testbed.restart("etcd")
    testbed._wait("kube-apiserver", "the API server to answer again", testbed.apiserver_ready, 60)
    TALLY["faults"] += 1
    wait_all_ready(kube_admin, player, namespace, [name], timeout=180)
    assert operator_process.alive, operator_process.log_tail()
    assert_converged(kube_admin, namespace, [name])


def test_deletions_mid_flight_are_repaired(operator_process, kube_admin, kubectl, player, namespace):
    name = apply_doc(
        kubectl, namespace, "opt-1.3b-mps-dra.yaml", "chaos-del", profiling={"reuseCachedProfile": False}
    )
    job = None
    deadline = time.monotonic() + 30
    while job is None and time.monotonic() < deadline:
        jobs = kube_admin.list("Job", namespace, label_selector=MANAGED)
        job = jobs[0] if jobs else None
        time.sleep(0.2)
    assert job, "no profiling Job appeared"
    kube_admin.delete("Job", namespace, job["metadata"]["name"])  # the profiling Job, mid-flight
    TALLY["faults"] += 1
    obj = wait_phase(kube_admin, player, namespace, name, timeout=120)
    pod = serving_pods(kube_admin, namespace, name)[0]
    kube_admin.delete("Pod", namespace, pod["metadata"]["name"])  # a serving pod
    TALLY["faults"] += 1
    cache = obj["status"]["profileRef"]
    kube_admin.delete("ConfigMap", cache["namespace"], cache["configMap"])  # the cached profile
    TALLY["faults"] += 1
    kubectl("annotate", "llmd", name, "-n", namespace, "chaos/poke=1")  # an event, to reconcile now
    time.sleep(1)
    wait_phase(kube_admin, player, namespace, name, timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pods = [
            p for p in serving_pods(kube_admin, namespace, name) if not p["metadata"].get("deletionTimestamp")
        ]
        if len(pods) == 1 and (pods[0].get("status") or {}).get("phase") == "Running":
            break
        time.sleep(0.3)
    assert_converged(kube_admin, namespace, [name])
    assert kube_admin.get("ConfigMap", cache["namespace"], cache["configMap"]), "profile not cached again"


def test_two_writers_racing_on_one_object(operator_process, kube_admin, kubectl, player, namespace):
    name = apply_doc(kubectl, namespace, "opt-1.3b-auto.yaml", "chaos-race")
    wait_phase(kube_admin, player, namespace, name)
    conflicts = Counter()

    def writer(tag: str, count: int) -> None:
        for i in range(count):
            obj = kube_admin.get("LLMDeployment", namespace, name)
            obj["spec"].setdefault("serving", {})["extraArgs"] = [f"--served-model-name={tag}-{i}"]
            try:
                kube_admin.request(
                    "PUT", f"/apis/llmpack.io/v1alpha1/namespaces/{namespace}/llmdeployments/{name}", body=obj
                )
            except Exception as err:  # 409 from a resourceVersion another writer moved
                if "409" in str(err) or "Conflict" in str(err):
                    conflicts["409"] += 1
                else:
                    raise

    threads = [threading.Thread(target=writer, args=(tag, 15)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    TALLY["faults"] += 1
    final = kube_admin.get("LLMDeployment", namespace, name)
    wanted = final["spec"]["serving"]["extraArgs"][0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        obj = kube_admin.get("LLMDeployment", namespace, name)
        if (
            obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
            and obj["status"]["phase"] == "Ready"
        ):
            break
        time.sleep(0.3)
    assert_converged(kube_admin, namespace, [name])
    assert wanted in str(kube_admin.get("Deployment", namespace, name)["spec"]["template"]["spec"])
    print(f"\nwriters saw {conflicts['409']} conflicts")
    assert "Traceback" not in Path(operator_process.log_path).read_text()


# -- two elected replicas: the leader SIGKILLed mid-reconcile ---------------------------------------

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 15.0, 10.0, 2.0  # client-go's defaults, the chart's


class ElectedReplica(OperatorRunner):
    """`llmpack operator --leader-elect`, one of several replicas sharing a Lease, with a metrics
    port of its own to ask whether it leads."""

    def __init__(self, env: dict[str, str], log_path: Path, identity: str, lease: str):
        (port,) = testbed_lib.free_ports(1)
        super().__init__(
            env,
            log_path,
            metrics_port=port,
            extra_args=[
                *("--leader-elect", "--leader-elect-lease-name", lease),
                *("--leader-elect-identity", identity),
                *("--leader-elect-lease-duration", f"{LEASE_DURATION:g}s"),
                *("--leader-elect-renew-deadline", f"{RENEW_DEADLINE:g}s"),
                *("--leader-elect-retry-period", f"{RETRY_PERIOD:g}s"),
            ],
        )
        self.identity = identity
        self.lease = lease

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def leading(self) -> bool:
        return self.metrics().get(f'leader_election_master_status{{name="{self.lease}"}}') == 1

    def reconciles(self) -> float:
        return self.metrics().get("llmpack_reconcile_duration_seconds_count", 0)


class Recorder(threading.Thread):
    """Polls what exists while the test runs: every uid each Job and Deployment name had, and each
    LLMDeployment's phase history (a name that ever has two uids was deleted and made again)."""

    def __init__(self, kube, namespace: str):
        super().__init__(daemon=True)
        self.kube, self.namespace = kube, namespace
        self.uids: dict[tuple[str, str], set[str]] = {}
        self.phases: dict[str, list[str]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                for kind in ("Job", "Deployment"):
                    for obj in self.kube.list(kind, self.namespace, label_selector=MANAGED):
                        meta = obj["metadata"]
                        self.uids.setdefault((kind, meta["name"]), set()).add(meta["uid"])
                for obj in self.kube.list("LLMDeployment", self.namespace):
                    phase = (obj.get("status") or {}).get("phase", "Pending")
                    history = self.phases.setdefault(obj["metadata"]["name"], [])
                    if not history or history[-1] != phase:
                        history.append(phase)
            except Exception:  # an API hiccup: poll again
                pass
            self.done.wait(0.2)


def micro(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def test_leader_killed_mid_reconcile_the_standby_takes_over(
    operator_process, testbed, kube_admin, kubectl, player, namespace, tmp_path
):
    """Two `llmpack operator --leader-elect` replicas. The standby reconciles nothing while the
    leader works; the leader is SIGKILLed while LLMDeployments are mid-flight; the standby takes
    over once the lease expired by its clock (measured), and every LLMDeployment ends Ready once,
    nothing made twice, no status lost."""
    operator_process.stop()  # the shared unelected operator would reconcile this namespace too
    lease = f"chaos-{uuid.uuid4().hex[:6]}"
    replicas = [
        ElectedReplica(testbed.env(), tmp_path / f"replica-{n}.log", f"replica-{n}", lease) for n in "ab"
    ]
    recorder = Recorder(kube_admin, namespace)

    def read_lease() -> dict:
        return kube_admin.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{lease}"
        )["spec"]

    def logs() -> str:
        return "\n".join(f"--- {r.identity}:\n{r.log_tail(3000)}" for r in replicas)

    try:
        replicas[0].start()
        deadline = time.monotonic() + 30
        while not replicas[0].leading():
            assert time.monotonic() < deadline, f"no leader in 30s\n{logs()}"
            time.sleep(0.2)
        replicas[1].start()  # the standby, started second so that the first surely leads
        leader, standby = replicas
        time.sleep(3)  # the standby is up and watching
        recorder.start()
        names = []
        # the three of the test above: together they fit the testbed's GPUs (one 3g.40gb MIG slice)
        for i, example in enumerate(["opt-1.3b-mps-dra.yaml", "opt-2.7b-mig.yaml", "opt-1.3b-auto.yaml"]):
            names.append(
                apply_doc(kubectl, namespace, example, f"ha-{i}", profiling={"reuseCachedProfile": False})
            )
        # Mid-flight: the first LLMDeployment Ready, the others still profiling (only the first's
        # profiling Job is played before the kill, so a fast machine cannot finish them all).
        deadline = time.monotonic() + 120
        while True:
            player.resolve_env(namespace)
            for pod in player.pending_pods(namespace):
                if pod["metadata"].get("labels", {}).get("llmpack.io/llmdeployment") == names[0]:
                    player.play(pod)
            phases = {
                n: ((kube_admin.get("LLMDeployment", namespace, n) or {}).get("status") or {}).get("phase")
                for n in names
            }
            ready = [n for n, p in phases.items() if p == "Ready"]
            if ready and len(ready) < len(names):
                break
            assert time.monotonic() < deadline, f"never mid-flight: {phases}\n{logs()}"
            time.sleep(0.1)
        assert leader.leading() and not standby.leading()
        assert leader.reconciles() > 0
        assert standby.reconciles() == 0, "the standby reconciled while the leader held the lease"
        assert standby.metrics().get('workqueue_work_duration_seconds_count{name="llmdeployment"}', 0) == 0
        before = {n: kube_admin.get("LLMDeployment", namespace, n) for n in ready}
        held = read_lease()
        assert held["holderIdentity"] == leader.identity

        leader.kill()
        killed = time.monotonic()
        TALLY["faults"] += 1
        last_renewal = held["renewTime"]
        while not standby.leading():
            spec = read_lease()
            if spec["holderIdentity"] == leader.identity:
                last_renewal = spec["renewTime"]
            assert time.monotonic() - killed < 2 * LEASE_DURATION, f"no takeover\n{logs()}"
            time.sleep(0.05)
        failover = time.monotonic() - killed
        taken = read_lease()
        since_renewal = (micro(taken["acquireTime"]) - micro(last_renewal)).total_seconds()
        print(
            f"\nleader failover: {failover:.1f}s after the SIGKILL, {since_renewal:.1f}s after the dead "
            f"leader's last renewal (lease duration {LEASE_DURATION:g}s, retry period {RETRY_PERIOD:g}s)"
        )
        assert taken["holderIdentity"] == standby.identity
        assert taken["leaseTransitions"] == held["leaseTransitions"] + 1
        # never before the lease expired (the standby saw the last renewal no earlier than it
        # happened), and within a lease duration plus the standby's jittered polling
        assert since_renewal >= LEASE_DURATION - 0.5, since_renewal
        assert since_renewal <= LEASE_DURATION + 2 * RETRY_PERIOD * 2.2 + 1, since_renewal

        wait_all_ready(kube_admin, player, namespace, names)
        assert_converged(kube_admin, namespace, names)
        assert standby.reconciles() > 0
        # the killed leader, restarted, joins as a standby and stays idle
        leader.start()
        time.sleep(5)
        assert not leader.leading() and leader.reconciles() == 0, logs()
        time.sleep(1)
        recorder.done.set()
        recorder.join(5)

        twice = {key: uids for key, uids in recorder.uids.items() if len(uids) > 1}
        assert not twice, f"made twice (deleted and recreated): {twice}"
        jobs = [name for kind, name in recorder.uids if kind == "Job"]
        assert jobs, "no profiling Job was seen: the test did not catch anything mid-flight"
        for name in names:
            history = recorder.phases[name]
            assert history.count("Ready") == 1 and history[-1] == "Ready", (name, history)
        for name, was in before.items():
            now = kube_admin.get("LLMDeployment", namespace, name)
            assert now["status"]["recommendation"] == was["status"]["recommendation"], name

            # the new leader found them as they were: no condition flipped, none re-stamped
            def transitions(obj):
                return {
                    c["type"]: (c["status"], c["lastTransitionTime"]) for c in obj["status"]["conditions"]
                }

            assert transitions(now) == transitions(was), name
            assert transitions(now)["Available"][0] == "True", name
        TALLY["converged"] += 1
    finally:
        recorder.done.set()
        for replica in replicas:
            replica.stop()
        operator_process.start()
