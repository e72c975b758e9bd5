"""A corpus of bad input against the real control plane with the operator running.

Every case is something a user (or a broken or hostile profiler) could send, and every one must be
answered with a message that says what to change:

(a, b) specs the API server refuses at `kubectl apply`: schema violations naming the field, CEL
       rules naming the fields they span, unknown fields (refused under kubectl's default strict
       field validation, pruned with a warning under --validate=warn);
(c)    specs the API server accepts and the operator cannot serve: phase Failed, a condition reason
       and a message;
(d)    tampered profile-cache ConfigMaps: a Warning event naming the field, the entry evicted, the
       model profiled again (the player plays the Job) and the deployment Ready;
(e)    absurd profiler output published into the result ConfigMap by the Job's own
       ServiceAccount: Failed with reason ProfileInvalid naming the field; the same identity
       cannot write anywhere else.

Afterwards the operator must still serve: a deployment that was Ready throughout still is, a
fixed spec recovers, a new one becomes Ready, the process is alive, its log has no Traceback and
no token. The last line printed is the tally of inputs tried and answered.

An hfTokenSecretRef naming a Secret that does not exist is reported through the pod that names it
(the operator may not read Secrets): the kubelet's CreateContainerConfigError, which on the testbed
the player produces by resolving env as a kubelet does.
Pure cases of the same corpus run in milliseconds in tests/unit/test_badinput_pure.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from operator_runner import OPERATOR_NAMESPACE  # noqa: E402
from test_badinput_pure import (  # noqa: E402  (the corpus tables are shared with the pure tests)
    BASE_SPEC,
    CEL_CASES,
    PROFILE_CASES,
    SCHEMA_CASES,
    UNKNOWN_FIELD_CASES,
    Case,
    case_spec,
    merged,
    simulated_profile,
    spoilt,
)

from llmpack.api.llmdeployment import LLMDeploymentSpec  # noqa: E402
from llmpack.controller.cache import DATA_KEY, ProfileCache, cache_configmap_name  # noqa: E402
from llmpack.controller.client import KubeClient, KubeError  # noqa: E402
from llmpack.controller.reconciler import OperatorConfig  # noqa: E402
from llmpack.planner.planning import profile_key  # noqa: E402
from llmpack.render.plan import (  # noqa: E402
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_PROFILE_KEY,
    MANAGED_BY,
)

pytestmark = [pytest.mark.e2e, pytest.mark.badinput]


PROFILER_SELECTOR = "app.kubernetes.io/component=profiler,app.kubernetes.io/managed-by=llmpack"
COMPLETE_ANNOTATION = "llmpack.io/testbed-complete"
SECRET = "hf-token"
TOKEN = f"hf_badinput_{uuid.uuid4().hex}"  # must never appear in a log, event, status or object
GRACE_S = 20  # how long the cases that show a bug get to be answered, after the others are
DEADLINE_S = 150

TALLY: dict[str, list[str]] = {"answered": [], "unanswered": []}


def record(case_id: str, answered: bool) -> None:
    TALLY["answered" if answered else "unanswered"].append(case_id)


@pytest.fixture(scope="module", autouse=True)
def print_tally(request):
    yield
    tried = len(TALLY["answered"]) + len(TALLY["unanswered"])
    if not tried:
        return
    line = (
        f"badinput: {tried} bad inputs tried, {len(TALLY['answered'])} answered with a message that "
        f"says what to change; unanswered: {', '.join(TALLY['unanswered']) or 'none'}"
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


def _namespace(admin_api, stem: str):
    import kube

    name = kube.create_namespace(admin_api, f"{stem}-{uuid.uuid4().hex[:5]}")
    yield name
    kube.delete_namespace(admin_api, name)


@pytest.fixture(scope="module")
def corpus_ns(admin_api):
    yield from _namespace(admin_api, "badinput")


@pytest.fixture(scope="module")
def output_ns(admin_api):
    yield from _namespace(admin_api, "badinput-out")


def llmd(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "llmpack.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def resource_name(prefix: str, case_id: str) -> str:
    return f"{prefix}-{case_id}"[:63].rstrip("-")


# -- (a, b) the API server refuses them at kubectl apply ----------------------------------------


@pytest.mark.parametrize("case", SCHEMA_CASES + CEL_CASES + UNKNOWN_FIELD_CASES, ids=lambda c: c.id)
def test_kubectl_apply_refuses_naming_the_field(case: Case, crd_installed, kubectl, kube_admin, corpus_ns):
    name = resource_name("s", case.id)
    result = kubectl(
        "apply", "-n", corpus_ns, "-f", "-", input=json.dumps(llmd(name, case_spec(case))), check=False
    )
    stored = kube_admin.get("LLMDeployment", corpus_ns, name)
    if stored is not None:
        kube_admin.delete("LLMDeployment", corpus_ns, name)
    answered = (
        result.returncode != 0
        and stored is None
        and case.field in result.stderr
        and all(hint in result.stderr for hint in case.hints)
    )
    record(case.id, answered)
    assert result.returncode != 0 and stored is None, f"the API server accepted it: {result.stdout}"
    assert case.field in result.stderr, result.stderr
    for hint in case.hints:
        assert hint in result.stderr, result.stderr


def test_unknown_fields_are_pruned_with_a_warning_when_validation_is_relaxed(
    crd_installed, kubectl, kube_admin, corpus_ns
):
    """What a user of --validate=warn sees: the object is created without the unknown fields, and
    kubectl prints a warning naming each. --validate=false prunes them silently."""
    spec = merged(BASE_SPEC, {"replicas": 3, "model": {"quantization": "awq"}})
    for flag, warned in (("--validate=warn", True), ("--validate=false", False)):
        name = f"pruned-{flag.split('=')[1]}"
        result = kubectl("apply", flag, "-n", corpus_ns, "-f", "-", input=json.dumps(llmd(name, spec)))
        stored = kube_admin.get("LLMDeployment", corpus_ns, name)
        kube_admin.delete("LLMDeployment", corpus_ns, name)
        assert "replicas" not in stored["spec"] and "quantization" not in stored["spec"]["model"]
        for field in ("spec.replicas", "spec.model.quantization"):
            assert (f'unknown field "{field}"' in result.stderr) is warned, result.stderr
    record("unknown-fields-under-validate-warn", True)


# -- (c), (d), (e): accepted by the API server, answered by the operator -------------------------


@dataclass(frozen=True)
class Served:
    """An LLMDeployment the API server accepts: the phase, reason and message the operator owes."""

    id: str
    spec: dict[str, Any]
    reason: str
    needles: tuple[str, ...]
    phase: str = "Failed"
    seed_profile: bool = False  # put a valid profile in the cache first (reach planning at once)


H100 = "NVIDIA-H100-80GB-HBM3"
EXCLUSIVE = {"sharing": {"mode": "exclusive"}}
HUGE = {"numLayers": 80, "numKvHeads": 8, "headDim": 128, "parameterBytes": 200_000_000_000}

OPERATOR_CASES: list[Served] = [
    Served(
        "unknown-gpu",
        {"gpu": {"product": "NVIDIA-RTX-9090"}},
        "UnknownGPU",
        ("gpu.product", "NVIDIA-RTX-9090", H100),
    ),
    Served(
        "unknown-model",
        {"model": {"name": "acme/unknown-7b"}, "profiling": {"backend": "simulated"}},
        "UnknownModel",
        ("spec.model.architecture",),
    ),
    Served(
        "slo-itl-mean-unmeetable",
        {"slo": {"itlMeanMs": 0.01}, **EXCLUSIVE},
        "AdvisorRefused",
        ("0.01 ms", "relax the SLO"),
    ),
    Served(
        "slo-itl-p99-unmeetable",
        {"slo": {"itlP99Ms": 0.01}, **EXCLUSIVE},
        "AdvisorRefused",
        ("p99 ITL SLO (0.01 ms)", "relax the SLO"),
    ),
    Served(
        "replicas-per-gpu-do-not-fit",
        {"sharing": {"mode": "mps", "maxReplicasPerGPU": 48}, "advisor": {"replicasPerGPU": 48}},
        "AdvisorRefused",
        ("replicasPerGPU=48 does not fit", "lower replicasPerGPU to"),
    ),
    Served(
        "max-num-seqs-does-not-fit",
        {"advisor": {"maxNumSeqs": 4096}, **EXCLUSIVE},
        "AdvisorRefused",
        ("one replica needs", "GiB", "batch size"),
    ),
    Served(
        "model-larger-than-the-gpu",
        {
            "model": {"name": "acme/huge-100b", "architecture": HUGE},
            "profiling": {"backoffLimit": 0},
            **EXCLUSIVE,
        },
        "WeightsDoNotFit",  # refused before any profiling: the weights alone exceed the GPU
        ("the weights of acme/huge-100b take 186.3 GiB", "NVIDIA-H100-80GB-HBM3", "quantized checkpoint"),
    ),
    Served(
        "product-without-nodes",
        {"gpu": {"product": "NVIDIA-A100-SXM4-80GB"}},
        "NoMatchingNodes",
        ("NVIDIA-A100-SXM4-80GB", "offers nothing", "Change sharing.mode or gpu.product"),
        seed_profile=True,
    ),
]

CACHE_SPOILERS = {c[0]: c for c in PROFILE_CASES}
CACHE_CASES: list[tuple[str, Any, str]] = [
    *(
        CACHE_SPOILERS[i]
        for i in (
            "garbage",
            "nan-throughput",
            "negative-throughput",
            "no-points",
            "percent-gpu-utilization",
            "future-schema",
            "absurd-itl",
        )
    ),
    ("no-data-key", None, DATA_KEY),
]
OUTPUT_CASES: list[tuple[str, Any, str]] = [
    *(
        CACHE_SPOILERS[i]
        for i in (
            "garbage",
            "nan-throughput",
            "infinite-itl",
            "negative-throughput",
            "absurd-throughput",
            "percent-gpu-utilization",
            "absurd-itl",
            "negative-weights",
            "no-points",
        )
    ),
    ("unpublished", None, "completed without publishing a profile"),
]

# Specs that name what the cluster does not have: a GPU product, a MIG slice, a Secret.
NO_CAPACITY_CASES: list[Served] = [
    Served(
        "product-without-nodes-uncached",
        {"gpu": {"product": "NVIDIA-A100-SXM4-80GB"}, "workload": {"promptTokens": 333}},
        "NoMatchingNodes",
        ("NVIDIA-A100-SXM4-80GB",),
    ),
    Served(
        "mig-profile-not-offered",
        {"sharing": {"mode": "mig", "migProfile": "7g.80gb"}},
        "NoMatchingNodes",
        ("7g.80gb",),
    ),
]
MISSING_SECRET = Served(
    "missing-secret",
    {"model": {"hfTokenSecretRef": {"name": "no-such-secret"}}, **EXCLUSIVE},
    "CreateContainerConfigError",
    ('secret "no-such-secret" not found',),
)
# Values that once passed the CRD and made objects the API server rejected; the CRD now refuses
# them itself, naming the field (the operator never sees them).
REJECTED_RENDER_CASES: list[Served] = [
    Served(
        "bad-resources", {"serving": {"resources": {"limits": {"cpu": "lots"}}}}, "", ("serving.resources",)
    ),
    Served("bad-node-selector", {"gpu": {"nodeSelector": {"bad key!": "v"}}}, "", ("gpu.nodeSelector",)),
    Served(
        "bad-env-source",
        {"serving": {"env": [{"name": "A", "valueFrom": {"bogus": {}}}]}},
        "",
        ("serving.env",),
    ),
    Served(
        "bad-secret-name", {"model": {"hfTokenSecretRef": {"name": "Not_A_Name"}}}, "", ("hfTokenSecretRef",)
    ),
    Served(
        "bad-toleration",
        {"gpu": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        "",
        ("gpu.tolerations",),
    ),
]


def profiler_image() -> str:
    return os.environ.get("LLMPACK_PROFILER_IMAGE") or OperatorConfig().profiler_image


def key_of(spec: dict[str, Any], namespace: str) -> str:
    """The operator's key for `spec` in `namespace` (per namespace: the chart's default)."""
    return profile_key(LLMDeploymentSpec.model_validate(spec), profiler_image(), scope=namespace)


def cache_spec(index: int) -> dict[str, Any]:
    """One profile key per tampered entry: the workload differs."""
    return merged(BASE_SPEC, {**EXCLUSIVE, "workload": {"promptTokens": 101 + index, "outputTokens": 99}})


def write_cache_entry(kube: KubeClient, key: str, raw: str | None) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": cache_configmap_name(key),
                "namespace": OPERATOR_NAMESPACE,
                "labels": {
                    LABEL_MANAGED_BY: MANAGED_BY,
                    LABEL_COMPONENT: "profile-cache",
                    LABEL_PROFILE_KEY: key[:63],
                },
            },
            "data": {} if raw is None else {DATA_KEY: raw},
        }
    )


def arg(pod: dict[str, Any], flag: str) -> str:
    args = pod["spec"]["containers"][0]["args"]
    return args[args.index(flag) + 1]


def as_service_account(testbed, admin_api, namespace: str, account: str) -> KubeClient:
    import kube

    return KubeClient(kube.service_account_client(testbed, admin_api, namespace, account))


def forbidden(call) -> bool:
    try:
        call()
    except KubeError as err:
        return err.status == 403
    return False


@dataclass
class Outcomes:
    objects: dict[str, dict[str, Any]]  # LLMDeployment name -> object at the end of the run
    events: list[dict[str, Any]]
    keys: dict[str, str]  # cache case -> profile key written
    rbac: dict[str, bool]  # what the profiler identity tried outside its result -> forbidden
    seconds: float

    def events_of(self, name: str, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["involvedObject"]["name"] == name and e["reason"] == reason]


def _settled(obj: dict[str, Any] | None, phase: str) -> bool:
    return ((obj or {}).get("status") or {}).get("phase") == phase


@pytest.fixture(scope="module")
def log_offset(operator_process) -> int:
    path = operator_log(operator_process)
    return path.stat().st_size if path.exists() else 0


@pytest.fixture(scope="module")
def outcomes(
    operator_process, log_offset, player, kube_admin, kubectl, testbed, admin_api, corpus_ns, output_ns
) -> Outcomes:
    started = time.monotonic()
    kubectl("create", "secret", "generic", SECRET, "-n", corpus_ns, f"--from-literal=token={TOKEN}")
    good = merged(BASE_SPEC, {"model": {"hfTokenSecretRef": {"name": SECRET}}, "sharing": {"mode": "auto"}})
    kubectl("apply", "-n", corpus_ns, "-f", "-", input=json.dumps(llmd("good-before", good)))
    wait_for(kube_admin, player, corpus_ns, ["good-before"], "Ready", timeout=90)

    # The profile cache: a valid entry where a case needs planning at once, tampered ones elsewhere.
    cache = ProfileCache(kube_admin, OPERATOR_NAMESPACE)
    for case in OPERATOR_CASES:
        if case.seed_profile:
            spec = merged(BASE_SPEC, case.spec)
            key = key_of(spec, corpus_ns)
            cache.put(
                key, simulated_profile(LLMDeploymentSpec.model_validate(spec)).model_copy(update={"key": key})
            )
    keys = {}
    for index, (case_id, how, _) in enumerate(CACHE_CASES):
        keys[case_id] = key_of(cache_spec(index), corpus_ns)
        write_cache_entry(kube_admin, keys[case_id], None if how is None else spoilt(how))

    corpus = [llmd(resource_name("op", c.id), merged(BASE_SPEC, c.spec)) for c in OPERATOR_CASES]
    corpus += [llmd(resource_name("cache", c[0]), cache_spec(i)) for i, c in enumerate(CACHE_CASES)]
    corpus += [
        llmd(resource_name("x", c.id), merged(BASE_SPEC, c.spec))
        for c in (*NO_CAPACITY_CASES, MISSING_SECRET)
    ]
    out_spec = merged(BASE_SPEC, {**EXCLUSIVE, "profiling": {"reuseCachedProfile": False}})
    outputs = {resource_name("out", c[0]): c for c in OUTPUT_CASES}
    kubectl("apply", "-n", corpus_ns, "-f", "-", input=yaml.safe_dump_all(corpus))
    kubectl(
        "apply", "-n", output_ns, "-f", "-", input=yaml.safe_dump_all([llmd(n, out_spec) for n in outputs])
    )
    applied = time.monotonic()

    must_settle = {resource_name("op", c.id): c.phase for c in OPERATOR_CASES}
    must_settle |= {resource_name("cache", c[0]): "Ready" for c in CACHE_CASES}
    must_settle |= dict.fromkeys(outputs, "Failed")
    published: dict[str, str] = {}  # output case LLMDeployment -> its result ConfigMap
    rbac: dict[str, bool] = {}
    objects: dict[str, dict[str, Any]] = {}
    while True:
        player.play_once(corpus_ns)
        for pod in kube_admin.list("Pod", output_ns, label_selector=PROFILER_SELECTOR):
            owner = pod["metadata"]["labels"].get(LABEL_DEPLOYMENT, "")
            if (pod.get("status") or {}).get("phase") != "Running" or owner in published:
                continue
            result_cm = arg(pod, "--result-configmap")
            writer = as_service_account(testbed, admin_api, output_ns, pod["spec"]["serviceAccountName"])
            if published and not rbac:
                rbac = profiler_escapes(writer, output_ns, next(iter(published.values())))
            _, how, _ = outputs[owner]
            if how is not None:
                writer.merge_patch("ConfigMap", output_ns, result_cm, {"data": {DATA_KEY: spoilt(how)}})
            published[owner] = result_cm
            kube_admin.merge_patch(
                "Pod",
                output_ns,
                pod["metadata"]["name"],
                {"metadata": {"annotations": {COMPLETE_ANNOTATION: "true"}}},
            )
        objects = {
            o["metadata"]["name"]: o
            for ns in (corpus_ns, output_ns)
            for o in kube_admin.list("LLMDeployment", ns)
        }
        waiting = [n for n, phase in must_settle.items() if not _settled(objects.get(n), phase)]
        missing_secret = (objects.get(resource_name("x", MISSING_SECRET.id)) or {}).get("status") or {}
        if "no-such-secret" not in missing_secret.get("message", ""):
            waiting.append("missing-secret")
        now = time.monotonic()
        if (not waiting and now - applied > GRACE_S) or now - applied > DEADLINE_S:
            break
        time.sleep(0.3)
    events = [e for ns in (corpus_ns, output_ns) for e in kube_admin.list("Event", ns)]
    return Outcomes(objects, events, keys, rbac, time.monotonic() - started)


def profiler_escapes(writer: KubeClient, namespace: str, other_result: str) -> dict[str, bool]:
    """What a compromised profiler would try with its identity; each must be Forbidden."""
    poison = {"data": {DATA_KEY: "{}"}}
    some_cache_entry = cache_configmap_name("0" * 40)
    return {
        "patch a profile-cache entry in the operator namespace": forbidden(
            lambda: writer.merge_patch("ConfigMap", OPERATOR_NAMESPACE, some_cache_entry, poison)
        ),
        "create a ConfigMap in its namespace": forbidden(
            lambda: writer.create(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "poison", "namespace": namespace},
                }
            )
        ),
        "patch another profiling Job's result": forbidden(
            lambda: writer.merge_patch("ConfigMap", namespace, other_result, poison)
        ),
        "list ConfigMaps": forbidden(lambda: writer.list("ConfigMap", namespace)),
        "read Secrets": forbidden(lambda: writer.get("Secret", namespace, SECRET)),
    }


def wait_for(kube, player, namespace: str, names: list[str], phase: str, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        player.play_once(namespace)
        objects = {n: kube.get("LLMDeployment", namespace, n) for n in names}
        if all(_settled(o, phase) for o in objects.values()):
            return objects
        if time.monotonic() > deadline:
            statuses = {n: (o or {}).get("status") for n, o in objects.items()}
            pytest.fail(f"not {phase} in {timeout}s: {json.dumps(statuses, indent=1)[:3000]}")
        time.sleep(0.3)


def operator_log(operator_process) -> Path:
    """The operator's log file: a runner object with .log_path, or a (process, path) pair."""
    path = getattr(operator_process, "log_path", None)
    return Path(path if path is not None else operator_process[1])


def operator_alive(operator_process) -> bool:
    if hasattr(operator_process, "alive"):
        return operator_process.alive
    return operator_process[0].poll() is None


def status_of(outcomes: Outcomes, name: str) -> dict[str, Any]:
    return (outcomes.objects.get(name) or {}).get("status") or {}


def answered_failed(status: dict[str, Any], phase: str, reason: str, needles: tuple[str, ...]) -> bool:
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    degraded = conditions.get("Degraded", {})
    message = status.get("message", "")
    return (
        status.get("phase") == phase
        and degraded.get("status") == "True"
        and degraded.get("reason") == reason
        and all(n in message for n in needles)
    )


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=lambda c: c.id)
def test_the_operator_answers_what_it_cannot_serve(case: Served, outcomes):
    status = status_of(outcomes, resource_name("op", case.id))
    record(case.id, answered_failed(status, case.phase, case.reason, case.needles))
    assert status.get("phase") == case.phase, status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Degraded"]["status"] == "True", conditions
    assert conditions["Degraded"]["reason"] == case.reason, conditions
    for needle in case.needles:
        assert needle in status["message"], status["message"]
    warnings = [
        e for e in outcomes.events_of(resource_name("op", case.id), "Failed") if e["type"] == "Warning"
    ]
    assert warnings and warnings[-1]["message"] == status["message"], "kubectl describe shows it too"


@pytest.mark.parametrize(("case", "how", "needle"), CACHE_CASES, ids=[c[0] for c in CACHE_CASES])
def test_a_tampered_cache_entry_is_reported_evicted_and_profiled_again(case, how, needle, outcomes):
    name = resource_name("cache", case)
    status = status_of(outcomes, name)
    warnings = outcomes.events_of(name, "ProfileCacheInvalid")
    record(
        f"cache-{case}",
        bool(warnings) and needle in warnings[0]["message"] and status.get("phase") == "Ready",
    )
    assert warnings, f"no ProfileCacheInvalid event (key {outcomes.keys[case][:12]}); status: {status}"
    assert warnings[0]["type"] == "Warning"
    assert needle in warnings[0]["message"] and "profiling again" in warnings[0]["message"], warnings[0]
    assert status.get("phase") == "Ready", status
    ref = status["profileRef"]
    assert ref["key"] == outcomes.keys[case] and ref["cacheHit"] is False, ref
    assert outcomes.events_of(name, "Profiled"), "measured again by a new Job"


@pytest.mark.parametrize(("case", "how", "needle"), OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_absurd_profiler_output_fails_with_a_reason_naming_the_field(case, how, needle, outcomes):
    status = status_of(outcomes, resource_name("out", case))
    reason = "ProfileMissing" if how is None else "ProfileInvalid"
    record(f"output-{case}", answered_failed(status, "Failed", reason, (needle,)))
    assert status.get("phase") == "Failed", status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["ProfileReady"]["status"] == "False"
    assert conditions["ProfileReady"]["reason"] == reason, conditions
    assert needle in status["message"], status["message"]


def test_the_profiler_identity_can_write_only_its_own_result(outcomes):
    assert outcomes.rbac, "no second profiling pod was played"
    for attempt, refused in outcomes.rbac.items():
        record(f"profiler-may-not-{attempt.replace(' ', '-')}", refused)
    assert all(outcomes.rbac.values()), outcomes.rbac


@pytest.mark.parametrize("case", NO_CAPACITY_CASES, ids=lambda c: c.id)
def test_a_product_or_mig_profile_no_node_offers_is_reported_before_profiling(case: Served, outcomes):
    status = status_of(outcomes, resource_name("x", case.id))
    message = status.get("message", "")
    answered = status.get("phase") in ("Failed", "Degraded") and "node" in message.lower()
    record(case.id, answered)
    assert answered, status


def test_a_token_secret_that_does_not_exist_is_reported(outcomes):
    """The operator may not read Secrets (least privilege): the status carries the kubelet's
    CreateContainerConfigError on the pod that names the Secret (on the testbed the player resolves
    env as a kubelet does). It is not Failed: creating the Secret lets the pod start."""
    status = status_of(outcomes, resource_name("x", MISSING_SECRET.id))
    message = status.get("message", "")
    answered = (
        status.get("phase") != "Ready"
        and 'secret "no-such-secret" not found' in message
        and "CreateContainerConfigError" in message
    )
    record(MISSING_SECRET.id, answered)
    assert answered, status


@pytest.mark.parametrize("case", REJECTED_RENDER_CASES, ids=lambda c: c.id)
def test_a_spec_whose_objects_the_api_server_would_reject_is_refused_at_admission(
    case: Served, kubectl, corpus_ns
):
    body = llmd(resource_name("x", case.id), merged(BASE_SPEC, case.spec))
    with pytest.raises(Exception) as refused:
        kubectl("apply", "--dry-run=server", "-n", corpus_ns, "-f", "-", input=yaml.safe_dump(body))
    message = str(refused.value)
    answered = any(needle in message for needle in case.needles)
    record(case.id, answered)
    assert answered, message


# -- and the operator still serves ----------------------------------------------------------------


def test_the_operator_still_serves_after_the_corpus(
    outcomes, operator_process, log_offset, kube_admin, kubectl, player, corpus_ns
):
    before = outcomes.objects["good-before"]
    now = kube_admin.get("LLMDeployment", corpus_ns, "good-before")
    assert now["status"]["phase"] == "Ready", now["status"]
    assert now["metadata"]["generation"] == before["metadata"]["generation"]

    # A Failed spec is not a dead end: fixing it serves it.
    fixed = resource_name("op", "slo-itl-mean-unmeetable")
    assert fixed in outcomes.objects, sorted(outcomes.objects)
    kube_admin.merge_patch("LLMDeployment", corpus_ns, fixed, {"spec": {"slo": None}})
    good = merged(BASE_SPEC, {"model": {"hfTokenSecretRef": {"name": SECRET}}, **EXCLUSIVE})
    kubectl("apply", "-n", corpus_ns, "-f", "-", input=json.dumps(llmd("good-after", good)))
    wait_for(kube_admin, player, corpus_ns, [fixed, "good-after"], "Ready", timeout=60)

    assert operator_alive(operator_process), "the operator process died"
    log = operator_log(operator_process).read_text(errors="replace")[log_offset:]
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]
    # The token is only ever a secretKeyRef: never in the log, an event, a status or an object.
    assert TOKEN not in log
    assert TOKEN not in json.dumps(kube_admin.list("Event", corpus_ns))
    for kind in ("LLMDeployment", "Deployment", "Job", "ConfigMap"):
        assert TOKEN not in json.dumps(kube_admin.list(kind, corpus_ns)), kind
    pods = [p for p in kube_admin.list("Pod", corpus_ns) if "good-after" in p["metadata"]["name"]]
    refs = [
        e for p in pods for c in p["spec"]["containers"] for e in c.get("env", []) if e["name"] == "HF_TOKEN"
    ]
    assert refs and all(
        e == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "token"}}}
        for e in refs
    )
    print(f"corpus settled in {outcomes.seconds:.0f}s")
