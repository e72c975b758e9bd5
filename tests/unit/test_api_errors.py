"""API errors are classified on their status code, reason and details.causes; what a user can fix
(a policy's denial, a quota, an invalid object) ends in the LLMDeployment's status with the
server's words, and a stalled rollout is read from the Deployment's own conditions.

The bodies below are what kube-apiserver v1.36.3 of the testbed answered (captured with the
requests named in each case), except the webhook's and the throttling ones, which are written as
k8s.io/apiserver's ToStatusErr and the max-in-flight filter build them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from test_badinput_pure import BASE_SPEC, FakeKube, merged, reconcile_through

from llmpack.controller import status as st
from llmpack.runtime.kube import ErrorClass, KubeClient, KubeError, classify


def status_body(**fields: Any) -> bytes:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", **fields}
    ).encode()


VAP_FORBIDDEN = (  # a ValidatingAdmissionPolicy whose validation says reason: Forbidden
    403,
    status_body(
        message="deployments.apps \"d1\" is forbidden: ValidatingAdmissionPolicy 'no-llmpack-deployments' "
        "with binding 'no-llmpack-deployments' denied request: platform policy: no app label",
        reason="Forbidden",
        details={
            "name": "d1",
            "group": "apps",
            "kind": "deployments",
            "causes": [
                {
                    "message": "ValidatingAdmissionPolicy 'no-llmpack-deployments' with binding "
                    "'no-llmpack-deployments' denied request: platform policy: no app label"
                }
            ],
        },
        code=403,
    ),
)
VAP_DEFAULT_REASON = (  # a ValidatingAdmissionPolicy with no reason: Invalid, 422
    422,
    status_body(
        message="deployments.apps \"d1\" is forbidden: ValidatingAdmissionPolicy 'needs-team' with binding "
        "'needs-team' denied request: every Deployment needs a team label",
        reason="Invalid",
        details={
            "name": "d1",
            "group": "apps",
            "kind": "deployments",
            "causes": [
                {
                    "message": "ValidatingAdmissionPolicy 'needs-team' with binding 'needs-team' denied "
                    "request: every Deployment needs a team label"
                }
            ],
        },
        code=422,
    ),
)
WEBHOOK_CONTROLLER_RUNTIME = (  # admission.Denied("...") of controller-runtime, through ToStatusErr
    403,
    status_body(
        message='admission webhook "validate.policy.example.com" denied the request: GPU workloads need '
        "the label cost-center",
        reason="Forbidden",
        code=403,
    ),
)
WEBHOOK_BARE = (  # a webhook that answered allowed: false with a message only: ToStatusErr's 400
    400,
    status_body(
        message='admission webhook "deny.example.com" denied the request: not on Fridays',
        code=400,
    ),
)
QUOTA_PODS = (
    403,
    status_body(
        message='pods "p1" is forbidden: exceeded quota: q, requested: pods=1, used: pods=0, limited: pods=0',
        reason="Forbidden",
        details={"name": "p1", "kind": "pods"},
        code=403,
    ),
)
QUOTA_GPUS = (
    403,
    status_body(
        message='pods "p1" is forbidden: exceeded quota: g, requested: requests.nvidia.com/gpu=1, used: '
        "requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=0",
        reason="Forbidden",
        details={"name": "p1", "kind": "pods"},
        code=403,
    ),
)
RBAC = (
    403,
    status_body(
        message='configmaps is forbidden: User "system:serviceaccount:probe:default" cannot create resource '
        '"configmaps" in API group "" in the namespace "probe"',
        reason="Forbidden",
        details={"kind": "configmaps"},
        code=403,
    ),
)
NAMESPACE_TERMINATING = (
    403,
    status_body(
        message='configmaps "c2" is forbidden: unable to create new content in namespace probe3 because it '
        "is being terminated",
        reason="Forbidden",
        details={
            "name": "c2",
            "kind": "configmaps",
            "causes": [
                {
                    "reason": "NamespaceTerminating",
                    "message": "namespace probe3 is being terminated",
                    "field": "metadata.namespace",
                }
            ],
        },
        code=403,
    ),
)
INVALID_FIELD = (
    422,
    status_body(
        message='Deployment.apps "d1" is invalid: spec.replicas: Invalid value: -1: must be greater than or '
        "equal to 0",
        reason="Invalid",
        details={
            "name": "d1",
            "group": "apps",
            "kind": "Deployment",
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: -1: must be greater than or equal to 0",
                    "field": "spec.replicas",
                }
            ],
        },
        code=422,
    ),
)
SCHEMA_MISMATCH = (  # server-side apply of a string where a number belongs
    500,
    status_body(
        message="failed to create typed patch object (probe/d1; apps/v1, Kind=Deployment): .spec.replicas: "
        "expected numeric (int or float), got string",
        code=500,
    ),
)
BAD_REQUEST = (
    400,
    status_body(
        message="error decoding patch: json: cannot unmarshal string into Go value of type "
        "map[string]interface {}",
        reason="BadRequest",
        code=400,
    ),
)
CONFLICT = (
    409,
    status_body(
        message='Operation cannot be fulfilled on configmaps "c1": the object has been modified; '
        "please apply your changes to the latest version and try again",
        reason="Conflict",
        details={"name": "c1", "kind": "configmaps"},
        code=409,
    ),
)
ALREADY_EXISTS = (
    409,
    status_body(
        message='configmaps "c1" already exists',
        reason="AlreadyExists",
        details={"name": "c1", "kind": "configmaps"},
        code=409,
    ),
)
NOT_FOUND = (
    404,
    status_body(
        message='configmaps "nope" not found',
        reason="NotFound",
        details={"name": "nope", "kind": "configmaps"},
        code=404,
    ),
)
# What the API server answers for a resource path it does not serve (a CRD not installed): its
# plain-text 404 page, no Status.
UNSERVED_KIND = (404, "404 page not found\n")
TOO_MANY_REQUESTS = (
    429,
    status_body(
        message="Too many requests, please try again later.",
        reason="TooManyRequests",
        details={"retryAfterSeconds": 1},
        code=429,
    ),
)
TIMEOUT = (
    504,
    status_body(
        message="Timeout: request did not complete within requested timeout - context deadline exceeded",
        reason="Timeout",
        details={},
        code=504,
    ),
)
WEBHOOK_UNREACHABLE = (  # failurePolicy: Fail and the webhook is down: retried, not the user's
    500,
    status_body(
        message='Internal error occurred: failed calling webhook "validate.policy.example.com": '
        'failed to call webhook: Post "https://policy.example.svc:443/validate?timeout=10s": '
        "connection refused",
        reason="InternalError",
        details={
            "causes": [
                {
                    "message": 'failed calling webhook "validate.policy.example.com": failed to call '
                    'webhook: Post "https://policy.example.svc:443/validate?timeout=10s": connection refused'
                }
            ]
        },
        code=500,
    ),
)
UNAVAILABLE = (
    503,
    status_body(
        message="the server is currently unable to handle the request", reason="ServiceUnavailable", code=503
    ),
)
PROXY_HTML = (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")


def error(case: tuple[int, bytes], headers: dict[str, str] | None = None) -> KubeError:
    return KubeClient._error(case[0], case[1], headers)


CLASSES = {
    "vap-forbidden": (VAP_FORBIDDEN, ErrorClass.ADMISSION_DENIED),
    "vap-default-reason-invalid": (VAP_DEFAULT_REASON, ErrorClass.ADMISSION_DENIED),
    "webhook-controller-runtime": (WEBHOOK_CONTROLLER_RUNTIME, ErrorClass.ADMISSION_DENIED),
    "webhook-bare": (WEBHOOK_BARE, ErrorClass.ADMISSION_DENIED),
    "quota-pods": (QUOTA_PODS, ErrorClass.QUOTA_EXCEEDED),
    "quota-gpus": (QUOTA_GPUS, ErrorClass.QUOTA_EXCEEDED),
    "rbac": (RBAC, ErrorClass.FORBIDDEN),
    "namespace-terminating": (NAMESPACE_TERMINATING, ErrorClass.NAMESPACE_TERMINATING),
    "invalid-field": (INVALID_FIELD, ErrorClass.REJECTED),
    "schema-mismatch": (SCHEMA_MISMATCH, ErrorClass.REJECTED),
    "bad-request": (BAD_REQUEST, ErrorClass.REJECTED),
    "conflict": (CONFLICT, ErrorClass.TRANSIENT),
    "already-exists": (ALREADY_EXISTS, ErrorClass.TRANSIENT),
    "not-found": (NOT_FOUND, ErrorClass.NOT_FOUND),
    "unserved-kind": (UNSERVED_KIND, ErrorClass.KIND_NOT_SERVED),
    "too-many-requests": (TOO_MANY_REQUESTS, ErrorClass.TRANSIENT),
    "timeout": (TIMEOUT, ErrorClass.TRANSIENT),
    "webhook-unreachable": (WEBHOOK_UNREACHABLE, ErrorClass.TRANSIENT),
    "unavailable": (UNAVAILABLE, ErrorClass.TRANSIENT),
    "proxy-html": (PROXY_HTML, ErrorClass.TRANSIENT),
}


@pytest.mark.parametrize("case", CLASSES, ids=str)
def test_each_status_the_api_server_answers_is_classified(case):
    body, expected = CLASSES[case]
    err = error(body)
    assert classify(err) is expected, err
    assert err.retryable is (expected is ErrorClass.TRANSIENT)
    assert err.refusal is (
        expected
        in (
            ErrorClass.ADMISSION_DENIED,
            ErrorClass.QUOTA_EXCEEDED,
            ErrorClass.REJECTED,
            ErrorClass.FORBIDDEN,
            ErrorClass.KIND_NOT_SERVED,
        )
    )


def test_the_structured_parts_of_the_status_are_kept():
    err = error(INVALID_FIELD)
    assert (err.status, err.reason) == (422, "Invalid")
    assert err.causes == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: -1: must be greater than or equal to 0",
            "field": "spec.replicas",
        }
    ]
    assert err.details == {"name": "d1", "group": "apps", "kind": "Deployment"}
    assert error(NAMESPACE_TERMINATING).namespace_terminating


def test_retry_after_comes_from_the_header_or_the_details():
    assert error(TOO_MANY_REQUESTS).retry_after == 1.0
    assert error(TOO_MANY_REQUESTS, {"Retry-After": "7"}).retry_after == 7.0, "the header wins"
    assert error(UNAVAILABLE, {"Retry-After": "3"}).retry_after == 3.0
    assert error(CONFLICT).retry_after is None


def test_an_unreachable_server_is_transient():
    assert KubeError(0, "Unavailable", "API server unreachable: ProtocolError").retryable


def test_classification_never_reads_the_message_where_structure_decides():
    """The same words with another code or reason are classified by the code and reason."""
    rbac_worded_like_a_quota = KubeError(
        409, "Conflict", 'pods "p1" is forbidden: exceeded quota: q', details={"kind": "pods"}
    )
    assert classify(rbac_worded_like_a_quota) is ErrorClass.TRANSIENT
    schema_words_on_a_conflict = KubeError(409, "Conflict", "failed to create typed patch object (x)")
    assert classify(schema_words_on_a_conflict) is ErrorClass.TRANSIENT


# -- the Deployment's conditions -------------------------------------------------------------------


QUOTA_FORBIDS_PODS = {  # the testbed's Deployment in a namespace with a pods: 0 quota, 10 s later
    "metadata": {"name": "quota2", "generation": 1},
    "status": {
        "conditions": [
            {
                "lastTransitionTime": "2026-11-29T18:17:34Z",
                "lastUpdateTime": "2026-11-29T18:17:34Z",
                "message": "Deployment does not have minimum availability.",
                "reason": "MinimumReplicasUnavailable",
                "status": "False",
                "type": "Available",
            },
            {
                "lastTransitionTime": "2026-11-29T18:17:34Z",
                "lastUpdateTime": "2026-11-29T18:17:34Z",
                "message": 'pods "quota2-bb4cff79-vgd6n" is forbidden: exceeded quota: q, requested: pods=1, '
                "used: pods=2, limited: pods=0",
                "reason": "FailedCreate",
                "status": "True",
                "type": "ReplicaFailure",
            },
            {
                "lastTransitionTime": "2026-11-29T18:17:40Z",
                "lastUpdateTime": "2026-11-29T18:17:40Z",
                "message": 'ReplicaSet "quota2-bb4cff79" has timed out progressing.',
                "reason": "ProgressDeadlineExceeded",
                "status": "False",
                "type": "Progressing",
            },
        ],
        "observedGeneration": 1,
        "terminatingReplicas": 0,
        "unavailableReplicas": 1,
    },
}
STALLED = {  # a pod that never becomes ready, progressDeadlineSeconds: 5
    "metadata": {"name": "stall", "generation": 1},
    "status": {
        "conditions": [
            {
                "lastTransitionTime": "2026-11-29T18:17:15Z",
                "lastUpdateTime": "2026-11-29T18:17:15Z",
                "message": "Deployment does not have minimum availability.",
                "reason": "MinimumReplicasUnavailable",
                "status": "False",
                "type": "Available",
            },
            {
                "lastTransitionTime": "2026-11-29T18:17:21Z",
                "lastUpdateTime": "2026-11-29T18:17:21Z",
                "message": 'ReplicaSet "stall-5498d86b" has timed out progressing.',
                "reason": "ProgressDeadlineExceeded",
                "status": "False",
                "type": "Progressing",
            },
        ],
        "observedGeneration": 1,
        "replicas": 1,
        "terminatingReplicas": 0,
        "unavailableReplicas": 1,
        "updatedReplicas": 1,
    },
}


def test_a_quota_that_forbids_the_pods_is_read_from_replica_failure():
    reason, message = st.deployment_problem(QUOTA_FORBIDS_PODS)
    assert reason == "QuotaExceeded"
    assert "quota2 cannot create its pods" in message and "exceeded quota: q" in message


def test_a_rollout_past_its_deadline_is_read_from_progressing():
    reason, message = st.deployment_problem(STALLED)
    assert reason == "ProgressDeadlineExceeded"
    assert 'ReplicaSet "stall-5498d86b" has timed out progressing.' in message


def test_conditions_of_a_generation_the_controller_has_not_seen_are_not_trusted():
    newer = copy.deepcopy(STALLED)
    newer["metadata"]["generation"] = 2
    assert st.deployment_problem(newer) is None


# -- the reconciler: a refusal becomes the status ------------------------------------------------


class RefusingKube(FakeKube):
    """The fake API of the reconciler tests, refusing applies of one kind with a real body (none
    while `case` is None), and keeping the generation a test gave an object, as the server does."""

    def __init__(self, kind: str = "Deployment", case: tuple[int, bytes] | None = None):
        super().__init__()
        self.refuse_kind, self.case = kind, case

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        if obj["kind"] == self.refuse_kind and self.case is not None:
            raise KubeClient._error(*self.case)
        meta = obj["metadata"]
        before = self.objects.get((obj["kind"], meta.get("namespace"), meta["name"])) or {}
        applied = super().apply(obj, dry_run=dry_run)
        if "generation" in before.get("metadata", {}):
            applied["metadata"]["generation"] = before["metadata"]["generation"]
            self.objects[(obj["kind"], meta.get("namespace"), meta["name"])]["metadata"]["generation"] = (
                before["metadata"]["generation"]
            )
        return applied


@pytest.mark.parametrize(
    ("case", "reason", "retried"),
    [
        (VAP_FORBIDDEN, "AdmissionDenied", True),
        (VAP_DEFAULT_REASON, "AdmissionDenied", True),
        (QUOTA_GPUS, "QuotaExceeded", True),
        (RBAC, "Forbidden", True),
        (INVALID_FIELD, "ObjectRejected", False),
    ],
    ids=["vap-forbidden", "vap-invalid", "quota", "rbac", "invalid"],
)
def test_a_refused_deployment_fails_with_the_servers_message(case, reason, retried):
    run = reconcile_through(BASE_SPEC, kube=RefusingKube("Deployment", case))
    status = run.status
    assert status["phase"] == "Failed", status
    server_message = json.loads(case[1])["message"]
    assert server_message in status["message"] and "the Deployment bad" in status["message"]
    for type_ in ("Progressing", "Available", "Degraded"):
        condition = run.condition(type_)
        assert (condition["status"], condition["reason"]) == (
            "True" if type_ == "Degraded" else "False",
            reason,
        ), condition
        assert server_message in condition["message"]
    assert (run.results[-1].retry_after is not None) is retried


def test_a_transient_error_is_raised_for_the_queue_to_retry():
    with pytest.raises(KubeError) as raised:
        reconcile_through(BASE_SPEC, kube=RefusingKube("Deployment", CONFLICT))
    assert raised.value.retryable


def test_a_refusal_while_the_previous_configuration_serves_is_degraded():
    kube = RefusingKube()
    served = reconcile_through(BASE_SPEC, kube=kube)
    (deployment,) = [o for (k, _, _), o in kube.objects.items() if k == "Deployment"]
    deployment["status"] = {"readyReplicas": 1, "observedGeneration": 1, "updatedReplicas": 1}
    kube.case = VAP_FORBIDDEN
    obj = {**served.results[-1].status}
    changed = merged(BASE_SPEC, {"serving": {"env": [{"name": "CHANGED", "value": "1"}]}})
    result = served.reconciler.reconcile(
        {
            "metadata": {"name": "bad", "namespace": "team-a", "uid": "uid-bad", "generation": 2},
            "spec": changed,  # a new generation whose Deployment the policy refuses
            "status": obj,
        }
    )
    assert result.status["phase"] == "Degraded", result.status
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["Available"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "AdmissionDenied"
    assert conditions["Degraded"]["status"] == "True"


def test_a_quota_on_pods_fails_a_deployment_with_none_serving_and_is_looked_at_again():
    kube = RefusingKube()
    run = reconcile_through(BASE_SPEC, kube=kube)
    (deployment,) = [o for (k, _, _), o in kube.objects.items() if k == "Deployment"]
    deployment["metadata"]["generation"] = 1
    deployment["status"] = copy.deepcopy(QUOTA_FORBIDS_PODS["status"])
    result = run.reconciler.reconcile(
        {
            "metadata": {"name": "bad", "namespace": "team-a", "uid": "uid-bad", "generation": 1},
            "spec": BASE_SPEC,
            "status": run.status,
        }
    )
    assert result.status["phase"] == "Failed", result.status
    assert "exceeded quota: q" in result.status["message"]
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["Progressing"]["reason"] == conditions["Available"]["reason"] == "QuotaExceeded"
    assert result.retry_after is not None


def test_a_stalled_rollout_is_degraded_with_the_deployment_controllers_reason():
    kube = RefusingKube()
    run = reconcile_through(BASE_SPEC, kube=kube)
    assert run.status["phase"] == "Deploying" and run.results[-1].retry_after, "a rollout is looked at again"
    (deployment,) = [o for (k, _, _), o in kube.objects.items() if k == "Deployment"]
    deployment["metadata"]["generation"] = 1
    deployment["status"] = copy.deepcopy(STALLED["status"])
    result = run.reconciler.reconcile(
        {
            "metadata": {"name": "bad", "namespace": "team-a", "uid": "uid-bad", "generation": 1},
            "spec": BASE_SPEC,
            "status": run.status,
        }
    )
    assert result.status["phase"] == "Degraded", result.status
    assert "has timed out progressing" in result.status["message"]
    conditions = {c["type"]: c for c in result.status["conditions"]}
    assert conditions["Progressing"]["status"] == "False"
    assert (
        conditions["Progressing"]["reason"] == conditions["Degraded"]["reason"] == "ProgressDeadlineExceeded"
    )
