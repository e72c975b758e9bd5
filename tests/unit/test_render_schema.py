"""Every field the render layer emits exists in the Kubernetes API, with the right JSON type.

Checked against the OpenAPI-generated models of the `kubernetes` client (no API server needed), so
a misspelt field fails here in milliseconds; server-side apply would reject it with "field not
declared in schema" (the integration tests dry-run the same objects against a real kube-apiserver).
"""

from __future__ import annotations

from typing import Any

import kubernetes.client as k8s
import pytest
from test_render import MODES, profiling_plan, serving_plan

from llmpack.render import render_profiling, render_serving
from llmpack.render.plan import SecretKey

MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "V1ResourceClaimTemplate",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("batch/v1", "Job"): "V1Job",
}
QUANTITY_MAPS = ("limits", "requests")


def check(value: Any, type_name: str, path: str) -> None:
    if type_name.startswith("List["):
        assert isinstance(value, list), f"{path}: expected a list"
        for i, item in enumerate(value):
            check(item, type_name[5:-1], f"{path}[{i}]")
    elif type_name.startswith("Dict["):
        assert isinstance(value, dict), f"{path}: expected a map"
        item_type = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            assert isinstance(key, str), f"{path}: key {key!r}"
            if item_type == "str" and path.rsplit(".", 1)[-1] in QUANTITY_MAPS:
                assert isinstance(item, str | int) and not isinstance(item, bool), f"{path}.{key}: quantity"
            else:
                check(item, item_type, f"{path}.{key}")
    elif type_name == "object":  # IntOrString, opaque driver parameters, free-form
        return
    elif type_name == "str":
        assert isinstance(value, str), f"{path}: expected a string, got {value!r}"
    elif type_name == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: expected an integer"
    elif type_name == "bool":
        assert isinstance(value, bool), f"{path}: expected a boolean"
    else:
        model = getattr(k8s, type_name)
        assert isinstance(value, dict), f"{path}: expected an object ({type_name})"
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        for key, item in value.items():
            assert key in fields, f"{path}.{key}: no such field in {type_name}"
            check(item, model.openapi_types[fields[key]], f"{path}.{key}")


def rendered() -> list[dict]:
    secret = SecretKey(name="hf")
    objects = [
        o
        for mode in MODES
        for o in render_serving(
            serving_plan(
                mode,
                revision="main",
                hf_token_secret=secret,
                env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
                resources={"requests": {"cpu": "1"}, "limits": {"memory": "8Gi"}},
                node_selector={"pool": "gpu"},
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            )
        )
    ]
    objects += render_profiling(profiling_plan(hf_token_secret=secret))
    objects += render_profiling(profiling_plan(mig_profile="1g.10gb"))
    return objects


@pytest.mark.parametrize("obj", rendered(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_rendered_object_uses_only_fields_of_the_api(obj):
    model = MODELS[(obj["apiVersion"], obj["kind"])]
    check(obj, model, obj["kind"])


def test_the_checker_catches_a_misspelt_field():
    deployment = next(o for o in rendered() if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="readinesProbe"):
        check(deployment, "V1Deployment", "Deployment")
